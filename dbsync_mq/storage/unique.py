"""Unique values that move between rows in one batch of writes.

Databases check unique constraints row by row, so a batch that swaps two
rows' values (or gives a row the value of a row it deletes) fails midway
whatever the order. ``find_moves`` names those rows; ``apply.write_rows``
writes them by deleting and inserting them again.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dbsync_mq.core.model import Key, Row, RowKey
from dbsync_mq.storage.apply import batches
from dbsync_mq.storage.models import ModelSet, TrackedModel
from dbsync_mq.storage.values import wire_row


@dataclass(frozen=True)
class Clash:
    """``writer`` wants unique ``values`` in ``columns`` that row ``holder`` keeps."""

    table: str
    columns: tuple[str, ...]
    values: tuple[Any, ...]
    holder: Key
    writer: Key


def rows_holding(
    connection: Connection,
    model: TrackedModel,
    columns: tuple[str, ...],
    wanted: Iterable[tuple[Any, ...]],
) -> Iterable[tuple[Key, tuple[Any, ...]]]:
    """``(key, values)`` of the rows whose ``columns`` hold one of the ``wanted`` values."""
    table = model.table
    keys = [table.c[name] for name in model.key_columns]
    targets = [table.c[name] for name in columns]
    for chunk in batches(list(wanted)):
        condition = (
            targets[0].in_([values[0] for values in chunk])
            if len(targets) == 1
            else sa.tuple_(*targets).in_(chunk)
        )
        for row in connection.execute(sa.select(*keys, *targets).where(condition)):
            key = row[0] if len(keys) == 1 else tuple(row[: len(keys)])
            held = wire_row(table, dict(zip(columns, row[len(keys) :], strict=True)))
            yield key, tuple(held[name] for name in columns)


def find_moves(
    connection: Connection,
    models: ModelSet,
    writes: Mapping[RowKey, Row],
    deletes: AbstractSet[RowKey],
) -> tuple[set[RowKey], list[Clash]]:
    """Rows to write by delete-and-insert, and values held by rows the batch leaves alone."""
    moving: set[RowKey] = set()
    clashes: list[Clash] = []
    by_table: dict[str, dict[Key, Row]] = {}
    for (table, key), row in writes.items():
        by_table.setdefault(table, {})[key] = row
    for table, rows in by_table.items():
        model = models.get(table)
        for columns in models.schema.tables[table].unique:
            wanted: dict[tuple[Any, ...], Key] = {}
            for key, row in rows.items():
                values = tuple(row.get(column) for column in columns)
                if None not in values:
                    wanted[values] = key
            for holder, values in rows_holding(connection, model, columns, wanted):
                writer = wanted[values]
                if holder == writer:
                    continue
                released = (table, holder) in deletes or (
                    holder in rows
                    and tuple(rows[holder].get(column) for column in columns) != values
                )
                if released:
                    moving.update({(table, holder), (table, writer)})
                else:
                    clashes.append(Clash(table, columns, values, holder, writer))
    return moving, clashes
