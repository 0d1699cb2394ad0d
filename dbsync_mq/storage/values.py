"""Column values at the edge between the wire and the database.

Reading: values as SQLAlchemy returns them, with enum members reduced to their
names so they travel. Writing: each value checked against its column's Python
type before it reaches a database (SQLite would store a string in an integer
column without a word), so a bad push is refused with the column it names.

Every datetime is stored and carried as UTC, so that no value changes meaning
on its way (SQLite keeps no UTC offset; PostgreSQL reads a naive value, or
writes an aware one to ``timestamp``, in its session's time zone): a
``DateTime(timezone=True)`` value is an aware UTC datetime (a naive one, all
SQLite returns, is UTC), a ``DateTime`` value is a naive UTC datetime (an
aware one is converted). A time of day with a UTC offset has no UTC equivalent
without a date: it is refused.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import cache, partial
from typing import Any, Final, Literal
from uuid import UUID

import sqlalchemy as sa

from dbsync_mq.errors import RequestRefused

Check = Callable[[Any], bool]
TimeKind = Literal["naive", "aware", "time"]
"""A ``DateTime`` column, a ``DateTime(timezone=True)`` column, a ``Time`` column."""

UTC: Final = dt.timezone.utc


def _to_wire(value: Any) -> Any:
    """A column value in a form the codec carries."""
    return value.name if isinstance(value, enum.Enum) else value


def _time_kind(column: sa.Column[Any]) -> TimeKind | None:
    column_type: Any = column.type
    if isinstance(column_type, sa.types.TypeDecorator):
        column_type = column_type.impl_instance
    if isinstance(column_type, sa.DateTime):
        return "aware" if column_type.timezone else "naive"
    if isinstance(column_type, sa.Time):
        return "time"
    return None


@cache
def time_columns(table: sa.Table) -> Mapping[str, TimeKind]:
    """The datetime and time columns of ``table``, by name."""
    kinds = {column.name: _time_kind(column) for column in table.c}
    return {name: kind for name, kind in kinds.items() if kind is not None}


def in_utc(kind: TimeKind, value: Any) -> Any:
    """``value`` as a column of ``kind`` stores and carries it: a datetime in UTC,
    aware for ``timezone=True`` columns and naive otherwise (a naive value is UTC
    already). Anything else, and a value already in that form, is returned as is."""
    if kind == "time" or not isinstance(value, dt.datetime):
        return value
    if value.tzinfo is None:  # the common case first: a naive value is UTC already
        return value if kind == "naive" else value.replace(tzinfo=UTC)
    if value.utcoffset() is None:
        naive = value if value.tzinfo is None else value.replace(tzinfo=None)
        return naive.replace(tzinfo=UTC) if kind == "aware" else naive
    if kind == "aware":
        return value if value.tzinfo is UTC else value.astimezone(UTC)
    return value.astimezone(UTC).replace(tzinfo=None)


def has_offset(value: Any) -> bool:
    """Whether ``value`` is a time of day with a time zone, which UTC cannot express."""
    return isinstance(value, dt.time) and value.tzinfo is not None


def _datetimes_in_utc(table: sa.Table, values: dict[str, Any]) -> dict[str, Any]:
    """``values``, changed in place: its datetimes in UTC."""
    for name, kind in time_columns(table).items():
        if name in values:
            values[name] = in_utc(kind, values[name])
    return values


def wire_row(table: sa.Table, row: Mapping[Any, Any]) -> dict[str, Any]:
    """A row read from ``table``, ready for the wire: enum members by name, datetimes in UTC."""
    return _datetimes_in_utc(table, {name: _to_wire(value) for name, value in row.items()})


_PLAIN_TYPES: Final = frozenset(
    (int, float, Decimal, bool, str, bytes, dt.datetime, dt.date, dt.time, dt.timedelta, UUID)
)
"""Python types of columns whose values travel as they are read (no enum member)."""


def _wire_converter(table: sa.Table, column: sa.Column[Any]) -> Callable[[Any], Any] | None:
    kind = time_columns(table).get(column.name)
    if kind in ("naive", "aware"):
        return partial(in_utc, kind)
    try:
        if column.type.python_type in _PLAIN_TYPES or kind == "time":
            return None
    except NotImplementedError:
        pass
    return _to_wire


@cache
def wire_converters(table: sa.Table) -> tuple[tuple[int, Callable[[Any], Any]], ...]:
    """``(position, convert)`` for the columns of ``table`` (in order) whose values
    ``wire_row`` would change: a row read as a tuple is made ready column by column."""
    found = ((at, _wire_converter(table, column)) for at, column in enumerate(table.c))
    return tuple((at, convert) for at, convert in found if convert is not None)


def stored_row(table: sa.Table, row: Mapping[str, Any]) -> Mapping[str, Any]:
    """A row about to be written to ``table``, its datetimes in UTC (``row`` itself if
    ``table`` has none)."""
    return _datetimes_in_utc(table, dict(row)) if time_columns(table) else row


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, Decimal)) and not isinstance(value, bool)


def _exact(kind: type) -> Check:
    return lambda value: type(value) is kind


def _enum_check(enum_class: type[enum.Enum]) -> Check:
    return lambda value: isinstance(value, enum_class) or value in enum_class.__members__


_CHECKS: Mapping[type, Check] = {
    int: _is_int,
    float: _is_number,
    Decimal: _is_number,
    bool: lambda value: isinstance(value, bool),
    str: lambda value: isinstance(value, str),
    bytes: lambda value: isinstance(value, bytes),
    dt.datetime: _exact(dt.datetime),
    dt.date: _exact(dt.date),
    dt.time: _exact(dt.time),
    dt.timedelta: _exact(dt.timedelta),
}


def _check_for(column: sa.Column[Any]) -> Check:
    try:
        python_type = column.type.python_type
    except NotImplementedError:
        return lambda value: True
    if python_type in _CHECKS:
        return _CHECKS[python_type]
    if isinstance(python_type, type) and issubclass(python_type, enum.Enum):
        return _enum_check(python_type)
    if python_type in (dict, list):
        return lambda value: True  # JSON columns hold any codec-carried value
    return lambda value: isinstance(value, python_type)


_NUMBERS: Final = frozenset((int, float, Decimal))

_EXACT: Mapping[type, frozenset[type]] = {
    int: frozenset((int,)),
    float: _NUMBERS,
    Decimal: _NUMBERS,
    bool: frozenset((bool,)),
    str: frozenset((str,)),
    bytes: frozenset((bytes,)),
    dt.datetime: frozenset((dt.datetime,)),
    dt.date: frozenset((dt.date,)),
    dt.timedelta: frozenset((dt.timedelta,)),
    UUID: frozenset((UUID,)),
}
"""Types of values a column of each Python type accepts without a closer look (what the
codec decodes is of these exact types). A time of day is always looked at closely."""


def _exact_for(column: sa.Column[Any]) -> frozenset[type]:
    try:
        return _EXACT.get(column.type.python_type, frozenset())
    except NotImplementedError:
        return frozenset()


@dataclass(frozen=True, slots=True)
class _ColumnCheck:
    accepts: Check
    nullable: bool
    length: int | None
    exact: frozenset[type]
    """Types accepted at once (``accepts`` would say yes), a string's length aside."""


@cache
def _table_checks(table: sa.Table) -> Mapping[str, _ColumnCheck]:
    return {
        column.name: _ColumnCheck(
            _check_for(column),
            bool(column.nullable),
            getattr(column.type, "length", None),
            _exact_for(column),
        )
        for column in table.c
    }


def check_row(table: sa.Table, row: Mapping[str, Any]) -> None:
    """Raise ``RequestRefused`` if ``row`` names an unknown column or holds a bad value."""
    checks = _table_checks(table)
    for name, value in row.items():
        try:
            column = checks[name]
        except KeyError:
            raise RequestRefused("unknown-column", f"{table.name} has no column {name!r}") from None
        if value is None:
            if not column.nullable:
                raise RequestRefused("type-mismatch", f"{table.name}.{name} may not be null")
            continue
        kind = type(value)
        if kind in column.exact and (
            kind is not str or column.length is None or len(value) <= column.length
        ):
            continue  # the common case, decided without a call
        if not column.accepts(value):
            raise RequestRefused(
                "type-mismatch",
                f"{table.name}.{name} does not accept a {type(value).__name__}",
            )
        if has_offset(value):
            raise RequestRefused(
                "invalid-value",
                f"{table.name}.{name}: a time of day with a UTC offset cannot be stored as UTC",
            )
        if column.length is not None and isinstance(value, str) and len(value) > column.length:
            # SQLite would store it without a word; PostgreSQL refuses it: refuse on both.
            raise RequestRefused(
                "invalid-value", f"{table.name}.{name} holds at most {column.length} characters"
            )
