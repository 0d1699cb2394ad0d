"""The server's own tables: the version head, nodes, processed requests, keys."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import Connection, Engine

from dbsync_mq.core import signing
from dbsync_mq.errors import ConfigurationError
from dbsync_mq.storage import schema
from dbsync_mq.storage.engine import database_errors, prepare, write_transaction
from dbsync_mq.storage.models import ModelSet
from dbsync_mq.storage.schema import utcnow


def initialize(engine: Engine, models: ModelSet) -> None:
    """Create the tracked and sync tables, the version head and the server key; idempotent."""
    prepare(engine, foreign_keys=True)
    with database_errors():
        if engine.dialect.name == "sqlite":
            # Readers never block the writer: pulls run beside pushes.
            raw = engine.raw_connection()
            try:
                raw.cursor().execute("PRAGMA journal_mode=WAL")
            finally:
                raw.close()
        schema.server_metadata.create_all(engine)
        for model in models:
            model.table.create(engine, checkfirst=True)
    with write_transaction(engine) as connection:
        try:
            schema.add_missing_columns(connection, schema.server_metadata)
        except ValueError as exc:
            raise ConfigurationError(f"cannot upgrade the server database: {exc}") from None
        if connection.execute(sa.select(schema.head.c.version)).first() is None:
            connection.execute(schema.head.insert().values(id=1, version=0))
        if connection.execute(sa.select(schema.server_keys.c.id)).first() is None:
            connection.execute(
                schema.server_keys.insert().values(private_key=os.urandom(32), created_at=utcnow())
            )


def server_key(connection: Connection) -> Ed25519PrivateKey:
    """The key the server signs replies with."""
    seed = connection.execute(
        sa.select(schema.server_keys.c.private_key).order_by(schema.server_keys.c.id.desc())
    ).scalar()
    if seed is None:
        raise ConfigurationError("the server database is not initialized: run `dbsync-mq init`")
    return signing.private_key_from_seed(seed)


def lock_head(connection: Connection) -> int:
    """The current version, locked until the transaction ends (every writer waits here)."""
    version = connection.execute(
        sa.select(schema.head.c.version).where(schema.head.c.id == 1).with_for_update()
    ).scalar()
    if version is None:
        raise ConfigurationError("the server database is not initialized: run `dbsync-mq init`")
    return int(version)


def _lock_head_and_find_statement() -> sa.Select[Any]:
    h, seen, r = schema.head, schema.head.alias("seen"), schema.requests
    found = r.c.request_id == sa.bindparam("request_id")
    return (
        sa.select(h.c.version, seen.c.version.label("seen"), r.c.digest, r.c.reply)
        .select_from(h.join(seen, seen.c.id == h.c.id).outerjoin(r, found))
        .where(h.c.id == 1)
        .with_for_update(of=h)
    )


_LOCK_HEAD_AND_FIND: Final = _lock_head_and_find_statement()
"""Built once: building a statement costs more than running this one."""


def lock_head_and_find(connection: Connection, request_id: str) -> tuple[int, StoredReply | None]:
    """The version head, locked, and the reply stored under ``request_id`` as of the moment
    the lock was granted: one round trip, two when the wait for the lock let a push commit.

    Under READ COMMITTED, a ``SELECT … FOR UPDATE`` that finds its row changed by a
    transaction that committed after the statement began re-reads that row, and only
    that row: the stored requests it joined stay as they were when it began. So the
    statement also reads the head a second time without locking it; that copy is not
    re-read. When the two differ, a push committed in between, perhaps this very
    request from another worker, and the lookup runs again as a statement of its own,
    which sees every commit made before the lock was granted. When they agree, no push
    committed in between (every push moves the head), and the joined lookup stands.
    SQLite holds the write lock from ``BEGIN IMMEDIATE``: the two always agree there.
    """
    row = connection.execute(_LOCK_HEAD_AND_FIND, {"request_id": request_id}).first()
    if row is None:
        raise ConfigurationError("the server database is not initialized: run `dbsync-mq init`")
    if row.version != row.seen:
        return int(row.version), find_request(connection, request_id)
    stored = None if row.digest is None else StoredReply(row.digest, row.reply)
    return int(row.version), stored


def read_head(connection: Connection) -> int:
    """The current version, without locking."""
    version = connection.execute(sa.select(schema.head.c.version)).scalar()
    if version is None:
        raise ConfigurationError("the server database is not initialized: run `dbsync-mq init`")
    return int(version)


def read_head_and_trimmed(connection: Connection) -> tuple[int, int]:
    """The current version and the last version trimmed (0: none), without locking."""
    h = schema.head.c
    row = connection.execute(sa.select(h.version, h.trimmed_through).where(h.id == 1)).first()
    if row is None:
        raise ConfigurationError("the server database is not initialized: run `dbsync-mq init`")
    return int(row.version), int(row.trimmed_through or 0)


def read_trimmed(connection: Connection) -> int:
    """The last version trimmed (0: none)."""
    return int(connection.execute(sa.select(schema.head.c.trimmed_through)).scalar() or 0)


@dataclass(frozen=True)
class NodeRecord:
    node_id: int
    public_key: bytes
    enabled: bool
    user_id: str | None


def _node_and_head_statement() -> sa.Select[Any]:
    n = schema.nodes.c
    head = sa.select(schema.head.c.version).where(schema.head.c.id == 1).scalar_subquery()
    return sa.select(n.id, n.public_key, n.enabled, n.user_id, head.label("head")).where(
        n.id == sa.bindparam("node_id")
    )


_NODE_AND_HEAD: Final = _node_and_head_statement()


def find_node_and_head(engine: Engine, node_id: int) -> tuple[NodeRecord | None, int | None]:
    """A node and the current version, in one statement outside any transaction.

    One round trip on PostgreSQL (an autocommit statement: no ``BEGIN``, no
    ``ROLLBACK``), so that a request whose answer needs nothing more, a pull that
    finds nothing new, costs this one read. The head is read after the request was
    published: a node never sees an older version than the one it sent.
    """
    with database_errors(), engine.connect() as connection:
        if connection.dialect.name == "sqlite":
            with connection.begin():  # SQLite's transactions start from an event of ours
                row = connection.execute(_NODE_AND_HEAD, {"node_id": node_id}).first()
        else:
            autocommit = connection.execution_options(isolation_level="AUTOCOMMIT")
            row = autocommit.execute(_NODE_AND_HEAD, {"node_id": node_id}).first()
    if row is None:
        return None, None
    head = None if row.head is None else int(row.head)
    return NodeRecord(row.id, row.public_key, bool(row.enabled), row.user_id), head


def find_node(connection: Connection, node_id: int) -> NodeRecord | None:
    n = schema.nodes.c
    row = connection.execute(
        sa.select(n.id, n.public_key, n.enabled, n.user_id).where(n.id == node_id)
    ).first()
    if row is None:
        return None
    return NodeRecord(row.id, row.public_key, bool(row.enabled), row.user_id)


@dataclass(frozen=True)
class StoredReply:
    digest: bytes
    reply: bytes


def find_request(connection: Connection, request_id: str) -> StoredReply | None:
    row = connection.execute(
        sa.select(schema.requests.c.digest, schema.requests.c.reply).where(
            schema.requests.c.request_id == request_id
        )
    ).first()
    return None if row is None else StoredReply(row.digest, row.reply)


def store_request(
    connection: Connection,
    request_id: str,
    node_id: int | None,
    kind: str,
    digest: bytes,
    reply: bytes,
) -> None:
    connection.execute(
        schema.requests.insert().values(request_row(request_id, node_id, kind, digest, reply))
    )


def request_row(
    request_id: str, node_id: int | None, kind: str, digest: bytes, reply: bytes
) -> dict[str, Any]:
    """A row of ``sync_requests``: the reply stored under a request id."""
    return {
        "request_id": request_id,
        "node_id": node_id,
        "kind": kind,
        "digest": digest,
        "reply": reply,
        "created_at": utcnow(),
    }


def write_version(
    connection: Connection,
    version: Mapping[str, Any],
    request: Mapping[str, Any] | None = None,
) -> None:
    """Insert a row of ``sync_versions``, move the head to it and, given ``request``
    (a ``request_row``), store the reply of the request that made it.

    One statement on PostgreSQL (data-modifying common table expressions), built
    once: a push waits for each round trip to the database while it holds the head
    lock, and building a statement costs about as much as running it.
    """
    params = {f"v_{name}": value for name, value in version.items()}
    if request is not None:
        params.update({f"r_{name}": value for name, value in request.items()})
    if connection.dialect.name == "postgresql":
        statement = _VERSION_AND_REQUEST if request is not None else _VERSION_ONLY
        connection.execute(statement, params)
        return
    connection.execute(_INSERT_VERSION, params)
    connection.execute(_ADVANCE_HEAD, params)
    if request is not None:
        connection.execute(_STORE_REQUEST, params)


def _bound_insert(table: sa.Table, prefix: str) -> sa.Insert:
    return table.insert().values({c.name: sa.bindparam(f"{prefix}{c.name}") for c in table.c})


_INSERT_VERSION: Final = _bound_insert(schema.versions, "v_")
_ADVANCE_HEAD: Final = (
    schema.head.update().where(schema.head.c.id == 1).values(version=sa.bindparam("v_id"))
)
_STORE_REQUEST: Final = _bound_insert(schema.requests, "r_")
_VERSION_ONLY: Final = _ADVANCE_HEAD.add_cte(_INSERT_VERSION.cte("new_version"))
_VERSION_AND_REQUEST: Final = _STORE_REQUEST.add_cte(
    _INSERT_VERSION.cte("new_version"), _ADVANCE_HEAD.cte("new_head")
)


def issue_enrollment(
    engine: Engine,
    token: str,
    ttl: dt.timedelta,
    user_id: str | None = None,
    replaces_node: int | None = None,
) -> None:
    """Store a one-time token (hashed) that lets one node register within ``ttl``."""
    now = utcnow()
    with write_transaction(engine) as connection:
        connection.execute(
            schema.enrollments.insert().values(
                token_hash=signing.token_digest(token),
                user_id=user_id,
                replaces_node=replaces_node,
                created_at=now,
                expires_at=now + ttl,
            )
        )
