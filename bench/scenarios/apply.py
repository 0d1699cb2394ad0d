"""Applying a large insert push on PostgreSQL, against a bare executemany of its rows."""

from __future__ import annotations

import time
from collections import defaultdict

import sqlalchemy as sa

from bench.direct import DirectNode, insert_changes
from bench.harness import Measurement, Run, at_most, compare, median, scenario
from bench.models import ITEM, MODULE, item_rows
from bench.services import Services
from dbsync_mq import commands
from dbsync_mq.server import Server
from dbsync_mq.storage.models import ModelSet
from worker.process import create_server_engine


class ApplyBench:
    """A PostgreSQL server, a registered node, and one push of ``size`` new rows.

    ``ours`` is ``Server.handle`` on the prepared push message (verify, decode,
    check, lock the head, insert, write the version and the stored reply,
    commit); ``baseline`` inserts the same rows with one Core ``executemany``
    in one transaction. ``reset`` empties the table before every run.
    """

    def __init__(self, services: Services, size: int) -> None:
        self.url = services.postgres_database()
        commands.init(self.url, (MODULE,))
        self.engine = create_server_engine(self.url)
        self.stages: dict[str, list[float]] = defaultdict(list)
        self._stage_started = 0.0
        self.server = Server(self.engine, ModelSet.in_modules([MODULE]), on_stage=self._on_stage)
        self.node = DirectNode(self.server, self.url)
        self.rows = item_rows(1, size)
        self._changes = insert_changes(self.rows)
        self._message = self.node.push(self._head(), self._changes)

    def _head(self) -> int:
        with self.engine.connect() as connection:
            return int(connection.exec_driver_sql("SELECT version FROM sync_head").scalar_one())

    def _on_stage(self, stage: str, _kind: str, _request_id: str) -> None:
        now = time.perf_counter()
        if stage == "before-transaction":
            self._stage_started = now
        elif stage == "after-commit":
            self.stages["transaction"].append(now - self._stage_started)

    def reset(self) -> None:
        with self.engine.begin() as connection:
            connection.exec_driver_sql(f"TRUNCATE {ITEM.name}")
        self._message = self.node.push(self._head(), self._changes)

    def ours(self) -> None:
        outcome = self.server.handle(self._message)
        if outcome.version is None:
            raise RuntimeError(f"the push was not applied: {outcome.code}: {outcome.reason}")

    def baseline(self) -> None:
        with self.engine.begin() as connection:
            connection.execute(ITEM.insert(), self.rows)

    def count(self) -> int:
        with self.engine.connect() as connection:
            return int(
                connection.execute(sa.select(sa.func.count()).select_from(ITEM)).scalar_one()
            )

    def close(self) -> None:
        self.engine.dispose()


@scenario("apply")
def apply_push(run: Run) -> Measurement:
    """Apply a 10,000-row insert push (PostgreSQL server) vs Core executemany."""
    size = 10_000
    bench = ApplyBench(run.services, size)
    try:
        ours, baseline = compare(
            bench.ours,
            bench.baseline,
            run.repeat,
            before_ours=bench.reset,
            before_baseline=bench.reset,
        )
        in_transaction = median(bench.stages["transaction"])
    finally:
        bench.close()
    return Measurement(
        f"apply {size:,}-row insert push, PG (Server.handle) vs Core executemany",
        ours * 1000,
        baseline * 1000,
        "ms",
        at_most(1.5),
        note=(
            f"median of {run.repeat}; {in_transaction * 1000:.0f} ms of it inside the transaction,"
            f" {(ours - in_transaction) * 1000:.0f} ms verify/decode/checks/reply"
        ),
    )
