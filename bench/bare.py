"""The round-trip baseline: a bare pika request/reply with the same guarantees as ours.

Same broker, same queue types and delivery guarantees as a dbsync-mq push: the
request goes through a direct exchange to a durable quorum queue, persistent,
with publisher confirms; the responder inserts one row, commits, publishes a
persistent reply (confirmed) to a durable classic queue, then acks the request.
Nothing else: no signature, no envelope, no idempotency record, no version.
"""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pika
import sqlalchemy as sa

from bench.models import plain_metadata, plain_rows
from bench.services import Services

_PUMP_SECONDS = 0.05


class BareResponder:
    """A thread that answers every request after inserting one row and committing."""

    def __init__(self, broker_url: str, database_url: str, request_queue: str, reply_size: int):
        self._parameters = pika.URLParameters(broker_url)
        self._engine = sa.create_engine(database_url)
        plain_metadata.create_all(self._engine)
        self._queue = request_queue
        self._reply = b"r" * reply_size
        self._stop = threading.Event()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-bare", daemon=True)

    def start(self) -> None:
        self._thread.start()
        if not self._ready.wait(15):
            raise TimeoutError("the bare responder did not start")

    def _run(self) -> None:
        connection = pika.BlockingConnection(self._parameters)
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_qos(prefetch_count=4)
        channel.basic_consume(self._queue, self._answer)
        self._ready.set()
        try:
            while not self._stop.is_set():
                connection.process_data_events(time_limit=_PUMP_SECONDS)
        finally:
            connection.close()

    def _answer(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        with self._engine.begin() as connection:
            connection.execute(plain_rows.insert().values(payload=body[:64]))
        channel.basic_publish(
            "",
            properties.reply_to,
            self._reply,
            pika.BasicProperties(
                delivery_mode=pika.DeliveryMode.Persistent,
                correlation_id=properties.correlation_id,
                content_type="application/octet-stream",
            ),
        )
        channel.basic_ack(method.delivery_tag)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)
        self._engine.dispose()


class BareRequester:
    """Publishes a request (confirmed) and waits for its reply on a durable classic queue."""

    def __init__(
        self, services: Services, namespace: str, database_url: str, sizes: tuple[int, int]
    ):
        request_size, reply_size = sizes
        self.exchange = f"{namespace}.bare"
        self.request_queue = f"{namespace}.bare.request"
        self.reply_queue = f"{namespace}.bare.reply"
        self._connection = pika.BlockingConnection(pika.URLParameters(services.broker_url))
        self._channel = self._connection.channel()
        self._declare(services)
        self._channel.confirm_delivery()
        self._channel.basic_consume(self.reply_queue, self._on_reply)
        self._body = b"q" * request_size
        self._waiting: str | None = None
        self.responder = BareResponder(
            services.broker_url, database_url, self.request_queue, reply_size
        )
        self.responder.start()

    def _declare(self, services: Services) -> None:
        channel = self._channel
        channel.exchange_declare(self.exchange, "direct", durable=True)
        channel.queue_declare(
            self.request_queue, durable=True, arguments={"x-queue-type": "quorum"}
        )
        channel.queue_bind(self.request_queue, self.exchange, routing_key="request")
        channel.queue_declare(self.reply_queue, durable=True)
        services.declared("exchange", self.exchange)
        for queue in (self.request_queue, self.reply_queue):
            services.declared("queue", queue)

    def _on_reply(self, channel: Any, method: Any, properties: Any, _body: bytes) -> None:
        channel.basic_ack(method.delivery_tag)
        if properties.correlation_id == self._waiting:
            self._waiting = None

    def call(self) -> None:
        """One request and its reply."""
        correlation = uuid.uuid4().hex
        self._waiting = correlation
        self._channel.basic_publish(
            self.exchange,
            "request",
            self._body,
            pika.BasicProperties(
                delivery_mode=pika.DeliveryMode.Persistent,
                correlation_id=correlation,
                message_id=correlation,
                reply_to=self.reply_queue,
                content_type="application/octet-stream",
            ),
            mandatory=True,
        )
        while self._waiting is not None:
            self._connection.process_data_events(time_limit=_PUMP_SECONDS)

    def close(self) -> None:
        self.responder.stop()
        self._connection.close()
