"""Each node's last request and last merged version, recorded off the request path.

A request only leaves a note in memory (a dictionary write under a lock); the
notes are written to ``sync_nodes`` in one transaction every few seconds by
whoever calls ``flush`` (the worker runs a thread for it). So a pull that finds
nothing new still costs one cheap read, and a node syncing every second costs
one row update per flush, not one per request.

The merged version is what the request proves the node holds: the base of a
push, the start of a pull. It is a lower bound (the pull may bring the node
further), never more than the node has: what trimming may rely on.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from dbsync_mq.core import messages
from dbsync_mq.errors import SyncError
from dbsync_mq.server.hooks import RequestContext
from dbsync_mq.storage import schema
from dbsync_mq.storage.engine import write_transaction
from dbsync_mq.storage.schema import utcnow

logger = logging.getLogger(__name__)

FLUSH_SECONDS: Final = 5.0
"""How often the notes of requests are written to ``sync_nodes``."""

_MERGED_FIELD: Final = {messages.PUSH: "base", messages.PULL: "since"}
"""The request field telling the version a node has merged, by request kind."""


@dataclass(frozen=True)
class Seen:
    """A node's latest request: when, and the version it had merged (if the kind tells)."""

    at: dt.datetime
    merged: int | None


class NodeActivity:
    """Notes of the nodes' requests, written in batches.

    ::

        activity = NodeActivity(engine)
        server.hooks.listen("before_request", activity.observe)
        ...
        activity.flush()   # every few seconds, and at stop
    """

    def __init__(self, engine: Engine, clock: Callable[[], dt.datetime] = utcnow) -> None:
        self.engine = engine
        self.clock = clock
        self._lock = threading.Lock()
        self._pending: dict[int, Seen] = {}

    def observe(self, context: RequestContext) -> None:
        """Note an authenticated request (a ``before_request`` listener: never raises)."""
        request = context.request
        field = _MERGED_FIELD.get(request.kind)
        value = request.body.get(field) if field else None
        merged = value if isinstance(value, int) and not isinstance(value, bool) else None
        now = self.clock()
        with self._lock:
            earlier = self._pending.get(request.node_id)
            if merged is None and earlier is not None:
                merged = earlier.merged
            self._pending[request.node_id] = Seen(now, merged)

    @property
    def pending(self) -> int:
        """Nodes whose notes wait for the next flush."""
        with self._lock:
            return len(self._pending)

    def flush(self) -> int:
        """Write the pending notes in one transaction; return how many nodes were updated.

        Notes that could not be written (the database is down) are kept for the next
        flush, unless a newer note of the same node arrived meanwhile.
        """
        with self._lock:
            batch, self._pending = self._pending, {}
        if not batch:
            return 0
        n = schema.nodes.c
        statement = (
            schema.nodes.update()
            .where(n.id == sa.bindparam("node", type_=sa.Integer))
            .values(
                last_seen_at=sa.bindparam("at", type_=sa.DateTime),
                merged_version=sa.func.coalesce(
                    sa.bindparam("merged", type_=sa.BigInteger), n.merged_version
                ),
            )
        )
        rows = [
            {"node": node, "at": seen.at, "merged": seen.merged} for node, seen in batch.items()
        ]
        try:
            with write_transaction(self.engine) as connection:
                connection.execute(statement, rows)
        except (SyncError, sa.exc.SQLAlchemyError) as exc:
            logger.warning("could not record the activity of %d nodes: %s", len(batch), exc)
            with self._lock:
                for node, seen in batch.items():
                    self._pending.setdefault(node, seen)
            return 0
        return len(batch)

    def flush_until(self, stop: threading.Event, seconds: float = FLUSH_SECONDS) -> None:
        """Flush every ``seconds`` until ``stop`` is set (a thread's target); the caller
        flushes once more after the last request."""
        while not stop.wait(seconds):
            self.flush()
