"""Applying a push: one transaction under the version-head lock.

The order inside the transaction is the contract: lock the head; answer a
request id seen before from its stored reply (looked up as of the moment the lock
was granted, so that a copy of the request that another worker applied while this
one waited for the lock is answered, not refused or applied twice); refuse a
node that is behind (``pull-required``, nothing written); apply every change
with batched statements; write the version with the push's packed changes as
they arrived; store the reply under the request id; commit. A crash anywhere
leaves nothing or everything, and the redelivered request gets the stored reply.

A node that is behind is not sent back when its push cannot conflict with what
it has not seen: no deletes, and no row in common with the versions since its
base. The push is then applied on top of them (the database still checks every
constraint: a violation sends the node back to pull), and the node pulls the
versions it lacks afterwards. Under many concurrent writers this turns most
"pull, then push again" round trips into one push.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from dbsync_mq.core.changeset import iter_changes
from dbsync_mq.core.messages import Request
from dbsync_mq.core.model import DELETE, Change, Key, RowKey
from dbsync_mq.errors import ProtocolError, RequestRefused
from dbsync_mq.server import state
from dbsync_mq.server.hooks import Hooks, PushContext
from dbsync_mq.server.state import NodeRecord
from dbsync_mq.storage import schema
from dbsync_mq.storage.apply import apply_changes
from dbsync_mq.storage.models import ModelSet
from dbsync_mq.storage.schema import utcnow
from dbsync_mq.storage.unique import find_moves
from dbsync_mq.storage.values import check_row

PULL_REQUIRED = "pull-required"

MAX_REFUSED_ROWS: Final = 1000
"""Bad rows a refusal names at most (the node holds them back and learns of the rest
by pushing again)."""

MAX_REBASE_VERSIONS: Final = 100
"""A push that is behind by at most this many versions, and touches none of their rows
and deletes nothing, is applied on top of them instead of being sent back to pull."""


@dataclass(frozen=True)
class Accepted:
    """A push made version ``version`` (``None`` when it was answered from the stored
    reply of an earlier delivery); ``reply`` is the sealed reply to send."""

    version: int | None
    reply: bytes


def decode_push(models: ModelSet, request: Request, max_bytes: int) -> list[Change]:
    """The push's changes, checked against the tracked models as they are decoded.

    ``RequestRefused`` if any is bad, naming the rows at fault (the node can hold
    them back and push the others): a malformed body at its first bad byte, bad rows
    once the body is read or ``MAX_REFUSED_ROWS`` of them were found. ``max_bytes``:
    the message size limit.
    """
    changes: list[Change] = []
    refusals: list[RequestRefused] = []
    seen = SeenRows()
    try:
        for change in iter_changes(request.body["changes"], max_bytes):
            try:
                check_change(models, change)
                seen.add(change)
            except RequestRefused as exc:
                refusals.append(exc)
                if len(refusals) == MAX_REFUSED_ROWS:
                    break
                continue
            changes.append(change)
    except ProtocolError as exc:
        raise RequestRefused("malformed", str(exc)) from None
    if refusals:
        raise _refusal(refusals)
    return changes


def _refusal(refusals: Sequence[RequestRefused]) -> RequestRefused:
    """One refusal for the whole push: the first reason, every row at fault."""
    first = refusals[0]
    more = f" (and {len(refusals) - 1} more refused rows)" if len(refusals) > 1 else ""
    rows = [row for refusal in refusals for row in refusal.rows]
    return RequestRefused(first.code, first.reason + more, rows)


class SeenRows:
    """The rows of a push seen so far, to refuse a row that appears twice. Kept by table,
    holding the changes' own key objects: a large push costs no tuple per row."""

    def __init__(self) -> None:
        self._keys: dict[str, set[Key]] = {}

    def add(self, change: Change) -> None:
        keys = self._keys.setdefault(change.table, set())
        if hashable_key(change)[1] in keys:
            reason = f"{change.table} row {change.key!r} appears twice"
            raise RequestRefused("malformed", reason, [(change.table, change.key)])
        keys.add(change.key)


def hashable_key(change: Change) -> RowKey:
    """The change's row key, refused if it cannot be one (a signaling NaN cannot be hashed)."""
    try:
        hash(change.row_key)
    except TypeError:
        reason = f"{change.table}: {change.key!r} cannot be a key"
        raise RequestRefused("malformed", reason) from None
    return change.row_key


def check_change(models: ModelSet, change: Change) -> None:
    """Refuse a change to an untracked or pull-only table, or with a bad row; the
    refusal names the row."""
    try:
        _check_change(models, change)
    except RequestRefused as exc:
        raise RequestRefused(exc.code, exc.reason, [(change.table, change.key)]) from None


def _check_change(models: ModelSet, change: Change) -> None:
    model = models.by_table.get(change.table)
    if model is None:
        raise RequestRefused("unknown-table", f"table {change.table!r} is not tracked")
    if not model.pushed:
        raise RequestRefused("direction-refused", f"{change.table} is pull-only")
    key_parts = change.key if isinstance(change.key, tuple) else (change.key,)
    # An array key of one part is still an array: it would reach the driver as a tuple.
    composite = len(model.key_columns) > 1
    if len(key_parts) != len(model.key_columns) or isinstance(change.key, tuple) != composite:
        raise RequestRefused("malformed", f"{change.table}: key {change.key!r} has the wrong width")
    # The key is checked like a row of its columns before it is compared with the row's own
    # (a signaling NaN cannot even be compared).
    check_row(model.table, dict(zip(model.key_columns, key_parts, strict=True)))
    if change.command == DELETE:
        return
    if change.values is None:
        raise RequestRefused("malformed", f"{change.table}: insert or update without a row")
    check_row(model.table, change.values)  # the key's columns among them
    if (
        any(name not in change.values for name in model.key_columns)
        or model.key_of(change.values) != change.key
    ):
        raise RequestRefused("malformed", f"{change.table}: row does not match key {change.key!r}")


def _moving_rows(
    connection: Connection, models: ModelSet, changes: Sequence[Change]
) -> set[RowKey]:
    """Rows whose unique values pass to other rows of the push; refuse real clashes."""
    unique = {name for name, table in models.schema.tables.items() if table.unique}
    writes = {
        c.row_key: c.values
        for c in changes
        if c.table in unique and c.command != DELETE and c.values
    }
    deletes = {c.row_key for c in changes if c.command == DELETE}
    moving, clashes = find_moves(connection, models, writes, deletes)
    if clashes:
        clash = clashes[0]
        held = dict(zip(clash.columns, clash.values, strict=True))
        raise RequestRefused(
            "constraint-violation",
            f"{clash.table} row {clash.writer!r} takes {held} from row {clash.holder!r}, "
            "which keeps it",
        )
    return moving


@dataclass(frozen=True)
class PushJob:
    """A decoded, checked push and where to apply it."""

    connection: Connection
    models: ModelSet
    request: Request
    node: NodeRecord
    changes: Sequence[Change]
    digest: bytes
    hooks: Hooks
    check_fresh: Callable[[], None] = lambda: None
    """Refuses a request too old to be applied (not called for one applied already)."""


def apply_push(job: PushJob, make_reply: Callable[[int, int], bytes]) -> Accepted:
    """Apply the push as the next version, inside the caller's write transaction.

    ``make_reply(version, base)`` builds the sealed reply to store and send.
    Raises ``RequestRefused`` (nothing written) when the push cannot be applied.
    """
    connection, request = job.connection, job.request
    head, stored = state.lock_head_and_find(connection, request.request_id)
    if stored is not None:
        if stored.digest != job.digest:
            raise RequestRefused("request-id-reused", "request id was used for another body")
        return Accepted(version=None, reply=stored.reply)
    job.check_fresh()
    base = request.body["base"]
    if base != head:
        _check_rebase(job, base, head)
    with Session(bind=connection) as session:
        context = PushContext(job.node, request, session=session, changes=job.changes)
        job.hooks.run("before_push", context)
        try:
            _apply_changes(job)
        except RequestRefused as exc:
            if base != head and exc.code == "constraint-violation":
                # Against the versions the node has not seen, the push may well fit.
                raise RequestRefused(PULL_REQUIRED, exc.reason) from None
            raise
        version = head + 1
        reply = make_reply(version, base)
        answer = state.request_row(
            request.request_id, request.node_id, request.kind, job.digest, reply
        )
        if job.hooks.listened("after_push"):  # it sees the version written
            state.write_version(connection, _version_row(job, version))
            job.hooks.run("after_push", replace(context, version=version))
            session.flush()
            connection.execute(schema.requests.insert().values(answer))
        else:
            session.flush()
            state.write_version(connection, _version_row(job, version), answer)
    return Accepted(version=version, reply=reply)


def _check_rebase(job: PushJob, base: int, head: int) -> None:
    """Refuse with ``pull-required`` a push that is behind, unless it can be applied on top
    of the versions it has not seen: few of them, no deletes, and no row in common."""
    behind = f"the server is at version {head}, the node at {base}"
    if not 0 <= base < head or head - base > MAX_REBASE_VERSIONS:
        raise RequestRefused(PULL_REQUIRED, behind)
    if base < state.read_trimmed(job.connection):
        # The versions it has not seen are trimmed: nothing to check it against. Its
        # pull is refused in turn, and it repairs.
        raise RequestRefused(PULL_REQUIRED, behind)
    if any(change.command == DELETE for change in job.changes):
        raise RequestRefused(PULL_REQUIRED, behind)
    pushed = {change.row_key for change in job.changes}
    v = schema.versions.c
    rows = job.connection.execute(
        sa.select(v.changes).where(v.id > base, v.id <= head).order_by(v.id)
    )
    # Closed even when refused midway: an SQLite statement left open keeps its snapshot,
    # and the connection's next write transaction would fail at once ("locked").
    with rows:
        for (packed,) in rows:
            if any(change.row_key in pushed for change in iter_changes(packed, trusted=True)):
                raise RequestRefused(PULL_REQUIRED, behind)


def _apply_changes(job: PushJob) -> None:
    connection, models, changes = job.connection, job.models, job.changes
    try:
        apply_changes(connection, models, changes, _moving_rows(connection, models, changes))
    # Raising rolls the whole transaction back: nothing of the push stays.
    except sa.exc.IntegrityError as exc:
        raise RequestRefused("constraint-violation", _describe(exc.orig)) from None
    except sa.exc.DataError as exc:  # out of range, NUL in text, too long for the column...
        raise RequestRefused("invalid-value", _describe(exc.orig)) from None
    except sa.exc.DBAPIError:
        raise  # a lost connection and the like: the worker retries, it does not refuse
    except (sa.exc.StatementError, OverflowError, RecursionError, TypeError) as exc:
        # The driver or a column type could not convert a value that passed the type
        # check (an integer beyond 64 bits for SQLite, bytes or a too deep value for
        # JSON); SQLAlchemy wraps some of these errors, psycopg raises them as they are.
        raise RequestRefused("invalid-value", _describe(getattr(exc, "orig", exc))) from None


def _version_row(job: PushJob, version: int) -> dict[str, Any]:
    request = job.request
    return {
        "id": version,
        "node_id": request.node_id,
        "request_id": request.request_id,
        "created_at": utcnow(),
        "operation_count": len(job.changes),
        "changes": request.body["changes"],
    }


def _describe(error: BaseException | None) -> str:
    """A short reason for the node; some exceptions cannot even be turned into text."""
    try:
        text = str(error)
    except Exception:
        text = ""
    return f"{type(error).__name__}: {text}"[:500]
