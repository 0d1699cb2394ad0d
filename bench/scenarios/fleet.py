"""A fleet of nodes against one deployment, loaded from several processes.

N nodes (``--nodes``, default 200; 40 with ``--quick``), each its own SQLite file
and ``SyncClient``, spread over ``LOAD_PROCESSES`` load processes with a few
threads each, sync back to back (a closed loop: the server, not a timer, sets
the pace) for a window of seconds, in four windows:

- the mix (one sync in ten first writes 1-10 rows, a fifth of them updates of
  rows every node holds), one worker process;
- pulls only (nothing new: the fast path), one worker process, then
  ``--processes 2``;
- the mix again with ``--processes 2``.

Baselines in the same run: the bare pika request/reply rate (a persistent,
confirmed request to a quorum queue, a consumer that commits one row and
replies), driven by the same load processes and threads; and the bare
``SELECT … FOR UPDATE`` + ``INSERT`` + ``COMMIT`` loop on the same PostgreSQL,
20 threads. Every window reports the worker's CPU per request (from
``/proc``), the load processes' own CPU, sync latency percentiles, and the
request queues' depth over time (management API, sampled every second).
"""

from __future__ import annotations

import contextlib
import multiprocessing
import re
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection

import sqlalchemy as sa
from sqlalchemy.orm import Session

from bench.bare import BareResponder
from bench.fleet import SHARED_KEYS, Load, Mix, Report, Target, percentile
from bench.harness import Measurement, Run, at_least, scenario
from bench.models import Item, counter, item_rows, plain_metadata, plain_rows
from bench.servers import ServerSetup, WorkerProcess, new_client, new_server, worker_stats
from dbsync_mq.transport.management import ManagementApi
from dbsync_mq.transport.rabbitmq import connect

LOAD_PROCESSES = 2
"""Load processes (the machine has two cores; the worker and the services share them)."""
LOCK_LOOP_THREADS = 20
MIX = Mix(interval=0.0)
PULLS_ONLY = Mix(interval=0.0, push_share=0.0)


@dataclass
class Window:
    """One measured window: the load's reports and the server's side of it."""

    label: str
    seconds: float
    report: Report
    load_cpu: list[float]
    pushes: int
    requests: dict[str, tuple[int, float]]
    worker_cpu: float
    depths: list[tuple[int, int]]

    def rate(self, kind: str) -> float:
        count = sum(n for key, (n, _ms) in self.requests.items() if key.split("/")[0] == kind)
        return count / self.seconds

    def describe(self) -> str:
        latencies = self.report.latencies
        handled = sum(n for n, _ms in self.requests.values())
        cpu_ms = 1000 * self.worker_cpu / handled if handled else float("nan")
        wall_ms = sum(ms for _n, ms in self.requests.values()) / handled if handled else 0.0
        push_depth = max((push for push, _pull in self.depths), default=0)
        pull_depth = max((pull for _push, pull in self.depths), default=0)
        series = " ".join(f"{push}/{pull}" for push, pull in self.depths[:12])
        return (
            f"{self.label}: {self.report.syncs / self.seconds:.0f} syncs/s, "
            f"pushes {self.pushes / self.seconds:.0f}/s, pulls {self.rate('pull'):.0f}/s; "
            f"sync p50 {1000 * percentile(latencies, 0.5):.1f} ms, "
            f"p99 {1000 * percentile(latencies, 0.99):.1f} ms; "
            f"worker CPU {cpu_ms:.2f} ms/request ({self.worker_cpu / self.seconds:.0%} of a core, "
            f"{wall_ms:.1f} ms from delivery to ack); "
            f"load CPU {sum(self.load_cpu) / self.seconds:.0%} of a core over "
            f"{len(self.load_cpu)} processes; queue depth push/pull max {push_depth}/{pull_depth}"
            f" (1 s steps: {series}); sync errors {self.report.errors}"
        )


class DepthSampler:
    """The ready messages of the push and pull queues, read every second."""

    def __init__(self, broker_url: str, namespace: str) -> None:
        self.api = ManagementApi(broker_url)
        self.pattern = re.escape(namespace) + r"\.(push|pull)"
        self.samples: list[tuple[int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            with contextlib.suppress(Exception):
                depth = {q.name.rpartition(".")[2]: q.ready for q in self.api.queues(self.pattern)}
                self.samples.append((depth.get("push", 0), depth.get("pull", 0)))

    def __enter__(self) -> DepthSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(10)


def _head(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        return int(connection.exec_driver_sql("SELECT version FROM sync_head").scalar_one())


def _window(
    label: str, load: Load, worker: WorkerProcess, engine: sa.Engine, mix: Mix, seconds: float
) -> Window:
    offset = len(worker.log())
    head, cpu = _head(engine), worker.cpu_seconds()
    with DepthSampler(worker.setup.services.broker_url, worker.setup.namespace) as sampler:
        report, load_cpu = load.run(mix, seconds)
    return Window(
        label,
        seconds,
        report,
        load_cpu,
        _head(engine) - head,
        worker_stats(worker.log()[offset:]),
        worker.cpu_seconds() - cpu,
        sampler.samples,
    )


def _seed(setup: ServerSetup) -> None:
    """The rows every node holds and may update."""
    seeder = new_client(setup, "seeder", timeout=60)
    try:
        with Session(seeder.engine) as session:
            session.add_all(Item(**row) for row in item_rows(1, SHARED_KEYS))
            session.commit()
        seeder.sync()
    finally:
        seeder.close()
        seeder.engine.dispose()


def _fleet_windows(run: Run, nodes: int, threads: int, seconds: float) -> list[Window]:
    setup = new_server(run.services, "postgresql")
    engine = sa.create_engine(setup.database_url)
    worker = WorkerProcess(setup)
    worker.start()
    load: Load | None = None
    windows = []
    try:
        _seed(setup)
        target = Target(run.services.broker_url, setup.namespace, setup.database_url)
        run.log(f"    setting up {nodes} nodes in {LOAD_PROCESSES} load processes")
        load = Load(target, str(run.services.workdir), nodes, LOAD_PROCESSES, threads)
        for node_id in load.node_ids:
            run.services.node_registered(setup.namespace, node_id)
        load.run(MIX, 1.0)  # warm-up: every node pulls the shared rows
        windows.append(_window("mix, 1 process", load, worker, engine, MIX, seconds))
        windows.append(_window("pulls, 1 process", load, worker, engine, PULLS_ONLY, seconds))
        worker.stop()
        worker = WorkerProcess(setup, ("--processes", "2"))
        worker.start()
        windows.append(_window("pulls, 2 processes", load, worker, engine, PULLS_ONLY, seconds))
        windows.append(_window("mix, 2 processes", load, worker, engine, MIX, seconds))
    finally:
        if load is not None:
            load.close()
        worker.stop()
        engine.dispose()
    return windows


def _respond(broker_url: str, database_url: str, queue: str, stop: Connection) -> None:
    responder = BareResponder(broker_url, database_url, queue, 200)
    responder.start()
    try:
        stop.recv()
    finally:
        responder.stop()


def _bare_rate(run: Run, threads: int, seconds: float) -> tuple[float, float]:
    """Bare pika request/reply calls per second, and the bare lock loop's tx per second."""
    database_url = run.services.postgres_database()
    namespace = run.services.namespace()
    exchange, queue = f"{namespace}.bare", f"{namespace}.bare.request"
    connection = connect(run.services.broker_url)
    try:
        channel = connection.channel()
        channel.exchange_declare(exchange, "direct", durable=True)
        channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
        channel.queue_bind(queue, exchange, routing_key="request")
    finally:
        connection.close()
    run.services.declared("exchange", exchange)
    run.services.declared("queue", queue)
    context = multiprocessing.get_context("spawn")
    stop, child = context.Pipe()
    responder = context.Process(
        target=_respond, args=(run.services.broker_url, database_url, queue, child), daemon=True
    )
    responder.start()
    target = Target(run.services.broker_url, namespace, bare_exchange=exchange)
    load = Load(
        target, str(run.services.workdir), LOAD_PROCESSES * threads, LOAD_PROCESSES, threads
    )
    try:
        load.run(Mix(interval=0.0), 1.0)
        report, _cpu = load.run(Mix(interval=0.0), seconds)
    finally:
        load.close()
        stop.send(None)
        responder.join(30)
    return report.syncs / seconds, lock_loop_rate(database_url, LOCK_LOOP_THREADS, seconds)


def lock_loop_rate(database_url: str, threads: int, seconds: float) -> float:
    """``SELECT … FOR UPDATE`` + ``INSERT`` + ``COMMIT`` transactions per second."""
    engine = sa.create_engine(database_url, pool_size=threads + 2)
    plain_metadata.create_all(engine)
    with engine.begin() as connection:
        if connection.execute(sa.select(counter.c.id)).first() is None:
            connection.execute(counter.insert().values(id=1, value=0))
    lock = sa.select(counter.c.value).where(counter.c.id == 1).with_for_update()
    done = [0] * threads
    deadline = time.monotonic() + seconds

    def loop(index: int) -> None:
        with engine.connect() as connection:
            while time.monotonic() < deadline:
                with connection.begin():
                    connection.execute(lock)
                    connection.execute(plain_rows.insert().values(payload=b"x" * 64))
                done[index] += 1

    workers = [threading.Thread(target=loop, args=(i,)) for i in range(threads)]
    started = time.perf_counter()
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    elapsed = time.perf_counter() - started
    engine.dispose()
    return sum(done) / elapsed


@scenario("fleet")
def fleet(run: Run) -> list[Measurement]:
    """A fleet of nodes syncing from several load processes against one PG deployment."""
    nodes = run.nodes or run.pick(40, 200)
    threads = run.pick(5, 10)
    seconds = float(run.pick(4, 15))
    windows = _fleet_windows(run, nodes, threads, seconds)
    bare_calls, lock_loop = _bare_rate(run, threads, seconds)
    mix1, pulls1, pulls2, mix2 = windows
    where = f"{nodes} nodes, {LOAD_PROCESSES} load processes x {threads} threads, PG"
    return [
        Measurement(
            f"fleet: accepted pushes/s, mix (1 sync in 10 pushes), 1 worker, {where}; "
            "vs bare FOR UPDATE+insert tx/s",
            mix1.pushes / seconds,
            lock_loop,
            "/s",
            at_least(0.5),
            note=mix1.describe(),
        ),
        Measurement(
            f"fleet: pulls/s with nothing new, 1 worker, {where}; "
            "vs bare pika request/reply (commits a row) calls/s, same load",
            pulls1.rate("pull"),
            bare_calls,
            "/s",
            at_least(0.5),
            note=pulls1.describe(),
        ),
        Measurement(
            f"fleet: pulls/s with nothing new, --processes 2 vs 1, {where}",
            pulls2.rate("pull"),
            pulls1.rate("pull"),
            "/s",
            at_least(1.6),
            note=f"{pulls2.describe()} || {mix2.describe()}",
        ),
    ]
