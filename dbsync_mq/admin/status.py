"""``dbsync-mq status``: the version head, the queues, the workers, the nodes, the tokens.

Queue depths, consumers and rates come from RabbitMQ's management API; when it
does not answer, the depths and consumer counts come from AMQP (a passive
declare of each queue), without rates or the workers' connections, and a note
says so. The database part is reported even when the broker is down.
"""

from __future__ import annotations

import datetime as dt
import re
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any, Final, Literal

import sqlalchemy as sa

from dbsync_mq.admin.nodes import NodeList, select_nodes
from dbsync_mq.errors import SyncError
from dbsync_mq.storage import schema
from dbsync_mq.storage.engine import opened_engine, read_transaction
from dbsync_mq.storage.schema import utcnow
from dbsync_mq.transport import rabbitmq
from dbsync_mq.transport.management import ManagementApi
from dbsync_mq.transport.topology import Topology

NODES_SHOWN: Final = 20
"""Nodes listed by ``status`` unless told otherwise (the most lagging first)."""

Source = Literal["management", "amqp", "none"]


@dataclass(frozen=True)
class QueueState:
    """One request queue or the dead-letter queue; ``None`` where the source cannot tell."""

    name: str
    ready: int
    consumers: int
    unacknowledged: int | None = None
    publish_rate: float | None = None
    deliver_rate: float | None = None


@dataclass(frozen=True)
class WorkerSeen:
    """A connection consuming the request queues: a running worker process."""

    connection: str
    user: str
    peer: str
    queues: int


@dataclass(frozen=True)
class Enrollment:
    """A token issued, unused and unexpired (the token itself is never stored)."""

    created_at: dt.datetime
    expires_at: dt.datetime
    user_id: str | None
    replaces_node: int | None


@dataclass(frozen=True)
class Status:
    """Everything ``dbsync-mq status`` shows; ``to_json()`` for ``--json``."""

    namespace: str
    version: int
    nodes: NodeList
    nodes_enabled: int
    enrollments: list[Enrollment]
    queues: list[QueueState] = field(default_factory=list)
    workers: list[WorkerSeen] | None = None
    source: Source = "none"
    notes: tuple[str, ...] = ()

    @property
    def dead_letters(self) -> int:
        dead = Topology(self.namespace).dead_letter_queue
        return sum(
            queue.ready + (queue.unacknowledged or 0) for queue in self.queues if queue.name == dead
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "version": self.version,
            "queues": {queue.name: _without_name(asdict(queue)) for queue in self.queues},
            "queue_source": self.source,
            "dead_letters": self.dead_letters if self.source != "none" else None,
            "workers": None if self.workers is None else [asdict(w) for w in self.workers],
            "nodes": {
                "registered": self.nodes.total,
                "enabled": self.nodes_enabled,
                "listed": [node.to_json() for node in self.nodes.nodes],
            },
            "enrollments": [
                {
                    "created_at": token.created_at.isoformat() + "Z",
                    "expires_at": token.expires_at.isoformat() + "Z",
                    "user_id": token.user_id,
                    "replaces_node": token.replaces_node,
                }
                for token in self.enrollments
            ],
            "notes": list(self.notes),
        }


def _without_name(values: dict[str, Any]) -> dict[str, Any]:
    return {name: value for name, value in values.items() if name != "name"}


def status(
    database_url: str,
    broker_url: str,
    namespace: str = "dbsync",
    *,
    management_url: str | None = None,
    nodes_shown: int | None = NODES_SHOWN,
) -> Status:
    """What an operator checks first; ``nodes_shown=None`` lists every node."""
    with opened_engine(database_url) as engine, read_transaction(engine) as connection:
        nodes = select_nodes(connection, limit=nodes_shown)
        enabled = connection.execute(
            sa.select(sa.func.count()).where(schema.nodes.c.enabled == sa.true())
        ).scalar()
        enrollments = _pending_enrollments(connection)
    topology = Topology(namespace)
    notes: list[str] = []
    try:
        queues, workers = _from_management(ManagementApi(broker_url, management_url), topology)
        source: Source = "management"
    except SyncError as exc:
        notes.append(f"{exc}: no rates or workers' connections; depths from AMQP")
        workers = None
        try:
            queues = [
                QueueState(name, ready, consumers)
                for name, (ready, consumers) in rabbitmq.queue_states(broker_url, topology).items()
            ]
            source = "amqp"
        except SyncError as broker:
            notes.append(f"broker: {broker}")
            queues, source = [], "none"
    return Status(
        namespace,
        nodes.head,
        nodes,
        int(enabled or 0),
        enrollments,
        queues,
        workers,
        source,
        tuple(notes),
    )


def _pending_enrollments(connection: sa.Connection) -> list[Enrollment]:
    e = schema.enrollments.c
    rows = connection.execute(
        sa.select(e.created_at, e.expires_at, e.user_id, e.replaces_node)
        .where(e.used_at.is_(None), e.expires_at > utcnow())
        .order_by(e.expires_at)
    )
    return [Enrollment(*row) for row in rows]


def _from_management(
    api: ManagementApi, topology: Topology
) -> tuple[list[QueueState], list[WorkerSeen]]:
    names = [*topology.request_queues, topology.dead_letter_queue]
    pattern = "|".join(re.escape(name) for name in names)
    found = {stats.name: stats for stats in api.queues(pattern)}
    queues = [
        QueueState(
            name,
            stats.ready,
            stats.consumers,
            stats.unacknowledged,
            stats.publish_rate,
            stats.deliver_rate,
        )
        for name in names
        if (stats := found.get(name)) is not None
    ]
    consumed: dict[tuple[str, str, str], int] = defaultdict(int)
    for queue in topology.request_queues:
        for consumer in api.consumers(queue):
            consumed[consumer.connection, consumer.user, consumer.peer] += 1
    workers = [
        WorkerSeen(api.connection_label(connection) or connection, user, peer, count)
        for (connection, user, peer), count in sorted(consumed.items())
    ]
    return queues, workers
