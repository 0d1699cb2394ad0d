"""A node's broker connection, owned by one thread.

A pika ``BlockingConnection`` is not thread-safe, and it answers the broker's
heartbeats only while some thread is inside it: left idle, it is dropped by the
broker after two heartbeats. So the connection lives in a thread of its own,
the *owner*, which keeps it serviced and runs every broker operation. Callers
hand it commands and wait for the results with a deadline: whatever the broker
does (refuses, stalls in the handshake, never confirms, goes silent), a caller
has its answer or a ``SyncError`` by then. ``BrokerUnavailable`` means the
broker could not be reached; ``SyncTimeout`` that it was reached and did not
answer in time. An owner stuck inside pika past a deadline is abandoned (it
closes its connection whenever pika lets go) and the next call starts afresh.

Replies reach the node's own durable queue, so a reply outlives a crash, and
are handed to the caller waiting for their correlation id. The queue is
consumed only while a request waits for its reply: an idle client holds no
reply another client of the same node waits for. A reply is acknowledged when
its caller takes it, so the prefetch bounds how much of a long streamed reply
waits in memory.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Final, TypeVar

import pika.exceptions
from pika.adapters.blocking_connection import BlockingChannel, BlockingConnection

from dbsync_mq.errors import BrokerUnavailable, SyncError, SyncTimeout
from dbsync_mq.transport.base import Message
from dbsync_mq.transport.rabbitmq import (
    HEARTBEAT_SECONDS,
    amqp_properties,
    broker_address,
    broker_errors,
    close_quietly,
    connect,
    connection_parameters,
    received_message,
)
from dbsync_mq.transport.topology import DIRECT_REPLY_TO, Topology

logger = logging.getLogger(__name__)

T = TypeVar("T")

BROKEN: Final = (pika.exceptions.AMQPError, OSError, ValueError, RuntimeError)
"""What pika raises on a connection or channel that is already gone."""

SERVE_SECONDS: Final = 1.0
"""How long the owner waits for broker traffic per turn when no command comes."""

IDLE_CLOSE_SECONDS: Final = 300.0
"""An owner closes a connection unused this long (and reopens it on the next call)."""

REPLY_PREFETCH: Final = 8
"""Replies the broker hands the node before it acknowledges one: the memory bound
of a streamed reply."""

CLOSE_WAIT_SECONDS: Final = 5.0
"""How long ``close`` waits for the connection to close cleanly."""

MAX_STUCK_OWNERS: Final = 2
"""Connections left waiting inside pika for a broker that stopped answering; past
this many, calls fail at once instead of opening more."""


@dataclass(frozen=True)
class _Reply:
    """A reply waiting in an inbox; ``tag`` is ``None`` for direct reply-to answers."""

    message: Message
    tag: int | None
    generation: int


@dataclass
class _Inbox:
    """Where the replies to one request wait for their caller."""

    queue_name: str
    items: queue.SimpleQueue[_Reply | SyncError] = field(default_factory=queue.SimpleQueue)
    received: int = 0


@dataclass(frozen=True)
class Subscription:
    """A queue of the node's own, bound to an exchange, whose messages go to ``deliver``
    (called on the connection's thread: it must hand them over and return at once)."""

    queue_name: str
    exchange: str
    deliver: Callable[[Message], None]


ConnectionListener = Callable[[bool], None]
"""Told ``True`` when a connection opens and ``False`` when it is lost or closed
(called on the connection's thread: it must return at once)."""


@dataclass
class _Command:
    what: str
    function: Callable[[BlockingChannel], Any]
    connect: bool = True
    """Whether to open a connection for it; housekeeping of a lost one is moot."""
    future: concurrent.futures.Future[Any] = field(default_factory=concurrent.futures.Future)


_STOP: Final = None


class _Owner:
    """The thread that owns one connection: it alone touches pika."""

    def __init__(
        self,
        url: str,
        heartbeat: int,
        connect_timeout: float,
        subscription: Subscription | None = None,
        listener: ConnectionListener | None = None,
    ) -> None:
        self._url = url
        self.subscription = subscription
        self._listener = listener
        self._heartbeat = heartbeat
        self._connect_timeout = connect_timeout
        self._commands: queue.SimpleQueue[_Command | None] = queue.SimpleQueue()
        self._connection: BlockingConnection | None = None
        self._channel: BlockingChannel | None = None
        self._generation = 0
        self._inboxes: dict[str, _Inbox] = {}
        self._consumers: dict[str, str] = {}
        self._declared: set[str] = set()
        self._last_used = time.monotonic()
        self._abandoned = threading.Event()
        self.connecting = False
        self._thread = threading.Thread(target=self._run, name="dbsync-broker", daemon=True)
        self._thread.start()

    # --- called from any thread -----------------------------------------------------

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(
        self, what: str, function: Callable[[BlockingChannel], T], *, connect: bool = True
    ) -> concurrent.futures.Future[T]:
        """Queue ``function(channel)`` to run on the owner thread."""
        command = _Command(what, function, connect)
        self._commands.put(command)
        self._wake()
        return command.future

    def stop(self) -> None:
        """Close the connection and end the thread after the commands queued so far."""
        self._commands.put(_STOP)
        self._wake()

    def abandon(self) -> None:
        """End the thread as soon as pika lets go of it; queued commands are cancelled."""
        self._abandoned.set()
        self.stop()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def set_listener(self, listener: ConnectionListener | None) -> None:
        self._listener = listener

    def _wake(self) -> None:
        # Read after the command was queued: if the owner has no connection yet, it
        # drains the queue right after opening one, so nothing waits for a turn.
        connection = self._connection
        if connection is None:
            return
        # Closed meanwhile: the owner sees the command on its next turn anyway.
        with contextlib.suppress(*BROKEN):
            connection.add_callback_threadsafe(_nothing)

    # --- the owner thread -------------------------------------------------------------

    def _run(self) -> None:
        try:
            while not self._abandoned.is_set():
                command = self._next_command()
                if command is not None:
                    self._execute(command)
        finally:
            self._disconnect(BrokerUnavailable("the client closed its broker connection"))
            self._cancel_queued()

    def _next_command(self) -> _Command | None:
        if self._connection is None:
            command = self._commands.get()
            if command is _STOP:
                self._abandoned.set()
            return command
        try:
            command = self._commands.get_nowait()
        except queue.Empty:
            self._serve()
            return None
        if command is _STOP:
            self._abandoned.set()
        return command

    def _serve(self) -> None:
        """Heartbeats and deliveries while no command waits; close an idle connection."""
        idle = time.monotonic() - self._last_used > IDLE_CLOSE_SECONDS
        if idle and not self._inboxes and self.subscription is None:
            self._disconnect(None)
            return
        assert self._connection is not None
        try:
            with broker_errors("serve the connection"):
                self._connection.process_data_events(time_limit=SERVE_SECONDS)
        except SyncError as exc:
            logger.info("broker connection lost: %s", exc)
            self._disconnect(exc)
        except Exception as exc:  # pika, broken midway, raises types of its own
            logger.warning("broker connection dropped after an error", exc_info=True)
            self._disconnect(BrokerUnavailable(f"connection broken: {type(exc).__name__}"))

    def _execute(self, command: _Command) -> None:
        if not command.future.set_running_or_notify_cancel():
            return  # its caller stopped waiting
        try:
            if not command.connect and (self._channel is None or not self._channel.is_open):
                command.future.set_result(None)
                return
            channel = self._open_channel()
            with broker_errors(command.what):
                result = command.function(channel)
        except SyncError as exc:  # handed to the waiting caller, raised there
            if isinstance(exc, BrokerUnavailable):
                self._disconnect(exc)
            command.future.set_exception(exc)
        except Exception as exc:
            # pika on a channel broken midway raises types of its own (assertions, value
            # errors): the connection cannot be trusted any more.
            logger.warning("%s failed; dropping the connection", command.what, exc_info=True)
            error = BrokerUnavailable(f"{command.what}: {type(exc).__name__}: {exc}")
            self._disconnect(error)
            command.future.set_exception(error)
        else:
            command.future.set_result(result)
        finally:
            self._last_used = time.monotonic()

    def _open_channel(self) -> BlockingChannel:
        if self._channel is not None and self._channel.is_open:
            return self._channel
        self._disconnect(None)
        self.connecting = True
        try:
            connection = connect(
                self._url, heartbeat=self._heartbeat, timeout=self._connect_timeout
            )
        finally:
            self.connecting = False
        try:
            with broker_errors("open a channel"):
                channel = connection.channel()
                channel.confirm_delivery()
                channel.basic_qos(prefetch_count=REPLY_PREFETCH)
                channel.add_on_cancel_callback(self._on_broker_cancel)
            if self.subscription is not None:
                with broker_errors("subscribe to events"):
                    self._consume(channel, self.subscription)
        except SyncError:
            close_quietly(connection)
            raise
        self._generation += 1
        self._connection, self._channel = connection, channel
        if self._listener is not None:
            self._listener(True)
        return channel

    def _disconnect(self, error: SyncError | None) -> None:
        """Drop the connection; callers waiting for replies get ``error``."""
        if self._connection is not None and self._listener is not None:
            self._listener(False)
        close_quietly(self._connection)
        self._connection = self._channel = None
        self._consumers.clear()
        self._declared.clear()
        inboxes, self._inboxes = self._inboxes, {}
        for inbox in inboxes.values():
            inbox.items.put(
                BrokerUnavailable(f"the broker connection was lost: {error}")
                if error is not None
                else BrokerUnavailable("the broker connection was closed")
            )

    def _cancel_queued(self) -> None:
        while True:
            try:
                command = self._commands.get_nowait()
            except queue.Empty:
                return
            if command is not None and command.future.set_running_or_notify_cancel():
                command.future.set_exception(BrokerUnavailable("the broker connection was closed"))

    # --- commands: they run on the owner thread ---------------------------------------

    def subscribe(self, channel: BlockingChannel, subscription: Subscription | None) -> None:
        """Consume ``subscription`` now and on every connection to come (``None``: stop)."""
        previous, self.subscription = self.subscription, subscription
        if previous is not None:
            tag = self._consumers.pop(previous.queue_name, None)
            if tag is not None:
                channel.basic_cancel(tag)
            channel.queue_delete(previous.queue_name)
        if subscription is not None:
            self._consume(channel, subscription)

    def _consume(self, channel: BlockingChannel, subscription: Subscription) -> None:
        channel.queue_declare(subscription.queue_name, exclusive=True, auto_delete=True)
        channel.queue_bind(subscription.queue_name, subscription.exchange)

        def deliver(_ch: Any, _method: Any, properties: pika.BasicProperties, body: bytes) -> None:
            subscription.deliver(received_message(properties, body))

        self._consumers[subscription.queue_name] = channel.basic_consume(
            subscription.queue_name, deliver, auto_ack=True
        )

    def open_inbox(
        self,
        channel: BlockingChannel,
        queue_name: str,
        correlation_id: str,
        arguments: Mapping[str, Any] | None,
    ) -> _Inbox:
        """Consume the reply queue, declared once per connection (unless it is direct
        reply-to, which needs no declaring)."""
        if arguments is not None and queue_name not in self._declared:
            channel.queue_declare(queue_name, durable=True, arguments=dict(arguments))
            self._declared.add(queue_name)
        if queue_name not in self._consumers:
            self._consumers[queue_name] = channel.basic_consume(
                queue_name, self._on_reply, auto_ack=queue_name == DIRECT_REPLY_TO
            )
        inbox = _Inbox(queue_name)
        self._inboxes[correlation_id] = inbox
        return inbox

    def close_inbox(self, channel: BlockingChannel, correlation_id: str) -> None:
        """Forget a finished request. Its queue stays consumed for the next request (one
        round trip to the broker less before each publish), until a reply comes that no
        request here waits for (``_on_reply``)."""
        inbox = self._inboxes.pop(correlation_id, None)
        if inbox is None:
            return
        if inbox.received == 0:
            # No reply came: perhaps the queue went away meanwhile. Declare it next time.
            self._declared.discard(inbox.queue_name)
        while True:  # replies to a finished request nobody took: drop them
            try:
                item = inbox.items.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Reply):
                self.acknowledge(channel, item)

    def release(self, reply: _Reply) -> None:
        """Acknowledge a reply its caller took (any thread; done on the owner's)."""
        if reply.tag is not None:
            self.submit(
                "acknowledge a reply",
                lambda channel: self.acknowledge(channel, reply),
                connect=False,
            )

    def acknowledge(self, channel: BlockingChannel, reply: _Reply) -> None:
        # A delivery of an earlier connection was put back in its queue already.
        if reply.tag is not None and reply.generation == self._generation:
            channel.basic_ack(reply.tag)

    def _on_reply(
        self, channel: BlockingChannel, method: Any, properties: pika.BasicProperties, body: bytes
    ) -> None:
        auto_ack = method.consumer_tag == self._consumers.get(DIRECT_REPLY_TO)
        reply = _Reply(
            received_message(properties, body),
            None if auto_ack else method.delivery_tag,
            self._generation,
        )
        inbox = self._inboxes.get(properties.correlation_id or "")
        if inbox is None:
            queue_name = self._queue_of(method.consumer_tag)
            if reply.tag is not None and not self._waits_on(queue_name):
                # Consumed between requests: the reply may be another process's (two
                # processes syncing one node database share its queue). Give it back and
                # let the queue go, so that the broker hands it to whoever waits.
                channel.basic_reject(reply.tag, requeue=True)
                self._stop_consuming(channel, queue_name)
                return
            logger.debug("dropping a reply to %s: no call waits for it", properties.correlation_id)
            self.acknowledge(channel, reply)
            return
        inbox.received += 1
        inbox.items.put(reply)

    def _queue_of(self, consumer_tag: str) -> str | None:
        return next((name for name, tag in self._consumers.items() if tag == consumer_tag), None)

    def _waits_on(self, queue_name: str | None) -> bool:
        return any(inbox.queue_name == queue_name for inbox in self._inboxes.values())

    def _stop_consuming(self, channel: BlockingChannel, queue_name: str | None) -> None:
        tag = self._consumers.pop(queue_name, None) if queue_name is not None else None
        if tag is not None:
            channel.basic_cancel(tag)

    def _on_broker_cancel(self, frame: Any) -> None:
        tag = frame.method.consumer_tag
        gone = [name for name, consumer in self._consumers.items() if consumer == tag]
        for name in gone:
            del self._consumers[name]
            self._declared.discard(name)
            for correlation_id, inbox in list(self._inboxes.items()):
                if inbox.queue_name == name:
                    del self._inboxes[correlation_id]
                    inbox.items.put(
                        BrokerUnavailable(f"the reply queue {name} disappeared; call again")
                    )


def _nothing() -> None:
    """Wakes the owner thread: it runs its queued commands after the callback."""


class BrokerClient:
    """A node's connection to RabbitMQ: publish requests, wait for their replies.

    Thread-safe. Opened on first use and again after any failure, so a client
    that was offline simply works again when the broker is back. ``timeout``
    bounds every call: from the call until its first reply, and between two
    chunks of a streamed reply.
    """

    def __init__(self, url: str, topology: Topology, *, timeout: float = 30.0) -> None:
        connection_parameters(url)  # a URL that is not AMQP is refused now, not at first use
        self._url = url
        self._topology = topology
        self.timeout = timeout
        self._heartbeat = max(2, min(HEARTBEAT_SECONDS, int(timeout / 3)))
        self._owner: _Owner | None = None
        self._stuck: list[_Owner] = []
        self._lock = threading.Lock()
        self._subscription: Subscription | None = None
        self._listener: ConnectionListener | None = None
        self.address = broker_address(url)

    # --- requests -------------------------------------------------------------------

    @contextmanager
    def request(self, messages: Sequence[Message], node_id: int) -> Iterator[Iterator[Message]]:
        """Publish a request (one message, or the parts of one, all with its correlation
        id) and give the replies to it, from the node's queue, in order."""
        reply_queue = self._topology.node_queue(node_id)
        arguments = self._topology.node_queue_arguments
        with self._exchange(messages, reply_queue, arguments) as replies:
            yield replies

    def call_direct(self, message: Message) -> Message:
        """Publish ``message`` and wait for its answer on RabbitMQ's direct reply-to."""
        with self._exchange([message], DIRECT_REPLY_TO, None) as replies:
            return next(replies)

    def ensure_node_queue(self, node_id: int) -> None:
        """Declare the node's durable reply queue (replies reach it by its name)."""
        queue_name = self._topology.node_queue(node_id)
        arguments = dict(self._topology.node_queue_arguments)
        deadline = time.monotonic() + self.timeout
        self._run(
            self._current_owner(deadline),
            "declare the reply queue",
            lambda channel: channel.queue_declare(queue_name, durable=True, arguments=arguments),
            deadline,
        )

    def publish(self, message: Message) -> None:
        """Publish a request to its kind's queue; return once the broker confirmed it."""
        deadline = time.monotonic() + self.timeout
        self._run(
            self._current_owner(deadline),
            f"publish {message.kind}",
            lambda channel: self._publish(channel, message, None),
            deadline,
        )

    def open(self) -> None:
        """Open the connection now (and the subscription, if any), if it is not open."""
        deadline = time.monotonic() + self.timeout
        self._run(self._current_owner(deadline), "connect", lambda _channel: None, deadline)

    def subscribe(self, subscription: Subscription | None) -> None:
        """Consume ``subscription`` on this connection and every one after (``None``: stop).

        Opens the connection; ``BrokerUnavailable`` if that fails, and the
        subscription is taken up by the next connection that opens.
        """
        with self._lock:
            self._subscription = subscription
            owner = self._owner
        if owner is None or not owner.alive:
            self.open()  # a new owner takes the subscription up as it connects
            return
        deadline = time.monotonic() + self.timeout
        self._run(
            owner, "subscribe", lambda channel: owner.subscribe(channel, subscription), deadline
        )

    def on_connection(self, listener: ConnectionListener | None) -> None:
        """Tell ``listener`` of every connection opened and lost from now on."""
        with self._lock:
            self._listener = listener
            owner = self._owner
        if owner is not None:
            owner.set_listener(listener)

    def close(self) -> None:
        """Close the connection (it is opened again by the next call)."""
        with self._lock:
            owner, self._owner = self._owner, None
        if owner is not None:
            owner.stop()
            owner.join(timeout=min(self.timeout, CLOSE_WAIT_SECONDS))

    # --- internals ------------------------------------------------------------------

    @contextmanager
    def _exchange(
        self, messages: Sequence[Message], reply_queue: str, arguments: Mapping[str, Any] | None
    ) -> Iterator[Iterator[Message]]:
        deadline = time.monotonic() + self.timeout
        owner = self._current_owner(deadline)
        correlation_id = messages[0].correlation_id
        reply_to = DIRECT_REPLY_TO if reply_queue == DIRECT_REPLY_TO else None

        def send(channel: BlockingChannel) -> _Inbox:
            inbox = owner.open_inbox(channel, reply_queue, correlation_id, arguments)
            try:
                for message in messages:
                    self._publish(channel, message, reply_to)
            except BaseException:
                with contextlib.suppress(Exception):  # failing already: the first error tells
                    owner.close_inbox(channel, correlation_id)
                raise
            return inbox

        # One command, so one turn of the connection's thread, for the whole request.
        inbox = self._run(owner, f"send {messages[0].kind}", send, deadline)
        try:
            yield self._replies(owner, inbox, correlation_id, deadline)
        finally:
            owner.submit(
                "forget the call",
                lambda channel: owner.close_inbox(channel, correlation_id),
                connect=False,
            )

    def _publish(self, channel: BlockingChannel, message: Message, reply_to: str | None) -> None:
        channel.basic_publish(
            self._topology.requests_exchange,
            message.kind,
            message.body,
            amqp_properties(message, reply_to=reply_to),
            mandatory=True,
        )

    def _replies(
        self, owner: _Owner, inbox: _Inbox, correlation_id: str, deadline: float
    ) -> Iterator[Message]:
        while True:
            try:
                item = inbox.items.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise SyncTimeout(
                    f"no reply to {correlation_id} from RabbitMQ at {self.address} "
                    f"in {self.timeout:g} s"
                ) from None
            if isinstance(item, SyncError):
                raise item
            owner.release(item)
            yield item.message
            deadline = time.monotonic() + self.timeout

    def _run(
        self, owner: _Owner, what: str, function: Callable[[BlockingChannel], T], deadline: float
    ) -> T:
        future = owner.submit(what, function)
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic()))
        except concurrent.futures.TimeoutError:
            if not future.cancel():
                self._abandon(owner)  # stuck inside pika: it closes when pika lets go
            if owner.connecting:
                raise BrokerUnavailable(
                    f"{what}: RabbitMQ at {self.address} did not complete the connection "
                    f"in {self.timeout:g} s"
                ) from None
            raise SyncTimeout(
                f"{what}: RabbitMQ at {self.address} did not answer in {self.timeout:g} s"
            ) from None

    def _current_owner(self, deadline: float) -> _Owner:
        with self._lock:
            if self._owner is not None and self._owner.alive:
                return self._owner
            self._stuck = [owner for owner in self._stuck if owner.alive]
            stuck = list(self._stuck)
        if len(stuck) >= MAX_STUCK_OWNERS:
            # Give the oldest a chance to let go (the broker may be back) before failing.
            stuck[0].join(max(0.0, deadline - time.monotonic()))
            if stuck[0].alive:
                raise BrokerUnavailable(
                    f"RabbitMQ at {self.address} stopped answering: "
                    f"{len(stuck)} connections still wait for it"
                )
        with self._lock:
            if self._owner is None or not self._owner.alive:
                self._owner = _Owner(
                    self._url,
                    self._heartbeat,
                    min(self.timeout, 30.0),
                    self._subscription,
                    self._listener,
                )
            return self._owner

    def _abandon(self, owner: _Owner) -> None:
        owner.abandon()
        with self._lock:
            if self._owner is owner:
                self._owner = None
            self._stuck.append(owner)
