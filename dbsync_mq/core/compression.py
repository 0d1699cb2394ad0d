"""Compression: many operations on one row become at most one change.

Local rules (a node's own unpushed log, in order)::

    i u*    -> i          u u*  -> u
    i u* d  -> nothing    u* d  -> d

A local sequence matching no rule (a write after a delete, a second insert) is
the trace of writes outside SQLAlchemy or of a reused key: it is logged as a
warning naming the row and resolved to the command that describes the row's
state now, never a crash.

Remote rules (the server's versions since a node's last pull), by the first and
last command of each row::

    first i, last d  -> nothing      first u or d, last d -> d
    first i          -> i            first u, last not d  -> u
                                     first d, last not d  -> u

An update's clocks name the columns it changed; an update without clocks
changed every column (its columns are unknown, or the row was inserted again).
A compressed remote update names every column written since the node's version,
and every column of a row inserted or deleted in between. What the pulling node
wrote itself is not news to it (``compress_pull``): a row it wrote last is left
out, a column it wrote last is not named, and a row it inserted is no insert to it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Final, Literal

from dbsync_mq.core.model import DELETE, INSERT, UPDATE, Change, Command, Operation, Row, RowKey

logger = logging.getLogger(__name__)

_GONE: Final = "gone"
"""State of a row inserted and deleted within the compressed sequence."""

_State = Command | Literal["gone"]


@dataclass(slots=True)
class _LocalRow:
    state: _State
    hlc: int
    last_order: int
    clocks: dict[str, int] = field(default_factory=dict)
    whole: bool = False
    """Every column changed: the row was inserted again, or an update named no column."""


@dataclass(slots=True)
class _RemoteRow:
    first: Command
    last: Command
    hlc: int
    clocks: dict[str, int] = field(default_factory=dict)
    values: Row | None = None
    extensions: dict[str, Any] | None = None
    last_own: bool = False
    whole_hlc: int | None = None
    """Stamp of the last write of the whole row (insert, delete, update of unknown columns)."""
    whole_own: bool = False
    own: dict[str, bool] = field(default_factory=dict)
    """Whether the pulling node wrote each column last, since the last whole write."""

    def write(self, change: Change, own: bool) -> None:
        self.last, self.last_own = change.command, own
        self.hlc = max(self.hlc, change.hlc)
        if change.values is not None:
            self.values = change.values
        if change.extensions:
            self.extensions = {**(self.extensions or {}), **change.extensions}
        _merge_clocks(self.clocks, change.clocks)
        if change.command == UPDATE and change.clocks:
            self.own.update(dict.fromkeys(change.clocks, own))
        else:
            self.whole_hlc, self.whole_own = change.hlc, own
            self.own.clear()

    def compressed(self, table: str, key: Any) -> Change | None:
        """The one change that stands for every write of the row; ``None`` for a row
        last written by the pulling node."""
        command = _remote_command(self.first, self.last)
        if self.last_own:
            return None
        clocks = self.changed_columns() if command == UPDATE else self.clocks
        values = None if command == DELETE else self.values
        extensions = None if command == DELETE else self.extensions
        return Change(table, key, command, self.hlc, values, clocks, extensions)

    def changed_columns(self) -> dict[str, int]:
        """The columns others wrote last, with their stamps."""
        stamps: dict[str, int] = {}
        if self.whole_hlc is not None and not self.whole_own:
            stamps = dict.fromkeys(self.values or (), self.whole_hlc)
        for column, own in self.own.items():
            if own:
                stamps.pop(column, None)
            else:
                stamps[column] = max(self.clocks[column], stamps.get(column, -1))
        return stamps


def _merge_clocks(into: dict[str, int], clocks: Mapping[str, int]) -> None:
    for column, hlc in clocks.items():
        if hlc > into.get(column, -1):
            into[column] = hlc


_REGULAR: Final[dict[tuple[_State, Command], _State]] = {
    (INSERT, UPDATE): INSERT,
    (INSERT, DELETE): _GONE,
    (UPDATE, UPDATE): UPDATE,
    (UPDATE, DELETE): DELETE,
}


def _next_local_state(row: RowKey, state: _State, command: Command) -> _State:
    regular = _REGULAR
    if (state, command) in regular:
        return regular[state, command]
    logger.warning(
        "operation log of %s row %r has %r after %r: written outside SQLAlchemy or key reused",
        row[0],
        row[1],
        command,
        state,
    )
    if command == DELETE:
        return state
    # The row exists now: it is new to the server only if it never existed there.
    return INSERT if state in (INSERT, _GONE) else UPDATE


def compress_local(operations: Iterable[Operation]) -> list[Change]:
    """Compress a node's log to one change per row, ordered by the row's last operation."""
    operations = list(operations)
    if len({op.row_key for op in operations}) == len(operations):
        return _one_per_row(operations)
    rows: dict[RowKey, _LocalRow] = {}
    for op in operations:
        row = rows.get(op.row_key)
        if row is None:
            rows[op.row_key] = row = _LocalRow(op.command, op.hlc, op.order)
        else:
            state = _next_local_state(op.row_key, row.state, op.command)
            row.whole |= op.command == INSERT and state == UPDATE
            row.state = state
            row.hlc = max(row.hlc, op.hlc)
            row.last_order = op.order
        if op.command == UPDATE:
            row.whole |= not op.columns
            _merge_clocks(row.clocks, dict.fromkeys(op.columns, op.hlc))
    compressed = []
    for (table, key), row in sorted(rows.items(), key=lambda item: item[1].last_order):
        if row.state == _GONE:
            continue
        # An update without clocks changed every column.
        clocks = row.clocks if row.state == UPDATE and not row.whole else {}
        compressed.append(Change(table, key, row.state, row.hlc, clocks=clocks))
    return compressed


def _one_per_row(operations: list[Operation]) -> list[Change]:
    """``compress_local`` of a log where no row appears twice: each operation is its
    row's change (an update names the columns it changed, or none: every column)."""
    return [
        Change(
            op.table,
            op.key,
            op.command,
            op.hlc,
            clocks=dict.fromkeys(op.columns, op.hlc) if op.command == UPDATE else {},
        )
        for op in sorted(operations, key=lambda op: op.order)
    ]


def compress_remote(changes: Iterable[Change]) -> list[Change]:
    """Compress the server's changes, in version order, to one change per row."""
    return compress_pull((change, False) for change in changes)


def compress_pull(changes: Iterable[tuple[Change, bool]]) -> list[Change]:
    """Compress the changes a node pulls, in version order, each paired with whether
    the node itself wrote it, to one change per row of what others wrote."""
    rows: dict[RowKey, _RemoteRow] = {}
    for change, own in changes:
        row = rows.get(change.row_key)
        if row is None:
            # A row the node inserted itself is no new row to it.
            first = UPDATE if own and change.command == INSERT else change.command
            rows[change.row_key] = row = _RemoteRow(first, first, change.hlc)
        row.write(change, own)
    result = []
    for (table, key), row in rows.items():
        compressed = row.compressed(table, key)
        if compressed is not None:
            result.append(compressed)
    return result


def _remote_command(first: Command, last: Command) -> Command:
    # A row inserted and deleted in the range still arrives, as a delete: its key was
    # taken. A node's new row under that key moves to a fresh key, as for any insert
    # collision, and merging the delete moves the node's key sequence past it.
    if last == DELETE:
        return DELETE
    return INSERT if first == INSERT else UPDATE


def last_occurrences(changes: Iterable[Change]) -> dict[RowKey, int]:
    """For each row, the position of its last change in ``changes`` (counted from 0).

    The first pass of ``compress_pull_stream``: all it keeps is a key and a number
    per row, not the rows.
    """
    return {change.row_key: position for position, change in enumerate(changes)}


def compress_pull_stream(
    changes: Iterable[tuple[Change, bool]], last: Mapping[RowKey, int]
) -> Iterator[Change]:
    """``compress_pull`` without holding the range: each row's compressed change is
    given as soon as its last change (by ``last_occurrences`` of the same sequence)
    is read. Until then a row keeps only its commands, stamps and column owners;
    its values are those of its last change."""
    open_rows: dict[RowKey, _RemoteRow] = {}
    for position, (change, own) in enumerate(changes):
        row = open_rows.get(change.row_key)
        if row is None:
            first = UPDATE if own and change.command == INSERT else change.command
            row = open_rows[change.row_key] = _RemoteRow(first, first, change.hlc)
        finishing = last[change.row_key] == position
        row.write(change if finishing else replace(change, values=None), own)
        if finishing:
            del open_rows[change.row_key]
            compressed = row.compressed(*change.row_key)
            if compressed is not None:
                yield compressed
