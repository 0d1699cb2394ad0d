"""A whole push of 10,000 inserted rows, end to end: ``client.push()`` wall time.

From the node's log to the server's commit and back: prepare, publish, verify,
apply under the head lock, reply, settle. The baseline is the same rows written
on the same server database with one Core ``executemany`` in one transaction:
what the push has to do at the least, without any network or sync work.
"""

from __future__ import annotations

import time

from sqlalchemy.orm import Session

from bench.harness import Measurement, Run, median, scenario
from bench.models import ITEM, Item, item_rows
from bench.servers import DatabaseKind, WorkerThread, new_client, new_server
from worker.process import create_server_engine

ROWS = 10_000


def _measure(run: Run, kind: DatabaseKind, label: str) -> Measurement:
    setup = new_server(run.services, kind)
    worker = WorkerThread(setup)
    worker.start()
    client = new_client(setup, f"bulk-{kind}", timeout=60)
    engine = create_server_engine(setup.database_url)
    repeat = run.pick(3, 3)
    ours, baseline = [], []
    try:
        for attempt in range(repeat):
            first = attempt * 2 * ROWS + 1
            with Session(client.engine) as session:
                session.add_all(Item(**row) for row in item_rows(first, ROWS))
                session.commit()
            started = time.perf_counter()
            if client.push().operations != ROWS:
                raise RuntimeError("the push did not carry every row")
            ours.append(time.perf_counter() - started)
            started = time.perf_counter()
            with engine.begin() as connection:
                connection.execute(ITEM.insert(), item_rows(first + ROWS, ROWS))
            baseline.append(time.perf_counter() - started)
    finally:
        client.close()
        client.engine.dispose()
        engine.dispose()
        worker.stop()
    return Measurement(
        f"push of {ROWS:,} inserted rows end to end, {label} server: client.push() "
        "vs Core executemany on the server",
        median(ours) * 1000,
        median(baseline) * 1000,
        "ms",
        None,
        note=f"median of {repeat}; informational (no target)",
    )


@scenario("bulkpush")
def bulkpush(run: Run) -> list[Measurement]:
    """Push of 10,000 inserted rows end to end (PostgreSQL and SQLite servers)."""
    return [_measure(run, "postgresql", "PG"), _measure(run, "sqlite", "SQLite")]
