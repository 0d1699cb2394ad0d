"""Many rows at once through the database driver itself, on prepared tuples.

SQLAlchemy's ``executemany`` converts every value of every row through its
statement machinery (a dictionary per row, a bound parameter per value); for
thousands of rows that costs several times what the driver spends storing
them. Here each column's own bind processor (the conversion SQLAlchemy would
apply: datetimes to text on SQLite, enums, JSON...) is looked up once, applied
only to the columns that have one, and the rows go to the driver's
``executemany`` as tuples in one round of the same transaction
(``Connection.exec_driver_sql``: events and error wrapping stay SQLAlchemy's).
On PostgreSQL with psycopg they are streamed with ``COPY ... FROM STDIN`` on the
same connection and transaction (the same constraints are checked; driver errors
are wrapped as SQLAlchemy wraps a statement's).

A column whose type rewrites the SQL around its parameter (``bind_expression``)
cannot be written this way: ``writer_for`` returns ``None`` and the caller uses
a Core statement.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache, partial
from operator import itemgetter
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.engine import Connection, Dialect

from dbsync_mq.storage.values import TimeKind, in_utc, time_columns

Processor = Callable[[Any], Any]


@dataclass(frozen=True)
class InsertWriter:
    """An ``INSERT`` of some columns of a table, in the driver's own parameter style."""

    sql: str
    columns: tuple[str, ...]
    processors: tuple[tuple[int, Processor], ...]
    """(position, bind processor) of the columns that have one."""
    copy_sql: str | None = None
    """``COPY ... FROM STDIN`` of the same columns, where the driver can stream rows
    (psycopg on PostgreSQL): several times faster than any ``INSERT``."""

    def parameters(self, rows: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Driver parameters for ``rows`` (mappings holding every column of the writer),
        datetimes in UTC as ``values.stored_row`` puts them."""
        pick = itemgetter(*self.columns)
        if len(self.columns) == 1:
            return [(pick(row),) for row in rows]
        if not self.processors:
            return [pick(row) for row in rows]
        return self.positional([pick(row) for row in rows])

    def positional(self, rows: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
        """Driver parameters for ``rows`` given as values in the writer's column order."""
        processors = self.processors
        if not processors:
            return [tuple(row) for row in rows]
        prepared: list[tuple[Any, ...]] = []
        for row in rows:
            values = list(row)
            for position, process in processors:
                value = values[position]
                if value is not None:
                    values[position] = process(value)
            prepared.append(tuple(values))
        return prepared

    def insert(
        self, connection: Connection, rows: Sequence[Any], *, positional: bool = False
    ) -> None:
        """Insert ``rows`` (mappings, or value lists in column order if ``positional``)
        with one driver ``executemany``."""
        try:
            parameters = self.positional(rows) if positional else self.parameters(rows)
        except (TypeError, ValueError, OverflowError, LookupError) as exc:
            # As SQLAlchemy reports a value its type could not convert.
            raise sa.exc.StatementError(str(exc), self.sql, None, exc) from None
        if not parameters:
            return
        if self.copy_sql is None:
            connection.exec_driver_sql(self.sql, parameters)
        else:
            _copy(connection, self.copy_sql, parameters)


def _copy(connection: Connection, sql: str, rows: Sequence[tuple[Any, ...]]) -> None:
    """``COPY`` the rows on the connection's own driver connection, in its transaction;
    driver errors raised as SQLAlchemy raises them for a statement."""
    dialect = connection.dialect
    dbapi_connection: Any = connection.connection.dbapi_connection
    error = dialect.loaded_dbapi.Error
    try:
        with dbapi_connection.cursor() as cursor, cursor.copy(sql) as copy:
            for row in rows:
                copy.write_row(row)
    except error as exc:
        lost = dialect.is_disconnect(exc, dbapi_connection, None)
        if lost:
            connection.invalidate(exc)
        raise sa.exc.DBAPIError.instance(
            sql, None, exc, error, connection_invalidated=lost, dialect=dialect
        ) from exc


def _in_utc_then(
    kind: TimeKind | None, process: Processor | None, column_type: Any
) -> Processor | None:
    """The column's conversion, after its datetimes are put in UTC (see ``values``)."""
    if kind is None or kind == "time":
        return process
    if process is None:
        return partial(in_utc, kind)
    if _stores_iso_text(column_type):
        return partial(_iso_text, kind, process)
    return lambda value: process(in_utc(kind, value))


_SQLITE_DATETIME_FORMAT: Final = sqlite.DATETIME._storage_format


def _stores_iso_text(column_type: Any) -> bool:
    """Whether the type stores SQLite's default datetime text, which ``isoformat`` gives
    for a naive datetime (the same digits, microseconds always written)."""
    return (
        type(column_type) is sqlite.DATETIME
        and column_type._storage_format == _SQLITE_DATETIME_FORMAT
        and column_type._reg is None
    )


def _iso_text(kind: TimeKind, process: Processor, value: Any) -> Any:
    if type(value) is dt.datetime and value.tzinfo is None:  # UTC already: the common case
        return value.isoformat(" ", "microseconds")
    return process(in_utc(kind, value))


@lru_cache(maxsize=1024)
def writer_for(dialect: Dialect, table: sa.Table, columns: tuple[str, ...]) -> InsertWriter | None:
    """The writer inserting ``columns`` of ``table``; ``None`` if one of them is unknown
    or has a type that must wrap its parameter in SQL, or a column left out has a default
    computed in Python (use a Core statement then)."""
    if not columns or any(name not in table.c for name in columns):
        return None
    if any(column.default is not None for column in table.c if column.name not in columns):
        return None  # a default computed in Python (Core fills it in): use a Core statement
    processors = []
    for position, name in enumerate(columns):
        column_type = table.c[name].type.dialect_impl(dialect)
        if getattr(column_type, "_has_bind_expression", True):
            return None
        kind = time_columns(table).get(name)
        process = _in_utc_then(kind, column_type.bind_processor(dialect), column_type)
        if process is not None:
            processors.append((position, process))
    quote = dialect.identifier_preparer
    marker = {"qmark": "?", "numeric": ":{}", "named": ":c{}"}.get(dialect.paramstyle, "%s")
    if marker not in ("?", "%s"):
        return None  # a parameter style that tuples cannot fill: use a Core statement
    names = [quote.quote(name) for name in columns]
    target = quote.format_table(table)
    if marker == "%s" and any("%" in name for name in [target, *names]):
        return None  # would need escaping for the driver's format style
    sql = "INSERT INTO {} ({}) VALUES ({})".format(
        target,
        ", ".join(names),
        ", ".join([marker] * len(columns)),
    )
    copy_sql = None
    if dialect.name == "postgresql" and dialect.driver == "psycopg":
        copy_sql = "COPY {} ({}) FROM STDIN".format(target, ", ".join(names))
    return InsertWriter(sql, columns, tuple(processors), copy_sql)


@dataclass(frozen=True)
class KeyLookup:
    """Which keys of a one-column key exist, asked through the driver."""

    sql: str
    """The query up to the ``IN`` list, which each batch completes."""
    marker: str
    process: Processor | None
    result: Processor | None

    rows_sql: str | None
    """The same for whole rows, columns in table order."""
    results: tuple[tuple[int, Processor], ...]
    """(position, result processor) of the columns that have one, for whole rows."""

    def existing(self, connection: Connection, keys: Sequence[Any]) -> list[Any]:
        """Those of ``keys`` (at most a few hundred) that the table holds."""
        found = [row[0] for row in self._run(connection, self.sql, keys)]
        return found if self.result is None else [self.result(key) for key in found]

    def rows(self, connection: Connection, keys: Sequence[Any]) -> list[list[Any]]:
        """The rows with those of ``keys`` (at most a few hundred) that the table holds,
        as lists of values in column order, as SQLAlchemy would return them."""
        if self.rows_sql is None:
            raise ValueError("rows are read through SQLAlchemy on this database")
        found = [list(row) for row in self._run(connection, self.rows_sql, keys)]
        for values in found:
            for position, process in self.results:
                value = values[position]
                if value is not None:
                    values[position] = process(value)
        return found

    def _run(self, connection: Connection, sql: str, keys: Sequence[Any]) -> Sequence[Any]:
        process = self.process
        values = tuple(keys if process is None else [process(key) for key in keys])
        statement = "{}({})".format(sql, ", ".join([self.marker] * len(values)))
        return connection.exec_driver_sql(statement, values).all()


@lru_cache(maxsize=1024)
def key_lookup(dialect: Dialect, table: sa.Table, key_columns: tuple[str, ...]) -> KeyLookup | None:
    """The lookup of ``table``'s keys on SQLite (a node's database), or ``None`` (another
    database, a composite key, a type that wraps its parameter in SQL: use a Core statement).
    SQLite's result conversions do not depend on the driver's type codes; elsewhere
    SQLAlchemy reads them from the cursor, and so does the Core statement."""
    if len(key_columns) != 1 or dialect.name != "sqlite":
        return None
    marker = {"qmark": "?", "format": "%s", "pyformat": "%s"}.get(dialect.paramstyle)
    quote = dialect.identifier_preparer
    key, target = quote.quote(key_columns[0]), quote.format_table(table)
    if marker is None or (marker == "%s" and "%" in key + target):
        return None
    try:
        column_type = table.c[key_columns[0]].type.dialect_impl(dialect)
        if _wraps_sql(column_type):
            return None
        bind, result = (
            column_type.bind_processor(dialect),
            column_type.result_processor(dialect, None),
        )
        rows_sql, results = _rows_query(dialect, table, target, key)
    except Exception:  # a type that needs the driver's type code: use Core
        return None
    return KeyLookup(
        f"SELECT {key} FROM {target} WHERE {key} IN ", marker, bind, result, rows_sql, results
    )


def _wraps_sql(column_type: Any) -> bool:
    return bool(
        getattr(column_type, "_has_bind_expression", True)
        or getattr(column_type, "_has_column_expression", True)
    )


def _rows_query(
    dialect: Dialect, table: sa.Table, target: str, key: str
) -> tuple[str | None, tuple[tuple[int, Processor], ...]]:
    """Whole rows through the driver, or ``None`` if a column wraps its value in SQL."""
    results = []
    for position, column in enumerate(table.c):
        impl = column.type.dialect_impl(dialect)
        if _wraps_sql(impl):
            return None, ()
        process = impl.result_processor(dialect, None)
        if process is not None:
            results.append((position, process))
    names = ", ".join(dialect.identifier_preparer.quote(column.name) for column in table.c)
    return f"SELECT {names} FROM {target} WHERE {key} IN ", tuple(results)
