"""What the nodes saw accepted: the record fault tests count versions against.

The server writes a version and the stored reply in the same transaction, so counting
one against the other proves nothing. A node's own view is independent: the request
ids whose signed replies it took as accepted, and the versions those replies named.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

from dbsync_mq import SyncClient


@dataclass(frozen=True)
class AcceptedPush:
    """A push as its node saw it accepted: the request id it sent and the version the
    server's signed reply gave it."""

    node_id: int
    request_id: str
    version: int


class AcceptedPushes:
    """Every push the watched nodes saw accepted, whichever call settled it (``push``,
    ``sync``, or the resend of a push left in flight), in the order they saw them."""

    def __init__(self) -> None:
        self.pushes: list[AcceptedPush] = []
        self._lock = threading.Lock()

    def watch(self, node: SyncClient) -> SyncClient:
        """Record the pushes ``node`` settles as accepted from now on."""
        settle = node._settle  # every accepted reply to a push passes here

        def recording(push: Any, count: int) -> Any:
            result = settle(push, count)
            self.add(AcceptedPush(node.node_id, push.request_id, result.accepted_version))
            return result

        node._settle = recording  # type: ignore[method-assign]
        return node

    def add(self, push: AcceptedPush) -> None:
        with self._lock:
            self.pushes.append(push)
