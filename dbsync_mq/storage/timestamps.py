"""Datetimes written to tracked models, put in UTC before they reach the database.

The change capture calls these for every flush and ORM-enabled statement it
sees (``tracking``): values set on objects, parameters passed to
``session.execute`` and values given to ``insert().values()`` or
``update().values()`` are converted as ``values.in_utc`` says; a time of day
with a UTC offset is refused with ``TrackingError``. Values the database or
SQLAlchemy's Core produce during the statement (column defaults, ``onupdate``)
are not seen.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from itertools import chain, repeat
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import ORMExecuteState
from sqlalchemy.sql.elements import BindParameter, ClauseElement

from dbsync_mq.errors import TrackingError
from dbsync_mq.storage.models import TrackedModel
from dbsync_mq.storage.values import has_offset, in_utc, time_columns


class _Columns:
    """The datetime and time columns of one model, found by column or attribute name."""

    def __init__(self, model: TrackedModel) -> None:
        self.model = model
        self.kinds = time_columns(model.table)
        self.names = {attribute: name for name, attribute in model.attributes.items()}
        self.positions = tuple(model.table.c.keys())

    def name_of(self, key: Any) -> str | None:
        """The column a parameter or ``values()`` key names (a string or a column)."""
        name = key if isinstance(key, str) else getattr(key, "name", None)
        if name is None:
            return None
        return self.names.get(name, name)

    def convert(self, name: str | None, value: Any) -> Any:
        kind = self.kinds.get(name) if name is not None else None
        if kind is None:
            return value
        if has_offset(value):
            raise TrackingError(
                f"{self.model.name}.{name}: a time of day with a UTC offset ({value}) has no "
                "UTC equivalent without a date; store a naive time, or a DateTime"
            )
        return in_utc(kind, value)

    def row(self, row: Mapping[Any, Any]) -> Mapping[Any, Any]:
        converted = {key: self.convert(self.name_of(key), value) for key, value in row.items()}
        return row if _same(row.values(), converted.values()) else converted


def _same(before: Iterable[Any], after: Iterable[Any]) -> bool:
    return all(old is new for old, new in zip(before, after, strict=True))


def objects_in_utc(model: TrackedModel, objects: Iterable[Any]) -> None:
    """Put the datetimes just set on ``objects`` (of ``model``) in UTC, before a flush."""
    columns = _Columns(model)
    if not columns.kinds:
        return
    for target in objects:
        state = sa.inspect(target)
        for name in columns.kinds:
            attribute = model.attributes[name]
            added = state.attrs[attribute].history.added
            if added and (value := columns.convert(name, added[0])) is not added[0]:
                setattr(target, attribute, value)


def statement_in_utc(state: ORMExecuteState, model: TrackedModel) -> None:
    """Put the datetimes an ORM ``insert``/``update`` writes to ``model`` in UTC."""
    columns = _Columns(model)
    if not columns.kinds:
        return
    parameters = state.parameters
    if isinstance(parameters, Mapping):
        state.parameters = columns.row(parameters)
    elif parameters:
        state.parameters = [columns.row(row) for row in parameters]
    state.statement = _values_in_utc(state.statement, columns)


def _values_in_utc(statement: Any, columns: _Columns) -> Any:
    """``statement`` with the values given to ``values()`` in UTC (a copy, if any changed)."""
    values: Mapping[Any, Any] | None = getattr(statement, "_values", None)
    multi: tuple[list[Any], ...] = getattr(statement, "_multi_values", ())
    new_values = None if values is None else _bound_values(values, columns)
    new_multi = tuple([_multi_row(row, columns) for row in rows] for rows in multi)
    unchanged = new_values is values and all(
        _same(rows, new_rows) for rows, new_rows in zip(multi, new_multi, strict=True)
    )
    if unchanged:
        return statement
    statement = statement._generate()
    if new_values is not None:
        statement._values = sa.util.immutabledict(new_values)
    statement._multi_values = new_multi
    return statement


def _bound_values(values: Mapping[Any, Any], columns: _Columns) -> Mapping[Any, Any]:
    converted = {}
    for key, value in values.items():
        name = columns.name_of(key)
        if isinstance(value, BindParameter):
            new = columns.convert(name, value.value)
            if name is not None and new is not value.value:
                value = sa.literal(new, columns.model.table.c[name].type)
        elif not isinstance(value, ClauseElement):
            value = columns.convert(name, value)
        converted[key] = value
    return values if _same(values.values(), converted.values()) else converted


def _multi_row(row: Any, columns: _Columns) -> Any:
    """One row of ``insert().values([...])``: a mapping, or values in column order."""
    if isinstance(row, Mapping):
        return columns.row(row)
    names = chain(columns.positions, repeat(None))
    converted = [columns.convert(name, value) for name, value in zip(names, row, strict=False)]
    return row if _same(row, converted) else type(row)(converted)
