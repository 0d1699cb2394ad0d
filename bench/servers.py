"""Servers for the benchmarks: a fresh database and namespace, a worker, registered nodes.

A worker runs either in a thread of the benchmark process (as the integration
tests run it) or as ``python -m dbsync_mq worker`` in a subprocess, which has a
GIL of its own: that is what the throughput scenario needs, where twenty client
threads share the benchmark's.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import sqlalchemy as sa

from bench.models import MODULE, Item
from bench.services import Services
from dbsync_mq import SyncClient, commands
from dbsync_mq.config import WorkerConfig
from dbsync_mq.errors import BrokerUnavailable, SyncTimeout
from worker.process import Worker

DatabaseKind = Literal["postgresql", "sqlite"]
READY_SECONDS = 30.0
_REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class ServerSetup:
    """An initialized server database and the namespace its worker serves."""

    services: Services
    database_url: str
    namespace: str

    @property
    def config(self) -> WorkerConfig:
        return WorkerConfig(
            database_url=self.database_url,
            models=(MODULE,),
            broker_url=self.services.broker_url,
            namespace=self.namespace,
        )


def new_server(services: Services, kind: DatabaseKind) -> ServerSetup:
    """A fresh server database of ``kind``, initialized, and a namespace with its topology."""
    url = services.postgres_database() if kind == "postgresql" else services.sqlite_database("srv")
    namespace = services.namespace()
    commands.init(url, (MODULE,), services.broker_url, namespace)
    return ServerSetup(services, url, namespace)


class WorkerThread:
    """A real worker in a thread of this process."""

    def __init__(self, setup: ServerSetup) -> None:
        self.worker = Worker(setup.config)
        self._thread = threading.Thread(target=self.worker.run, name="bench-worker", daemon=True)
        self._services = setup.services

    def start(self) -> None:
        self._services.on_close(self.stop)
        self._thread.start()
        if not self.worker.connected.wait(READY_SECONDS):
            raise TimeoutError("the worker did not connect to the broker")

    def stop(self) -> None:
        if not self._thread.is_alive():
            return
        self.worker.stop()
        self._thread.join(timeout=60)
        self.worker.engine.dispose()


class WorkerProcess:
    """``python -m dbsync_mq worker`` in a subprocess, logging to a file."""

    def __init__(self, setup: ServerSetup, options: tuple[str, ...] = ()) -> None:
        self.setup = setup
        self.options = options
        self.log_path = setup.services.path(f"worker-{setup.namespace}-{len(options)}.log")
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        config = self.setup.config
        command = [
            sys.executable,
            "-m",
            "dbsync_mq",
            "worker",
            "--db",
            config.database_url,
            "--models",
            ",".join(config.models),
            "--broker",
            config.broker_url,
            "--namespace",
            config.namespace,
            *self.options,
        ]
        env = {**os.environ, "PYTHONPATH": str(_REPO)}
        self.setup.services.on_close(self.stop)
        with self.log_path.open("wb") as log:
            self._process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + READY_SECONDS
        while self.log().count("consuming ") < self.processes:
            if self._process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the worker did not start:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def processes(self) -> int:
        """Worker processes it runs (``--processes``)."""
        if "--processes" in self.options:
            return int(self.options[self.options.index("--processes") + 1])
        return 1

    def pids(self) -> list[int]:
        """The processes that serve: the supervisor's children, or the process itself."""
        children = [int(pid) for pid in re.findall(r"started: pid (\d+)", self.log())]
        if children:
            return children
        return [] if self._process is None else [self._process.pid]

    def cpu_seconds(self) -> float:
        """User and system CPU seconds its serving processes used so far (Linux)."""
        ticks = os.sysconf("SC_CLK_TCK")
        total = 0.0
        for pid in self.pids():
            try:
                fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            except OSError:
                continue
            total += (int(fields[11]) + int(fields[12])) / ticks  # utime, stime
        return total

    def stop(self) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        self._process.send_signal(signal.SIGTERM)
        try:
            self._process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait(timeout=10)


@contextmanager
def running_worker(
    setup: ServerSetup, *, process: bool = False
) -> Iterator[WorkerThread | WorkerProcess]:
    """A worker serving ``setup`` for the duration of the block."""
    runner: WorkerThread | WorkerProcess = WorkerProcess(setup) if process else WorkerThread(setup)
    runner.start()
    try:
        yield runner
    finally:
        runner.stop()


def new_client(setup: ServerSetup, name: str, *, timeout: float = 30.0) -> SyncClient:
    """A node on its own SQLite file, installed and registered (a worker must be running)."""
    engine = sa.create_engine(setup.services.sqlite_database(name))
    client = SyncClient(
        engine,
        broker_url=setup.services.broker_url,
        namespace=setup.namespace,
        models=[Item],
        timeout=timeout,
    )
    client.install()
    node_id = client.register(commands.enroll(setup.database_url))
    setup.services.node_registered(setup.namespace, node_id)
    wait_until_served(client)
    return client


def wait_until_served(client: SyncClient) -> None:
    """Ping until a worker answers: the path client -> broker -> worker -> client works."""
    deadline = time.monotonic() + READY_SECONDS
    while True:
        try:
            client.ping()
            return
        except (BrokerUnavailable, SyncTimeout):
            if time.monotonic() > deadline:
                raise


_LOG_LINE = re.compile(
    r"(?P<kind>\w+) \S+ node=\S+ -> (?P<disposition>[\w-]+)"
    r"(?: version=\d+)?(?: \((?P<code>[\w-]+):.*\))? in (?P<ms>[\d.]+) ms"
)


def worker_stats(log: str) -> dict[str, tuple[int, float]]:
    """From a worker log: per kind (and refusal code), request count and total handling ms."""
    stats: dict[str, tuple[int, float]] = {}
    for match in _LOG_LINE.finditer(log):
        key = match["kind"] + (f"/{match['code']}" if match["code"] else "")
        count, total = stats.get(key, (0, 0.0))
        stats[key] = (count + 1, total + float(match["ms"]))
    return stats
