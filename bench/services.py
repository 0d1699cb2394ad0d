"""What the benchmarks run against: RabbitMQ and PostgreSQL, shared with others.

Everything a run creates is its own and goes away at the end: a namespace per
scenario (so no queue is shared with anyone), a ``dbsync_bench_<random>``
PostgreSQL database per server, SQLite files in a temporary directory.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import sqlalchemy as sa

from dbsync_mq.transport.rabbitmq import connect, delete_topology
from dbsync_mq.transport.topology import Topology

BROKER_URL = os.environ.get("DBSYNC_BENCH_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
POSTGRES_URL = os.environ.get(
    "DBSYNC_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


class Services:
    """The broker and database server, and everything this run created on them."""

    def __init__(self, broker_url: str = BROKER_URL, postgres_url: str = POSTGRES_URL) -> None:
        self.broker_url = broker_url
        self.postgres_url = postgres_url
        self.workdir = Path(tempfile.mkdtemp(prefix="dbsync-bench-"))
        self._databases: list[str] = []
        self._namespaces: dict[str, list[int]] = {}
        self._extra: list[tuple[str, str]] = []
        self._stops: list[Callable[[], None]] = []

    # --- creating ----------------------------------------------------------------

    def namespace(self) -> str:
        """A fresh namespace, deleted (with its nodes' queues) at the end."""
        name = f"bench-{uuid.uuid4().hex[:10]}"
        self._namespaces[name] = []
        return name

    def node_registered(self, namespace: str, node_id: int) -> None:
        """Remember a node, so that its reply queue is deleted at the end."""
        self._namespaces[namespace].append(node_id)

    def on_close(self, stop: Callable[[], None]) -> None:
        """Call ``stop`` (idempotent) at the end, before anything is deleted: a safety net
        for workers a crashed scenario could not stop itself."""
        self._stops.append(stop)

    def declared(self, kind: str, name: str) -> None:
        """Remember a ``"queue"`` or ``"exchange"`` outside the library's topology."""
        self._extra.append((kind, name))

    def postgres_database(self) -> str:
        """The URL of a new, empty PostgreSQL database, dropped at the end."""
        name = f"dbsync_bench_{uuid.uuid4().hex[:12]}"
        with self._admin() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        self._databases.append(name)
        url = sa.make_url(self.postgres_url).set(database=name)
        return url.render_as_string(hide_password=False)

    def sqlite_database(self, name: str) -> str:
        """The URL of a new SQLite file in the run's directory."""
        path = self.workdir / f"{name}-{uuid.uuid4().hex[:6]}.db"
        return f"sqlite:///{path}"

    def path(self, name: str) -> Path:
        return self.workdir / name

    # --- cleaning up -------------------------------------------------------------

    def close(self) -> None:
        """Stop what is still running; delete every namespace, database and file created."""
        while self._stops:
            with contextlib.suppress(Exception):
                self._stops.pop()()
        for namespace, node_ids in self._namespaces.items():
            with contextlib.suppress(Exception):
                delete_topology(self.broker_url, Topology(namespace), tuple(node_ids))
        self._delete_extra()
        for name in self._databases:
            with contextlib.suppress(Exception), self._admin() as connection:
                connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        self._databases.clear()
        self._namespaces.clear()
        shutil.rmtree(self.workdir, ignore_errors=True)

    def _delete_extra(self) -> None:
        if not self._extra:
            return
        with contextlib.suppress(Exception):
            connection = connect(self.broker_url)
            try:
                channel = connection.channel()
                for kind, name in self._extra:
                    if kind == "queue":
                        channel.queue_delete(name)
                    else:
                        channel.exchange_delete(name)
            finally:
                connection.close()
        self._extra.clear()

    @contextlib.contextmanager
    def _admin(self) -> Iterator[sa.Connection]:
        engine = sa.create_engine(self.postgres_url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                yield connection
        finally:
            engine.dispose()

    def __enter__(self) -> Services:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()
