"""The merge: local and remote changes in, a plan of row writes and log edits out.

Pure: it reads nothing and writes nothing. The storage layer loads a
``MergeInput`` (compressed changes on both sides and the few local rows the
rules need), and applies the ``MergePlan`` in one transaction.

Conflicts, over changes compressed to one per row:

- **direct**: both sides changed the same row (update or delete on each side);
- **dependency**: the remote side deleted a row a local row references;
- **reversed dependency**: a remote row references a row deleted locally;
- **insert**: both sides inserted the same primary key.

Resolution. A direct conflict is settled by the policy:

- ``"node-wins"`` (the default): the local state stays, except that a delete
  never beats an update: the deleted row comes back;
- ``"server-wins"``: the remote state replaces the local one;
- ``"last-writer-wins"``: per column, the later hybrid-clock stamp wins; a
  delete wins against an update only if it is later than every updated column;
- a callable: gets a ``ConflictCase`` and returns the row to keep (or ``None``
  to delete it).

Dependency conflicts always keep the referenced row (the alternative loses the
row that references it); insert collisions move the *local* row to a fresh key,
and the local rows that reference it follow, so the server's row keeps its key.
Unique values swapped by the remote side are written by deleting and
re-inserting the rows involved; a local row holding a value a remote row needs
is a clash the application must settle: ``UniqueConstraintError``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, Literal

from dbsync_mq.core.model import (
    DELETE,
    INSERT,
    UPDATE,
    Change,
    Command,
    Key,
    Reference,
    Row,
    RowKey,
    Schema,
)
from dbsync_mq.errors import ConfigurationError, MergeError, UniqueConstraintError

ConflictKind = Literal["direct", "dependency", "reversed-dependency", "insert"]
Winner = Literal["local", "remote", "merged", "both"]
POLICIES = ("node-wins", "server-wins", "last-writer-wins")


@dataclass(frozen=True)
class ConflictCase:
    """A direct conflict, as a conflict-policy callable sees it.

    ``local`` and ``remote`` are the row on each side, ``None`` where it was deleted.
    """

    table: str
    key: Key
    local: Row | None
    remote: Row | None


Resolver = Callable[[ConflictCase], Row | None]
Policy = str | Resolver


@dataclass(frozen=True)
class Conflict:
    """A conflict the merge resolved, as reported in ``PullResult.conflicts``."""

    kind: ConflictKind
    table: str
    key: Key
    winner: Winner
    lost: Row | None = None
    """The values that did not survive (``None`` when nothing was lost)."""
    new_key: Key | None = None
    """Where the local row moved, for insert collisions."""


@dataclass(frozen=True)
class LogEntry:
    """An operation to add to the local log; ``hlc`` ``None`` means stamp it now."""

    table: str
    key: Key
    command: Command
    columns: frozenset[str] = frozenset()
    hlc: int | None = None


@dataclass(frozen=True)
class Rekey:
    """Move a local row (and its log entries) from ``old`` to ``new``."""

    table: str
    old: Key
    new: Key


@dataclass(frozen=True)
class MergeInput:
    """Everything the merge looks at.

    ``local_rows`` holds the current local row of every key in ``local`` that
    still exists, of every remote key also in ``local``, and of every key the
    remote side deletes; ``existing`` names the other remote keys that exist
    locally (their rows are not needed). ``server_rows``
    holds the server's rows for keys deleted locally that remote rows
    reference. ``unique_holders`` maps ``(table, columns, values)`` to the key
    of the local row holding those unique values, for the values remote rows
    write. ``next_keys`` gives each integer-keyed table's first free key.
    """

    local: Sequence[Change]
    remote: Sequence[Change]
    local_rows: Mapping[RowKey, Row] = field(default_factory=dict)
    existing: AbstractSet[RowKey] = frozenset()
    server_rows: Mapping[RowKey, Row] = field(default_factory=dict)
    unique_holders: Mapping[tuple[str, tuple[str, ...], tuple[Any, ...]], Key] = field(
        default_factory=dict
    )
    next_keys: Mapping[str, int] = field(default_factory=dict)


@dataclass
class MergePlan:
    """The row writes and log edits that merge a pull, to apply in one transaction."""

    inserts: dict[RowKey, Row] = field(default_factory=dict)
    updates: dict[RowKey, Row] = field(default_factory=dict)
    deletes: set[RowKey] = field(default_factory=set)
    deleted_first: set[RowKey] = field(default_factory=set)
    """Keys whose local row is deleted before any insert or update, so that unique
    values can move between rows; those the plan writes are then inserted again."""
    rekeys: list[Rekey] = field(default_factory=list)
    log_drop: set[RowKey] = field(default_factory=set)
    log_add: list[LogEntry] = field(default_factory=list)
    conflicts: list[Conflict] = field(default_factory=list)
    max_hlc: int = 0


def check_policy(policy: Policy) -> None:
    """Raise ``ConfigurationError`` for a policy that is neither a name nor a callable."""
    if not callable(policy) and policy not in POLICIES:
        raise ConfigurationError(f"conflict_policy must be one of {POLICIES} or a callable")


def plan_merge(schema: Schema, data: MergeInput, policy: Policy = "node-wins") -> MergePlan:
    """Merge remote changes into local ones; raise ``UniqueConstraintError`` on a clash."""
    check_policy(policy)
    planner = _Planner(schema, data, policy)
    planner.run()
    return planner.plan


class _Planner:
    def __init__(self, schema: Schema, data: MergeInput, policy: Policy) -> None:
        self.schema = schema
        self.data = data
        self.policy = policy
        self.plan = MergePlan()
        self.local = {change.row_key: change for change in data.local}
        self.remote = {change.row_key: change for change in data.remote}
        self.rows: dict[RowKey, Row] = dict(data.local_rows)
        self.exists: set[RowKey] = set(data.existing) | set(data.local_rows)
        self.allocated: dict[str, int] = {}
        self._children: dict[tuple[Reference, Key], list[RowKey]] | None = None

    def run(self) -> None:
        for change in self.data.remote:
            self.plan.max_hlc = max(self.plan.max_hlc, change.hlc, *change.clocks.values())
            self._merge_row(change)
        _Integrity(self).restore()
        _check_unique(self)

    # --- one row ----------------------------------------------------------------

    def _merge_row(self, remote: Change) -> None:
        local = self.local.get(remote.row_key)
        if local is None:
            self.apply_remote(remote)
        elif local.command == INSERT:
            if remote.command == DELETE:
                return  # the server deleted an earlier row with this key; ours is new
            self._collide(remote)
        elif remote.command == DELETE and local.command == DELETE:
            self.plan.log_drop.add(remote.row_key)
        else:
            self._direct(local, remote)

    def apply_remote(self, remote: Change) -> None:
        key = remote.row_key
        if remote.command == DELETE:
            if key in self.exists:
                self.plan.deletes.add(key)
        elif key in self.exists:
            self.plan.updates[key] = remote.values or {}
        else:
            self.plan.inserts[key] = remote.values or {}

    # --- insert collisions --------------------------------------------------------

    def _collide(self, remote: Change) -> None:
        table, old = remote.row_key
        shape = self.schema.tables[table]
        if not shape.integer_key:
            raise MergeError(
                f"{table}: a local row and a remote row were both inserted with key {old!r}; "
                "only integer keys can be moved (use UUID keys to avoid collisions)"
            )
        new = self._fresh_key(table)
        self.plan.rekeys.append(Rekey(table, old, new))
        moved = self.rows.pop(remote.row_key, None)
        self.exists.discard(remote.row_key)
        if moved is not None:
            self.rows[table, new] = {**moved, shape.key_columns[0]: new}
            self.exists.add((table, new))
        self.local[table, new] = Change(table, new, INSERT, self.local[remote.row_key].hlc)
        del self.local[remote.row_key]
        self._follow_rekey(table, old, new)
        self.plan.inserts[remote.row_key] = remote.values or {}
        self.plan.conflicts.append(Conflict("insert", table, old, "both", new_key=new))

    def _fresh_key(self, table: str) -> int:
        if table not in self.allocated:
            remote_keys = (k for (t, k) in self.remote if t == table and isinstance(k, int))
            self.allocated[table] = max(self.data.next_keys.get(table, 1) - 1, *remote_keys, 0)
        self.allocated[table] += 1
        return self.allocated[table]

    def _follow_rekey(self, table: str, old: Key, new: Key) -> None:
        """Point local rows that referenced the moved row at its new key."""
        for ref in self.schema.references_to(table):
            for row_key in self._children_of(ref, old):
                row = {**self.rows[row_key], ref.columns[0]: new}
                self.rows[row_key] = row
                self.plan.updates[row_key] = row
                self.plan.log_add.append(
                    LogEntry(ref.table, row_key[1], UPDATE, frozenset(ref.columns))
                )

    def _children_of(self, ref: Reference, parent: Key) -> list[RowKey]:
        """Local changed rows referencing ``parent`` through ``ref`` (indexed once)."""
        if self._children is None:
            self._children = {}
            for row_key in self.local:
                row = self.rows.get(row_key)
                if row is None:
                    continue
                for reference in self.schema.references_from(row_key[0]):
                    target = reference.target(row)
                    if target is not None:
                        self._children.setdefault((reference, target), []).append(row_key)
        return self._children.pop((ref, parent), [])

    # --- direct conflicts ---------------------------------------------------------

    def _direct(self, local: Change, remote: Change) -> None:
        key = remote.row_key
        local_row = None if local.command == DELETE else self.rows.get(key)
        remote_row = None if remote.command == DELETE else dict(remote.values or {})
        final = self._resolve(local, remote, local_row, remote_row)
        self._write_final(key, local, local_row, remote_row, final)
        winner: Winner = (
            "local" if final == local_row else "remote" if final == remote_row else "merged"
        )
        lost = remote_row if winner == "local" else local_row if winner == "remote" else None
        if local_row != remote_row:
            self.plan.conflicts.append(Conflict("direct", key[0], key[1], winner, lost))

    def _resolve(
        self, local: Change, remote: Change, local_row: Row | None, remote_row: Row | None
    ) -> Row | None:
        if callable(self.policy):
            return self.policy(ConflictCase(remote.table, remote.key, local_row, remote_row))
        if self.policy == "last-writer-wins":
            return _last_writer(local, remote, local_row, remote_row)
        if local_row is None or remote_row is None:
            # A delete never beats an update, except where the server wins.
            keep_local = local_row is not None and self.policy == "node-wins"
            if self.policy == "server-wins":
                return remote_row
            return local_row if keep_local else remote_row
        return dict(local_row) if self.policy == "node-wins" else remote_row

    def _write_final(
        self,
        key: RowKey,
        local: Change,
        local_row: Row | None,
        remote_row: Row | None,
        final: Row | None,
    ) -> None:
        table, row_key = key
        self.plan.log_drop.add(key)
        if final is None:
            if local_row is not None:
                self.plan.deletes.add(key)
            if remote_row is not None:
                self.plan.log_add.append(LogEntry(table, row_key, DELETE, hlc=local.hlc))
            self.rows.pop(key, None)
            return
        if local_row is None:
            self.plan.inserts[key] = final
        elif final != local_row:
            self.plan.updates[key] = final
        self.rows[key] = final
        if remote_row is None:
            self.plan.log_add.append(LogEntry(table, row_key, INSERT))
            return
        differing = frozenset(c for c in final if final[c] != remote_row.get(c))
        for column in sorted(differing):
            stamp = local.clocks.get(column)
            self.plan.log_add.append(LogEntry(table, row_key, UPDATE, frozenset([column]), stamp))


def _last_writer(
    local: Change, remote: Change, local_row: Row | None, remote_row: Row | None
) -> Row | None:
    local_latest = max(local.clocks.values(), default=local.hlc)
    remote_latest = max(remote.clocks.values(), default=remote.hlc)
    if local_row is None:
        return None if local.hlc > remote_latest else remote_row
    if remote_row is None:
        return None if remote.hlc >= local_latest else local_row
    merged = dict(remote_row)
    for column, stamp in local.clocks.items():
        if stamp > remote.clocks.get(column, remote.hlc if remote.command == INSERT else -1):
            merged[column] = local_row.get(column)
    return merged


class _Integrity:
    """Dependency conflicts: no row that stays may reference a row that goes."""

    def __init__(self, planner: _Planner) -> None:
        self.p = planner
        self.locally_deleted = {
            key
            for key, change in planner.local.items()
            if change.command == DELETE and key not in planner.plan.inserts
        }

    def restore(self) -> None:
        pending = list(self._surviving_rows())
        while pending:
            key, row = pending.pop()
            for ref in self.p.schema.references_from(key[0]):
                parent = ref.target(row)
                if parent is None:
                    continue
                kept = self._keep((ref.referred_table, parent), key)
                if kept is not None:
                    pending.append(kept)

    def _surviving_rows(self) -> Iterable[tuple[RowKey, Row]]:
        plan = self.p.plan
        yield from plan.inserts.items()
        yield from plan.updates.items()
        for key, change in self.p.local.items():
            if change.command != DELETE and key in self.p.rows and key not in plan.deletes:
                yield key, self.p.rows[key]

    def _keep(self, parent: RowKey, child: RowKey) -> tuple[RowKey, Row] | None:
        plan = self.p.plan
        if parent in plan.deletes:
            plan.deletes.discard(parent)
            plan.log_drop.add(parent)
            plan.log_add.append(LogEntry(parent[0], parent[1], INSERT))
            plan.conflicts.append(Conflict("dependency", parent[0], parent[1], "local"))
            row = self.p.rows.get(parent)
            return (parent, row) if row is not None else None
        if parent in self.locally_deleted:
            self.locally_deleted.discard(parent)
            row = self._server_row(parent, child)
            plan.inserts[parent] = row
            plan.log_drop.add(parent)
            plan.conflicts.append(Conflict("reversed-dependency", parent[0], parent[1], "remote"))
            return parent, row
        return None

    def _server_row(self, parent: RowKey, child: RowKey) -> Row:
        remote = self.p.remote.get(parent)
        if remote is not None and remote.values is not None:
            return remote.values
        row = self.p.data.server_rows.get(parent)
        if row is None:
            raise MergeError(
                f"{child[0]} row {child[1]!r} references {parent[0]} row {parent[1]!r}, "
                "deleted here and unknown to the server: repair the node"
            )
        return row


def _check_unique(planner: _Planner) -> None:
    """Swaps become delete-and-insert; clashes with local rows abort the merge."""
    plan = planner.plan
    clashes: list[tuple[Any, Key, tuple[str, ...]]] = []
    written = {**plan.updates, **plan.inserts}
    for key, row in written.items():
        shape = planner.schema.tables[key[0]]
        for columns in shape.unique:
            values = tuple(row.get(column) for column in columns)
            if any(value is None for value in values):
                continue
            holder = planner.data.unique_holders.get((key[0], columns, values))
            if holder is None or (holder == key[1] and not _moved_away(plan, key)):
                continue
            holder_key = (key[0], holder)
            if _releases(plan, written, holder_key, columns, values):
                plan.deleted_first.update((key, holder_key))
            else:
                clashes.append((key[0], holder, columns))
    if clashes:
        raise UniqueConstraintError(clashes)


def _moved_away(plan: MergePlan, row: RowKey) -> bool:
    """Whether the local row that had this key moved to a fresh key (insert collision)."""
    return any(rekey.table == row[0] and rekey.old == row[1] for rekey in plan.rekeys)


def _releases(
    plan: MergePlan,
    written: Mapping[RowKey, Row],
    holder: RowKey,
    columns: Sequence[str],
    values: tuple[Any, ...],
) -> bool:
    """Whether the merge takes ``values`` away from the row now holding them."""
    if _moved_away(plan, holder):
        return False
    if holder in plan.deletes:
        return True
    new_row = written.get(holder)
    return new_row is not None and tuple(new_row.get(c) for c in columns) != values
