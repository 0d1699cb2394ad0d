"""Insert collisions: the node and the server inserted rows under the same key.

A node that inserts offline takes the next free integer key, which another
node took too: the two rows are different rows. The node's row moves to a
fresh key (above every key the node or the pull knows), and the server's row
takes the old one. Every local row that references a moved row follows it: its
reference columns are rewritten, and a row whose own key holds such a
reference (an association row keyed by its parent) moves with it.

Every move is decided before any row is rewritten, so neither the order of the
tables in the pull nor the depth of the rows (children, grandchildren, trees)
changes the outcome.

Keys that cannot move (composite, UUID or other natural keys) name the same
row on both sides: two inserts of one such key are two versions of one row,
which the merge settles like any direct conflict.
"""

from __future__ import annotations

from collections.abc import Mapping
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field, replace
from typing import Any

from dbsync_mq.core.model import INSERT, Change, Key, Reference, Row, RowKey, Schema


@dataclass(frozen=True)
class Rekey:
    """Move a local row (and its log entries) from ``old`` to ``new``."""

    table: str
    old: Key
    new: Key


@dataclass
class Moves:
    """The local side after the moves: changes and rows under their new keys."""

    rekeys: list[Rekey] = field(default_factory=list)
    local: dict[RowKey, Change] = field(default_factory=dict)
    rows: dict[RowKey, Row] = field(default_factory=dict)
    rewritten: dict[RowKey, Row] = field(default_factory=dict)
    """Local rows whose reference columns changed, under their new keys: to update."""


def key_references(schema: Schema, table: str) -> tuple[Reference, ...]:
    """References of ``table`` made of (some of) its own key columns."""
    keys = set(schema.tables[table].key_columns)
    return tuple(ref for ref in schema.references_from(table) if keys & set(ref.columns))


def movable(schema: Schema, table: str) -> bool:
    """Whether a local row of ``table`` moves to a fresh key when its key collides."""
    return schema.tables[table].integer_key and not key_references(schema, table)


def move_collisions(
    schema: Schema,
    local: Mapping[RowKey, Change],
    remote: Mapping[RowKey, Change],
    rows: Mapping[RowKey, Row],
    next_keys: Mapping[str, int],
    restored: AbstractSet[RowKey] = frozenset(),
) -> Moves:
    """Move the local inserts whose keys the remote side used too, and what follows.

    ``restored``: local inserts that put back a row the server deleted; the same row,
    they never move.
    """
    moves = _colliding(schema, local, remote, next_keys, restored)
    if not moves:
        return Moves(local=dict(local), rows=dict(rows))
    _follow_in_keys(schema, local, rows, moves)
    result = Moves()
    for row_key, change in local.items():
        table = row_key[0]
        new = moves.get(row_key, row_key[1])
        if new != row_key[1]:
            result.rekeys.append(Rekey(table, row_key[1], new))
        result.local[table, new] = replace(change, key=new)
        row = rows.get(row_key)
        if row is None:
            continue
        moved = {**row, **_key_values(schema, table, new)}
        final = _rewrite(schema.references_from(table), moved, moves)
        result.rows[table, new] = final
        if final != moved:
            result.rewritten[table, new] = final
    for row_key, row in rows.items():  # rows of remote keys the node did not change
        if row_key not in moves:
            result.rows.setdefault(row_key, row)
    return result


def _colliding(
    schema: Schema,
    local: Mapping[RowKey, Change],
    remote: Mapping[RowKey, Change],
    next_keys: Mapping[str, int],
    restored: AbstractSet[RowKey],
) -> dict[RowKey, Key]:
    moves: dict[RowKey, Key] = {}
    fresh: dict[str, int] = {}
    for row_key, change in local.items():
        # A new local row is a row the server never saw: whatever the server did under
        # its key (an insert, or a delete of a row inserted since this node's version),
        # that was another row, which children elsewhere may still reference.
        if change.command != INSERT or row_key not in remote or row_key in restored:
            continue
        table = row_key[0]
        if not movable(schema, table):
            continue
        if table not in fresh:
            remote_keys = (k for (t, k) in remote if t == table and isinstance(k, int))
            fresh[table] = max(next_keys.get(table, 1) - 1, *remote_keys, 0)
        fresh[table] += 1
        moves[row_key] = fresh[table]
    return moves


def _follow_in_keys(
    schema: Schema,
    local: Mapping[RowKey, Change],
    rows: Mapping[RowKey, Row],
    moves: dict[RowKey, Key],
) -> None:
    """Add the moves of local inserts whose key holds a reference to a moved row."""
    candidates = [
        (row_key, refs)
        for row_key, change in local.items()
        if change.command == INSERT
        and row_key in rows
        and (refs := key_references(schema, row_key[0]))
    ]
    found = True
    while found:  # an association row of an association row moves one round later
        found = False
        for row_key, refs in candidates:
            if row_key in moves:
                continue
            shape = schema.tables[row_key[0]]
            new = _key_of(shape.key_columns, _rewrite(refs, rows[row_key], moves))
            if new != row_key[1]:
                moves[row_key] = new
                found = True


def _rewrite(refs: tuple[Reference, ...], row: Row, moves: Mapping[RowKey, Key]) -> Row:
    """``row`` with every reference to a moved row pointing at its new key."""
    rewritten: dict[str, object] | None = None
    for ref in refs:
        target = ref.target(row)
        if target is None:
            continue
        new = moves.get((ref.referred_table, target))
        if new is None:
            continue
        rewritten = dict(row) if rewritten is None else rewritten
        rewritten.update(zip(ref.columns, _parts(new, len(ref.columns)), strict=True))
    return row if rewritten is None else rewritten


def _key_values(schema: Schema, table: str, key: Key) -> dict[str, object]:
    columns = schema.tables[table].key_columns
    return dict(zip(columns, _parts(key, len(columns)), strict=True))


def _parts(key: Key, width: int) -> tuple[Any, ...]:
    """The values of a key's columns: a composite key is a tuple, another key one value."""
    return key if width > 1 and isinstance(key, tuple) else (key,)


def _key_of(columns: tuple[str, ...], row: Row) -> Key:
    if len(columns) == 1:
        return row[columns[0]]  # type: ignore[no-any-return]
    return tuple(row[column] for column in columns)
