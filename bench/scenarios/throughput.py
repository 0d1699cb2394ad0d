"""Sustained small pushes from 20 clients, against row-lock transactions on the same PG.

Each client thread has its own ``SyncClient`` and SQLite file and, for the
whole window, writes one row and calls ``sync()`` (push; on ``pull-required``
pull, merge and push again). Clients write disjoint keys, as applications
with UUID keys do, so the pulls carry no insert collisions. Accepted pushes
are counted on the server (its version head). The worker runs as a separate
process: the twenty client threads share the benchmark's GIL, not the worker's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import sqlalchemy as sa
from sqlalchemy.orm import Session

from bench.harness import Measurement, Run, at_least, median, scenario
from bench.models import Item, counter, item_row, plain_metadata, plain_rows
from bench.servers import ServerSetup, WorkerProcess, new_client, new_server, worker_stats
from dbsync_mq import SyncClient, SyncError

CLIENTS = 20
KEY_SPACE = 10_000_000
"""Client ``n`` writes keys ``n * KEY_SPACE + 1 ...``: no two clients collide."""


def _in_threads(count: int, body: Callable[[int], None]) -> float:
    """Run ``body(index)`` in ``count`` threads started together; seconds until all end."""
    barrier = threading.Barrier(count + 1)

    def start(index: int) -> None:
        barrier.wait()
        body(index)

    threads = [threading.Thread(target=start, args=(i,), daemon=True) for i in range(count)]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return time.perf_counter() - started


class ThroughputBench:
    """Twenty registered clients and a worker process on a fresh PostgreSQL server."""

    def __init__(self, run: Run) -> None:
        self.setup: ServerSetup = new_server(run.services, "postgresql")
        self.worker = WorkerProcess(self.setup)
        self.worker.start()
        self.clients: list[SyncClient] = [
            new_client(self.setup, f"client{index}", timeout=60) for index in range(CLIENTS)
        ]
        self._next = [index * KEY_SPACE + 1 for index in range(CLIENTS)]
        self.engine = sa.create_engine(self.setup.database_url, pool_size=CLIENTS + 2)
        plain_metadata.create_all(self.engine)
        with self.engine.begin() as connection:
            connection.execute(counter.insert().values(id=1, value=0))
        self.errors = 0

    def head(self) -> int:
        with self.engine.connect() as connection:
            return int(connection.exec_driver_sql("SELECT version FROM sync_head").scalar_one())

    def _write_and_sync(self, index: int) -> None:
        client = self.clients[index]
        with Session(client.engine) as session:
            session.add(Item(**item_row(self._next[index])))
            session.commit()
        self._next[index] += 1
        try:
            client.sync()
        except SyncError:
            self.errors += 1  # still behind after sync's attempts: try again next round

    def ours(self, seconds: float) -> float:
        """Accepted pushes per second over a window of ``seconds``."""
        deadline = time.monotonic() + seconds
        before = self.head()

        def loop(index: int) -> None:
            while time.monotonic() < deadline:
                self._write_and_sync(index)

        elapsed = _in_threads(CLIENTS, loop)
        return (self.head() - before) / elapsed

    def baseline(self, seconds: float) -> float:
        """SELECT ... FOR UPDATE + INSERT + COMMIT transactions per second, 20 threads."""
        deadline = time.monotonic() + seconds
        done = [0] * CLIENTS
        lock = sa.select(counter.c.value).where(counter.c.id == 1).with_for_update()

        def loop(index: int) -> None:
            with self.engine.connect() as connection:
                while time.monotonic() < deadline:
                    with connection.begin():
                        connection.execute(lock)
                        connection.execute(plain_rows.insert().values(payload=b"x" * 64))
                    done[index] += 1

        elapsed = _in_threads(CLIENTS, loop)
        return sum(done) / elapsed

    def close(self) -> None:
        for client in self.clients:
            client.close()
            client.engine.dispose()
        self.worker.stop()
        self.engine.dispose()


def _describe_worker(log: str) -> str:
    stats = worker_stats(log)
    parts = [
        f"{kind} {count} x {total / count:.1f} ms"
        for kind, (count, total) in sorted(stats.items())
        if kind.split("/")[0] in ("push", "pull")
    ]
    return "worker handled: " + ", ".join(parts)


@scenario("throughput")
def throughput(run: Run) -> Measurement:
    """Sustained small pushes, 20 clients, PG server vs 20-thread FOR UPDATE transactions."""
    seconds = run.pick(5, 15)
    rounds = run.pick(2, 3)
    bench = ThroughputBench(run)
    try:
        bench.ours(1.0)  # warm-up: connections, reply queues, caches
        bench.baseline(1.0)
        ours, baseline = [], []
        for _ in range(rounds):
            ours.append(bench.ours(seconds))
            baseline.append(bench.baseline(seconds))
    finally:
        bench.close()
    return Measurement(
        f"sustained 1-row pushes, {CLIENTS} clients, PG, {rounds} windows of {seconds} s: "
        "accepted pushes/s vs FOR UPDATE+insert tx/s",
        median(ours),
        median(baseline),
        "/s",
        at_least(0.5),
        note=f"{_describe_worker(bench.worker.log())}; sync errors {bench.errors}",
    )
