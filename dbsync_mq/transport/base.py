"""What the rest of the library knows of messaging: messages and deliveries."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

CONTENT_TYPE: Final = "application/msgpack"


@dataclass(frozen=True)
class Message:
    """A message as published or received: body plus the properties we use."""

    body: bytes
    kind: str
    message_id: str
    correlation_id: str
    headers: Mapping[str, Any] = field(default_factory=dict)
    reply_to: str | None = None


@dataclass(frozen=True)
class Delivery:
    """A message received by the worker from one of the request queues.

    ``tag`` identifies it for ack or reject on the channel that delivered it;
    ``channel_generation`` tells whether that channel still exists.
    """

    message: Message
    queue: str
    tag: int
    redelivered: bool
    channel_generation: int


@dataclass(frozen=True)
class Outgoing:
    """A message the worker publishes: to a node's reply queue, a direct reply-to
    address, or the events exchange."""

    message: Message
    node_id: int | None = None
    reply_to: str | None = None
    event: bool = False
