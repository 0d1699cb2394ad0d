"""Load processes: simulated nodes syncing against a running deployment.

A load is spread over several processes (``multiprocessing``, spawned), each with
a few threads; every node is its own SQLite file and ``SyncClient``. A Python
client holds its GIL while it signs, packs and merges: twenty nodes in threads of
one process would measure the load generator, not the server. Each process
reports its own CPU time, so a reader sees which side is the bottleneck.

Each node syncs on a cadence (``Mix.interval`` seconds apart, jittered; 0: as
fast as its thread can): most syncs bring nothing of its own, one in ten
(``Mix.push_share``) first writes 1-10 rows (``Mix.rows``), and some of those
rows (``Mix.shared_share``) update rows every node holds. The same processes
also drive the bare pika request/reply baseline, so that both sides of a ratio
are loaded alike.
"""

from __future__ import annotations

import contextlib
import heapq
import multiprocessing
import random
import resource
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any, Final

import pika
import sqlalchemy as sa
from sqlalchemy.orm import Session

from bench.models import Item, item_row
from dbsync_mq import SyncClient, SyncError, commands

KEY_SPACE: Final = 10_000_000
"""Node ``n`` inserts keys ``(n + 1) * KEY_SPACE + 1 ...``: no two nodes collide."""
SHARED_KEYS: Final = 50
"""Rows 1..SHARED_KEYS exist before the load starts and every node may update them."""
READY_SECONDS: Final = 600.0
"""Longest a load process may take to set up its nodes."""


@dataclass(frozen=True)
class Mix:
    """What each node does per sync."""

    interval: float = 1.0
    """Seconds between two syncs of a node (jittered ±50 %); 0: back to back."""
    push_share: float = 0.1
    """Share of syncs that first write rows."""
    rows: tuple[int, int] = (1, 10)
    """Rows written by a sync that writes, at least and at most."""
    shared_share: float = 0.2
    """Share of written rows that update a shared row instead of inserting one."""


@dataclass(frozen=True)
class Target:
    """What a load process talks to."""

    broker_url: str
    namespace: str
    database_url: str = ""
    """The server database, to enroll nodes (``""`` for the bare baseline)."""
    bare_exchange: str = ""
    """The bare baseline's exchange (``""`` for nodes)."""


@dataclass
class Report:
    """What one load process measured over the window."""

    latencies: list[float] = field(default_factory=list)
    syncs: int = 0
    pushing_syncs: int = 0
    errors: int = 0
    cpu_seconds: float = 0.0
    node_ids: list[int] = field(default_factory=list)


# --- in the load process -------------------------------------------------------------


def _new_node(target: Target, workdir: str, name: str) -> SyncClient:
    engine = sa.create_engine(f"sqlite:///{workdir}/{name}-{uuid.uuid4().hex[:6]}.db")
    client = SyncClient(
        engine,
        broker_url=target.broker_url,
        namespace=target.namespace,
        models=[Item],
        timeout=120,
    )
    client.install()
    client.register(commands.enroll(target.database_url))
    return client


class _Node:
    """A simulated node: its client, its next key, its random choices."""

    def __init__(self, client: SyncClient, index: int, mix: Mix) -> None:
        self.client, self.mix = client, mix
        self.next_key = (index + 1) * KEY_SPACE + 1
        self.random = random.Random(index)

    def sync(self) -> bool:
        """One sync as the mix says; whether it wrote rows first."""
        writes = self.random.random() < self.mix.push_share
        if writes:
            self._write(self.random.randint(*self.mix.rows))
        self.client.sync()
        return writes

    def _write(self, count: int) -> None:
        with Session(self.client.engine) as session:
            for _ in range(count):
                if self.random.random() < self.mix.shared_share:
                    row = session.get(Item, self.random.randint(1, SHARED_KEYS))
                    if row is not None:
                        row.quantity += 1
                        continue
                session.add(Item(**item_row(self.next_key)))
                self.next_key += 1
            session.commit()


def _drive(
    calls: list[Callable[[], bool]], interval: float, deadline: float, report: Report
) -> None:
    """Call each of ``calls`` on its cadence until ``deadline``; note latencies."""
    rng = random.Random(len(calls))
    now = time.monotonic()
    due = [(now + rng.uniform(0, interval), index) for index in range(len(calls))]
    heapq.heapify(due)
    pause = threading.Event()
    while due:
        when, index = heapq.heappop(due)
        if when >= deadline:
            break
        wait = when - time.monotonic()
        if wait > 0:
            pause.wait(wait)
        started = time.perf_counter()
        try:
            wrote = calls[index]()
        except SyncError:
            report.errors += 1
            wrote = False
        report.latencies.append(time.perf_counter() - started)
        report.syncs += 1
        report.pushing_syncs += wrote
        heapq.heappush(due, (max(when, time.monotonic()) + rng.uniform(0.5, 1.5) * interval, index))


def _run_threads(
    calls: list[Callable[[], bool]], threads: int, interval: float, seconds: float
) -> Report:
    reports = [Report() for _ in range(threads)]
    deadline = time.monotonic() + seconds
    workers = [
        threading.Thread(
            target=_drive, args=(calls[index::threads], interval, deadline, reports[index])
        )
        for index in range(threads)
    ]
    before = resource.getrusage(resource.RUSAGE_SELF)
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    after = resource.getrusage(resource.RUSAGE_SELF)
    total = Report(
        cpu_seconds=(after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    )
    for report in reports:
        total.latencies += report.latencies
        total.syncs += report.syncs
        total.pushing_syncs += report.pushing_syncs
        total.errors += report.errors
    return total


def load_process(
    target: Target, workdir: str, first: int, count: int, threads: int, pipe: Connection
) -> None:
    """A load process: set up ``count`` nodes (or bare requesters), say ready, then
    run each window the parent asks for (``(mix, seconds)``) until it sends ``None``."""
    if target.bare_exchange:
        requesters = [BareCaller(target) for _ in range(count)]
        calls: list[Callable[[], bool]] = [r.call for r in requesters]
        closers: list[Callable[[], None]] = [r.close for r in requesters]
        node_ids: list[int] = []
    else:
        clients = [_new_node(target, workdir, f"n{first + i}") for i in range(count)]
        node_ids = [client.node_id for client in clients]
        closers = [client.close for client in clients]
        nodes = [_Node(client, first + i, Mix()) for i, client in enumerate(clients)]
    pipe.send(Report(node_ids=node_ids))
    try:
        while (order := pipe.recv()) is not None:
            mix, seconds = order
            if not target.bare_exchange:
                for node in nodes:
                    node.mix = mix
                calls = [node.sync for node in nodes]
            pipe.send(_run_threads(calls, threads, mix.interval, seconds))
    finally:
        for close in closers:
            close()


class BareCaller:
    """A bare pika requester: a persistent, confirmed request to a quorum queue, and its
    reply on an exclusive queue of its own (gone with the connection)."""

    def __init__(self, target: Target) -> None:
        self.exchange = target.bare_exchange
        self.connection = pika.BlockingConnection(pika.URLParameters(target.broker_url))
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()
        declared = self.channel.queue_declare("", exclusive=True, auto_delete=True)
        self.reply_queue = declared.method.queue
        self.channel.basic_consume(self.reply_queue, self._on_reply, auto_ack=True)
        self._waiting: str | None = None

    def _on_reply(self, _channel: Any, _method: Any, properties: Any, _body: bytes) -> None:
        if properties.correlation_id == self._waiting:
            self._waiting = None

    def call(self) -> bool:
        correlation = uuid.uuid4().hex
        self._waiting = correlation
        self.channel.basic_publish(
            self.exchange,
            "request",
            b"q" * 200,
            pika.BasicProperties(
                delivery_mode=pika.DeliveryMode.Persistent,
                correlation_id=correlation,
                message_id=correlation,
                reply_to=self.reply_queue,
            ),
            mandatory=True,
        )
        while self._waiting is not None:
            self.connection.process_data_events(time_limit=0.05)
        return False

    def close(self) -> None:
        self.connection.close()


# --- in the benchmark process ----------------------------------------------------------


class Load:
    """``processes`` load processes, ``threads`` threads each, ``count`` nodes in all."""

    def __init__(
        self, target: Target, workdir: str, count: int, processes: int, threads: int
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipes: list[Connection] = []
        self._processes = []
        share, extra = divmod(count, processes)
        first = 0
        for index in range(processes):
            mine = share + (index < extra)
            parent, child = context.Pipe()
            process = context.Process(
                target=load_process,
                args=(target, workdir, first, mine, max(1, min(threads, mine)), child),
                daemon=True,
            )
            process.start()
            child.close()
            self._pipes.append(parent)
            self._processes.append(process)
            first += mine
        self.node_ids: list[int] = []
        for pipe in self._pipes:
            self.node_ids += self._receive(pipe, READY_SECONDS).node_ids

    def _receive(self, pipe: Connection, seconds: float) -> Report:
        if not pipe.poll(seconds):
            raise TimeoutError("a load process did not answer")
        report: Report = pipe.recv()
        return report

    def run(self, mix: Mix, seconds: float) -> tuple[Report, list[float]]:
        """Run a window; the reports added up, and each process's CPU seconds."""
        for pipe in self._pipes:
            pipe.send((mix, seconds))
        total, cpu = Report(), []
        for pipe in self._pipes:
            report = self._receive(pipe, seconds + 300)
            total.latencies += report.latencies
            total.syncs += report.syncs
            total.pushing_syncs += report.pushing_syncs
            total.errors += report.errors
            cpu.append(report.cpu_seconds)
        return total, cpu

    def close(self) -> None:
        for pipe in self._pipes:
            with contextlib.suppress(BrokenPipeError, OSError):
                pipe.send(None)
        for process in self._processes:
            process.join(60)
            if process.is_alive():
                process.kill()
                process.join(10)
        for pipe in self._pipes:
            pipe.close()


def percentile(values: list[float], share: float) -> float:
    """The value below which ``share`` of ``values`` lie (nearest rank)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]
