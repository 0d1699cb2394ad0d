"""The merge: local and remote changes in, a plan of row writes and log edits out.

Pure: it reads nothing and writes nothing. The storage layer loads a
``MergeInput`` (compressed changes on both sides and the few local rows the
rules need), and applies the ``MergePlan`` in one transaction.

Conflicts, over changes compressed to one per row:

- **direct**: both sides changed the same row (update or delete on each side);
- **dependency**: the remote side deleted a row a local row references;
- **reversed dependency**: a remote row references a row deleted locally;
- **insert**: both sides inserted the same primary key.

Resolution. A direct conflict between two updates is merged column by column:
a column changed on one side only keeps that side's value; a column changed on
both sides is settled by the policy:

- ``"node-wins"`` (the default): the local value;
- ``"server-wins"``: the remote value;
- ``"last-writer-wins"``: the value with the later hybrid-clock stamp (ties to
  the server).

Each side's changed columns are those its clocks name (``Change.clocks``): every
column for an insert, and for an update whose columns are unknown. A delete
against an update is settled for the whole row: ``"node-wins"`` and
``"server-wins"`` never let a delete beat an update (the deleted row comes
back), except that ``"server-wins"`` keeps the server's delete of a row the node
updated; ``"last-writer-wins"`` lets a delete win only if it is later than every
updated column. A callable gets a ``ConflictCase`` (both rows and both sets of
changed columns) and returns the row to keep (or ``None`` to delete it).

Dependency conflicts always keep the referenced row (the alternative loses the
row that references it). Insert collisions of integer keys move the *local* row
to a fresh key, and the local rows that reference it follow, so the server's
row keeps its key (``dbsync_mq.core.collisions``); two inserts of a key that
cannot move (composite, UUID) are two versions of one row, merged as above.
Unique values swapped by the remote side are written by deleting and
re-inserting the rows involved; a local row holding a value a remote row needs
is a clash the application must settle: ``UniqueConstraintError``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field
from typing import Any, Literal

from dbsync_mq.core.collisions import Rekey, move_collisions
from dbsync_mq.core.model import (
    DELETE,
    INSERT,
    RESTORE,
    UPDATE,
    Change,
    Command,
    Key,
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
    ``local_changed`` and ``remote_changed`` name the columns each side changed:
    every column of an insert (or of an update whose columns are unknown), none
    of a delete. A column changed on one side only is that side's to keep.
    """

    table: str
    key: Key
    local: Row | None
    remote: Row | None
    local_changed: frozenset[str] = frozenset()
    remote_changed: frozenset[str] = frozenset()


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
    """Where the local row moved: on an insert collision of its integer key, or with
    the moved row its composite key holds."""


@dataclass(frozen=True)
class LogEntry:
    """An operation to add to the local log; ``hlc`` ``None`` means stamp it now."""

    table: str
    key: Key
    command: Command
    columns: frozenset[str] = frozenset()
    hlc: int | None = None


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
    restored: AbstractSet[RowKey] = frozenset()
    """Local inserts that put back a row the server deleted (``RESTORE``): never moved."""


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

    def run(self) -> None:
        for change in self.data.remote:
            self.plan.max_hlc = max(self.plan.max_hlc, change.hlc, *change.clocks.values())
        self._move_collisions()
        for change in self.data.remote:
            self._merge_row(change)
        _Integrity(self).restore()
        _check_unique(self)

    def _move_collisions(self) -> None:
        moves = move_collisions(
            self.schema,
            self.local,
            self.remote,
            self.rows,
            self.data.next_keys,
            self.data.restored,
        )
        for rekey in moves.rekeys:
            old, new = (rekey.table, rekey.old), (rekey.table, rekey.new)
            if old in self.exists:
                self.exists.discard(old)
                self.exists.add(new)
            self.plan.conflicts.append(
                Conflict("insert", rekey.table, rekey.old, "both", new_key=rekey.new)
            )
        self.plan.rekeys = moves.rekeys
        self.plan.updates.update(moves.rewritten)
        self.local, self.rows = moves.local, moves.rows

    # --- one row ----------------------------------------------------------------

    def _merge_row(self, remote: Change) -> None:
        local = self.local.get(remote.row_key)
        if local is None:
            self.apply_remote(remote)
        elif local.command == INSERT and remote.command == DELETE:
            return  # the server deleted an earlier row with this key; ours is new
        elif remote.command == DELETE and local.command == DELETE:
            self.plan.log_drop.add(remote.row_key)
        else:
            # Both changed the row; or both inserted a key that cannot move (the
            # integer keys moved already): two versions of one row all the same.
            kind: ConflictKind = "insert" if local.command == INSERT else "direct"
            self._direct(local, remote, kind)

    def apply_remote(self, remote: Change) -> None:
        key = remote.row_key
        if remote.command == DELETE:
            if key in self.exists:
                self.plan.deletes.add(key)
        elif key in self.exists:
            self.plan.updates[key] = remote.values or {}
        else:
            self.plan.inserts[key] = remote.values or {}

    # --- direct conflicts ---------------------------------------------------------

    def _direct(self, local: Change, remote: Change, kind: ConflictKind) -> None:
        key = remote.row_key
        local_row = None if local.command == DELETE else self.rows.get(key)
        remote_row = None if remote.command == DELETE else dict(remote.values or {})
        sides = _Sides(self._changed(local, local_row), self._changed(remote, remote_row))
        final = self._resolve(key, local, remote, local_row, remote_row, sides)
        self._write_final(key, local, (local_row, remote_row), final, sides.local)
        winner: Winner = (
            "local" if final == local_row else "remote" if final == remote_row else "merged"
        )
        lost = remote_row if winner == "local" else local_row if winner == "remote" else None
        if local_row != remote_row:
            self.plan.conflicts.append(Conflict(kind, key[0], key[1], winner, lost))

    def _changed(self, change: Change, row: Row | None) -> dict[str, int]:
        """The columns ``change`` wrote, with their stamps: every column of an insert
        or of an update whose columns are unknown, none of a delete."""
        if row is None:
            return {}
        if change.command == INSERT or not change.clocks:
            keys = self.schema.tables[change.table].key_columns
            return {column: change.hlc for column in row if column not in keys}
        return dict(change.clocks)

    def _resolve(
        self,
        key: RowKey,
        local: Change,
        remote: Change,
        local_row: Row | None,
        remote_row: Row | None,
        sides: _Sides,
    ) -> Row | None:
        if callable(self.policy):
            case = ConflictCase(
                key[0],
                key[1],
                local_row,
                remote_row,
                frozenset(sides.local),
                frozenset(sides.remote),
            )
            return self.policy(case)
        if local_row is None or remote_row is None:
            return self._delete_against_update(local, remote, local_row, remote_row)
        return _merge_columns(local_row, remote_row, sides, self.policy)

    def _delete_against_update(
        self, local: Change, remote: Change, local_row: Row | None, remote_row: Row | None
    ) -> Row | None:
        if self.policy == "last-writer-wins":
            return _last_writer(local, remote, local_row, remote_row)
        if self.policy == "server-wins":
            return remote_row
        # A delete never beats an update.
        return local_row if local_row is not None else remote_row

    def _write_final(
        self,
        key: RowKey,
        local: Change,
        rows: tuple[Row | None, Row | None],
        final: Row | None,
        stamps: Mapping[str, int],
    ) -> None:
        """Write the row the conflict settled on; log what the server lacks of it."""
        table, row_key = key
        local_row, remote_row = rows
        self.plan.log_drop.add(key)
        if final is None:
            if local_row is not None:
                self.plan.deletes.add(key)
                self.plan.updates.pop(key, None)
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
            self.plan.log_add.append(LogEntry(table, row_key, INSERT, RESTORE))
            return
        differing = frozenset(c for c in final if final[c] != remote_row.get(c))
        for column in sorted(differing):
            entry = LogEntry(table, row_key, UPDATE, frozenset([column]), stamps.get(column))
            self.plan.log_add.append(entry)


@dataclass(frozen=True)
class _Sides:
    """The columns each side of a direct conflict changed, with their stamps."""

    local: Mapping[str, int]
    remote: Mapping[str, int]


def _merge_columns(local_row: Row, remote_row: Row, sides: _Sides, policy: str) -> Row:
    """The remote row, with each column the node changed alone, and each column both
    sides changed that the policy gives to the node, taken from the local row."""
    merged = dict(remote_row)
    for column, stamp in sides.local.items():
        if column not in local_row:
            continue
        theirs = sides.remote.get(column)
        if (
            theirs is None
            or policy == "node-wins"
            or (policy == "last-writer-wins" and stamp > theirs)
        ):
            merged[column] = local_row[column]
    return merged


def _last_writer(
    local: Change, remote: Change, local_row: Row | None, remote_row: Row | None
) -> Row | None:
    """A delete against an update: the delete wins if it is later than every update."""
    if local_row is None:
        return None if local.hlc > max(remote.clocks.values(), default=remote.hlc) else remote_row
    return None if remote.hlc >= max(local.clocks.values(), default=local.hlc) else local_row


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
            plan.log_add.append(LogEntry(parent[0], parent[1], INSERT, RESTORE))
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
    moved = {(rekey.table, rekey.old) for rekey in plan.rekeys}
    origin = {(rekey.table, rekey.new): rekey.old for rekey in plan.rekeys}
    clashes: list[tuple[Any, Key, tuple[str, ...]]] = []
    written = {**plan.updates, **plan.inserts}
    for key, row in written.items():
        # The key under which the local database holds this row's values now.
        own = origin[key] if key in origin else None if key in moved else key[1]
        for columns in planner.schema.tables[key[0]].unique:
            values = tuple(row.get(column) for column in columns)
            if any(value is None for value in values):
                continue
            holder = planner.data.unique_holders.get((key[0], columns, values))
            if holder is None or holder == own:
                continue
            holder_key = (key[0], holder)
            if holder_key not in moved and _releases(plan, written, holder_key, columns, values):
                plan.deleted_first.update((key, holder_key))
            else:
                clashes.append((key[0], holder, columns))
    if clashes:
        raise UniqueConstraintError(clashes)


def _releases(
    plan: MergePlan,
    written: Mapping[RowKey, Row],
    holder: RowKey,
    columns: Sequence[str],
    values: tuple[Any, ...],
) -> bool:
    """Whether the merge takes ``values`` away from the row now holding them."""
    if holder in plan.deletes:
        return True
    new_row = written.get(holder)
    return new_row is not None and tuple(new_row.get(c) for c in columns) != values
