"""Repairing a node from a large server table: wall time and the node's peak RSS.

The server (PostgreSQL) table is filled with Core ``executemany`` (a repair reads
tables, not versions); a worker thread serves the repair. The repairing client
runs in a fresh subprocess (``bench.pull_child repair``) on a copy of a node's
SQLite file; the baseline, in a subprocess too, is a plain ``sqlite3``
``executemany`` of the same rows into an empty table and a commit.
"""

from __future__ import annotations

import shutil
import uuid

import sqlalchemy as sa

from bench.harness import Measurement, Run, at_most, median, scenario, value_at_most
from bench.models import ITEM, item_rows
from bench.scenarios.pull import RSS_LIMIT_MIB, PullBench, _child

FILL_BATCH = 50_000


def _fill(engine: sa.Engine, total: int) -> None:
    with engine.begin() as connection:
        for start in range(1, total + 1, FILL_BATCH):
            connection.execute(ITEM.insert(), item_rows(start, min(FILL_BATCH, total - start + 1)))


def _repair_once(bench: PullBench) -> dict[str, float]:
    copy = bench.run.services.path(f"repair-{uuid.uuid4().hex[:8]}.db")
    shutil.copyfile(bench.template, copy)
    try:
        return _child("repair", str(copy), bench.setup.services.broker_url, bench.setup.namespace)
    finally:
        copy.unlink(missing_ok=True)


@scenario("repair")
def repair(run: Run) -> list[Measurement]:
    """Repair of 1,000,000 rows (100,000 with --quick): time and peak RSS."""
    size = run.pick(100_000, 1_000_000)
    repeat = run.pick(1, 2)
    bench = PullBench(run)
    try:
        _fill(bench.engine, size)
        bench.seeded = size
        ours = [_repair_once(bench) for _ in range(repeat)]
        base = [bench.baseline() for _ in range(repeat)]
    finally:
        bench.close()
    if any(result["changes"] != size for result in ours):
        raise RuntimeError(f"repaired {[r['changes'] for r in ours]} rows, expected {size}")
    return [
        Measurement(
            f"repair of {size:,} rows into a node vs sqlite3 executemany",
            median(r["seconds"] for r in ours),
            median(r["seconds"] for r in base),
            "s",
            at_most(3),
            note=f"median of {repeat}, each run in a fresh subprocess",
        ),
        Measurement(
            f"repair of {size:,} rows: peak RSS of the repairing process",
            max(r["rss_mib"] for r in ours),
            max(r["rss_mib"] for r in base),
            "MiB",
            value_at_most(RSS_LIMIT_MIB),
            note=f"{median(r['rss_before_mib'] for r in ours):.0f} MiB before the repair began",
        ),
    ]
