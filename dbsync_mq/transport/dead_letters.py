"""The dead-letter queue over AMQP: read without removing, requeue, purge.

Messages are taken with ``basic.get`` and left unacknowledged; those not acted
on go back to the queue when the connection closes, in their order. Only the
messages present when the command starts are walked, so a requeued message
dead-lettered again meanwhile is not seen twice.

On RabbitMQ 4.0 to 4.2, a quorum queue counts every return of a message
against its delivery limit (20 by default): give the dead-letter queue a
policy without limit there (see docs/operations.md), or browse it sparingly.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from pika.adapters.blocking_connection import BlockingChannel

from dbsync_mq.core.messages import REQUEST_KINDS
from dbsync_mq.transport.base import Message
from dbsync_mq.transport.rabbitmq import (
    DEAD_QUEUE_HEADER,
    DEAD_REASON_HEADER,
    broker_errors,
    close_quietly,
    connect,
    copied_properties,
    received_message,
)
from dbsync_mq.transport.topology import Topology

DEATH_HEADER = "x-death"
"""The broker's own record of dead-lettering (delivery limit reached, rejected...)."""


@dataclass(frozen=True)
class DeadLetter:
    """A message of the dead-letter queue, as read (nothing in it is trusted)."""

    message: Message
    timestamp: int | None
    """When it was dead-lettered by a worker (seconds since the epoch), if it tells."""
    redelivered: bool

    @property
    def reason(self) -> str:
        """Why it was refused: the worker's reason, else the broker's."""
        headers = self.message.headers
        reason = _text(headers.get(DEAD_REASON_HEADER))
        if reason:
            return reason
        death = _first_death(headers)
        if death is not None:
            cause = _text(death.get("reason")) or "dead-lettered"
            count = death.get("count")
            return f"{cause} by the broker" + (f" after {count} deliveries" if count else "")
        return "unknown (no reason recorded)"

    def origin(self, topology: Topology) -> str | None:
        """The request queue it came from, if it is one of ``topology``'s."""
        headers = self.message.headers
        death = _first_death(headers) or {}
        for candidate in (_text(headers.get(DEAD_QUEUE_HEADER)), _text(death.get("queue"))):
            if candidate in topology.request_queues:
                return candidate
        return None


def _text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return value if isinstance(value, str) else ""


def _first_death(headers: Mapping[str, Any]) -> Mapping[str, Any] | None:
    deaths = headers.get(DEATH_HEADER)
    if isinstance(deaths, list) and deaths and isinstance(deaths[0], Mapping):
        return deaths[0]
    return None


@dataclass(frozen=True)
class Requeued:
    """What ``requeue`` did: requeued, left (no request queue known) and message ids."""

    requeued: list[str]
    left: list[str]


class DeadLetterQueue:
    """One connection to the dead-letter queue of ``topology``; use as a context manager."""

    def __init__(self, url: str, topology: Topology) -> None:
        self.topology = topology
        self.queue = topology.dead_letter_queue
        self._connection = connect(url)
        with broker_errors("open the dead-letter queue"):
            self._channel: BlockingChannel = self._connection.channel()
            self._channel.confirm_delivery()

    def __enter__(self) -> DeadLetterQueue:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close; what was read and not acted on goes back to the queue."""
        close_quietly(self._connection)

    def depth(self) -> int:
        with broker_errors("inspect the dead-letter queue"):
            declared = self._channel.queue_declare(self.queue, passive=True)
        return int(declared.method.message_count)

    def read(self, limit: int | None = None) -> Iterator[tuple[int, DeadLetter]]:
        """The messages present now (at most ``limit``), with their delivery tags."""
        count = self.depth() if limit is None else min(limit, self.depth())
        for _ in range(count):
            with broker_errors("read the dead-letter queue"):
                method, properties, body = self._channel.basic_get(self.queue, auto_ack=False)
            if method is None:
                return
            letter = DeadLetter(
                received_message(properties, body),
                properties.timestamp,
                bool(method.redelivered),
            )
            yield method.delivery_tag, letter

    def remove(self, tag: int) -> None:
        with broker_errors("acknowledge a dead letter"):
            self._channel.basic_ack(tag)

    def requeue(self, wanted: Callable[[DeadLetter], bool]) -> Requeued:
        """Publish each wanted message back to the request queue it came from (through
        the requests exchange, confirmed), then remove it from the dead-letter queue."""
        kinds = {self.topology.request_queue(kind): kind for kind in REQUEST_KINDS}
        done = Requeued([], [])
        for tag, letter in self.read():
            if not wanted(letter):
                continue
            origin = letter.origin(self.topology)
            if origin is None:
                done.left.append(letter.message.message_id)
                continue
            self._publish(letter, kinds[origin])
            self.remove(tag)
            done.requeued.append(letter.message.message_id)
        return done

    def purge(self, wanted: Callable[[DeadLetter], bool] | None = None) -> int:
        """Remove the wanted messages (all when ``wanted`` is ``None``); return how many."""
        if wanted is None:
            with broker_errors("purge the dead-letter queue"):
                return int(self._channel.queue_purge(self.queue).method.message_count)
        removed = 0
        for tag, letter in self.read():
            if wanted(letter):
                self.remove(tag)
                removed += 1
        return removed

    def _publish(self, letter: DeadLetter, kind: str) -> None:
        message = letter.message
        headers = {
            name: value
            for name, value in message.headers.items()
            if name not in (DEAD_REASON_HEADER, DEAD_QUEUE_HEADER, DEATH_HEADER)
        }
        with broker_errors("requeue a dead letter"):
            self._channel.basic_publish(
                self.topology.requests_exchange,
                kind,
                message.body,
                copied_properties(message, headers),
                mandatory=True,
            )
