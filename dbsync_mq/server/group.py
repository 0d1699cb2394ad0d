"""Group commit: the pushes a worker holds, applied in one transaction.

The worker hands over the pushes already in its hands (it never waits for more).
Each is authenticated, admitted and decoded on its own; those that pass join the
group, the others are answered alone, first. The group is applied under one hold
of the version-head lock, in one transaction: each push in a savepoint of its own
and as a version of its own, so that a push refused inside (behind, a constraint)
rolls back alone and gets its own error reply. One commit, then each push is
answered as a single push would be. A failure of the transaction itself (not a
refusal) leaves nothing committed; each push is then served alone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

from dbsync_mq.core import messages, signing
from dbsync_mq.core.messages import Request
from dbsync_mq.core.model import Change
from dbsync_mq.errors import DatabaseUnavailable, ProtocolError, RequestRefused
from dbsync_mq.server import state
from dbsync_mq.server.dispatch import Outcome, dead_letter
from dbsync_mq.server.push import Accepted, decode_push
from dbsync_mq.storage.engine import write_transaction
from dbsync_mq.transport.base import Message

if TYPE_CHECKING:
    from dbsync_mq.server.dispatch import Server

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Ready:
    """A push authenticated, admitted and decoded: ready for its group's transaction."""

    request: Request
    signed: bytes
    node: state.NodeRecord
    changes: list[Change]
    digest: bytes


class GroupCommit:
    """Serves one batch of push messages for ``server``."""

    def __init__(self, server: Server) -> None:
        self.server = server

    def serve(self, batch: Sequence[Message]) -> list[Outcome]:
        """One outcome per message, in order."""
        outcomes: list[Outcome | None] = []
        group: list[tuple[int, Ready]] = []
        for message in batch:
            ready = self._ready(message)
            if isinstance(ready, Ready):
                group.append((len(outcomes), ready))
                outcomes.append(None)
            else:
                outcomes.append(ready)
        applied = self._apply([ready for _index, ready in group])
        for (index, _ready), outcome in zip(group, applied, strict=True):
            outcomes[index] = outcome
        return [outcome for outcome in outcomes if outcome is not None]

    def _ready(self, message: Message) -> Outcome | Ready:
        """A push decoded and checked, ready to join the group; else its outcome."""
        server = self.server
        if message.kind != messages.PUSH:
            return server.handle(message)
        try:
            signed, signature = signing.open_envelope(
                message.body, server.settings.max_message_bytes
            )
            request, node, _head = server._authenticate(message, signed, signature)
        except ProtocolError as exc:
            return dead_letter(str(exc), message.kind)
        if "parts" in request.body:  # stored part by part: served alone
            return server._serve(request, signed, node)

        def ready() -> Ready:
            server._admit(request, node)
            changes = decode_push(server.models, request, server.settings.max_message_bytes)
            return Ready(request, signed, node, changes, signing.body_digest(signed))

        return server._settled(request, ready)

    def _apply(self, group: Sequence[Ready]) -> list[Outcome]:
        server = self.server
        if not group:
            return []
        for push in group:
            server._stage("before-transaction", push.request)
        try:
            results = self._commit(group)
        except DatabaseUnavailable:
            raise
        except Exception:
            # Not a refusal of one push: the database failed the group's transaction
            # (rolled back, nothing of it committed). Each push alone meets its own fate.
            logger.warning("a group of %d pushes failed; serving each alone", len(group))
            return [
                server._settled(
                    push.request, partial(server._push, push.request, push.signed, push.node)
                )
                for push in group
            ]
        return [
            server._refused(push.request, result)
            if isinstance(result, RequestRefused)
            else server._pushed(push.request, result, push.changes)
            for push, result in zip(group, results, strict=True)
        ]

    def _commit(self, group: Sequence[Ready]) -> list[Accepted | RequestRefused]:
        server = self.server
        results: list[Accepted | RequestRefused] = []
        with write_transaction(server.engine) as connection:
            for push in group:
                savepoint = connection.begin_nested()
                try:
                    accepted = server._apply(
                        connection, push.request, push.node, push.changes, push.digest
                    )
                except RequestRefused as exc:
                    savepoint.rollback()
                    # A copy without the traceback, which holds the frames and whatever
                    # cursors they had open until the collector runs.
                    results.append(RequestRefused(exc.code, exc.reason, exc.rows))
                    continue
                savepoint.commit()
                server._stage("in-transaction", push.request)
                results.append(accepted)
        return results
