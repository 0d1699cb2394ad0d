"""Registered nodes as an operator sees them: list, show, enable, disable, forget.

A node's lag is the number of versions between the server's head and the last
version the node is known to have merged (recorded by the workers every few
seconds from its pushes and pulls; see ``dbsync_mq.server.activity``). A node
that never pushed or pulled counts as having merged nothing.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import asdict, dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dbsync_mq.errors import ConfigurationError, SyncError
from dbsync_mq.server.state import read_head
from dbsync_mq.storage import schema
from dbsync_mq.storage.engine import opened_engine, read_transaction, write_transaction
from dbsync_mq.storage.schema import utcnow
from dbsync_mq.transport import rabbitmq
from dbsync_mq.transport.topology import Topology


@dataclass(frozen=True)
class NodeState:
    """One registered node: who, since when, last seen, how far behind."""

    node_id: int
    user_id: str | None
    enabled: bool
    registered_at: dt.datetime
    last_seen_at: dt.datetime | None
    merged_version: int | None
    lag: int
    forgotten_at: dt.datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return _jsonable(asdict(self))


@dataclass(frozen=True)
class NodeDetail:
    """``NodeState`` and what the server database holds of the node's work."""

    state: NodeState
    head: int
    versions_pushed: int
    last_push_version: int | None
    last_push_at: dt.datetime | None
    key_fingerprint: str
    reply_queue: str

    def to_json(self) -> dict[str, Any]:
        detail = {name: value for name, value in asdict(self).items() if name != "state"}
        return {**self.state.to_json(), **_jsonable(detail)}


@dataclass(frozen=True)
class NodeList:
    """Nodes matching a filter, and the head their lag is measured from."""

    head: int
    nodes: list[NodeState]
    total: int
    """How many nodes matched before ``limit``."""


def _jsonable(values: dict[str, Any]) -> dict[str, Any]:
    return {
        name: value.isoformat() + "Z" if isinstance(value, dt.datetime) else value
        for name, value in values.items()
    }


def _lag(head: int) -> sa.ColumnElement[int]:
    return sa.literal(head, sa.BigInteger) - sa.func.coalesce(schema.nodes.c.merged_version, 0)


def _state_query(head: int) -> sa.Select[Any]:
    n = schema.nodes.c
    return sa.select(
        n.id,
        n.user_id,
        n.enabled,
        n.registered_at,
        n.last_seen_at,
        n.merged_version,
        _lag(head).label("lag"),
        n.forgotten_at,
    )


def _state(row: Any) -> NodeState:
    return NodeState(
        node_id=row.id,
        user_id=row.user_id,
        enabled=bool(row.enabled),
        registered_at=row.registered_at,
        last_seen_at=row.last_seen_at,
        merged_version=row.merged_version,
        lag=int(row.lag),
        forgotten_at=row.forgotten_at,
    )


def select_nodes(
    connection: Connection,
    *,
    user_id: str | None = None,
    enabled: bool | None = None,
    min_lag: int | None = None,
    limit: int | None = None,
) -> NodeList:
    """Nodes matching every filter given, the most lagging first."""
    head = read_head(connection)
    n = schema.nodes.c
    query = _state_query(head)
    if user_id is not None:
        query = query.where(n.user_id == user_id)
    if enabled is not None:
        query = query.where(n.enabled == enabled)
    if min_lag is not None:
        query = query.where(_lag(head) >= min_lag)
    total = connection.execute(sa.select(sa.func.count()).select_from(query.subquery())).scalar()
    query = query.order_by(sa.desc("lag"), n.id)
    if limit is not None:
        query = query.limit(limit)
    nodes = [_state(row) for row in connection.execute(query)]
    return NodeList(head, nodes, int(total or 0))


def list_nodes(
    database_url: str,
    *,
    user_id: str | None = None,
    enabled: bool | None = None,
    min_lag: int | None = None,
    limit: int | None = None,
) -> NodeList:
    """The registered nodes matching every filter given, the most lagging first."""
    with opened_engine(database_url) as engine, read_transaction(engine) as connection:
        return select_nodes(
            connection, user_id=user_id, enabled=enabled, min_lag=min_lag, limit=limit
        )


def show_node(database_url: str, node_id: int, namespace: str = "dbsync") -> NodeDetail | None:
    """Everything the server database tells of one node; ``None`` if there is no such node."""
    with opened_engine(database_url) as engine, read_transaction(engine) as connection:
        head = read_head(connection)
        row = connection.execute(_state_query(head).where(schema.nodes.c.id == node_id)).first()
        if row is None:
            return None
        key = connection.execute(
            sa.select(schema.nodes.c.public_key).where(schema.nodes.c.id == node_id)
        ).scalar_one()
        v = schema.versions.c
        pushed = connection.execute(
            sa.select(sa.func.count(), sa.func.max(v.id), sa.func.max(v.created_at)).where(
                v.node_id == node_id
            )
        ).one()
    return NodeDetail(
        state=_state(row),
        head=head,
        versions_pushed=int(pushed[0]),
        last_push_version=pushed[1],
        last_push_at=pushed[2],
        key_fingerprint=hashlib.sha256(key).hexdigest()[:16],
        reply_queue=Topology(namespace).node_queue(node_id),
    )


def set_node_enabled(database_url: str, node_id: int, enabled: bool) -> bool:
    """Enable or disable a node; return whether it exists. A forgotten node cannot be
    enabled again (``ConfigurationError``): its device enrolls as a new node."""
    n = schema.nodes.c
    with opened_engine(database_url) as engine, write_transaction(engine) as connection:
        forgotten = connection.execute(sa.select(n.forgotten_at).where(n.id == node_id)).first()
        if forgotten is None:
            return False
        if enabled and forgotten.forgotten_at is not None:
            raise ConfigurationError(
                f"node {node_id} was forgotten: it cannot come back; enroll the device again"
            )
        connection.execute(schema.nodes.update().where(n.id == node_id).values(enabled=enabled))
        return True


@dataclass(frozen=True)
class Forgotten:
    """What ``forget_node`` did."""

    node_id: int
    reply_queue: str
    queue_deleted: bool
    broker_error: str | None = None


def forget_node(database_url: str, broker_url: str, namespace: str, node_id: int) -> Forgotten:
    """Forget a node that will never come back: disabled for good and marked forgotten in
    the server database (it no longer holds back trimming: only enabled nodes do), then
    its reply queue deleted with what it holds. Running it again finishes a forget whose
    broker part failed. ``ConfigurationError`` when there is no such node."""
    n = schema.nodes.c
    with opened_engine(database_url) as engine, write_transaction(engine) as connection:
        done = connection.execute(
            schema.nodes.update()
            .where(n.id == node_id)
            .values(enabled=False, forgotten_at=sa.func.coalesce(n.forgotten_at, utcnow()))
        )
        if not done.rowcount:
            raise ConfigurationError(f"no node {node_id}")
    queue = Topology(namespace).node_queue(node_id)
    try:
        rabbitmq.delete_queue(broker_url, queue)
    except SyncError as exc:
        return Forgotten(node_id, queue, queue_deleted=False, broker_error=str(exc))
    return Forgotten(node_id, queue, queue_deleted=True)
