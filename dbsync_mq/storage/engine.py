"""Transactions the sync relies on, on any engine it is given.

``write_transaction`` opens a transaction that holds the database's write lock
from its first statement: ``BEGIN IMMEDIATE`` on SQLite (which needs the
driver's own implicit transactions turned off, as SQLAlchemy's pysqlite
documentation recommends), a plain transaction elsewhere, where the caller
locks a row with ``SELECT ... FOR UPDATE``. Database driver failures are turned
into ``DatabaseUnavailable`` (retryable) at this edge.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from dbsync_mq.errors import ConfigurationError, DatabaseUnavailable

_MODE: Final = "dbsync_mq_transaction"
"""Execution option naming our transactions: ``"write"`` or ``"read"``."""

NODE_BUSY_TIMEOUT_MS: Final = 30_000
"""How long a node's SQLite connection waits for another's write lock before failing."""

DRIVER_EXTRAS: Final = {"postgresql": "postgresql"}
"""Databases whose driver an extra of this package installs (``dbsync-mq[postgresql]``)."""


def create_engine(url: str, **options: Any) -> Engine:
    """``sqlalchemy.create_engine``, with a missing driver or a bad URL turned into a
    ``ConfigurationError`` that says what to install or fix."""
    try:
        return sa.create_engine(url, **options)
    except ImportError as exc:
        raise ConfigurationError(_missing_driver(url, exc)) from exc
    except sa.exc.ArgumentError as exc:  # NoSuchModuleError too: an unknown dialect
        raise ConfigurationError(f"bad database URL: {exc}") from exc


@contextmanager
def opened_engine(url: str) -> Iterator[Engine]:
    """An engine for one command: created (see ``create_engine``), then disposed."""
    engine = create_engine(url)
    try:
        yield engine
    finally:
        engine.dispose()


def _missing_driver(url: str, exc: ImportError) -> str:
    parsed = sa.make_url(url)
    extra = DRIVER_EXTRAS.get(parsed.get_backend_name())
    remedy = (
        f"pip install 'dbsync-mq[{extra}]'"
        if extra
        else f"install the Python driver {parsed.drivername!r} needs"
    )
    return f"the database driver for {parsed.drivername} is not installed ({exc}): {remedy}"


def is_sqlite(engine: Engine | Connection) -> bool:
    return engine.dialect.name == "sqlite"


def prepare(engine: Engine, *, foreign_keys: bool = False, shared: bool = False) -> Engine:
    """Make ``engine``'s transactions real on SQLite; idempotent, harmless elsewhere.

    Every transaction starts at ``BEGIN`` rather than at the first write (pysqlite's
    default), so that reads in a transaction are consistent. ``foreign_keys``
    makes SQLite enforce foreign keys on every connection, as the server does so
    that bad pushes are refused.

    ``shared`` is for a database the application and the sync write at once (a
    node's, with its agent or another process; a server's whose application writes
    through ``install`` while a worker runs): it uses WAL (readers never wait for a
    writer), waits up to ``NODE_BUSY_TIMEOUT_MS`` for the write lock, and starts
    the application's transactions with ``BEGIN IMMEDIATE``. A transaction that
    reads and then writes would otherwise fail with "database is locked" whenever
    the sync committed between its read and its write: SQLite cannot upgrade such
    a transaction, and does not wait for it. Asking for ``shared`` on an engine
    prepared without it upgrades it (for the connections opened from then on).
    """
    if not is_sqlite(engine) or event.contains(engine, "begin", _begin_shared):
        return engine
    if shared and event.contains(engine, "begin", _begin):
        event.remove(engine, "begin", _begin)
    if not event.contains(engine, "begin", _begin):
        event.listen(engine, "begin", _begin_shared if shared else _begin)
    if foreign_keys and not event.contains(engine, "connect", _enforce_foreign_keys):
        event.listen(engine, "connect", _enforce_foreign_keys)
    if shared:
        event.listen(engine, "connect", _share_with_the_application)
    return engine


def _enforce_foreign_keys(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def _share_with_the_application(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        timeout_ms = cursor.execute("PRAGMA busy_timeout").fetchone()[0]
        if timeout_ms < NODE_BUSY_TIMEOUT_MS:
            cursor.execute(f"PRAGMA busy_timeout = {NODE_BUSY_TIMEOUT_MS:d}")
        cursor.execute("PRAGMA journal_mode=WAL")
    finally:
        cursor.close()


def _begin(connection: Connection) -> None:
    _start(connection, application="read")


def _begin_shared(connection: Connection) -> None:
    _start(connection, application="write")


def _start(connection: Connection, *, application: str) -> None:
    dbapi_connection: Any = connection.connection.dbapi_connection
    if dbapi_connection.isolation_level is not None:
        # Stop pysqlite from opening transactions of its own, so that ours start here.
        dbapi_connection.isolation_level = None
    mode = connection.get_execution_options().get(_MODE, application)
    connection.exec_driver_sql("BEGIN IMMEDIATE" if mode == "write" else "BEGIN")


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction that takes the write lock first (SQLite) and commits on success."""
    with database_errors(), engine.connect() as connection:
        connection = connection.execution_options(**{_MODE: "write"})
        with connection.begin():
            yield connection


@contextmanager
def read_transaction(engine: Engine) -> Iterator[Connection]:
    """A transaction for consistent reads; rolled back at the end."""
    with database_errors(), engine.connect() as connection:
        connection = connection.execution_options(**{_MODE: "read"})
        with connection.begin() as transaction:
            yield connection
            transaction.rollback()


@contextmanager
def snapshot_transaction(engine: Engine) -> Iterator[Connection]:
    """A read transaction that sees one snapshot throughout: ``REPEATABLE READ`` on
    PostgreSQL (each statement of a ``READ COMMITTED`` one sees new commits); SQLite's
    read transactions already do. Rolled back at the end."""
    with database_errors(), engine.connect() as connection:
        options: dict[str, Any] = {_MODE: "read"}
        if connection.dialect.name == "postgresql":
            options["isolation_level"] = "REPEATABLE READ"
        connection = connection.execution_options(**options)
        with connection.begin() as transaction:
            yield connection
            transaction.rollback()


@contextmanager
def database_errors() -> Iterator[None]:
    """Turn a lost, locked or refused database connection into ``DatabaseUnavailable``.

    Other operational errors (a missing table, say) are configuration problems
    that no retry will fix: they become ``ConfigurationError``.
    """
    try:
        yield
    except sa.exc.DBAPIError as exc:
        if _is_transient(exc):
            raise DatabaseUnavailable(f"database unavailable: {exc.orig or exc}") from exc
        if isinstance(exc, sa.exc.OperationalError):
            raise ConfigurationError(f"database error: {exc.orig or exc}") from exc
        raise


def _is_transient(exc: sa.exc.DBAPIError) -> bool:
    if exc.connection_invalidated:
        return True
    if type(exc.orig).__module__.startswith("sqlite3"):
        message = str(exc.orig).lower()
        return "locked" in message or "busy" in message or "disk i/o" in message
    return isinstance(exc, (sa.exc.OperationalError, sa.exc.InterfaceError))
