"""Server-side writes: an admin UI or a batch job writing to the central database.

``install(engine)`` makes ordinary ORM writes to tracked models through
``engine`` into versions of their own, so nodes pull them like any other
change. The version-head lock is taken before the session's first write to a
tracked model (so a server-side transaction and a push never wait on each
other's rows), and the version is written when the session commits, in the
same transaction: a rollback leaves neither the rows nor the version.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Final

from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

from dbsync_mq.core.changeset import encode_changes
from dbsync_mq.core.hlc import HybridClock
from dbsync_mq.core.model import DELETE, INSERT, UPDATE, Change, Command, RowKey, Write
from dbsync_mq.extensions import load_data
from dbsync_mq.server import state
from dbsync_mq.storage import tracking
from dbsync_mq.storage.apply import read_row_keys
from dbsync_mq.storage.engine import prepare
from dbsync_mq.storage.models import ModelSet, TrackedModel
from dbsync_mq.storage.schema import utcnow

_PENDING: Final = "dbsync_mq.server_writes"
_LOCKED: Final = "dbsync_mq.head_locked"


class VersionWriter:
    """The capture of the server database: each committed transaction becomes a version."""

    def __init__(self, models: ModelSet, clock: Callable[[], float] = time.time) -> None:
        self.models = models
        self.hlc = HybridClock()
        self._clock = clock

    def wants(self, model: TrackedModel) -> bool:
        # Rows of push-only models never travel to nodes: no version needed.
        return model.pulled

    def before_writes(self, connection: Connection) -> None:
        if not connection.info.get(_LOCKED):
            state.lock_head(connection)
            connection.info[_LOCKED] = True

    def record(self, connection: Connection, writes: Sequence[Write]) -> None:
        connection.info.setdefault(_PENDING, []).extend(writes)

    def after_commit(self) -> None:
        """Nothing to do: the version was written inside the transaction."""

    def before_commit(self, connection: Connection) -> None:
        writes = connection.info.pop(_PENDING, None)
        if not writes:
            return
        changes = self._changes(connection, writes)
        if not changes:
            return
        version = state.lock_head(connection) + 1
        state.write_version(
            connection,
            {
                "id": version,
                "node_id": None,
                "request_id": None,
                "created_at": utcnow(),
                "operation_count": len(changes),
                "changes": encode_changes(changes),
            },
        )

    def _changes(self, connection: Connection, writes: Sequence[Write]) -> list[Change]:
        """One change per row, from the row as it is now: what the transaction left."""
        first: dict[RowKey, Command] = {}
        columns: dict[RowKey, set[str]] = {}
        whole: set[RowKey] = set()  # deleted and inserted again: every column changed
        for write in writes:
            row_key = (write.table, write.key)
            first.setdefault(row_key, write.command)
            columns.setdefault(row_key, set()).update(write.columns)
            if write.command != UPDATE or not write.columns:
                whole.add(row_key)
        current = read_row_keys(connection, self.models, first)
        hlc = self.hlc.tick(int(self._clock() * 1000))
        changes = []
        for (table, key), command in first.items():
            row = current.get((table, key))
            if row is None:
                if command != INSERT:
                    changes.append(Change(table, key, DELETE, hlc))
                continue
            extensions = load_data(self.models.get(table), row)
            if command == INSERT:
                changes.append(Change(table, key, INSERT, hlc, row, extensions=extensions))
            else:
                changed = set(row) if (table, key) in whole else columns[table, key]
                clocks = dict.fromkeys(changed, hlc)
                changes.append(Change(table, key, UPDATE, hlc, row, clocks, extensions))
        return changes


def _forget(connection: Connection) -> None:
    connection.info.pop(_PENDING, None)
    connection.info.pop(_LOCKED, None)


def install(
    engine: Engine, models: Iterable[type] | None = None, *, clock: Callable[[], float] = time.time
) -> VersionWriter:
    """Make ORM writes to tracked models through ``engine`` into versions nodes pull.

    ``models`` defaults to every tracked model. Writes that bypass the ORM (raw
    SQL) are not seen. ``clock`` (seconds, like ``time.time``) stamps the
    changes. Returns the capture. On SQLite the engine's transactions then take the
    write lock as they begin, as a node's do (see ``storage.engine.prepare``).
    """
    prepare(engine, foreign_keys=True, shared=True)
    writer = VersionWriter(ModelSet.of(models), clock)
    tracking.attach(engine, writer)
    if not event.contains(engine, "commit", _forget):
        event.listen(engine, "commit", _forget)
        event.listen(engine, "rollback", _forget)
    return writer


def uninstall(engine: Engine) -> None:
    """Stop versioning the writes made through ``engine``."""
    tracking.detach(engine)
