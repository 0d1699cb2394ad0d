"""The sync tables, on their own MetaData objects: one for clients, one for the server.

Every table is prefixed ``sync_`` so it never collides with application tables.
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa


def utcnow() -> dt.datetime:
    """Naive UTC now, as every sync table stores times."""
    return dt.datetime.now(dt.timezone.utc).replace(tzinfo=None)


client_metadata = sa.MetaData()
"""Tables a client node keeps beside its application tables."""

server_metadata = sa.MetaData()
"""Tables the server keeps beside the central application tables."""

# --- client -----------------------------------------------------------------

operations = sa.Table(
    "sync_operations",
    client_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("table_name", sa.String(128), nullable=False),
    sa.Column("row_key", sa.LargeBinary, nullable=False, doc="codec-encoded primary key"),
    sa.Column("command", sa.String(1), nullable=False),
    sa.Column("columns", sa.LargeBinary, nullable=True, doc="codec-encoded changed columns"),
    sa.Column("hlc", sa.BigInteger, nullable=False),
    sqlite_autoincrement=True,
)
"""The local operation log; an entry is removed once the server accepted it."""

node = sa.Table(
    "sync_node",
    client_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("node_id", sa.Integer, nullable=False),
    sa.Column("namespace", sa.String(64), nullable=False),
    sa.Column("private_key", sa.LargeBinary, nullable=False),
    sa.Column("server_key", sa.LargeBinary, nullable=False),
    sa.Column("version", sa.BigInteger, nullable=False, doc="last version merged"),
    sa.Column("hlc", sa.BigInteger, nullable=False, doc="highest clock stamp seen"),
    sa.Column("registered_at", sa.DateTime, nullable=False),
)
"""This node's identity and position: a single row once registered."""

inflight = sa.Table(
    "sync_inflight",
    client_metadata,
    sa.Column("request_id", sa.String(32), primary_key=True),
    sa.Column("base_version", sa.BigInteger, nullable=False),
    sa.Column("body", sa.LargeBinary, nullable=False, doc="the exact message sent"),
    sa.Column("operation_ids", sa.LargeBinary, nullable=False, doc="codec-encoded log ids"),
    sa.Column("created_at", sa.DateTime, nullable=False),
)
"""A push published but not yet settled: resent with the same request id."""

quarantine = sa.Table(
    "sync_quarantine",
    client_metadata,
    sa.Column("table_name", sa.String(128), primary_key=True),
    sa.Column("row_key", sa.LargeBinary, primary_key=True, doc="codec-encoded primary key"),
    sa.Column("code", sa.String(64), nullable=True, doc="the server's refusal, if any"),
    sa.Column("reason", sa.Text, nullable=True),
    sa.Column("created_at", sa.DateTime, nullable=False),
)
"""Rows whose logged changes are held back from pushes until released: a row the server
refused does not block the others. Their log entries stay in ``sync_operations``."""

inflight_parts = sa.Table(
    "sync_inflight_parts",
    client_metadata,
    sa.Column("request_id", sa.String(32), primary_key=True),
    sa.Column("part", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("body", sa.LargeBinary, nullable=False, doc="the exact message sent"),
)
"""The parts after the first of a push in flight too large for one message (the first is
``sync_inflight.body``)."""

registration = sa.Table(
    "sync_registration",
    client_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("request_id", sa.String(32), nullable=False),
    sa.Column("seed", sa.LargeBinary, nullable=False, doc="the new node key's seed"),
    sa.Column("token_digest", sa.LargeBinary(32), nullable=False),
    sa.Column("envelope", sa.LargeBinary, nullable=False, doc="the exact message sent"),
    sa.Column("created_at", sa.DateTime, nullable=False),
)
"""A registration sent and not yet answered: sent again as it was, so that a lost
reply neither burns the token nor leaves a node behind on the server."""

# --- server -----------------------------------------------------------------

head = sa.Table(
    "sync_head",
    server_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("version", sa.BigInteger, nullable=False),
    sa.Column(
        "trimmed_through",
        sa.BigInteger,
        nullable=True,
        doc="versions up to this one were trimmed (null: none); see `server.trim`",
    ),
)
"""The version counter: one row, locked by every write that makes a version."""

versions = sa.Table(
    "sync_versions",
    server_metadata,
    sa.Column("id", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("node_id", sa.Integer, nullable=True, doc="null for server-side writes"),
    sa.Column("request_id", sa.String(32), nullable=True, unique=True),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("operation_count", sa.Integer, nullable=False),
    sa.Column("changes", sa.LargeBinary, nullable=False, doc="the version's packed changes"),
)
"""One row per accepted push or server-side write; the log in its dense form."""

nodes = sa.Table(
    "sync_nodes",
    server_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("public_key", sa.LargeBinary, nullable=False),
    sa.Column("user_id", sa.String(128), nullable=True),
    sa.Column("enabled", sa.Boolean, nullable=False, default=True),
    sa.Column("registered_at", sa.DateTime, nullable=False),
    sa.Column("last_seen_at", sa.DateTime, nullable=True, doc="time of its last request"),
    sa.Column(
        "merged_version",
        sa.BigInteger,
        nullable=True,
        doc="the last version it is known to have merged: the base of its last push or "
        "the start of its last pull (a lower bound, recorded every few seconds)",
    ),
    sa.Column(
        "forgotten_at",
        sa.DateTime,
        nullable=True,
        doc="set by `dbsync-mq nodes forget`: the node is disabled for good",
    ),
    sqlite_autoincrement=True,
)
"""Registered nodes. Columns added after a table was created are nullable, so that
``dbsync-mq init`` can add them to an existing database (``add_missing_columns``)."""

requests = sa.Table(
    "sync_requests",
    server_metadata,
    sa.Column("request_id", sa.String(32), primary_key=True),
    sa.Column("node_id", sa.Integer, nullable=True),
    sa.Column("kind", sa.String(16), nullable=False),
    sa.Column("digest", sa.LargeBinary(32), nullable=False, doc="SHA-256 of the signed bytes"),
    sa.Column("reply", sa.LargeBinary, nullable=False, doc="the encoded reply"),
    sa.Column("created_at", sa.DateTime, nullable=False),
)
"""Requests that changed the database, with the reply sent, for idempotent redelivery."""

push_parts = sa.Table(
    "sync_push_parts",
    server_metadata,
    sa.Column("request_id", sa.String(32), primary_key=True),
    sa.Column("part", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("parts", sa.Integer, nullable=False),
    sa.Column("node_id", sa.Integer, nullable=False),
    sa.Column("changes", sa.LargeBinary, nullable=False, doc="the part's packed changes"),
    sa.Column("created_at", sa.DateTime, nullable=False),
)
"""Parts of a push received so far; applied as one version once the last one is in."""

enrollments = sa.Table(
    "sync_enrollments",
    server_metadata,
    sa.Column("token_hash", sa.LargeBinary(32), primary_key=True),
    sa.Column("user_id", sa.String(128), nullable=True),
    sa.Column("replaces_node", sa.Integer, nullable=True),
    sa.Column("created_at", sa.DateTime, nullable=False),
    sa.Column("expires_at", sa.DateTime, nullable=False),
    sa.Column("used_at", sa.DateTime, nullable=True),
    sa.Column("node_id", sa.Integer, nullable=True),
)
"""One-time enrollment tokens, stored as SHA-256 hashes."""

server_keys = sa.Table(
    "sync_server_keys",
    server_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("private_key", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.DateTime, nullable=False),
)
"""The server's Ed25519 signing key; the newest row is the one in use."""


def add_missing_columns(connection: sa.Connection, metadata: sa.MetaData) -> list[str]:
    """Add to the existing tables of ``metadata`` the nullable columns they lack (a table
    created by an older release); return them as ``table.column``. A missing column that
    is required cannot be added this way: that is a ``ValueError``."""
    inspector = sa.inspect(connection)
    existing_tables = set(inspector.get_table_names())
    added = []
    for table in metadata.sorted_tables:
        if table.name not in existing_tables:
            continue
        present = {column["name"] for column in inspector.get_columns(table.name)}
        for column in table.columns:
            if column.name in present:
                continue
            if not column.nullable:
                raise ValueError(f"{table.name}.{column.name} is missing and cannot be added")
            kind = column.type.compile(dialect=connection.dialect)
            preparer = connection.dialect.identifier_preparer
            connection.exec_driver_sql(
                f"ALTER TABLE {preparer.format_table(table)} "
                f"ADD COLUMN {preparer.format_column(column)} {kind}"
            )
            added.append(f"{table.name}.{column.name}")
    return added
