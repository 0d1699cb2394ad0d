"""Server hooks: application code that sees requests and may refuse them.

::

    def only_own_tenant(context: PushContext) -> None:
        if context.extra_data.get("tenant") != tenant_of(context.node.user_id):
            raise PermissionError("wrong tenant")

    server.hooks.listen("before_push", only_own_tenant)

Events:

- ``before_request`` — every authenticated request (push, pull, ping...), before it is served;
- ``before_push`` — inside the push transaction, after the version check, before any write;
- ``after_push`` — inside the push transaction, after the rows and the version are written;
- ``before_register`` — inside the registration transaction, before the node is created.

A listener that raises refuses the request: the node gets the error code
``hook-refused`` (or the code of a ``RequestRefused`` it raised) with the
exception's message as the reason, and nothing is written. A listener that
raises ``RequestRefused(code, reason, rows=[(table, key), ...])`` names the
rows at fault: the node can hold them back and push the others. Listeners inside a
transaction get an ORM ``session`` on that transaction: what they write commits
with the push, or not at all. (Their writes to tracked models are not turned
into versions: nodes would not see them.)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy.orm import Session

from dbsync_mq.core.messages import Request
from dbsync_mq.core.model import Change
from dbsync_mq.errors import ConfigurationError, RequestRefused
from dbsync_mq.server.state import NodeRecord

EVENTS: Final = ("before_request", "before_push", "after_push", "before_register")


@dataclass(frozen=True)
class RequestContext:
    """An authenticated request about to be served."""

    node: NodeRecord
    request: Request

    @property
    def extra_data(self) -> Mapping[str, Any]:
        """The ``extra_data`` the node sent with the request (empty if none)."""
        return self.request.extra or {}


@dataclass(frozen=True)
class PushContext(RequestContext):
    """A push inside its transaction; ``version`` is set for ``after_push``."""

    session: Session = field(kw_only=True)
    changes: Sequence[Change] = field(kw_only=True)
    version: int | None = field(default=None, kw_only=True)


@dataclass(frozen=True)
class RegisterContext:
    """A registration inside its transaction, before the node exists."""

    session: Session
    request: Request
    user_id: str | None

    @property
    def extra_data(self) -> Mapping[str, Any]:
        return self.request.extra or {}


Listener = Callable[[Any], None]


class Hooks:
    """The listeners of one server, by event."""

    def __init__(self) -> None:
        self._listeners: dict[str, list[Listener]] = {name: [] for name in EVENTS}

    def listen(self, event: str, listener: Listener) -> Listener:
        """Call ``listener(context)`` on ``event``; returns it, so it works as a decorator."""
        if event not in self._listeners:
            raise ConfigurationError(f"unknown server event {event!r}; events are {EVENTS}")
        self._listeners[event].append(listener)
        return listener

    def listened(self, event: str) -> bool:
        """Whether ``event`` has a listener."""
        return bool(self._listeners[event])

    def run(self, event: str, context: Any) -> None:
        """Call the listeners of ``event``; a raising listener refuses the request."""
        for listener in self._listeners[event]:
            try:
                listener(context)
            except RequestRefused:
                raise
            except Exception as exc:
                reason = str(exc) or type(exc).__name__
                raise RequestRefused("hook-refused", reason) from exc
