"""Every error dbsync-mq raises, under one root.

::

    SyncError
    ├── ConfigurationError        bad settings, untracked models, missing tables
    ├── NotRegistered             the node has no identity yet: call register()
    ├── PendingChanges            local changes not pushed yet would be discarded
    ├── TrackingError             a write the change capture cannot record safely
    ├── ExtensionError            an extension callback failed
    ├── CodecError                a value that cannot be encoded or decoded
    ├── ProtocolError             a message that is malformed or not authentic
    │   └── SignatureError        the signature does not verify
    ├── BrokerUnavailable         RabbitMQ cannot be reached (retryable; work offline)
    ├── DatabaseUnavailable       the database connection failed (retryable)
    ├── SyncTimeout               no reply in time (retryable)
    ├── RequestRefused            the server refused a request, with a code
    ├── ReplyRejected             the server answered a request with an error
    │   ├── PushRejected          a push was not applied
    │   │   └── PullRequired      the node is behind: pull, then push again (retryable)
    │   └── RepairRequired        the node is behind the trimmed version log: repair
    └── MergeError                a pull could not be merged; nothing was changed
        └── UniqueConstraintError a local row clashes with a remote row on a unique key

``retryable`` is a property of the class: the same call may succeed later
without any change by the caller. The worker uses it to choose between retrying
a message and answering it with an error.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar


class SyncError(Exception):
    """Root of every dbsync-mq error."""

    retryable: ClassVar[bool] = False


class ConfigurationError(SyncError):
    """A setting, model or table is missing or invalid."""


class NotRegistered(SyncError):
    """The local node has no identity yet; call ``SyncClient.register`` first."""


class PendingChanges(SyncError):
    """A repair would discard local changes that were never pushed.

    ``operations`` lists them as ``(table, key, command)``; push them first, or
    repair with ``force=True`` to discard them.
    """

    def __init__(self, operations: Sequence[tuple[str, Any, str]]) -> None:
        shown = ", ".join(f"{command} {table}[{key!r}]" for table, key, command in operations[:5])
        more = f" and {len(operations) - 5} more" if len(operations) > 5 else ""
        super().__init__(
            f"{len(operations)} local changes were never pushed ({shown}{more}): push them "
            "first, or pass force=True to discard them"
        )
        self.operations = list(operations)


class TrackingError(SyncError):
    """A write on a tracked model that the change capture cannot record safely."""


class ExtensionError(SyncError):
    """An extension's ``load`` failed, so a push was not sent; ``failures`` says which."""

    def __init__(self, failures: Sequence[Any]) -> None:
        super().__init__(
            "extension callbacks failed: "
            + ", ".join(f"{f.extension} of {f.table}[{f.key!r}]: {f.error}" for f in failures)
        )
        self.failures = list(failures)


class CodecError(SyncError):
    """A value cannot be encoded to, or decoded from, the wire format."""


class ProtocolError(SyncError):
    """A message is malformed, too large, of an unknown kind or not authentic."""


class SignatureError(ProtocolError):
    """A signature does not verify against the expected key."""


class BrokerUnavailable(SyncError):
    """RabbitMQ cannot be reached. Local work continues; sync again later."""

    retryable = True


class DatabaseUnavailable(SyncError):
    """The database connection failed or was lost."""

    retryable = True


class SyncTimeout(SyncError):
    """No reply arrived in time. A push stays in flight and is settled later."""

    retryable = True


class RequestRefused(SyncError):
    """Raised by server handlers: an authenticated request that cannot be served.

    The worker answers it with a signed error reply carrying ``code``, and the
    ``(table, key)`` of the rows at fault when they are known (``rows``).
    """

    def __init__(self, code: str, reason: str, rows: Sequence[tuple[str, Any]] = ()) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason
        self.rows = list(rows)


class ReplyRejected(SyncError):
    """The server answered with an error ``code``, a human ``reason`` and, when it
    could tell, the ``(table, key)`` of the rows at fault (``rows``)."""

    def __init__(self, code: str, reason: str, rows: Sequence[tuple[str, Any]] = ()) -> None:
        super().__init__(f"server refused the request ({code}): {reason}")
        self.code = code
        self.reason = reason
        self.rows = list(rows)


class PushRejected(ReplyRejected):
    """The server did not apply a push; the local operations are kept.

    ``rows`` names the rows the server refused, when it could tell: hold them back
    with ``SyncClient.quarantine(exc.rows)`` and the others are pushed.
    """


class PullRequired(PushRejected):
    """The server has versions this node has not merged: pull, then push again."""

    retryable = True


class RepairRequired(ReplyRejected):
    """The versions this node has not merged were trimmed from the server's log: only a
    repair (``SyncClient.repair``) brings it up to date.

    ``sync()`` repairs by itself when nothing waits to be pushed; otherwise it raises
    this and keeps the local changes: they cannot be pushed from behind the horizon, so
    look at them (``SyncClient.pending_changes``), then repair with ``force=True``.
    """


class MergeError(SyncError):
    """A pull could not be merged into the local database; nothing was changed."""


class UniqueConstraintError(MergeError):
    """Local rows clash with remote rows on unique columns.

    ``entries`` lists ``(model, pk, columns)`` for each local row that must be
    changed by the application before the pull can be merged.
    """

    def __init__(self, entries: Sequence[tuple[Any, Any, tuple[str, ...]]]) -> None:
        described = ", ".join(
            f"{getattr(model, '__name__', model)}[{pk!r}] on {cols}" for model, pk, cols in entries
        )
        super().__init__(f"unique constraint clash: {described}")
        self.entries = list(entries)
