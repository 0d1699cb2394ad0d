"""Reading rows by key and applying changes, with batched Core statements.

Changes are applied in an order foreign keys accept: inserts parents first,
then updates, then deletes children first. Each kind of change on one table is
one ``executemany``, never a round trip per row.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dbsync_mq.core.model import DELETE, INSERT, UPDATE, Change, Key, Row
from dbsync_mq.storage.models import ModelSet, TrackedModel
from dbsync_mq.storage.values import to_wire

KEY_BATCH: Final = 500
"""Keys per ``IN (...)`` clause: well under every database's parameter limit."""


def batches(items: Sequence[Any], size: int = KEY_BATCH) -> Iterator[Sequence[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


def _key_condition(model: TrackedModel, keys: Sequence[Key]) -> sa.ColumnElement[bool]:
    columns = [model.table.c[name] for name in model.key_columns]
    if len(columns) == 1:
        return columns[0].in_(keys)
    return sa.tuple_(*columns).in_(keys)


def read_rows(connection: Connection, model: TrackedModel, keys: Iterable[Key]) -> dict[Key, Row]:
    """The current rows with the given keys (missing rows are absent), ready for the wire."""
    found: dict[Key, Row] = {}
    for chunk in batches(list(keys)):
        statement = sa.select(model.table).where(_key_condition(model, chunk))
        for row in connection.execute(statement).mappings():
            values = {name: to_wire(value) for name, value in row.items()}
            found[model.key_of(values)] = values
    return found


def existing_keys(connection: Connection, model: TrackedModel, keys: Iterable[Key]) -> set[Key]:
    """Which of ``keys`` exist in ``model``'s table."""
    columns = [model.table.c[name] for name in model.key_columns]
    found: set[Key] = set()
    for chunk in batches(list(keys)):
        statement = sa.select(*columns).where(_key_condition(model, chunk))
        for row in connection.execute(statement):
            found.add(row[0] if len(columns) == 1 else tuple(row))
    return found


def apply_changes(connection: Connection, models: ModelSet, changes: Iterable[Change]) -> None:
    """Apply row changes in foreign-key order, one batched statement per table and kind."""
    grouped: dict[tuple[str, str], list[Change]] = defaultdict(list)
    for change in changes:
        grouped[change.table, change.command].append(change)
    for model in models.order:
        if inserts := grouped.get((model.name, INSERT)):
            insert_rows(connection, model, [change.values or {} for change in inserts])
    for model in models.order:
        if updates := grouped.get((model.name, UPDATE)):
            update_rows(connection, model, [change.values or {} for change in updates])
    for model in reversed(models.order):
        if deletes := grouped.get((model.name, DELETE)):
            delete_rows(connection, model, [change.key for change in deletes])


def insert_rows(connection: Connection, model: TrackedModel, rows: Sequence[Row]) -> None:
    """Insert ``rows``, grouped by the set of columns they carry."""
    for group in _by_columns(rows).values():
        connection.execute(model.table.insert(), group)


def update_rows(connection: Connection, model: TrackedModel, rows: Sequence[Row]) -> None:
    """Update the rows identified by their keys to the values they carry."""
    table = model.table
    where = sa.and_(*(table.c[name] == sa.bindparam(f"k_{name}") for name in model.key_columns))
    for columns, group in _by_columns(rows).items():
        assigned = [name for name in columns if name not in model.key_columns]
        if not assigned:
            continue
        statement = (
            table.update()
            .where(where)
            .values({name: sa.bindparam(f"v_{name}") for name in assigned})
        )
        params = []
        for row in group:
            param = {f"v_{name}": row[name] for name in assigned}
            param.update({f"k_{name}": row[name] for name in model.key_columns})
            params.append(param)
        connection.execute(statement, params)


def delete_rows(connection: Connection, model: TrackedModel, keys: Sequence[Key]) -> None:
    """Delete the rows with the given keys."""
    for chunk in batches(list(keys)):
        connection.execute(model.table.delete().where(_key_condition(model, chunk)))


def _by_columns(rows: Iterable[Row]) -> Mapping[tuple[str, ...], list[Row]]:
    """Rows grouped by the columns they carry: an ``executemany`` needs one shape."""
    groups: dict[tuple[str, ...], list[Row]] = defaultdict(list)
    for row in rows:
        groups[tuple(row)].append(row)
    return groups
