"""The merge's edges: load what the pure merge needs, apply the plan it returns."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dbsync_mq.core import codec
from dbsync_mq.core.merge import MergeInput, MergePlan, Rekey
from dbsync_mq.core.model import DELETE, INSERT, Change, Key, Row, RowKey
from dbsync_mq.storage import schema
from dbsync_mq.storage.apply import (
    batches,
    delete_rows,
    existing_keys,
    insert_rows,
    read_rows,
    update_rows,
)
from dbsync_mq.storage.engine import is_sqlite
from dbsync_mq.storage.local import rekey_operations
from dbsync_mq.storage.models import ModelSet, TrackedModel
from dbsync_mq.storage.values import to_wire


def _by_table(keys: Iterable[RowKey]) -> dict[str, list[Key]]:
    grouped: dict[str, list[Key]] = defaultdict(list)
    for table, key in keys:
        grouped[table].append(key)
    return grouped


def load_merge_input(
    connection: Connection,
    models: ModelSet,
    local: Sequence[Change],
    remote: Sequence[Change],
    server_rows: Mapping[RowKey, Row],
) -> MergeInput:
    """Read the local rows, key holders and free keys the merge rules look at."""
    local_keys = {c.row_key for c in local}
    wanted = {c.row_key for c in local if c.command != DELETE}
    wanted |= {c.row_key for c in remote if c.command == DELETE or c.row_key in local_keys}
    rows: dict[RowKey, Row] = {}
    for table, keys in _by_table(wanted).items():
        found = read_rows(connection, models.get(table), keys)
        rows.update(((table, key), row) for key, row in found.items())
    others = {c.row_key for c in remote} - wanted
    existing: set[RowKey] = set()
    for table, keys in _by_table(others).items():
        existing.update((table, key) for key in existing_keys(connection, models.get(table), keys))
    return MergeInput(
        local=local,
        remote=remote,
        local_rows=rows,
        existing=existing,
        server_rows=server_rows,
        unique_holders=_unique_holders(connection, models, remote),
        next_keys=_next_keys(connection, models, local, remote),
    )


def _unique_holders(
    connection: Connection, models: ModelSet, remote: Sequence[Change]
) -> dict[tuple[str, tuple[str, ...], tuple[Any, ...]], Key]:
    holders: dict[tuple[str, tuple[str, ...], tuple[Any, ...]], Key] = {}
    for model in models:
        shape = models.schema.tables[model.name]
        rows = [c.values for c in remote if c.table == model.name and c.values is not None]
        for columns in shape.unique if rows else ():
            wanted = {tuple(row.get(c) for c in columns) for row in rows}
            wanted = {values for values in wanted if None not in values}
            for key, values in _rows_holding(connection, model, columns, wanted):
                holders[model.name, columns, values] = key
    return holders


def _rows_holding(
    connection: Connection,
    model: TrackedModel,
    columns: tuple[str, ...],
    wanted: Iterable[tuple[Any, ...]],
) -> Iterable[tuple[Key, tuple[Any, ...]]]:
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
            yield key, tuple(to_wire(value) for value in row[len(keys) :])


def _next_keys(
    connection: Connection, models: ModelSet, local: Sequence[Change], remote: Sequence[Change]
) -> dict[str, int]:
    """First free integer key of each table where both sides inserted the same key."""
    local_inserts = {c.row_key for c in local if c.command == INSERT}
    tables = {c.table for c in remote if c.row_key in local_inserts}
    free = {}
    for table in tables:
        model = models.get(table)
        if not models.schema.tables[table].integer_key:
            continue
        column = model.table.c[model.key_columns[0]]
        highest = connection.execute(sa.select(sa.func.max(column))).scalar() or 0
        free[table] = max(highest, _sqlite_sequence(connection, table)) + 1
    return free


def _sqlite_sequence(connection: Connection, table: str) -> int:
    """The highest key SQLite's AUTOINCREMENT ever handed out: never reuse one."""
    if not is_sqlite(connection) or not sa.inspect(connection).has_table("sqlite_sequence"):
        return 0
    seq = connection.exec_driver_sql(
        "SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)
    ).scalar()
    return int(seq or 0)


def apply_plan(
    connection: Connection, models: ModelSet, plan: MergePlan, stamp: Callable[[], int]
) -> None:
    """Apply ``plan`` to the local tables and log, inside the caller's transaction.

    The rows are written with Core statements, so the change capture does not
    log them: they are the server's changes, not the node's.
    """
    if is_sqlite(connection):
        # Rows move in an order that may break references midway; only the end counts.
        connection.exec_driver_sql("PRAGMA defer_foreign_keys = ON")
    for rekey in plan.rekeys:
        _move_row(connection, models.get(rekey.table), rekey)
    for table, keys in _by_table(plan.deleted_first).items():
        delete_rows(connection, models.get(table), keys)
    inserts = dict(plan.inserts)
    updates: dict[RowKey, Row] = {}
    for key, row in plan.updates.items():
        (inserts if key in plan.deleted_first else updates)[key] = row
    _write(connection, models, inserts, insert_rows)
    _write(connection, models, updates, update_rows)
    for model in reversed(models.order):
        keys = [key for (table, key) in plan.deletes if table == model.name]
        if keys:
            delete_rows(connection, model, keys)
    _edit_log(connection, plan, stamp)


def _write(
    connection: Connection,
    models: ModelSet,
    rows: Mapping[RowKey, Row],
    write: Callable[[Connection, TrackedModel, Sequence[Row]], None],
) -> None:
    grouped: dict[str, list[Row]] = defaultdict(list)
    for (table, _key), row in rows.items():
        grouped[table].append(row)
    for model in models.order:
        if model.name in grouped:
            write(connection, model, grouped[model.name])


def _move_row(connection: Connection, model: TrackedModel, rekey: Rekey) -> None:
    column = model.table.c[model.key_columns[0]]
    connection.execute(model.table.update().where(column == rekey.old).values({column: rekey.new}))
    if is_sqlite(connection) and sa.inspect(connection).has_table("sqlite_sequence"):
        connection.exec_driver_sql(
            "UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = ?",
            (rekey.new, model.name),
        )
    rekey_operations(connection, model.name, rekey.old, rekey.new)


def _edit_log(connection: Connection, plan: MergePlan, stamp: Callable[[], int]) -> None:
    ops = schema.operations.c
    for table, keys in _by_table(plan.log_drop).items():
        encoded = [codec.encode_key(key) for key in keys]
        for chunk in batches(encoded):
            connection.execute(
                schema.operations.delete().where(ops.table_name == table, ops.row_key.in_(chunk))
            )
    if plan.log_add:
        connection.execute(
            schema.operations.insert(),
            [
                {
                    "table_name": entry.table,
                    "row_key": codec.encode_key(entry.key),
                    "command": entry.command,
                    "columns": codec.encode(sorted(entry.columns)) if entry.columns else None,
                    "hlc": entry.hlc if entry.hlc is not None else stamp(),
                }
                for entry in plan.log_add
            ],
        )
