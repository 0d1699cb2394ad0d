"""Exchange and queue names and arguments; ``deploy/`` declares the same ones.

Every name starts with the namespace, so several applications or test runs
share one broker without seeing each other's messages.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

from dbsync_mq.core.messages import REQUEST_KINDS
from dbsync_mq.errors import ConfigurationError

DEFAULT_NAMESPACE: Final = "dbsync"
"""Prefix of every exchange and queue unless configured otherwise."""

NODE_QUEUE_EXPIRY_MS: Final = 30 * 24 * 3600 * 1000
"""An unused node reply queue is deleted after 30 days; the node re-creates it."""

DELIVERY_LIMIT: Final = 10
"""Deliveries of one request before it is dead-lettered (a poison message)."""

DIRECT_REPLY_TO: Final = "amq.rabbitmq.reply-to"
"""RabbitMQ's pseudo-queue for answers without a queue of one's own (registration)."""


def is_direct_reply_address(address: str) -> bool:
    """Whether ``address`` is a direct reply-to address as the broker rewrites it.

    The worker answers registrations only there: a request naming any other queue
    would make the worker publish into it.
    """
    return address.startswith(DIRECT_REPLY_TO + ".")


_NAMESPACE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_EVENTS_TAG = re.compile(r"[0-9a-f]{1,32}")

DEFAULT_EXCHANGE: Final = "amq.default"
"""The name RabbitMQ's permissions give the default (nameless) exchange."""


@dataclass(frozen=True)
class Permissions:
    """RabbitMQ permission patterns of one user in the vhost (see deploy/rabbitmq/)."""

    configure: str
    write: str
    read: str


def _only(*names: str) -> str:
    """A permission pattern matching exactly ``names`` (or nothing when none)."""
    return "^(" + "|".join(re.escape(name) for name in names) + ")$" if names else "^$"


@dataclass(frozen=True)
class Topology:
    """The names and arguments of everything declared in one namespace."""

    namespace: str = DEFAULT_NAMESPACE
    node_queue_expiry_ms: int = NODE_QUEUE_EXPIRY_MS
    delivery_limit: int = DELIVERY_LIMIT

    def __post_init__(self) -> None:
        if not _NAMESPACE.fullmatch(self.namespace):
            raise ConfigurationError(
                f"namespace {self.namespace!r}: use 1-64 letters, digits, '.', '_' or '-'"
            )

    @property
    def requests_exchange(self) -> str:
        return self.namespace

    @property
    def events_exchange(self) -> str:
        return f"{self.namespace}.events"

    @property
    def dead_letter_exchange(self) -> str:
        return f"{self.namespace}.dlx"

    @property
    def dead_letter_queue(self) -> str:
        return f"{self.namespace}.dead"

    def request_queue(self, kind: str) -> str:
        return f"{self.namespace}.{kind}"

    @property
    def request_queues(self) -> tuple[str, ...]:
        return tuple(self.request_queue(kind) for kind in REQUEST_KINDS)

    def node_queue(self, node_id: int) -> str:
        return f"{self.namespace}.node.{node_id}"

    def node_events_queue(self, node_id: int, tag: str) -> str:
        """An agent's own queue for the server's "version committed" events: exclusive,
        deleted with its connection; ``tag`` tells apart agents of one node."""
        if not _EVENTS_TAG.fullmatch(tag):
            raise ConfigurationError(f"events queue tag {tag!r}: use 1-32 hex digits")
        return f"{self.node_queue(node_id)}.events.{tag}"

    @property
    def request_queue_arguments(self) -> Mapping[str, Any]:
        return {
            "x-queue-type": "quorum",
            "x-dead-letter-exchange": self.dead_letter_exchange,
            "x-delivery-limit": self.delivery_limit,
        }

    @property
    def node_queue_arguments(self) -> Mapping[str, Any]:
        return {"x-expires": self.node_queue_expiry_ms}

    # --- broker permissions ---------------------------------------------------------

    def node_permissions(self, node_id: int) -> Permissions:
        """A node publishes requests, declares and reads its own reply queue, and declares,
        binds (to the events exchange) and reads its agents' events queues; nothing else.
        Its reply queue is bound to nothing: replies reach it through the default exchange."""
        queue = re.escape(self.node_queue(node_id))
        events = queue + r"\.events\.[0-9a-f]{1,32}"
        return Permissions(
            configure=f"^({queue}|{events})$",
            write=f"^({re.escape(self.requests_exchange)}|{events})$",
            read=f"^({queue}|{events}|{re.escape(self.events_exchange)})$",
        )

    def enrollment_permissions(self) -> Permissions:
        """A device not yet registered only publishes requests (its registration is
        answered through direct reply-to, which needs no permission)."""
        return Permissions(configure=_only(), write=_only(self.requests_exchange), read=_only())

    def worker_permissions(self) -> Permissions:
        """The worker declares the topology, consumes the request queues, and publishes
        replies (default exchange, direct reply-to) and events."""
        queues = (*self.request_queues, self.dead_letter_queue)
        exchanges = (self.requests_exchange, self.events_exchange, self.dead_letter_exchange)
        return Permissions(
            configure=_only(*exchanges, *queues),
            write=_only(*queues, self.events_exchange, DEFAULT_EXCHANGE),
            read=_only(self.requests_exchange, self.dead_letter_exchange, *self.request_queues),
        )
