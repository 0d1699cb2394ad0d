"""Building a pull: the changes since a node's version, compressed, in bounded chunks.

Versions store the packed changes of their push, each carrying the rows it
wrote; the last change of a row in the range carries the row as it is now, so
a pull never reads the application tables. Changes to push-only tables are left
out: they never travel to clients; so are rows whose last change in the range
was the pulling node's own push: it has them as they are. Likewise a column the
node wrote last is not among the columns an update tells it the server changed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dbsync_mq.core.changeset import encode_changes, encode_parts, iter_changes
from dbsync_mq.core.compression import compress_pull
from dbsync_mq.core.model import INSERT, Change, Row, RowKey
from dbsync_mq.errors import RequestRefused
from dbsync_mq.server import state
from dbsync_mq.storage import schema
from dbsync_mq.storage.apply import batches, read_row_keys
from dbsync_mq.storage.models import ModelSet

REPLY_ROOM: Final = 64 * 1024
"""Bytes of a reply left for its envelope and the node's own versions."""


@dataclass(frozen=True)
class PullData:
    """What a pull answers: the version reached, the changes, the node's own versions,
    and the current rows of parents the node deleted but remote rows reference."""

    version: int
    changes: list[Change]
    own_versions: list[list[Any]]
    parents: list[Change]


def read_pull(
    connection: Connection,
    models: ModelSet,
    node_id: int,
    since: int,
    deleted: set[RowKey] | None = None,
) -> PullData:
    """Everything version ``since`` lacks, up to the current head.

    ``deleted`` names rows the node deleted and has not pushed yet: those that
    the returned changes reference come back as ``parents``, so the node can
    undo its delete (a reversed dependency conflict).
    """
    head = state.read_head(connection)
    if since > head:
        raise RequestRefused(
            "unknown-version",
            f"the node claims version {since} but the server is at {head}: repair the node",
        )
    if since < 0:
        raise RequestRefused("malformed", "a version is never negative")
    own: list[list[Any]] = []
    pulled = {model.name for model in models if model.pulled}

    def changes() -> Iterator[tuple[Change, bool]]:
        v = schema.versions.c
        rows = connection.execute(
            sa.select(v.id, v.node_id, v.request_id, v.changes)
            .where(v.id > since, v.id <= head)
            .order_by(v.id)
        )
        for row in rows:
            if row.node_id == node_id:
                own.append([row.id, row.request_id])
            for change in iter_changes(row.changes, trusted=True):
                if change.table in pulled:
                    yield change, row.node_id == node_id

    compressed = compress_pull(changes())
    parents = referenced_rows(connection, models, compressed, deleted or set())
    return PullData(version=head, changes=compressed, own_versions=own, parents=parents)


def referenced_rows(
    connection: Connection, models: ModelSet, changes: list[Change], deleted: set[RowKey]
) -> list[Change]:
    """The rows among ``deleted`` that ``changes`` reference, directly or through each other."""
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
    return [Change(table, key, INSERT, 0, row) for (table, key), row in found.items()]


def pull_bodies(data: PullData, chunk_changes: int, max_bytes: int) -> Iterator[dict[str, Any]]:
    """Reply bodies of at most ``chunk_changes`` changes and about ``max_bytes`` each
    (``REPLY_ROOM`` is left for the rest of the reply); at least one."""
    room = max_bytes - REPLY_ROOM - len(encode_changes(data.parents))
    chunks = [
        packed
        for batch in batches(data.changes, chunk_changes)
        for packed in encode_parts(batch, room)
    ] or [encode_changes([])]
    for index, chunk in enumerate(chunks):
        last = index == len(chunks) - 1
        yield {
            "version": data.version,
            "changes": chunk,
            "versions": data.own_versions if last else [],
            "parents": encode_changes(data.parents if last else []),
        }
