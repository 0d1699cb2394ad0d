"""Reading rows by key and applying changes, with batched Core statements.

Changes are applied in an order foreign keys accept: inserts parents first,
then updates, then deletes children first. Each kind of change on one table is
one ``executemany``, never a round trip per row.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dbsync_mq.core.model import DELETE, INSERT, Change, Key, Row, RowKey
from dbsync_mq.storage.driver import key_lookup, writer_for
from dbsync_mq.storage.engine import is_sqlite
from dbsync_mq.storage.models import ModelSet, TrackedModel
from dbsync_mq.storage.values import stored_row, wire_converters, wire_row

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
    table = model.table
    names = [column.name for column in table.c]
    at = [names.index(name) for name in model.key_columns]
    convert = wire_converters(table)
    found: dict[Key, Row] = {}
    lookup = key_lookup(connection.dialect, table, model.key_columns)
    for chunk in batches(list(keys)):
        if lookup is not None and lookup.rows_sql is not None:
            rows: Sequence[Sequence[Any]] = lookup.rows(connection, chunk)
        else:
            statement = sa.select(table).where(_key_condition(model, chunk))
            rows = connection.execute(statement).all()  # fetchall: not a call per row
        for row in rows:
            values = row if isinstance(row, list) else list(row)
            for position, to_wire in convert:  # as wire_row does, a column at a time
                values[position] = to_wire(values[position])
            key = values[at[0]] if len(at) == 1 else tuple(values[i] for i in at)
            found[key] = dict(zip(names, values, strict=True))
    return found


def read_row_keys(
    connection: Connection, models: ModelSet, keys: Iterable[RowKey]
) -> dict[RowKey, Row]:
    """The current rows with the given ``(table, key)`` identities, across tables."""
    return {
        (table, key): row
        for table, table_keys in group_keys(keys).items()
        for key, row in read_rows(connection, models.get(table), table_keys).items()
    }


def existing_keys(connection: Connection, model: TrackedModel, keys: Iterable[Key]) -> set[Key]:
    """Which of ``keys`` exist in ``model``'s table."""
    columns = [model.table.c[name] for name in model.key_columns]
    keys = list(keys)
    found: set[Key] = set()
    if not keys:
        return found
    if len(keys) > KEY_BATCH and connection.execute(sa.select(columns[0]).limit(1)).first() is None:
        return found  # an empty table, as a new node's: no key to look for
    lookup = key_lookup(connection.dialect, model.table, model.key_columns)
    for chunk in batches(keys):
        if lookup is not None:
            found.update(lookup.existing(connection, chunk))
            continue
        statement = sa.select(*columns).where(_key_condition(model, chunk))
        for row in connection.execute(statement).all():
            found.add(row[0] if len(columns) == 1 else tuple(row))
    return found


@dataclass
class RowWrites:
    """Row states to reach: rows to insert, to update, to delete, and rows to move.

    ``moving`` names rows whose unique values pass to other rows of the same
    batch: they are deleted first (with every row that references them lifted
    out and put back), then inserted with their new values.
    """

    inserts: dict[RowKey, Row] = field(default_factory=dict)
    updates: dict[RowKey, Row] = field(default_factory=dict)
    deletes: set[RowKey] = field(default_factory=set)
    moving: set[RowKey] = field(default_factory=set)

    @classmethod
    def of(cls, changes: Iterable[Change], moving: AbstractSet[RowKey] = frozenset()) -> RowWrites:
        writes = cls(moving=set(moving))
        for change in changes:
            if change.command == DELETE:
                writes.deletes.add(change.row_key)
            elif change.command == INSERT:
                writes.inserts[change.row_key] = change.values or {}
            else:
                writes.updates[change.row_key] = change.values or {}
        return writes


def apply_changes(
    connection: Connection,
    models: ModelSet,
    changes: Iterable[Change],
    moving: AbstractSet[RowKey] = frozenset(),
) -> None:
    """Apply row changes in foreign-key order, one batched statement per table and kind."""
    write_rows(connection, models, RowWrites.of(changes, moving))


def write_rows(connection: Connection, models: ModelSet, writes: RowWrites) -> None:
    """Reach the row states of ``writes``: inserts parents first, then updates, then
    deletes children first; moving rows (and what references them) go out first."""
    inserts, updates, deletes = writes.inserts, writes.updates, writes.deletes
    if writes.moving:
        inserts, updates, deletes = dict(inserts), dict(updates), set(deletes)
        lifted = _lift_out(connection, models, writes.moving)
        for key in writes.moving | lifted.keys():
            final = inserts.pop(key, None) or updates.pop(key, None)
            if final is None and key not in deletes:
                final = lifted.get(key)
            deletes.discard(key)
            if final is not None:
                inserts[key] = final
    _in_table_order(models.order, _group_rows(inserts), partial(insert_rows, connection))
    _in_table_order(models.order, _group_rows(updates), partial(update_rows, connection))
    doomed = group_keys(deletes)
    _in_table_order(reversed(models.order), doomed, partial(delete_rows, connection))


def _in_table_order(
    order: Iterable[TrackedModel],
    grouped: Mapping[str, Sequence[Any]],
    write: Callable[[TrackedModel, Sequence[Any]], None],
) -> None:
    for model in order:
        if model.name in grouped:
            write(model, grouped[model.name])


def _lift_out(
    connection: Connection, models: ModelSet, keys: AbstractSet[RowKey]
) -> dict[RowKey, Row]:
    """Delete ``keys`` and, deepest first, every row that references them; return the
    referencing rows as they were, to be put back."""
    levels: list[dict[RowKey, Row]] = []
    seen = set(keys)
    frontier = set(keys)
    while frontier:
        level: dict[RowKey, Row] = {}
        for table, parents in group_keys(frontier).items():
            for ref in models.schema.references_to(table):
                child = models.get(ref.table)
                column = child.table.c[ref.columns[0]]
                for chunk in batches(parents):
                    rows = connection.execute(sa.select(child.table).where(column.in_(chunk)))
                    for row in rows.mappings():
                        values = wire_row(child.table, row)
                        level.setdefault((child.name, child.key_of(values)), values)
        level = {key: row for key, row in level.items() if key not in seen}
        seen.update(level)
        if level:
            levels.append(level)
        frontier = set(level)
    for level in reversed(levels):
        _delete_keys(connection, models, level.keys())
    _delete_keys(connection, models, keys)
    return {key: row for level in levels for key, row in level.items()}


def _delete_keys(connection: Connection, models: ModelSet, keys: Iterable[RowKey]) -> None:
    _in_table_order(reversed(models.order), group_keys(keys), partial(delete_rows, connection))


def _group_rows(rows: Mapping[RowKey, Row]) -> dict[str, list[Row]]:
    grouped: dict[str, list[Row]] = defaultdict(list)
    for (table, _key), row in rows.items():
        grouped[table].append(row)
    return grouped


def group_keys(keys: Iterable[RowKey]) -> dict[str, list[Key]]:
    """Row keys by table."""
    grouped: dict[str, list[Key]] = defaultdict(list)
    for table, key in keys:
        grouped[table].append(key)
    return grouped


WRITE_BATCH: Final = 5_000
"""Rows converted and sent per statement: what a large write holds at once."""


def insert_rows(connection: Connection, model: TrackedModel, rows: Sequence[Row]) -> None:
    """Insert ``rows``, grouped by the set of columns they carry (parents first in a tree)."""
    if model.self_references and len(rows) > 1:
        for row in _parents_first(model, [stored_row(model.table, row) for row in rows]):
            connection.execute(model.table.insert(), [row])
    else:
        for batch in batches(rows, WRITE_BATCH):
            for columns, group in _by_columns(batch).items():
                writer = writer_for(connection.dialect, model.table, columns)
                if writer is None:
                    converted = [stored_row(model.table, row) for row in group]
                    connection.execute(model.table.insert(), converted)
                else:
                    writer.insert(connection, group)  # datetimes in UTC on the way
    if connection.dialect.name == "postgresql":
        _advance_sequence(connection, model, rows)


def insert_values(
    connection: Connection,
    model: TrackedModel,
    columns: Sequence[str],
    rows: Sequence[Sequence[Any]],
) -> None:
    """Insert rows given as lists of values in the order of ``columns`` (a row may be
    shorter: the columns it lacks take their defaults), without a mapping per row."""
    by_width: dict[int, list[Sequence[Any]]] = defaultdict(list)
    for row in rows:
        by_width[len(row)].append(row)
    for width, group in by_width.items():
        names = tuple(columns[:width])
        writer = writer_for(connection.dialect, model.table, names)
        if writer is None or model.self_references:
            insert_rows(connection, model, [dict(zip(names, row, strict=True)) for row in group])
            continue
        writer.insert(connection, group, positional=True)
        key = model.key_columns[0]
        if connection.dialect.name == "postgresql" and key in names:
            at = names.index(key)
            _advance_sequence(connection, model, [{key: row[at]} for row in group])


def reserve_keys(connection: Connection, model: TrackedModel, keys: Sequence[Key]) -> None:
    """Move the table's key allocator past ``keys``, keys of rows deleted elsewhere: an
    insert here must not take one again, since a row elsewhere may still reference it.

    PostgreSQL: the key's sequence. SQLite: ``sqlite_sequence``, for a table created
    with ``AUTOINCREMENT`` (without it, SQLite reuses the highest key once deleted).
    """
    top = max((key for key in keys if type(key) is int), default=None)
    if len(model.key_columns) != 1 or top is None:
        return
    if connection.dialect.name == "postgresql":
        _advance_sequence(connection, model, [{model.key_columns[0]: top}])
    elif is_sqlite(connection) and model.table.kwargs.get("sqlite_autoincrement"):
        name = model.table.name
        connection.exec_driver_sql(
            "INSERT INTO sqlite_sequence (name, seq) SELECT ?, 0 "
            "WHERE NOT EXISTS (SELECT 1 FROM sqlite_sequence WHERE name = ?)",
            (name, name),
        )
        connection.exec_driver_sql(
            "UPDATE sqlite_sequence SET seq = ? WHERE name = ? AND seq < ?", (top, name, top)
        )


def _advance_sequence(connection: Connection, model: TrackedModel, rows: Sequence[Row]) -> None:
    """Move the key's sequence past the keys just inserted, so that the server's own
    inserts (which draw from it) never reuse one."""
    if len(model.key_columns) != 1:
        return
    column = model.key_columns[0]
    keys = [row[column] for row in rows if isinstance(row.get(column), int)]
    if not keys:
        return
    sequence = _key_sequence(connection, model.table, column)
    if sequence is not None:
        connection.exec_driver_sql(
            "SELECT setval(%(sequence)s::regclass,"
            " greatest(%(key)s, nextval(%(sequence)s::regclass)))",
            {"sequence": sequence, "key": max(keys)},
        )


def _key_sequence(connection: Connection, table: sa.Table, column: str) -> str | None:
    """The sequence that feeds ``column`` (``None``: none), looked up once per database
    connection: every push that inserts rows would otherwise pay a round trip for it."""
    known: dict[tuple[str, str], str | None] = connection.info.setdefault(_SEQUENCES, {})
    entry = (table.fullname, column)
    if entry not in known:
        known[entry] = connection.execute(
            sa.select(sa.func.pg_get_serial_sequence(table.fullname, column))
        ).scalar()
    return known[entry]


_SEQUENCES: Final = "dbsync_mq.key_sequences"


def _parents_first(model: TrackedModel, rows: Sequence[Row]) -> list[Row]:
    """Rows of a self-referencing table ordered so that a row follows the rows it references."""
    by_key = {model.key_of(row): row for row in rows}
    ordered: list[Row] = []
    placed: set[Key] = set()

    def place(key: Key, path: frozenset[Key]) -> None:
        if key in placed or key in path:
            return  # placed already, or a cycle: the database will say so
        for column in model.self_references:
            parent = by_key[key].get(column)
            if parent in by_key:
                place(parent, path | {key})
        placed.add(key)
        ordered.append(by_key[key])

    for key in by_key:
        place(key, frozenset())
    return ordered


def update_rows(connection: Connection, model: TrackedModel, rows: Sequence[Row]) -> None:
    """Update the rows identified by their keys to the values they carry."""
    table = model.table
    where = sa.and_(*(table.c[name] == sa.bindparam(f"k_{name}") for name in model.key_columns))
    for batch in batches(rows, WRITE_BATCH):
        _update_batch(connection, model, where, [stored_row(table, row) for row in batch])


def _update_batch(
    connection: Connection, model: TrackedModel, where: Any, rows: Sequence[Row]
) -> None:
    table = model.table
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


def delete_all(connection: Connection, models: Sequence[TrackedModel]) -> None:
    """Empty the tables of ``models`` (given parents first), children first."""
    for model in reversed(models):
        connection.execute(model.table.delete())


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
