"""Building a pull: the changes since a node's version, compressed, streamed in chunks.

Versions store the packed changes of their push, each carrying the rows it
wrote; the last change of a row in the range carries the row as it is now, so
a pull never reads the application tables. Changes to push-only tables are left
out: they never travel to clients; so are rows whose last change in the range
was the pulling node's own push: it has them as they are. Likewise a column the
node wrote last is not among the columns an update tells it the server changed.

Memory follows a chunk, not the range. A range of a few operations is
compressed in one pass; a larger one in two: the first keeps a key and a number
per row changed (where its last change is), the second gives each row's
compressed change as soon as its last change is read, and replies go out a
chunk at a time. A node at version 0 whose history is much longer than the
tables, or partly trimmed, gets the tables as they are now, as a repair would;
a node behind the trimmed horizon is refused (``repair-required``). Everything
is read in one snapshot (``REPEATABLE READ`` on PostgreSQL, one read transaction on
SQLite's WAL), which the reply's chunks are streamed from.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from dbsync_mq.core.changeset import encode_changes, encode_parts, iter_changes
from dbsync_mq.core.compression import compress_pull, compress_pull_stream, last_occurrences
from dbsync_mq.core.model import INSERT, Change, Row, RowKey
from dbsync_mq.errors import RequestRefused
from dbsync_mq.runtime import collector_paused
from dbsync_mq.server import forward, state
from dbsync_mq.server.repair import current_rows
from dbsync_mq.server.trim import REPAIR_REQUIRED
from dbsync_mq.storage import schema
from dbsync_mq.storage.apply import read_row_keys
from dbsync_mq.storage.engine import snapshot_transaction
from dbsync_mq.storage.models import ModelSet

REPLY_ROOM: Final = 64 * 1024
"""Bytes of a reply left for its envelope, the node's own versions and the parents."""

SNAPSHOT_FACTOR: Final = 2
"""A node at version 0 gets the current rows instead of a history more than this many
times as long as the tables."""


@dataclass(frozen=True)
class PullQuery:
    """What a node asks: everything after ``since``; ``deleted`` names rows it deleted
    and has not pushed: those the changes reference come back as parents, so that it
    can undo its delete (a reversed dependency conflict)."""

    node_id: int
    since: int
    deleted: frozenset[RowKey] = frozenset()


@dataclass(frozen=True)
class ReplySizes:
    """How the reply is cut: at most ``changes`` changes and about ``max_bytes`` each;
    a range of more than ``in_memory`` operations is read in two passes."""

    changes: int
    max_bytes: int
    in_memory: int


def pull_bodies(
    engine: Engine, models: ModelSet, query: PullQuery, sizes: ReplySizes
) -> Iterator[dict[str, Any]]:
    """The reply bodies of a pull, produced as they are sent; at least one.

    Raises ``RequestRefused`` (at the first body) for a version the server does not know
    (``unknown-version``) or whose next versions were trimmed (``repair-required``).
    """
    with snapshot_transaction(engine) as connection:
        head, trimmed = state.read_head_and_trimmed(connection)
        check_since(query.since, head)
        if head == query.since:
            yield nothing_new_body(head)
            return
        check_trimmed(query.since, trimmed)
        pulled = {model.name for model in models if model.pulled}
        range_ = _Range(connection, pulled, query, head)
        if (query.since == 0 and trimmed > 0) or _wants_snapshot(
            connection, models, range_, sizes.in_memory
        ):
            changes: Iterable[Change] = _snapshot(connection, models)
        else:
            forwarded = _forwarded(range_, sizes)
            if forwarded is not None:
                yield from _forwarded_bodies(range_, forwarded)
                return
            changes = _changes(range_, sizes.in_memory)
        yield from _bodies(connection, models, range_, changes, query.deleted, sizes)


_NOTHING: Final = encode_changes([])


def nothing_new_body(version: int) -> dict[str, Any]:
    """The reply body of a pull from a node already at ``version``."""
    return {"version": version, "changes": _NOTHING, "versions": [], "parents": _NOTHING}


def check_since(since: int, head: int) -> None:
    if since < 0:
        raise RequestRefused("malformed", "a version is never negative")
    if since > head:
        raise RequestRefused(
            "unknown-version",
            f"the node claims version {since} but the server is at {head}: repair the node",
        )


def check_trimmed(since: int, trimmed: int) -> None:
    """Refuse a pull from behind the trimmed horizon: the versions it needs are gone. A
    node at version 0 is not refused: it gets the tables as they are."""
    if 0 < since < trimmed:
        raise RequestRefused(
            REPAIR_REQUIRED,
            f"the node is at version {since} but the versions up to {trimmed} were trimmed: "
            "repair the node",
        )


class _Range:
    """The versions after ``since`` up to ``head``, read as often as a pass needs."""

    def __init__(self, connection: Connection, pulled: set[str], query: PullQuery, head: int):
        self.connection, self.pulled, self.query, self.head = connection, pulled, query, head
        v = schema.versions.c
        in_range = (v.id > query.since, v.id <= head)
        self.operations = int(
            connection.execute(sa.select(sa.func.sum(v.operation_count)).where(*in_range)).scalar()
            or 0
        )
        self.own = [
            [row.id, row.request_id]
            for row in connection.execute(
                sa.select(v.id, v.request_id)
                .where(*in_range, v.node_id == query.node_id)
                .order_by(v.id)
            )
        ]

    def packed(self) -> Iterator[bytes]:
        """The stored packed changes of every version of the range, in order."""
        v = schema.versions.c
        rows = self.connection.execution_options(yield_per=64).execute(
            sa.select(v.changes).where(v.id > self.query.since, v.id <= self.head).order_by(v.id)
        )
        try:
            for (changes,) in rows:
                yield changes
        finally:
            rows.close()  # a survey may stop early: release the cursor at once

    def read(self) -> Iterator[tuple[Change, bool]]:
        """Every change to a pulled table, in order, and whether the node wrote it."""
        v = schema.versions.c
        rows = self.connection.execution_options(yield_per=64).execute(
            sa.select(v.node_id, v.changes)
            .where(v.id > self.query.since, v.id <= self.head)
            .order_by(v.id)
        )
        for row in rows:
            own = row.node_id == self.query.node_id
            for change in iter_changes(row.changes, trusted=True):
                if change.table in self.pulled:
                    yield change, own


def _wants_snapshot(
    connection: Connection, models: ModelSet, range_: _Range, in_memory: int
) -> bool:
    """A node at version 0 behind a history much longer than the tables gets the tables."""
    return (
        range_.operations > in_memory
        and range_.query.since == 0
        and range_.operations > SNAPSHOT_FACTOR * _rows_now(connection, models)
    )


def _changes(range_: _Range, in_memory: int) -> Iterable[Change]:
    if range_.operations <= in_memory:
        return compress_pull(range_.read())
    last = last_occurrences(change for change, _own in range_.read())
    return compress_pull_stream(range_.read(), last)


def _forwarded(range_: _Range, sizes: ReplySizes) -> Iterator[bytes] | None:
    """The range's rows packed as they are stored, when no compressing is needed (see
    ``server.forward``); ``None`` otherwise. Nothing to forward for a node that wrote
    some of the range or waits for parents of its deletes."""
    if range_.own or range_.query.deleted:
        return None
    chunking = forward.Chunking(sizes.changes, sizes.max_bytes - REPLY_ROOM)
    try:
        packed = forward.survey(range_.packed(), range_.pulled, chunking)
    except forward.NotForwardable:
        return None
    if packed is not None:
        return iter(packed)
    rows = forward.stored_rows(range_.packed(), range_.pulled)
    return forward.packed_chunks(rows, chunking.changes, chunking.max_bytes)


def _forwarded_bodies(range_: _Range, chunks: Iterator[bytes]) -> Iterator[dict[str, Any]]:
    waiting: bytes | None = None
    for packed in chunks:
        if waiting is not None:
            yield _body(range_.head, waiting, [], [])
        waiting = packed
    yield _body(range_.head, waiting, range_.own, [])


def _rows_now(connection: Connection, models: ModelSet) -> int:
    return sum(
        connection.execute(sa.select(sa.func.count()).select_from(model.table)).scalar_one()
        for model in models
        if model.pulled
    )


def _snapshot(connection: Connection, models: ModelSet) -> Iterator[Change]:
    for model in models:
        if model.pulled:
            for rows in current_rows(connection, model):
                yield from rows


def _bodies(
    connection: Connection,
    models: ModelSet,
    range_: _Range,
    changes: Iterable[Change],
    deleted: frozenset[RowKey],
    sizes: ReplySizes,
) -> Iterator[dict[str, Any]]:
    """Chunks of changes as reply bodies; the last one carries the node's own versions
    and the parents it needs."""
    parents: dict[RowKey, Row] = {}
    waiting: bytes | None = None
    stream = iter(changes)
    while True:
        with collector_paused():  # a chunk's changes all stay alive until it is packed
            chunk = list(islice(stream, sizes.changes))
            if chunk:
                parents.update(referenced_rows(connection, models, chunk, deleted - parents.keys()))
                parts = encode_parts(chunk, sizes.max_bytes - REPLY_ROOM)
        if not chunk:
            break
        for packed in parts:
            if waiting is not None:
                yield _body(range_.head, waiting, [], [])
            waiting = packed
    found = [Change(table, key, INSERT, 0, row) for (table, key), row in parents.items()]
    yield _body(range_.head, waiting, range_.own, found)


def _body(
    version: int, changes: bytes | list[Change] | None, own: list[list[Any]], parents: list[Change]
) -> dict[str, Any]:
    if not isinstance(changes, bytes):
        changes = encode_changes(changes or [])
    return {
        "version": version,
        "changes": changes,
        "versions": own,
        "parents": encode_changes(parents),
    }


def referenced_rows(
    connection: Connection, models: ModelSet, changes: list[Change], deleted: Iterable[RowKey]
) -> dict[RowKey, Row]:
    """The rows among ``deleted`` that ``changes`` reference, directly or through each other."""
    deleted = set(deleted)
    found: dict[RowKey, Row] = {}
    rows: list[tuple[str, Row]] = [(c.table, c.values) for c in changes if c.values is not None]
    while rows and deleted:
        wanted: set[RowKey] = set()
        for table, row in rows:
            for ref in models.schema.references_from(table):
                parent = (ref.referred_table, ref.target(row))
                if parent[1] is not None and parent in deleted and parent not in found:
                    wanted.add(parent)
        level = read_row_keys(connection, models, wanted)
        found.update(level)
        rows = [(table, row) for (table, _key), row in level.items()]
    return found
