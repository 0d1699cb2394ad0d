"""Pulling many operations into a new node: wall time and the pulling process's peak RSS.

The server (PostgreSQL) is seeded with insert pushes handed straight to
``Server.handle``; a worker thread serves the pulls. Each measured pull runs in
a fresh subprocess (``bench.pull_child``) on a copy of a registered node's
SQLite file, still at version 0. The baseline, in a subprocess too, is a plain
``sqlite3`` ``executemany`` of the same rows into an empty table and a commit.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

from bench.direct import DirectNode, insert_changes
from bench.harness import Measurement, Run, at_most, median, scenario, value_at_most
from bench.models import MODULE, item_rows
from bench.servers import ServerSetup, WorkerThread, new_client, new_server
from dbsync_mq.server import Server
from dbsync_mq.storage.models import ModelSet
from worker.process import create_server_engine

SEED_BATCH = 20_000
RSS_LIMIT_MIB = 300
_REPO = Path(__file__).resolve().parents[2]


def _child(*args: str) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": str(_REPO)}
    command = [sys.executable, "-m", "bench.pull_child", *args]
    done = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=900, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"pull child failed ({done.returncode}):\n{done.stderr[-3000:]}")
    result: dict[str, float] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


class PullBench:
    """A seeded PostgreSQL server, a worker thread, and a registered node at version 0."""

    def __init__(self, run: Run) -> None:
        self.run = run
        self.setup: ServerSetup = new_server(run.services, "postgresql")
        self.engine = create_server_engine(self.setup.database_url)
        self.seeder = DirectNode(
            Server(self.engine, ModelSet.in_modules([MODULE])), self.setup.database_url
        )
        self.seeded = 0
        self.head = 0
        self.worker = WorkerThread(self.setup)
        self.worker.start()
        client = new_client(self.setup, "pull-template")
        self.template = Path(client.engine.url.database or "")
        client.close()
        client.engine.dispose()

    def seed(self, total: int) -> None:
        """Push inserts until the server holds ``total`` rows."""
        while self.seeded < total:
            count = min(SEED_BATCH, total - self.seeded)
            changes = insert_changes(item_rows(self.seeded + 1, count))
            self.seeder.reply_to(self.seeder.push(self.head, changes))
            self.seeded += count
            self.head += 1

    def ours(self, mode: str = "ours") -> dict[str, float]:
        """One pull in a fresh subprocess (``mode`` ``"phases"`` adds RSS per phase)."""
        copy = self.run.services.path(f"pull-{uuid.uuid4().hex[:8]}.db")
        shutil.copyfile(self.template, copy)
        try:
            result = _child(mode, str(copy), self.setup.services.broker_url, self.setup.namespace)
        finally:
            copy.unlink(missing_ok=True)
        if result["changes"] != self.seeded:
            raise RuntimeError(f"pulled {result['changes']} changes, expected {self.seeded}")
        return result

    def baseline(self) -> dict[str, float]:
        path = self.run.services.path(f"plain-{uuid.uuid4().hex[:8]}.db")
        try:
            return _child("baseline", str(path), str(self.seeded))
        finally:
            path.unlink(missing_ok=True)

    def close(self) -> None:
        self.worker.stop()
        self.engine.dispose()


def _measure(bench: PullBench, size: int, repeat: int) -> list[Measurement]:
    bench.seed(size)
    ours, base = [], []
    for _ in range(repeat):
        ours.append(bench.ours())
        base.append(bench.baseline())
    seconds = median(r["seconds"] for r in ours)
    rss = max(r["rss_mib"] for r in ours)
    before = median(r["rss_before_mib"] for r in ours)
    return [
        Measurement(
            f"pull of {size:,} insert operations into a new node vs sqlite3 executemany",
            seconds,
            median(r["seconds"] for r in base),
            "s",
            at_most(3),
            note=f"median of {repeat}, each run in a fresh subprocess",
        ),
        Measurement(
            f"pull of {size:,} operations: peak RSS of the pulling process",
            rss,
            max(r["rss_mib"] for r in base),
            "MiB",
            value_at_most(RSS_LIMIT_MIB),
            note=f"{before:.0f} MiB before the pull began; baseline = the executemany process",
        ),
    ]


@scenario("pull")
def pull(run: Run) -> list[Measurement]:
    """Pull of 10,000 and 200,000 operations (50,000 with --quick): time and peak RSS."""
    large = run.pick(50_000, 200_000)
    bench = PullBench(run)
    try:
        return [
            *_measure(bench, 10_000, run.pick(3, 5)),
            *_measure(bench, large, run.pick(1, 3)),
        ]
    finally:
        bench.close()
