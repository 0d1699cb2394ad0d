"""The merge's edges: load what the pure merge needs, apply the plan it returns.

A pull arrives as packed chunks. When the node has local changes, all of them
are merged at once (conflicts need the whole picture). When it has none, which
is the common case of a node catching up, each chunk is merged and written on
its own, so memory holds one decoded chunk at a time whatever the pull's size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dbsync_mq.core import codec
from dbsync_mq.core.changeset import decode_signed, signed_sections
from dbsync_mq.core.collisions import Rekey
from dbsync_mq.core.compression import compress_local
from dbsync_mq.core.merge import Conflict, MergeInput, MergePlan, Policy, plan_merge
from dbsync_mq.core.model import DELETE, INSERT, RESTORE, Change, Key, Operation, Row, RowKey
from dbsync_mq.errors import UniqueConstraintError
from dbsync_mq.storage import schema
from dbsync_mq.storage.apply import (
    RowWrites,
    batches,
    existing_keys,
    group_keys,
    insert_values,
    read_row_keys,
    reserve_keys,
    write_rows,
)
from dbsync_mq.storage.engine import is_sqlite
from dbsync_mq.storage.local import rekey_operations, remove_operations, unpushed
from dbsync_mq.storage.models import ModelSet, TrackedModel
from dbsync_mq.storage.unique import rows_holding


def load_merge_input(
    connection: Connection,
    models: ModelSet,
    local: Sequence[Change],
    remote: Sequence[Change],
    server_rows: Mapping[RowKey, Row],
    restored: AbstractSet[RowKey] = frozenset(),
) -> MergeInput:
    """Read the local rows, key holders and free keys the merge rules look at."""
    local_keys = {c.row_key for c in local}
    wanted = {c.row_key for c in local if c.command != DELETE}
    wanted |= {c.row_key for c in remote if c.command == DELETE or c.row_key in local_keys}
    rows = read_row_keys(connection, models, wanted)
    others = {c.row_key for c in remote} - wanted
    existing: set[RowKey] = set()
    for table, keys in group_keys(others).items():
        existing.update((table, key) for key in existing_keys(connection, models.get(table), keys))
    return MergeInput(
        local=local,
        remote=remote,
        local_rows=rows,
        existing=existing,
        server_rows=server_rows,
        unique_holders=_unique_holders(connection, models, remote),
        next_keys=_next_keys(connection, models, local, remote),
        restored=restored,
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
            for key, values in rows_holding(connection, model, columns, wanted):
                holders[model.name, columns, values] = key
    return holders


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
    writes = RowWrites(
        dict(plan.inserts), dict(plan.updates), set(plan.deletes), set(plan.deleted_first)
    )
    write_rows(connection, models, writes)
    _edit_log(connection, plan, stamp)


def _move_row(connection: Connection, model: TrackedModel, rekey: Rekey) -> None:
    """Give a local row (and its log entries) its new key; composite keys move as a whole."""
    columns = [model.table.c[name] for name in model.key_columns]
    old = rekey.old if isinstance(rekey.old, tuple) else (rekey.old,)
    new = rekey.new if isinstance(rekey.new, tuple) else (rekey.new,)
    connection.execute(
        model.table.update()
        .where(*(column == value for column, value in zip(columns, old, strict=True)))
        .values(dict(zip(columns, new, strict=True)))
    )
    if isinstance(rekey.new, int) and _sqlite_sequence(connection, model.name):
        connection.exec_driver_sql(
            "UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = ?", (rekey.new, model.name)
        )
    rekey_operations(connection, model.name, rekey.old, rekey.new)


def _edit_log(connection: Connection, plan: MergePlan, stamp: Callable[[], int]) -> None:
    ops = schema.operations.c
    for table, keys in group_keys(plan.log_drop).items():
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


@dataclass
class Pulled:
    """A pull as received: the version reached, the packed chunks, the parents the
    server sent for the node's unpushed deletes, and the node's own request ids."""

    version: int
    chunks: list[bytes] = field(default_factory=list)
    parents: dict[RowKey, Row] = field(default_factory=dict)
    own: set[str] = field(default_factory=set)


@dataclass
class Merged:
    """What merging a pull did: changes received, conflicts, the remote changes applied
    as they were (for extension callbacks) and the highest clock stamp seen."""

    changes: int = 0
    conflicts: list[Conflict] = field(default_factory=list)
    applied: list[Change] = field(default_factory=list)
    max_hlc: int = 0

    def add(self, plan: MergePlan, changes: list[Change]) -> None:
        self.changes += len(changes)
        self.conflicts.extend(plan.conflicts)
        self.applied.extend(_applied_as_they_were(plan, changes))
        self.max_hlc = max(self.max_hlc, plan.max_hlc)


def merge_pulled(
    connection: Connection,
    models: ModelSet,
    pulled: Pulled,
    policy: Policy,
    stamp: Callable[[], int],
    operations: Sequence[Operation] | None = None,
) -> Merged:
    """Merge a pull into the local tables, inside the caller's write transaction.

    ``operations``: the node's unpushed log, when the caller read it in this transaction.
    """
    if operations is None:
        operations = unpushed(connection)
    local_changes = compress_local(operations)
    _forget_vanished(connection, operations, local_changes)
    merged = Merged()
    if local_changes:
        changes = [change for chunk in pulled.chunks for change in decode_signed(chunk)]
        restored = {
            op.row_key for op in operations if op.command == INSERT and op.columns == RESTORE
        }
        _merge_batch(
            connection,
            models,
            local_changes,
            changes,
            pulled.parents,
            policy,
            stamp,
            merged,
            restored,
        )
        return merged
    deferred: list[Change] = []
    for chunk in pulled.chunks:
        if insert_new_rows(connection, models, chunk, merged):
            continue
        changes = decode_signed(chunk)
        try:
            _merge_batch(connection, models, [], changes, {}, policy, stamp, merged)
        except UniqueConstraintError:
            # A unique value moving between rows of different chunks: merge them together.
            deferred.extend(changes)
    if deferred:
        _merge_batch(connection, models, [], deferred, {}, policy, stamp, merged)
    return merged


def insert_new_rows(connection: Connection, models: ModelSet, chunk: bytes, merged: Merged) -> bool:
    """Write a chunk of a pull into a node without local changes at once, when merging it
    could only insert its rows: inserts of rows the node does not have, into tables
    without unique constraints, carrying no extension data. Returns whether it did.

    The rows go from the packed arrays to the driver, with no change or mapping built
    for each: what ``plan_merge`` would plan for such a chunk is exactly these inserts.
    """
    sections = signed_sections(chunk)
    if not all(_only_new_rows(connection, models, table, rows) for table, _, rows in sections):
        return False
    if is_sqlite(connection):
        connection.exec_driver_sql("PRAGMA defer_foreign_keys = ON")
    for model in models.order:  # parents first
        for table, columns, rows in sections:
            if table == model.name:
                insert_values(connection, model, columns, [row[4] for row in rows])
    for _table, _columns, rows in sections:
        merged.changes += len(rows)
        for row in rows:
            stamps = row[3].values() if row[3] else ()
            merged.max_hlc = max(merged.max_hlc, row[2], *stamps)
    return True


def _only_new_rows(connection: Connection, models: ModelSet, table: str, rows: list[Any]) -> bool:
    """Whether every row is a plain insert of a row the node does not have, into a table
    that has no unique constraint (whose values could move between rows)."""
    model = models.by_table.get(table)
    if model is None or models.schema.tables[table].unique:
        return False
    if any(len(row) != 5 or row[0] != INSERT or row[4] is None for row in rows):
        return False
    keys = [tuple(row[1]) if isinstance(row[1], list) else row[1] for row in rows]
    return not existing_keys(connection, model, keys)


def _restored(operations: Sequence[Operation]) -> set[RowKey]:
    """Rows the log puts back (``RESTORE``), not new rows."""
    return {op.row_key for op in operations if op.command == INSERT and op.columns == RESTORE}


def _forget_vanished(
    connection: Connection, operations: Sequence[Operation], local_changes: Sequence[Change]
) -> None:
    """Drop the log entries of rows inserted and deleted here and never pushed.

    Nothing of them is to be pushed; left in the log, they would be read as the
    history of a row the pull may now bring under the same key, and a later delete
    of that row would compress into nothing with them.
    """
    kept = {change.row_key for change in local_changes}
    vanished = [op.order for op in operations if op.row_key not in kept]
    if vanished:
        remove_operations(connection, vanished)


def _merge_batch(
    connection: Connection,
    models: ModelSet,
    local_changes: list[Change],
    changes: list[Change],
    parents: Mapping[RowKey, Row],
    policy: Policy,
    stamp: Callable[[], int],
    merged: Merged,
    restored: AbstractSet[RowKey] = frozenset(),
) -> None:
    data = load_merge_input(connection, models, local_changes, changes, parents, restored)
    plan = plan_merge(models.schema, data, policy)
    apply_plan(connection, models, plan, stamp)
    # A key the server gave up stays taken here too: a new row must not reuse it.
    deleted = group_keys(change.row_key for change in changes if change.command == DELETE)
    for table, keys in deleted.items():
        reserve_keys(connection, models.get(table), keys)
    merged.add(plan, changes)


def _applied_as_they_were(plan: MergePlan, changes: list[Change]) -> list[Change]:
    """Remote changes the merge applied unchanged: their extensions follow them."""
    applied = []
    for change in changes:
        key = change.row_key
        if change.command == DELETE:
            if key in plan.deletes:
                applied.append(change)
        elif change.extensions and change.values in (plan.inserts.get(key), plan.updates.get(key)):
            applied.append(change)
    return applied
