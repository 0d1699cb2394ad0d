"""One plain function per CLI command: the CLI is a thin shell over these.

Each takes plain values and returns plain data (or an exit code), so the
Python API and the command line cannot drift apart.
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from dbsync_mq.client import Progress
from dbsync_mq.config import WorkerConfig
from dbsync_mq.results import RepairResult
from dbsync_mq.server import initialize, issue_enrollment
from dbsync_mq.storage import schema
from dbsync_mq.storage.engine import read_transaction, write_transaction
from dbsync_mq.transport import rabbitmq
from dbsync_mq.transport.topology import Topology

DEFAULT_TOKEN_TTL = dt.timedelta(hours=24)
"""How long an enrollment token stays valid unless told otherwise."""


def init(
    database_url: str,
    models: tuple[str, ...],
    broker_url: str | None = None,
    namespace: str = "dbsync",
) -> None:
    """Create the server's tables and key; with ``broker_url``, declare the topology too."""
    from worker.process import create_server_engine, load_models

    engine = create_server_engine(database_url)
    try:
        initialize(engine, load_models(models))
    finally:
        engine.dispose()
    if broker_url:
        connection = rabbitmq.connect(broker_url)
        try:
            rabbitmq.declare_topology(connection.channel(), Topology(namespace))
        finally:
            connection.close()


def enroll(
    database_url: str,
    *,
    ttl: dt.timedelta = DEFAULT_TOKEN_TTL,
    user_id: str | None = None,
    replaces_node: int | None = None,
) -> str:
    """Issue a one-time enrollment token and return it (only its hash is stored)."""
    token = secrets.token_urlsafe(32)
    engine = sa.create_engine(database_url)
    try:
        issue_enrollment(engine, token, ttl, user_id=user_id, replaces_node=replaces_node)
    finally:
        engine.dispose()
    return token


def set_node_enabled(database_url: str, node_id: int, enabled: bool) -> bool:
    """Enable or disable a node; return whether it exists."""
    engine = sa.create_engine(database_url)
    try:
        with write_transaction(engine) as connection:
            result = connection.execute(
                schema.nodes.update().where(schema.nodes.c.id == node_id).values(enabled=enabled)
            )
            return bool(result.rowcount)
    finally:
        engine.dispose()


@dataclass(frozen=True)
class Status:
    """The server's version, its nodes, and the depth of every queue."""

    version: int
    nodes: list[dict[str, Any]]
    queues: dict[str, int]
    broker_error: str | None = None


def status(database_url: str, broker_url: str, namespace: str = "dbsync") -> Status:
    """What an operator checks first: version, nodes, queue depths and dead letters."""
    engine = sa.create_engine(database_url)
    try:
        with read_transaction(engine) as connection:
            version = connection.execute(sa.select(schema.head.c.version)).scalar() or 0
            nodes = [
                dict(row)
                for row in connection.execute(
                    sa.select(
                        schema.nodes.c.id,
                        schema.nodes.c.user_id,
                        schema.nodes.c.enabled,
                        schema.nodes.c.registered_at,
                    ).order_by(schema.nodes.c.id)
                ).mappings()
            ]
    finally:
        engine.dispose()
    try:
        queues = rabbitmq.queue_depths(broker_url, Topology(namespace))
    except Exception as exc:  # status still reports the database when the broker is down
        return Status(version, nodes, {}, broker_error=str(exc))
    return Status(version, nodes, queues)


def repair(
    database_url: str,
    models: tuple[str, ...],
    broker_url: str,
    namespace: str = "dbsync",
    *,
    force: bool = False,
    progress: Progress | None = None,
) -> RepairResult:
    """Replace a node's tracked tables with the server's (see ``SyncClient.repair``)."""
    from dbsync_mq.client import SyncClient
    from worker.process import load_models

    model_set = load_models(models)
    engine = sa.create_engine(database_url)
    try:
        client = SyncClient(
            engine,
            broker_url=broker_url,
            namespace=namespace,
            models=[model.cls for model in model_set],
        )
        with client:
            return client.repair(force=force, progress=progress)
    finally:
        engine.dispose()


def worker(config: WorkerConfig) -> int:
    """Run the worker process until signalled; return its exit code."""
    from worker.main import main

    return main(config)
