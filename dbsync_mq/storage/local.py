"""A client node's own tables: its operation log, its identity, its push in flight."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dbsync_mq.core import codec
from dbsync_mq.core.hlc import HybridClock
from dbsync_mq.core.model import Key, Operation, Write
from dbsync_mq.errors import ConfigurationError
from dbsync_mq.storage import schema
from dbsync_mq.storage.apply import batches
from dbsync_mq.storage.models import ModelSet, TrackedModel
from dbsync_mq.storage.schema import utcnow

logger = logging.getLogger(__name__)


class OperationLog:
    """The capture of a client database: each write becomes a row of ``sync_operations``.

    Stamps every operation with the node's hybrid logical clock, which starts
    from the highest stamp the database has seen.
    """

    def __init__(self, models: ModelSet, clock: Callable[[], float] = time.time) -> None:
        self.models = models
        self.hlc = HybridClock()
        self._clock = clock
        self._lock = threading.Lock()
        self._started = False
        self._commit_listeners: list[Callable[[], None]] = []

    def wants(self, model: TrackedModel) -> bool:
        return model.pushed

    def before_writes(self, connection: Connection) -> None:
        """Nothing to prepare: the log is written in the same transaction."""

    def before_commit(self, connection: Connection) -> None:
        """Nothing to finish: every operation was logged when it was flushed."""

    def after_commit(self) -> None:
        """Tell the commit listeners: there are new operations to push."""
        for listener in list(self._commit_listeners):
            listener()

    def add_commit_listener(self, listener: Callable[[], None]) -> None:
        """Call ``listener()`` (on the writer's thread, briefly) after each logged commit."""
        self._commit_listeners.append(listener)

    def remove_commit_listener(self, listener: Callable[[], None]) -> None:
        if listener in self._commit_listeners:
            self._commit_listeners.remove(listener)

    def record(self, connection: Connection, writes: Sequence[Write]) -> None:
        if not writes:
            return
        with self._lock:
            if not self._started:
                self._start(connection)
            now_ms = int(self._clock() * 1000)
            rows = [
                {
                    "table_name": write.table,
                    "row_key": codec.encode_key(write.key),
                    "command": write.command,
                    "columns": codec.encode(sorted(write.columns)) if write.columns else None,
                    "hlc": self.hlc.tick(now_ms),
                }
                for write in writes
            ]
        connection.execute(schema.operations.insert(), rows)

    def _start(self, connection: Connection) -> None:
        if not sa.inspect(connection).has_table(schema.operations.name):
            raise ConfigurationError(
                "tracked models were written before the sync tables exist: "
                "call SyncClient.install() first"
            )
        self.hlc.observe(highest_stamp(connection))
        self._started = True


def highest_stamp(connection: Connection) -> int:
    """The highest clock stamp in the log or recorded by the last merge."""
    logged = connection.execute(sa.select(sa.func.max(schema.operations.c.hlc))).scalar()
    merged = connection.execute(sa.select(schema.node.c.hlc)).scalar()
    return max(logged or 0, merged or 0)


def unpushed(connection: Connection) -> list[Operation]:
    """Every logged operation not yet accepted by the server, in log order."""
    ops = schema.operations.c
    result = connection.execute(
        sa.select(ops.id, ops.table_name, ops.row_key, ops.command, ops.hlc, ops.columns).order_by(
            ops.id
        )
    )
    decode_key, decode, empty = codec.decode_key, codec.decode, frozenset[str]()
    return [
        Operation(
            order,
            table,
            decode_key(key),
            command,
            hlc,
            frozenset(decode(columns)) if columns else empty,
        )
        for order, table, key, command, hlc, columns in result.all()
    ]


def quarantine(
    connection: Connection, rows: Iterable[tuple[str, Key]], code: str | None, reason: str | None
) -> int:
    """Hold these rows' logged changes back from pushes; how many rows were not held yet."""
    held = {(table, key) for table, key, _code, _reason in quarantined(connection)}
    new = [row for row in dict.fromkeys(rows) if row not in held]
    if new:
        connection.execute(
            schema.quarantine.insert(),
            [
                {
                    "table_name": table,
                    "row_key": codec.encode_key(key),
                    "code": code,
                    "reason": reason,
                    "created_at": utcnow(),
                }
                for table, key in new
            ],
        )
    return len(new)


def quarantined(connection: Connection) -> list[tuple[str, Key, str | None, str | None]]:
    """``(table, key, code, reason)`` of every row held back, oldest first."""
    q = schema.quarantine.c
    result = connection.execute(
        sa.select(q.table_name, q.row_key, q.code, q.reason).order_by(q.created_at)
    )
    return [(row.table_name, codec.decode_key(row.row_key), row.code, row.reason) for row in result]


def release(connection: Connection, rows: Iterable[tuple[str, Key]] | None) -> int:
    """Let these rows (all of them with ``None``) be pushed again; how many were held."""
    if rows is None:
        return connection.execute(schema.quarantine.delete()).rowcount
    q = schema.quarantine.c
    released = 0
    for table, key in dict.fromkeys(rows):
        released += connection.execute(
            schema.quarantine.delete().where(
                q.table_name == table, q.row_key == codec.encode_key(key)
            )
        ).rowcount
    return released


def count_unpushed(connection: Connection) -> int:
    return connection.execute(
        sa.select(sa.func.count()).select_from(schema.operations)
    ).scalar_one()


def remove_operations(connection: Connection, ids: Iterable[int]) -> None:
    """Forget operations the server accepted."""
    for chunk in batches(sorted(ids)):
        connection.execute(schema.operations.delete().where(schema.operations.c.id.in_(chunk)))


def rekey_operations(connection: Connection, table: str, old: Key, new: Key) -> None:
    """Point the log entries of one row at its new primary key."""
    ops = schema.operations.c
    connection.execute(
        schema.operations.update()
        .where(ops.table_name == table, ops.row_key == codec.encode_key(old))
        .values(row_key=codec.encode_key(new))
    )


@dataclass(frozen=True)
class Identity:
    """Who this node is to the server, and how far it has merged."""

    node_id: int
    namespace: str
    private_key: bytes
    server_key: bytes
    version: int
    hlc: int


def load_identity(connection: Connection) -> Identity | None:
    row = connection.execute(sa.select(schema.node)).mappings().first()
    if row is None:
        return None
    return Identity(
        node_id=row["node_id"],
        namespace=row["namespace"],
        private_key=row["private_key"],
        server_key=row["server_key"],
        version=row["version"],
        hlc=row["hlc"],
    )


def save_identity(connection: Connection, identity: Identity) -> None:
    connection.execute(schema.node.delete())
    connection.execute(
        schema.node.insert().values(
            id=1,
            node_id=identity.node_id,
            namespace=identity.namespace,
            private_key=identity.private_key,
            server_key=identity.server_key,
            version=identity.version,
            hlc=identity.hlc,
            registered_at=utcnow(),
        )
    )


def set_position(connection: Connection, version: int, hlc: int | None = None) -> None:
    """Record the version merged (and the highest stamp seen)."""
    values: dict[str, Any] = {"version": version}
    if hlc is not None:
        stored = schema.node.c.hlc
        values["hlc"] = sa.case((stored > hlc, stored), else_=hlc)
    connection.execute(schema.node.update().values(**values))


@dataclass(frozen=True)
class Registration:
    """A registration as sealed once, and sent again until it is settled."""

    request_id: str
    seed: bytes
    token_digest: bytes
    envelope: bytes


def save_registration(connection: Connection, registration: Registration) -> None:
    """Remember a registration before it is sent (replacing an older one)."""
    connection.execute(schema.registration.delete())
    connection.execute(
        schema.registration.insert().values(
            id=1,
            request_id=registration.request_id,
            seed=registration.seed,
            token_digest=registration.token_digest,
            envelope=registration.envelope,
            created_at=utcnow(),
        )
    )


def load_registration(connection: Connection) -> Registration | None:
    row = connection.execute(sa.select(schema.registration)).mappings().first()
    if row is None:
        return None
    return Registration(row["request_id"], row["seed"], row["token_digest"], row["envelope"])


def delete_registration(connection: Connection) -> None:
    connection.execute(schema.registration.delete())


@dataclass(frozen=True)
class InFlight:
    """A push published and not yet answered: the exact messages sent (one, or the
    parts of a push too large for one message) and the log entries it carries."""

    request_id: str
    base_version: int
    bodies: tuple[bytes, ...]
    operation_ids: tuple[int, ...]


def save_inflight(connection: Connection, push: InFlight) -> None:
    connection.execute(
        schema.inflight.insert().values(
            request_id=push.request_id,
            base_version=push.base_version,
            body=push.bodies[0],
            operation_ids=codec.encode(list(push.operation_ids)),
            created_at=utcnow(),
        )
    )
    if len(push.bodies) > 1:
        connection.execute(
            schema.inflight_parts.insert(),
            [
                {"request_id": push.request_id, "part": part, "body": body}
                for part, body in enumerate(push.bodies[1:], start=1)
            ],
        )


def load_inflight(connection: Connection) -> InFlight | None:
    row = connection.execute(sa.select(schema.inflight)).mappings().first()
    if row is None:
        return None
    p = schema.inflight_parts.c
    parts = connection.execute(
        sa.select(p.body).where(p.request_id == row["request_id"]).order_by(p.part)
    ).scalars()
    return InFlight(
        request_id=row["request_id"],
        base_version=row["base_version"],
        bodies=(row["body"], *parts),
        operation_ids=tuple(codec.decode(row["operation_ids"])),
    )


def delete_inflight(connection: Connection, request_id: str) -> None:
    connection.execute(schema.inflight.delete().where(schema.inflight.c.request_id == request_id))
    connection.execute(
        schema.inflight_parts.delete().where(schema.inflight_parts.c.request_id == request_id)
    )
