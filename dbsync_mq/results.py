"""What the client's calls return."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dbsync_mq.core.merge import Conflict
from dbsync_mq.extensions import ExtensionFailure


@dataclass(frozen=True)
class PushResult:
    """A push: the version the node is at afterwards, how many rows it sent, and the
    version the server gave the push (``None`` when nothing was sent). When the push
    was applied on top of versions the node has not pulled yet, ``version`` stays
    below ``accepted_version`` until the next pull."""

    version: int
    operations: int
    accepted_version: int | None = None


@dataclass(frozen=True)
class PullResult:
    """A pull: the version merged, how many remote changes, the conflicts resolved, and
    the extension callbacks that failed after the merge was committed."""

    version: int
    changes: int
    conflicts: list[Conflict] = field(default_factory=list)
    extension_failures: list[ExtensionFailure] = field(default_factory=list)


@dataclass(frozen=True)
class SyncResult:
    """A sync: pushes and pulls until the node and the server agree; what the pulls
    resolved and which extension callbacks failed."""

    version: int
    pushed: int
    pulled: int
    conflicts: list[Conflict] = field(default_factory=list)
    extension_failures: list[ExtensionFailure] = field(default_factory=list)


@dataclass(frozen=True)
class RepairResult:
    """A repair: the version the local tables now match, the rows received, and the
    local changes that were discarded (``force=True``)."""

    version: int
    rows: int
    discarded: int = 0


@dataclass(frozen=True)
class PingResult:
    """Whether a worker answered, and how far behind the server this node is."""

    server_version: int
    local_version: int
    pending_operations: int
    round_trip_seconds: float

    @property
    def behind(self) -> int:
        """Versions the node has not merged yet."""
        return max(0, self.server_version - self.local_version)


@dataclass(frozen=True)
class PendingChange:
    """A row with local changes not yet accepted by the server, compressed to one
    command (``"i"``, ``"u"`` or ``"d"``); ``quarantined`` when held back from pushes."""

    table: str
    key: Any
    command: str
    quarantined: bool = False


@dataclass(frozen=True)
class QuarantinedRow:
    """A row held back from pushes by ``SyncClient.quarantine``: the server's refusal
    ``code`` and ``reason`` when it came from one."""

    table: str
    key: Any
    code: str | None
    reason: str | None
