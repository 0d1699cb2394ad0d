"""RabbitMQ through pika: the only module that imports pika.

Every pika exception is turned into one of ours at this boundary:
``BrokerUnavailable`` when the broker cannot be reached or the topology is
missing, ``SyncTimeout`` when no reply came in time, ``ConfigurationError`` when
the broker refuses a declaration. Messages are persistent and published with
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

import pika
import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel

from dbsync_mq.core.messages import REQUEST_KINDS
from dbsync_mq.errors import BrokerUnavailable, ConfigurationError, SyncTimeout
from dbsync_mq.transport.base import CONTENT_TYPE, Delivery, Message, Outgoing
from dbsync_mq.transport.topology import DIRECT_REPLY_TO, Topology

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


def connect(url: str, *, heartbeat: int = HEARTBEAT_SECONDS) -> pika.BlockingConnection:
    """Open a blocking connection; ``BrokerUnavailable`` if the broker cannot be reached."""
    with broker_errors("connect"):
        parameters = pika.URLParameters(url)
        parameters.heartbeat = heartbeat
        parameters.blocked_connection_timeout = 60
        parameters.connection_attempts = 1
        parameters.socket_timeout = CONNECT_TIMEOUT_SECONDS
        parameters.stack_timeout = CONNECT_TIMEOUT_SECONDS
        return pika.BlockingConnection(parameters)


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
        _close_quietly(connection)


def queue_depths(url: str, topology: Topology) -> dict[str, int]:
    """Ready messages in each request queue and the dead-letter queue."""
    connection = connect(url)
    try:
        with broker_errors("inspect queues"):
            channel = connection.channel()
            depths = {}
            for queue in (*topology.request_queues, topology.dead_letter_queue):
                declared = channel.queue_declare(queue, passive=True)
                depths[queue] = declared.method.message_count
            return depths
    finally:
        _close_quietly(connection)


def _properties(message: Message, *, reply_to: str | None = None) -> pika.BasicProperties:
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


def _message(properties: pika.BasicProperties, body: bytes) -> Message:
    return Message(
        body=body,
        kind=properties.type or "",
        message_id=properties.message_id or "",
        correlation_id=properties.correlation_id or "",
        headers=properties.headers or {},
        reply_to=properties.reply_to,
    )


def _close_quietly(connection: pika.BlockingConnection | None) -> None:
    if connection is None:
        return
    try:
        if connection.is_open:
            connection.close()
    except (pika.exceptions.AMQPError, OSError):
        pass


class BrokerClient:
    """A node's connection: publish requests, receive replies on its own queue.

    Opened lazily and re-opened after any failure, so a client that was
    offline simply works again when the broker is back. The heartbeat follows
    the reply timeout, so a connection that silently died is noticed in about
    the time a caller is prepared to wait anyway.
    """

    def __init__(self, url: str, topology: Topology, *, timeout: float = 30.0) -> None:
        self._url = url
        self._topology = topology
        self._heartbeat = max(2, min(HEARTBEAT_SECONDS, int(timeout / 3)))
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None

    def _open(self) -> BlockingChannel:
        if self._channel is not None and self._channel.is_open:
            return self._channel
        self.close()
        self._connection = connect(self._url, heartbeat=self._heartbeat)
        with broker_errors("open channel"):
            channel = self._connection.channel()
            channel.confirm_delivery()
            channel.basic_qos(prefetch_count=16)
        self._channel = channel
        return channel

    @contextmanager
    def _session(self, what: str) -> Iterator[BlockingChannel]:
        try:
            with broker_errors(what):
                yield self._open()
        except BrokerUnavailable:
            self.close()
            raise

    def ensure_node_queue(self, node_id: int) -> None:
        """Declare this node's durable reply queue (replies reach it by its name).

        Declared before every request, not once: a queue deleted or expired since
        is back before the reply is sent. Nothing is bound: a node that may bind
        its queue to an exchange carrying every node's replies could bind it with
        another node's key and read them.
        """
        queue = self._topology.node_queue(node_id)
        with self._session("declare reply queue") as channel:
            channel.queue_declare(
                queue, durable=True, arguments=dict(self._topology.node_queue_arguments)
            )

    def publish(self, message: Message) -> None:
        """Publish a request to its kind's queue; return once the broker confirmed it."""
        with self._session(f"publish {message.kind}") as channel:
            channel.basic_publish(
                self._topology.requests_exchange,
                message.kind,
                message.body,
                _properties(message),
                mandatory=True,
            )

    def receive(self, node_id: int, correlation_id: str, timeout: float) -> Iterator[Message]:
        """Yield replies to ``correlation_id`` from the node's queue until ``timeout``.

        A consumer is opened for the call and cancelled after it, so that no idle
        client holds replies another client of the same node waits for. Replies
        to older requests are acknowledged and dropped.
        """
        queue = self._topology.node_queue(node_id)
        deadline = time.monotonic() + timeout
        with self._session("receive replies") as channel:
            try:
                for method, properties, body in channel.consume(
                    queue, inactivity_timeout=_POLL_SECONDS
                ):
                    if method is None:
                        if time.monotonic() >= deadline:
                            raise SyncTimeout(f"no reply to {correlation_id} in {timeout:g} s")
                        continue
                    # Acked before it is handled: a reply lost to a crash is asked for
                    # again (pushes are resent with the same request id).
                    channel.basic_ack(method.delivery_tag)
                    if properties.correlation_id != correlation_id:
                        logger.debug(
                            "dropping a reply to earlier request %s", properties.correlation_id
                        )
                        continue
                    yield _message(properties, body)
                    deadline = time.monotonic() + timeout
            finally:
                if channel.is_open:
                    channel.cancel()
        # The broker cancelled the consumer: the queue was deleted while we waited.
        raise BrokerUnavailable(f"the reply queue {queue} disappeared; call again")

    def call_direct(self, message: Message, timeout: float) -> Message:
        """Publish ``message`` and wait for its answer on RabbitMQ's direct reply-to."""
        with self._session(f"call {message.kind}") as channel:
            answers: list[Message] = []

            def on_reply(_ch: Any, _method: Any, properties: Any, body: bytes) -> None:
                if properties.correlation_id == message.correlation_id:
                    answers.append(_message(properties, body))

            tag = channel.basic_consume(DIRECT_REPLY_TO, on_reply, auto_ack=True)
            channel.basic_publish(
                self._topology.requests_exchange,
                message.kind,
                message.body,
                _properties(message, reply_to=DIRECT_REPLY_TO),
                mandatory=True,
            )
            deadline = time.monotonic() + timeout
            while not answers and time.monotonic() < deadline:
                channel.connection.process_data_events(time_limit=_POLL_SECONDS)
            channel.basic_cancel(tag)
        if not answers:
            raise SyncTimeout(f"no answer to {message.kind} in {timeout:g} s")
        return answers[0]

    def close(self) -> None:
        """Close the connection (it is re-opened by the next call)."""
        _close_quietly(self._connection)
        self._connection = None
        self._channel = None


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
    ) -> None:
        self._url = url
        self._topology = topology
        self._on_delivery = on_delivery
        self._prefetch = prefetch
        self._heartbeat = heartbeat
        self._connection: pika.BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._consumer_tags: list[str] = []
        self._pending: set[Future[Any]] = set()
        self._lock = threading.Lock()
        self.generation = 0

    def connect(self) -> None:
        """Connect, declare the topology and start consuming every request queue."""
        self.close()
        self._connection = connect(self._url, heartbeat=self._heartbeat)
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
                    message=_message(properties, body),
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
        future: Future[T] = Future()
        connection = self._connection
        if connection is None:
            raise BrokerUnavailable("not connected")

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(function())
            except BaseException as exc:  # handed to the waiting thread, re-raised there
                future.set_exception(exc)

        with self._lock:
            self._pending.add(future)
        try:
            with broker_errors("schedule"):
                connection.add_callback_threadsafe(run)
            return future.result(timeout=timeout)
        except TimeoutError:
            raise BrokerUnavailable("the connection thread did not answer") from None
        finally:
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
                exchange, routing_key, item.message.body, _properties(item.message)
            )

    def settle(self, delivery: Delivery, disposition: str) -> None:
        """Ack, dead-letter (``"dead-letter"``) or requeue a delivery (connection thread).

        A delivery from an earlier connection cannot be settled: the broker
        already put it back in its queue.
        """
        if delivery.channel_generation != self.generation or self._channel is None:
            raise BrokerUnavailable("the delivery's channel is gone; it will be redelivered")
        with broker_errors("settle"):
            if disposition == "ack":
                self._channel.basic_ack(delivery.tag)
            else:
                self._channel.basic_reject(delivery.tag, requeue=disposition == "requeue")

    def close(self) -> None:
        """Close the connection; unsettled deliveries go back to their queues."""
        self._fail_pending()
        _close_quietly(self._connection)
        self._connection = None
        self._channel = None
