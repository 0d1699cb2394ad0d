"""One plain function per CLI command: the CLI is a thin shell over these.

Each takes plain values and returns plain data (or an exit code), so the
Python API and the command line cannot drift apart. The operator's commands
(status, nodes, dead letters) live in ``dbsync_mq.admin`` and are named here.
"""

from __future__ import annotations

import datetime as dt
import re
import secrets
from dataclasses import dataclass

import sqlalchemy as sa

from dbsync_mq.admin.dead_letters import (
    list_dead_letters,
    purge_dead_letters,
    requeue_dead_letters,
    show_dead_letter,
)
from dbsync_mq.admin.nodes import forget_node, list_nodes, set_node_enabled, show_node
from dbsync_mq.admin.status import status
from dbsync_mq.client import Progress
from dbsync_mq.config import WorkerConfig
from dbsync_mq.errors import BrokerUnavailable, ConfigurationError
from dbsync_mq.results import RepairResult
from dbsync_mq.server import initialize, issue_enrollment
from dbsync_mq.server.trim import TrimResult
from dbsync_mq.storage import schema
from dbsync_mq.storage.engine import create_engine, read_transaction
from dbsync_mq.transport import rabbitmq
from dbsync_mq.transport.management import ManagementApi
from dbsync_mq.transport.topology import Topology

__all__ = [
    "DEFAULT_TOKEN_TTL",
    "Teardown",
    "enroll",
    "forget_node",
    "init",
    "list_dead_letters",
    "list_nodes",
    "plan_teardown",
    "purge_dead_letters",
    "repair",
    "requeue_dead_letters",
    "set_node_enabled",
    "show_dead_letter",
    "show_node",
    "status",
    "teardown",
    "trim",
    "worker",
]

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
    engine = create_engine(database_url)
    try:
        issue_enrollment(engine, token, ttl, user_id=user_id, replaces_node=replaces_node)
    finally:
        engine.dispose()
    return token


@dataclass(frozen=True)
class Teardown:
    """What ``teardown`` deletes from the broker, and how the node queues were found."""

    namespace: str
    queues: tuple[str, ...]
    exchanges: tuple[str, ...]
    node_ids: tuple[int, ...]
    notes: tuple[str, ...] = ()
    checked: bool = False
    """Whether the management API confirmed that each name exists."""


def plan_teardown(
    broker_url: str,
    namespace: str,
    *,
    database_url: str | None = None,
    management_url: str | None = None,
) -> Teardown:
    """The queues and exchanges of ``namespace`` on the broker, node reply queues included.

    Node queues (``<namespace>.node.<id>``) are listed through RabbitMQ's
    management API when it answers, and taken from the server database's
    registered nodes with ``database_url``; both when both are given. When the
    API answers, only what exists is listed.
    """
    topology = Topology(namespace)
    notes: list[str] = []
    node_ids = set(_registered_nodes(database_url)) if database_url is not None else set()
    existing: set[str] | None = None
    try:
        existing = _namespace_names(ManagementApi(broker_url, management_url), topology)
        node_ids.update(_node_ids(topology, existing))
    except (BrokerUnavailable, ConfigurationError) as exc:
        notes.append(f"{exc}: the broker's node queues are not listed")
    if database_url is None and existing is None:
        notes.append(
            "node reply queues are left (pass --db, or enable the management API); "
            "each expires after 30 days unused"
        )
    queues = [*topology.request_queues, topology.dead_letter_queue]
    queues += [topology.node_queue(node) for node in sorted(node_ids)]
    exchanges = [
        topology.requests_exchange,
        topology.events_exchange,
        topology.dead_letter_exchange,
    ]
    if existing is not None:
        queues = [name for name in queues if name in existing]
        exchanges = [name for name in exchanges if name in existing]
    return Teardown(
        namespace,
        tuple(queues),
        tuple(exchanges),
        tuple(sorted(node_ids)),
        tuple(notes),
        checked=existing is not None,
    )


def _namespace_names(api: ManagementApi, topology: Topology) -> set[str]:
    prefix = re.escape(topology.namespace)
    queues = api.names("queues", rf"{prefix}\..+")
    exchanges = api.names("exchanges", rf"{prefix}(\..+)?")
    return {*queues, *exchanges}


def _node_ids(topology: Topology, names: set[str]) -> set[int]:
    prefix = topology.node_queue(0).removesuffix("0")  # "<namespace>.node."
    pattern = re.compile(re.escape(prefix) + "([0-9]+)")
    return {int(found[1]) for name in names if (found := pattern.fullmatch(name))}


def _registered_nodes(database_url: str) -> list[int]:
    engine = create_engine(database_url)
    try:
        with read_transaction(engine) as connection:
            return list(connection.execute(sa.select(schema.nodes.c.id)).scalars())
    finally:
        engine.dispose()


def teardown(broker_url: str, plan: Teardown) -> None:
    """Delete what ``plan`` names from the broker (what is already gone is no error)."""
    rabbitmq.delete_topology(broker_url, Topology(plan.namespace), plan.node_ids)


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
    engine = create_engine(database_url)
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


def trim(database_url: str, *, keep_days: float | None = None) -> TrimResult:
    """Delete the versions every enabled node has merged, and with ``keep_days`` those
    older than that; prune the stored replies no request can need (see ``server.trim``)."""
    from dbsync_mq.server.trim import trim as trim_versions
    from worker.process import create_server_engine

    engine = create_server_engine(database_url)
    try:
        return trim_versions(engine, keep_days=keep_days)
    finally:
        engine.dispose()


def worker(config: WorkerConfig, *, verbose: bool = False, log_format: str = "text") -> int:
    """Run the worker process until signalled (``config.processes`` of them, under a
    supervisor, when more than one); return its exit code. ``verbose`` and
    ``log_format`` configure the logs of the processes a supervisor starts."""
    if config.processes > 1:
        from worker.supervisor import supervise

        return supervise(config, verbose=verbose, log_format=log_format)

    from worker.main import main

    return main(config)
