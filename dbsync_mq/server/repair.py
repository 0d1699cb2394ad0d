"""Repair: a consistent snapshot of every table nodes may read, streamed in chunks.

The snapshot is read in one transaction (``REPEATABLE READ`` on PostgreSQL, a
read transaction on SQLite's WAL), together with the version it corresponds to,
and never held in memory whole: rows are fetched and sent a chunk at a time.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from dbsync_mq.config import REPAIR_CHUNK_ROWS
from dbsync_mq.core.changeset import encode_changes, encode_insert_parts
from dbsync_mq.core.model import INSERT, Change
from dbsync_mq.runtime import collector_paused
from dbsync_mq.server import state
from dbsync_mq.storage.engine import snapshot_transaction
from dbsync_mq.storage.models import ModelSet, TrackedModel
from dbsync_mq.storage.values import wire_converters, wire_row

REPLY_ROOM: Final = 4 * 1024
"""Bytes of a reply left for its envelope and the other fields."""


def snapshot_bodies(
    engine: Engine, models: ModelSet, chunk_rows: int, max_bytes: int
) -> Iterator[dict[str, Any]]:
    """Reply bodies: ``{version, table, rows, total}`` per chunk of at most ``chunk_rows``
    rows and about ``max_bytes``; at least one."""
    with snapshot_transaction(engine) as connection:
        version = state.read_head(connection)
        sent = False
        for model in models:
            if not model.pulled:
                continue
            for body in _table_chunks(connection, model, chunk_rows, max_bytes - REPLY_ROOM):
                sent = True
                yield {"version": version, **body}
        if not sent:
            yield {"version": version, "table": None, "rows": encode_changes([]), "total": 0}


def _table_chunks(
    connection: Connection, model: TrackedModel, chunk_rows: int, max_bytes: int
) -> Iterator[dict[str, Any]]:
    total = connection.execute(sa.select(sa.func.count()).select_from(model.table)).scalar_one()
    if total == 0:
        return
    columns = [column.name for column in model.table.c]
    for rows in current_values(connection, model, chunk_rows):
        for packed in encode_insert_parts(model.name, columns, rows, max_bytes):
            yield {"table": model.name, "rows": packed, "total": total}


def current_values(
    connection: Connection, model: TrackedModel, chunk_rows: int = REPAIR_CHUNK_ROWS
) -> Iterator[list[list[Any]]]:
    """The table's rows in key order, ``chunk_rows`` at a time, each ``[key, values]``
    with the values in column order, ready for the wire (as ``wire_row`` makes them)."""
    table = model.table
    names = [column.name for column in table.c]
    at = [names.index(name) for name in model.key_columns]
    convert = wire_converters(table)
    statement = sa.select(table).order_by(*(table.c[name] for name in model.key_columns))
    result = connection.execution_options(yield_per=chunk_rows).execute(statement)
    for partition in result.partitions():
        with collector_paused():  # many small lists, all alive until packed
            rows = []
            for row in partition:
                values = list(row)
                for position, to_wire in convert:
                    values[position] = to_wire(values[position])
                key = values[at[0]] if len(at) == 1 else [values[i] for i in at]
                rows.append([key, values])
        yield rows


def current_rows(
    connection: Connection, model: TrackedModel, chunk_rows: int = REPAIR_CHUNK_ROWS
) -> Iterator[list[Change]]:
    """The table's rows as inserts, in key order, ``chunk_rows`` at a time."""
    table = model.table
    statement = sa.select(table).order_by(*(table.c[name] for name in model.key_columns))
    result = connection.execution_options(yield_per=chunk_rows).execute(statement)
    for partition in result.mappings().partitions():
        changes = []
        for row in partition:
            values = wire_row(table, row)
            changes.append(Change(model.name, model.key_of(values), INSERT, 0, values))
        yield changes
