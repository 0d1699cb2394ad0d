"""RabbitMQ through pika: connections, the topology, and the worker's consumer.

With ``transport/node.py`` (a node's connection), the only modules that import
pika. Every pika exception is turned into one of ours at this boundary:
``BrokerUnavailable`` when the broker cannot be reached or the topology is
missing, ``ConfigurationError`` when the broker refuses the credentials, the
virtual host or a declaration. Messages are persistent and published with
confirms; requests are ``mandatory`` so that a missing queue is an error, not a
silent drop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import Any, Final, TypeVar
from urllib.parse import unquote, urlsplit

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from dbsync_mq.core.messages import REQUEST_KINDS
from dbsync_mq.errors import BrokerUnavailable, ConfigurationError, SyncError
from dbsync_mq.transport.base import CONTENT_TYPE, Delivery, Message, Outgoing
from dbsync_mq.transport.topology import Topology

logger = logging.getLogger(__name__)

T = TypeVar("T")

HEARTBEAT_SECONDS: Final = 30
"""AMQP heartbeat interval: a dead peer is noticed within about twice this."""

CONNECT_TIMEOUT_SECONDS: Final = 5.0
"""Time allowed to open a connection before the broker counts as unavailable."""

_POLL_SECONDS: Final = 0.2


@contextmanager
def broker_errors(what: str) -> Iterator[None]:
    """Map pika's exceptions raised inside the block to ours."""
    try:
        yield
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            raise BrokerUnavailable(
                f"{what}: {exc.reply_text} (has the worker declared the topology?)"
            ) from None
        if exc.reply_code in (403, 406):
            raise ConfigurationError(f"{what}: broker refused: {exc.reply_text}") from None
        raise BrokerUnavailable(f"{what}: channel closed: {exc.reply_text}") from None
    except pika.exceptions.UnroutableError:
        raise BrokerUnavailable(f"{what}: no queue is bound (has the worker run?)") from None
    except (pika.exceptions.AMQPError, OSError) as exc:
        raise BrokerUnavailable(f"{what}: {type(exc).__name__}: {exc}") from None


AMQP_SCHEMES: Final = ("amqp", "amqps")


def broker_address(url: str) -> str:
    """``host:port/vhost`` of a broker URL, for messages: never the credentials."""
    parts = urlsplit(url)
    default_port = 5671 if parts.scheme == "amqps" else 5672
    try:
        port = parts.port or default_port
    except ValueError:
        port = default_port
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    return f"{parts.hostname or 'localhost'}:{port} (virtual host {vhost!r})"


def connection_parameters(
    url: str,
    *,
    heartbeat: int = HEARTBEAT_SECONDS,
    timeout: float = CONNECT_TIMEOUT_SECONDS,
    name: str | None = None,
) -> pika.URLParameters:
    """pika's parameters for ``url``; ``ConfigurationError`` for a URL that is not AMQP."""
    scheme = urlsplit(url).scheme
    if scheme not in AMQP_SCHEMES:
        raise ConfigurationError(
            f"the broker URL must start with amqp:// or amqps://, not {scheme or 'nothing'}://"
        )
    try:
        parameters = pika.URLParameters(url)
    except (ValueError, TypeError) as exc:
        raise ConfigurationError(f"invalid broker URL: {exc}") from None
    parameters.heartbeat = heartbeat
    parameters.blocked_connection_timeout = max(timeout, 1.0)
    parameters.connection_attempts = 1
    parameters.socket_timeout = timeout
    parameters.stack_timeout = timeout
    if name is not None:  # shown in the management UI's connections and consumers
        parameters.client_properties = {"connection_name": name}
    return parameters


def connect(
    url: str,
    *,
    heartbeat: int = HEARTBEAT_SECONDS,
    timeout: float = CONNECT_TIMEOUT_SECONDS,
    name: str | None = None,
) -> pika.BlockingConnection:
    """Open a blocking connection, named ``name`` for the broker's UI if given.

    ``ConfigurationError`` when the broker refuses the credentials or the virtual
    host (no retry will help); ``BrokerUnavailable`` when it cannot be reached.
    """
    parameters = connection_parameters(url, heartbeat=heartbeat, timeout=timeout, name=name)
    where = broker_address(url)
    try:
        return pika.BlockingConnection(parameters)
    except (pika.exceptions.ProbableAuthenticationError, pika.exceptions.AuthenticationError):
        raise ConfigurationError(
            f"RabbitMQ at {where} refused the login of user {parameters.credentials.username!r}"
        ) from None
    except pika.exceptions.ProbableAccessDeniedError:
        raise ConfigurationError(
            f"RabbitMQ at {where} refused access to the virtual host"
        ) from None
    except Exception as exc:  # pika raises types outside AMQPError too (connector timeouts)
        reason = _connect_failure(exc)
        raise BrokerUnavailable(f"cannot reach RabbitMQ at {where}: {reason}") from None


def _connect_failure(exc: BaseException) -> str:
    """The most telling reason of a failed connection (pika nests the socket's error)."""
    inner = (
        exc.args[0] if isinstance(exc, pika.exceptions.AMQPConnectionError) and exc.args else exc
    )
    text = str(inner) or type(inner).__name__
    return f"{type(inner).__name__}: {text}" if text != type(inner).__name__ else text


def declare_topology(channel: BlockingChannel, topology: Topology) -> None:
    """Declare every exchange and request queue of ``topology``; idempotent."""
    with broker_errors("declare topology"):
        channel.exchange_declare(topology.requests_exchange, "direct", durable=True)
        channel.exchange_declare(topology.events_exchange, "fanout", durable=True)
        channel.exchange_declare(topology.dead_letter_exchange, "fanout", durable=True)
        channel.queue_declare(
            topology.dead_letter_queue, durable=True, arguments={"x-queue-type": "quorum"}
        )
        channel.queue_bind(topology.dead_letter_queue, topology.dead_letter_exchange)
        for kind in REQUEST_KINDS:
            queue = topology.request_queue(kind)
            channel.queue_declare(
                queue, durable=True, arguments=dict(topology.request_queue_arguments)
            )
            channel.queue_bind(queue, topology.requests_exchange, routing_key=kind)


def delete_topology(url: str, topology: Topology, node_ids: tuple[int, ...] = ()) -> None:
    """Delete every queue and exchange of ``topology`` (and the given nodes' queues)."""
    connection = connect(url)
    try:
        with broker_errors("delete topology"):
            channel = connection.channel()
            queues = [*topology.request_queues, topology.dead_letter_queue]
            queues += [topology.node_queue(node) for node in node_ids]
            for queue in queues:
                channel.queue_delete(queue)
            for exchange in (
                topology.requests_exchange,
                topology.events_exchange,
                topology.dead_letter_exchange,
            ):
                channel.exchange_delete(exchange)
    finally:
        close_quietly(connection)


def queue_depths(url: str, topology: Topology) -> dict[str, int]:
    """Ready messages in each request queue and the dead-letter queue."""
    return {name: ready for name, (ready, _consumers) in queue_states(url, topology).items()}


def queue_states(url: str, topology: Topology) -> dict[str, tuple[int, int]]:
    """Ready messages and consumers of each request queue and the dead-letter queue."""
    connection = connect(url)
    try:
        return inspect_queues(connection.channel(), topology)
    finally:
        close_quietly(connection)


def inspect_queues(channel: BlockingChannel, topology: Topology) -> dict[str, tuple[int, int]]:
    """What a passive declare tells of each request queue and the dead-letter queue."""
    with broker_errors("inspect queues"):
        states = {}
        for queue in (*topology.request_queues, topology.dead_letter_queue):
            method = channel.queue_declare(queue, passive=True).method
            states[queue] = (method.message_count, method.consumer_count)
        return states


def delete_queue(url: str, name: str) -> None:
    """Delete the queue ``name`` with its messages (a queue already gone is no error)."""
    connection = connect(url)
    try:
        with broker_errors(f"delete queue {name}"):
            connection.channel().queue_delete(name)
    finally:
        close_quietly(connection)


def amqp_properties(message: Message, *, reply_to: str | None = None) -> pika.BasicProperties:
    return pika.BasicProperties(
        content_type=CONTENT_TYPE,
        delivery_mode=pika.DeliveryMode.Persistent,
        message_id=message.message_id,
        correlation_id=message.correlation_id,
        type=message.kind,
        headers=dict(message.headers),
        reply_to=reply_to or message.reply_to,
        timestamp=int(time.time()),
    )


DEAD_REASON_HEADER: Final = "x-dbsync-reason"
"""Header of a dead letter: why the worker refused it."""
DEAD_QUEUE_HEADER: Final = "x-dbsync-queue"
"""Header of a dead letter: the request queue it was taken from."""
MAX_REASON_CHARS: Final = 1000


def dead_letter_properties(delivery: Delivery, reason: str) -> pika.BasicProperties:
    """The delivery's properties, with why and where from; timestamped now."""
    headers = dict(delivery.message.headers)
    headers[DEAD_REASON_HEADER] = (reason or "refused")[:MAX_REASON_CHARS]
    headers[DEAD_QUEUE_HEADER] = delivery.queue
    return copied_properties(delivery.message, headers, timestamp=int(time.time()))


def copied_properties(
    message: Message, headers: dict[str, Any], *, timestamp: int | None = None
) -> pika.BasicProperties:
    """The properties of a received ``message`` to publish it again, with ``headers``."""
    return pika.BasicProperties(
        delivery_mode=pika.DeliveryMode.Persistent,
        message_id=message.message_id or None,
        correlation_id=message.correlation_id or None,
        type=message.kind or None,
        headers=headers,
        reply_to=message.reply_to,
        timestamp=timestamp,
    )


def received_message(properties: pika.BasicProperties, body: bytes) -> Message:
    return Message(
        body=body,
        kind=properties.type or "",
        message_id=properties.message_id or "",
        correlation_id=properties.correlation_id or "",
        headers=properties.headers or {},
        reply_to=properties.reply_to,
    )


def close_quietly(connection: pika.BlockingConnection | None) -> None:
    if connection is None:
        return
    try:
        if connection.is_open:
            connection.close()
    except Exception:  # a broken connection raises anything; it is being dropped anyway
        logger.debug("closing a broken connection", exc_info=True)


class Consumer:
    """The worker's connection: consume request queues, publish replies, settle.

    pika connections are not thread-safe. The thread that calls ``connect`` and
    ``pump`` owns the connection; other threads go through ``call``, which runs a
    function on the owner thread and waits for its result.
    """

    def __init__(
        self,
        url: str,
        topology: Topology,
        on_delivery: Callable[[Delivery], None],
        *,
        prefetch: int,
        heartbeat: int = HEARTBEAT_SECONDS,
        name: str | None = None,
    ) -> None:
        self._url = url
        self._name = name
        self._topology = topology
        self._on_delivery = on_delivery
        self._prefetch = prefetch
        self._heartbeat = heartbeat
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._inspector: BlockingChannel | None = None
        self._consumer_tags: list[str] = []
        self._pending: set[Future[Any]] = set()
        self._lock = threading.Lock()
        self.generation = 0

    def connect(self) -> None:
        """Connect, declare the topology and start consuming every request queue."""
        self.close()
        self._connection = connect(self._url, heartbeat=self._heartbeat, name=self._name)
        with broker_errors("start consuming"):
            channel = self._connection.channel()
            channel.confirm_delivery()
            channel.basic_qos(prefetch_count=self._prefetch)
            declare_topology(channel, self._topology)
            self.generation += 1
            generation = self.generation
            self._consumer_tags = [
                channel.basic_consume(queue, self._callback(queue, generation))
                for queue in self._topology.request_queues
            ]
        self._channel = channel

    def _callback(self, queue: str, generation: int) -> Callable[..., None]:
        def deliver(_ch: Any, method: Any, properties: Any, body: bytes) -> None:
            self._on_delivery(
                Delivery(
                    message=received_message(properties, body),
                    queue=queue,
                    tag=method.delivery_tag,
                    redelivered=bool(method.redelivered),
                    channel_generation=generation,
                )
            )

        return deliver

    def pump(self, seconds: float) -> None:
        """Serve the connection (deliveries, heartbeats, scheduled calls) for ``seconds``."""
        if self._connection is None:
            raise BrokerUnavailable("not connected")
        try:
            with broker_errors("consume"):
                self._connection.process_data_events(time_limit=seconds)
        except BrokerUnavailable:
            self._fail_pending()
            raise

    def stop_consuming(self) -> None:
        """Ask the broker for no more deliveries; those in hand can still be settled."""
        if self._channel is None or not self._channel.is_open:
            return
        with broker_errors("cancel consumers"):
            for tag in self._consumer_tags:
                self._channel.basic_cancel(tag)
        self._consumer_tags = []

    def call(self, function: Callable[[], T], timeout: float = 60.0) -> T:
        """Run ``function`` on the connection's thread; ``BrokerUnavailable`` if it is gone."""
        future = self.submit(function)
        try:
            return future.result(timeout=timeout)
        except TimeoutError:
            raise BrokerUnavailable("the connection thread did not answer") from None

    def submit(self, function: Callable[[], T]) -> Future[T]:
        """Schedule ``function`` on the connection's thread and return at once: the future
        holds its result, or ``BrokerUnavailable`` if the connection is lost first."""
        future: Future[T] = Future()
        connection = self._connection
        if connection is None:
            raise BrokerUnavailable("not connected")

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(function())
            except BaseException as exc:  # handed to whoever waits on the future
                future.set_exception(exc)

        with self._lock:
            self._pending.add(future)
        future.add_done_callback(self._forget)
        try:
            with broker_errors("schedule"):
                connection.add_callback_threadsafe(run)
        except BrokerUnavailable:
            self._forget(future)
            raise
        return future

    def _forget(self, future: Future[Any]) -> None:
        with self._lock:
            self._pending.discard(future)

    def _fail_pending(self) -> None:
        with self._lock:
            pending, self._pending = self._pending, set()
        for future in pending:
            if not future.done():
                future.set_exception(BrokerUnavailable("connection lost"))

    def publish(self, item: Outgoing) -> None:
        """Publish a reply or event and wait for the broker's confirm (connection thread)."""
        if self._channel is None:
            raise BrokerUnavailable("not connected")
        if item.event:
            exchange, routing_key = self._topology.events_exchange, ""
        elif item.reply_to is not None:
            exchange, routing_key = "", item.reply_to
        elif item.node_id is not None:
            # The default exchange routes by queue name: the reply reaches this node's
            # queue and no other, whatever any node has bound (see ensure_node_queue).
            exchange, routing_key = "", self._topology.node_queue(item.node_id)
        else:
            raise ConfigurationError("an outgoing message has no destination")
        with broker_errors("publish reply"):
            self._channel.basic_publish(
                exchange, routing_key, item.message.body, amqp_properties(item.message)
            )

    def settle(self, delivery: Delivery, disposition: str, reason: str = "") -> None:
        """Ack, dead-letter (``"dead-letter"``) or requeue a delivery (connection thread).

        A dead letter goes to the dead-letter queue with ``reason`` and the queue it
        came from in its headers (``DEAD_REASON_HEADER``, ``DEAD_QUEUE_HEADER``):
        published with a confirm, then acknowledged. A crash in between leaves a
        copy in both queues, never in neither. A delivery from an earlier
        connection cannot be settled: the broker already put it back in its queue.
        """
        if delivery.channel_generation != self.generation or self._channel is None:
            raise BrokerUnavailable("the delivery's channel is gone; it will be redelivered")
        with broker_errors("settle"):
            if disposition == "dead-letter":
                self._channel.basic_publish(
                    "",
                    self._topology.dead_letter_queue,
                    delivery.message.body,
                    dead_letter_properties(delivery, reason),
                    mandatory=True,  # no dead-letter queue: not acked, redelivered
                )
                self._channel.basic_ack(delivery.tag)
            elif disposition == "ack":
                self._channel.basic_ack(delivery.tag)
            else:
                self._channel.basic_reject(delivery.tag, requeue=disposition == "requeue")

    def inspect_queues(self) -> dict[str, tuple[int, int]]:
        """Ready messages and consumers of each queue of the topology (connection thread),
        on a channel of its own: a failed passive declare never closes the consumer's."""
        if self._connection is None:
            raise BrokerUnavailable("not connected")
        if self._inspector is None or not self._inspector.is_open:
            with broker_errors("open a channel"):
                self._inspector = self._connection.channel()
        try:
            return inspect_queues(self._inspector, self._topology)
        except SyncError:
            self._inspector = None
            raise

    def close(self) -> None:
        """Close the connection; unsettled deliveries go back to their queues."""
        self._fail_pending()
        close_quietly(self._connection)
        self._connection = None
        self._channel = None
        self._inspector = None
