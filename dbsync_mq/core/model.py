"""The plain data every other module speaks: operations, changes, keys.

An ``Operation`` is one entry of a node's local log: which row, which command,
which columns, when. A ``Change`` is what travels: a row-level command with the
row's state. Both are frozen; merging and compressing build new ones.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Final, Literal

INSERT: Final = "i"
UPDATE: Final = "u"
DELETE: Final = "d"
Command = Literal["i", "u", "d"]
COMMANDS: Final = frozenset((INSERT, UPDATE, DELETE))
RESTORE: Final = frozenset({""})
"""The columns logged with an insert that puts back a row the server deleted (the merge
keeps it for an unpushed child, or a conflict settled on the local row): the same row
under its old key, never a new row that collides with one (no column is named "")."""

Key = Hashable
"""A primary key value: a scalar, or a tuple for composite keys."""

RowKey = tuple[str, Key]
"""A row's identity across tables: ``(table name, primary key)``."""

Row = Mapping[str, Any]
"""A row's state: column name to value."""

NodeId = int
Version = int


@dataclass(frozen=True, slots=True)
class Operation:
    """One entry of a client's operation log, in the order it was written."""

    order: int
    table: str
    key: Key
    command: Command
    hlc: int
    columns: frozenset[str] = frozenset()

    @property
    def row_key(self) -> RowKey:
        return (self.table, self.key)


@dataclass(frozen=True, slots=True)
class Change:
    """A row-level change with the row state it leads to.

    ``values`` holds the whole row for inserts and updates and is ``None`` for
    deletes (or holds the last known state, when the sender kept it).
    ``clocks`` maps each updated column to the hybrid logical clock stamp of its
    latest write; ``hlc`` is the stamp of the change as a whole. ``extensions``
    carries the non-column data of the row's extensions, by name.
    """

    table: str
    key: Key
    command: Command
    hlc: int
    values: Row | None = None
    clocks: Mapping[str, int] = field(default_factory=dict)
    extensions: Mapping[str, Any] | None = None

    @property
    def row_key(self) -> RowKey:
        return (self.table, self.key)


@dataclass(frozen=True, slots=True)
class Write:
    """A row-level write seen by the change capture, before it is logged."""

    table: str
    key: Key
    command: Command
    columns: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Reference:
    """A foreign key from ``table.columns`` to ``referred_table.referred_columns``."""

    table: str
    columns: tuple[str, ...]
    referred_table: str
    referred_columns: tuple[str, ...]

    def target(self, row: Row) -> Key | None:
        """The key ``row`` points at through this reference, or ``None`` if it is null."""
        values = tuple(row.get(column) for column in self.columns)
        if any(value is None for value in values):
            return None
        return values[0] if len(values) == 1 else values


@dataclass(frozen=True, slots=True)
class TableShape:
    """What the merge needs to know of a tracked table."""

    name: str
    key_columns: tuple[str, ...]
    unique: tuple[tuple[str, ...], ...] = ()
    integer_key: bool = False


@dataclass(frozen=True)
class Schema:
    """The tracked tables and the references between them."""

    tables: Mapping[str, TableShape]
    references: tuple[Reference, ...] = ()

    @cached_property
    def _from(self) -> Mapping[str, tuple[Reference, ...]]:
        return {name: tuple(r for r in self.references if r.table == name) for name in self.tables}

    @cached_property
    def _to(self) -> Mapping[str, tuple[Reference, ...]]:
        return {
            name: tuple(r for r in self.references if r.referred_table == name)
            for name in self.tables
        }

    def references_from(self, table: str) -> tuple[Reference, ...]:
        """Foreign keys of ``table`` (to primary keys of tracked tables)."""
        return self._from.get(table, ())

    def references_to(self, table: str) -> tuple[Reference, ...]:
        """Foreign keys pointing at ``table``."""
        return self._to.get(table, ())
