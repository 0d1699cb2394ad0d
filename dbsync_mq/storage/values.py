"""Column values at the edge between the wire and the database.

Reading: values as SQLAlchemy returns them, with enum members reduced to their
names so they travel. Writing: each value checked against its column's Python
type before it reaches a database (SQLite would store a string in an integer
column without a word), so a bad push is refused with the column it names.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from typing import Any

import sqlalchemy as sa

from dbsync_mq.errors import RequestRefused

Check = Callable[[Any], bool]


def to_wire(value: Any) -> Any:
    """A column value in a form the codec carries."""
    return value.name if isinstance(value, enum.Enum) else value


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


@dataclass(frozen=True)
class _ColumnCheck:
    accepts: Check
    nullable: bool
    length: int | None


@cache
def _table_checks(table: sa.Table) -> Mapping[str, _ColumnCheck]:
    return {
        column.name: _ColumnCheck(
            _check_for(column), bool(column.nullable), getattr(column.type, "length", None)
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
        if not column.accepts(value):
            raise RequestRefused(
                "type-mismatch",
                f"{table.name}.{name} does not accept a {type(value).__name__}",
            )
        if column.length is not None and isinstance(value, str) and len(value) > column.length:
            # SQLite would store it without a word; PostgreSQL refuses it: refuse on both.
            raise RequestRefused(
                "invalid-value", f"{table.name}.{name} holds at most {column.length} characters"
            )
