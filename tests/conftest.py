"""Fixtures: real services, a fresh namespace and server database per test, workers, nodes."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from dbsync_mq import SyncClient, commands
from dbsync_mq.config import ServerSettings, WorkerConfig
from dbsync_mq.transport.rabbitmq import delete_topology
from dbsync_mq.transport.topology import Topology
from tests import services
from tests.ledger import CACHE_KEY, Ledger
from tests.models import SYNCED, TRACKED
from tests.probe import ServerProbe
from tests.processes import WorkerProcess
from worker.process import Worker

MODELS = ("tests.models",)

_LEDGER = pytest.StashKey[Ledger]()


def pytest_configure(config: pytest.Config) -> None:
    config.stash[_LEDGER] = Ledger()


def pytest_sessionfinish(session: pytest.Session) -> None:
    ledger = session.config.stash.get(_LEDGER, None)
    worker_output = getattr(session.config, "workeroutput", None)  # a pytest-xdist worker
    if worker_output is not None:
        if ledger is not None and ledger.touched:
            worker_output["dbsync_ledger"] = {"totals": ledger.totals(), "by_test": ledger.by_test}
        return
    cache = getattr(session.config, "cache", None)  # absent with -p no:cacheprovider
    if ledger is not None and ledger.touched and cache is not None:
        cache.set(CACHE_KEY, {**ledger.totals(), "by_test": ledger.by_test})


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: Any, error: object) -> None:
    """Fold a pytest-xdist worker's ledger into the session's."""
    counts = getattr(node, "workeroutput", {}).get("dbsync_ledger")
    if counts is not None:
        node.config.stash[_LEDGER].absorb(counts["totals"], counts["by_test"])


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    ledger = config.stash.get(_LEDGER, None)
    if ledger is not None and ledger.touched:
        counts = ", ".join(f"{name.replace('_', ' ')}: {n}" for name, n in ledger.totals().items())
        terminalreporter.write_line(f"dbsync reliability ledger: {counts}")


@pytest.fixture(scope="session")
def ledger(request: pytest.FixtureRequest) -> Ledger:
    """The session's fault and bad-input counts (see tests/ledger.py)."""
    return request.config.stash[_LEDGER]


@pytest.fixture(scope="session")
def broker_url() -> Iterator[str]:
    with services.rabbitmq() as url:
        yield url


@pytest.fixture(scope="session")
def postgres_admin_url() -> Iterator[str]:
    with services.postgres() as url:
        yield url


@pytest.fixture
def postgres_url(postgres_admin_url: str) -> Iterator[str]:
    with services.fresh_postgres_database(postgres_admin_url) as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def server_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """The server database: every integration test runs on SQLite and on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'server.db'}"
    url: str = request.getfixturevalue("postgres_url")
    return url


@pytest.fixture
def probe(server_url: str) -> ServerProbe:
    """A read-only view of this test's server database."""
    return ServerProbe(server_url)


@pytest.fixture
def node_ids() -> list[int]:
    """Ids of the nodes a test registered, so their reply queues are deleted afterwards."""
    return []


@pytest.fixture
def namespace(broker_url: str, node_ids: list[int]) -> Iterator[str]:
    """A namespace of its own: no test sees another's messages."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    yield name
    try:
        # Every queue of the namespace the management API lists: node reply queues of
        # nodes registered out of the test's sight (subprocesses, races) included.
        commands.teardown(broker_url, commands.plan_teardown(broker_url, name))
    finally:
        delete_topology(broker_url, Topology(name), tuple(node_ids))


@pytest.fixture
def server_settings() -> ServerSettings:
    return ServerSettings()


@pytest.fixture
def worker_config(
    server_url: str, broker_url: str, namespace: str, server_settings: ServerSettings
) -> WorkerConfig:
    commands.init(server_url, MODELS, broker_url, namespace)
    return WorkerConfig(
        database_url=server_url,
        models=MODELS,
        broker_url=broker_url,
        namespace=namespace,
        server=server_settings,
    )


class ThreadedWorker:
    """A real worker, consuming from the real broker, in a thread of the test process."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.worker: Worker | None = None
        self.thread: threading.Thread | None = None

    def start(self) -> Worker:
        self.worker = Worker(self.config)
        self.thread = threading.Thread(target=self.worker.run, name="test-worker", daemon=True)
        self.thread.start()
        if not self.worker.connected.wait(timeout=15):
            raise TimeoutError("the worker did not connect to the broker")
        return self.worker

    def stop(self) -> None:
        if self.worker is not None and self.thread is not None:
            self.worker.stop()
            self.thread.join(timeout=30)
            assert not self.thread.is_alive(), "the worker did not stop"
            self.worker.engine.dispose()
            self.worker = None


@pytest.fixture
def worker_runner(worker_config: WorkerConfig) -> Iterator[ThreadedWorker]:
    runner = ThreadedWorker(worker_config)
    yield runner
    runner.stop()


@pytest.fixture
def worker(worker_runner: ThreadedWorker) -> Worker:
    """A running worker for this test's namespace and server database."""
    return worker_runner.start()


@pytest.fixture
def worker_process(worker_config: WorkerConfig, tmp_path: Path) -> Iterator[WorkerProcess]:
    """A worker run as ``dbsync-mq worker`` in a subprocess (not started yet)."""
    process = WorkerProcess(worker_config, tmp_path / "worker.log")
    yield process
    process.terminate()


@pytest.fixture
def make_node(
    tmp_path: Path,
    broker_url: str,
    namespace: str,
    server_url: str,
    worker_config: WorkerConfig,
    node_ids: list[int],
) -> Iterator[Callable[..., SyncClient]]:
    """Build registered nodes, each on its own SQLite file: ``make_node("a")``."""
    clients: list[SyncClient] = []

    def make(name: str = "node", *, register: bool = True, **options: Any) -> SyncClient:
        engine = sa.create_engine(f"sqlite:///{tmp_path / f'{name}.db'}")
        options.setdefault("timeout", 10)
        options.setdefault("models", TRACKED)
        options.setdefault("broker_url", broker_url)
        client = SyncClient(engine, namespace=namespace, **options)
        client.install()
        if register:
            node_ids.append(client.register(commands.enroll(server_url)))
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.close()
        client.engine.dispose()


def table_rows(engine: sa.Engine, models: tuple[type, ...] = SYNCED) -> dict[str, list[Any]]:
    """Every row of the synchronized tables, sorted: equal on every node after a sync."""
    contents = {}
    with engine.connect() as connection:
        for model in models:
            table: sa.Table = model.__table__  # type: ignore[attr-defined]
            rows = connection.execute(sa.select(table)).all()
            contents[table.name] = sorted((tuple(row) for row in rows), key=repr)
    return contents


def write(engine: sa.Engine, *objects: Any) -> None:
    """Add ``objects`` in one committed session."""
    with Session(engine) as session:
        session.add_all(objects)
        session.commit()
