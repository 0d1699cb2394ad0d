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
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
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


@dataclass(slots=True)
class _RemoteRow:
    first: Command
    last: Command
    hlc: int
    clocks: dict[str, int] = field(default_factory=dict)
    values: Row | None = None
    extensions: dict[str, Any] | None = None


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
    rows: dict[RowKey, _LocalRow] = {}
    for op in operations:
        row = rows.get(op.row_key)
        if row is None:
            rows[op.row_key] = row = _LocalRow(op.command, op.hlc, op.order)
        else:
            row.state = _next_local_state(op.row_key, row.state, op.command)
            row.hlc = max(row.hlc, op.hlc)
            row.last_order = op.order
        if op.command == UPDATE:
            _merge_clocks(row.clocks, dict.fromkeys(op.columns, op.hlc))
    compressed = []
    for (table, key), row in sorted(rows.items(), key=lambda item: item[1].last_order):
        if row.state == _GONE:
            continue
        clocks = row.clocks if row.state == UPDATE else {}
        compressed.append(Change(table, key, row.state, row.hlc, clocks=clocks))
    return compressed


def compress_remote(changes: Iterable[Change]) -> list[Change]:
    """Compress the server's changes, in version order, to one change per row."""
    rows: dict[RowKey, _RemoteRow] = {}
    for change in changes:
        row = rows.get(change.row_key)
        if row is None:
            rows[change.row_key] = row = _RemoteRow(change.command, change.command, change.hlc)
        row.last = change.command
        row.hlc = max(row.hlc, change.hlc)
        if change.values is not None:
            row.values = change.values
        if change.extensions:
            row.extensions = {**(row.extensions or {}), **change.extensions}
        _merge_clocks(row.clocks, change.clocks)
    result = []
    for (table, key), row in rows.items():
        command = _remote_command(row.first, row.last)
        if command is None:
            continue
        clocks = row.clocks
        if command == UPDATE and row.first == DELETE and row.values is not None:
            clocks = dict.fromkeys(row.values, row.hlc)
        values = None if command == DELETE else row.values
        extensions = None if command == DELETE else row.extensions
        result.append(Change(table, key, command, row.hlc, values, clocks, extensions))
    return result


def _remote_command(first: Command, last: Command) -> Command | None:
    if first == INSERT:
        return None if last == DELETE else INSERT
    if last == DELETE:
        return DELETE
    return UPDATE
