"""Trimming the version log: deleting the versions no node will ask for again.

The horizon is the lowest version that every enabled node is known to have
merged (``sync_nodes.merged_version``, a lower bound recorded from each node's
requests); a node that never told its version holds it at 0. Disabled and
forgotten nodes do not hold it back. With a retention (``keep_days``), the
versions older than that go too, whatever the nodes have merged: a node behind
them must repair.

The horizon is recorded first, under the version-head lock, in
``sync_head.trimmed_through``: from that commit on, a pull from behind it is
answered ``repair-required`` (a node at version 0 gets the tables as they are,
as a repair would give them) and a push from behind it ``pull-required``, so no
reader relies on a version being deleted. The versions are then deleted in
batches of their own transactions; a trim that stops midway is finished by the
next one.

Stored replies (``sync_requests``) make a push idempotent; a reply is pruned
only when nothing can ask for it again without being refused:

- its version was trimmed, and it is not its node's latest push: a node has at
  most one push in flight, so it settled this one before sending the next;
- it was stored more than twice the request window ago: a copy of the request
  still in a queue carries a timestamp at most one window from the moment it
  was applied, so it is now refused as ``stale-request``, and nothing is
  applied twice.

A node that comes back after months with its push in flight is therefore
answered from its stored reply, and then, behind the horizon, repairs.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from typing import Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from dbsync_mq.config import REQUEST_WINDOW_SECONDS
from dbsync_mq.core import messages
from dbsync_mq.server import state
from dbsync_mq.storage import schema
from dbsync_mq.storage.engine import prepare, write_transaction
from dbsync_mq.storage.schema import utcnow

logger = logging.getLogger(__name__)

REPAIR_REQUIRED: Final = "repair-required"
"""The error code of a pull from behind the trimmed horizon."""

TRIM_BATCH: Final = 1_000
"""Versions deleted per transaction: pushes wait for the write lock no longer than that."""


@dataclass(frozen=True)
class TrimResult:
    """What a trim did: the versions up to ``trimmed_through`` are gone; ``versions`` and
    ``requests`` were deleted by this call; ``head`` is the version at the time."""

    trimmed_through: int
    versions: int
    requests: int
    head: int


def trim(
    engine: Engine,
    *,
    keep_days: float | None = None,
    request_window_seconds: float = REQUEST_WINDOW_SECONDS,
    now: dt.datetime | None = None,
    batch: int = TRIM_BATCH,
) -> TrimResult:
    """Delete the versions every enabled node has merged (and, with ``keep_days``, every
    version older than that), and the stored replies no request can need any more.

    Safe to run at any time, beside workers, and again: it never moves the horizon back.
    """
    now = now or utcnow()
    prepare(engine)
    with write_transaction(engine) as connection:
        head = state.lock_head(connection)  # pushes wait: none lands beside the new horizon
        trimmed = state.read_trimmed(connection)
        horizon = max(trimmed, min(head, _horizon(connection, head, keep_days, now)))
        if horizon > trimmed:
            connection.execute(
                schema.head.update().where(schema.head.c.id == 1).values(trimmed_through=horizon)
            )
    versions = _delete_versions(engine, horizon, batch)
    requests = _prune_requests(engine, now - dt.timedelta(seconds=2 * request_window_seconds))
    if versions or requests:
        logger.info(
            "trimmed through version %d: %d versions, %d stored replies",
            horizon,
            versions,
            requests,
        )
    return TrimResult(horizon, versions, requests, head)


def _horizon(connection: Connection, head: int, keep_days: float | None, now: dt.datetime) -> int:
    """The last version no enabled node needs; with ``keep_days``, at least the last one
    older than that."""
    n = schema.nodes.c
    nodes, merged, lowest = connection.execute(
        sa.select(sa.func.count(), sa.func.count(n.merged_version), sa.func.min(n.merged_version))
        .select_from(schema.nodes)
        .where(n.enabled == sa.true(), n.forgotten_at.is_(None))
    ).one()
    if not nodes:
        horizon = head
    elif merged < nodes:
        horizon = 0  # a node that never told what it has holds everything
    else:
        horizon = int(lowest)
    if keep_days is not None:
        v = schema.versions.c
        cutoff = now - dt.timedelta(days=keep_days)
        old = connection.execute(sa.select(sa.func.max(v.id)).where(v.created_at < cutoff))
        horizon = max(horizon, int(old.scalar() or 0))
    return horizon


def _delete_versions(engine: Engine, horizon: int, batch: int) -> int:
    v = schema.versions.c
    deleted = 0
    while True:
        with write_transaction(engine) as connection:
            lowest = connection.execute(sa.select(sa.func.min(v.id))).scalar()
            if lowest is None or lowest > horizon:
                return deleted
            upto = min(horizon, int(lowest) + batch - 1)
            result = connection.execute(schema.versions.delete().where(v.id <= upto))
            deleted += result.rowcount


def _prune_requests(engine: Engine, stored_before: dt.datetime) -> int:
    """Delete the stored push replies older than ``stored_before`` whose version is
    trimmed, but each node's latest. One pass over the stored pushes, ranked per node
    (no index on the node: pushes would pay for it)."""
    r = schema.requests.c
    ranked = (
        sa.select(
            r.request_id,
            r.created_at,
            sa.func.rank()
            .over(partition_by=r.node_id, order_by=r.created_at.desc())
            .label("newest_first"),
        )
        .where(r.kind == messages.PUSH)
        .subquery()
    )
    superseded = sa.select(ranked.c.request_id).where(
        ranked.c.newest_first > 1, ranked.c.created_at < stored_before
    )
    version_kept = (
        sa.select(schema.versions.c.id).where(schema.versions.c.request_id == r.request_id).exists()
    )
    statement = schema.requests.delete().where(r.request_id.in_(superseded), ~version_kept)
    with write_transaction(engine) as connection:
        return int(connection.execute(statement).rowcount)
