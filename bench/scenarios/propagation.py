"""Live propagation: a commit on node A until the row is in node B's database.

Ours: both nodes run their background agents (``debounce=0``), the worker runs
as a process of its own on PostgreSQL; A commits a row, its agent pushes, the
worker commits a version and announces it, B's agent merges the changes the
event carries. The clock stops when B's agent reports the version that holds
the row: it reports once the merge committed, and the row is then looked up in
B's database before the time counts.

The baseline is the bare two-hop path with the same guarantees: A commits a
row to its SQLite file and publishes it (persistent, confirmed, to a durable
quorum queue); a responder commits it to PostgreSQL and publishes it
(persistent, confirmed) to a fanout exchange; B consumes it from its queue and
commits it to its SQLite file; its clock stops when that commit returns. No
signature, no log, no version, no merge.
"""

from __future__ import annotations

import statistics
import threading
import time
import uuid
from typing import Any

import pika
import sqlalchemy as sa
from sqlalchemy.orm import Session

from bench.harness import Measurement, Run, at_most, scenario
from bench.models import Item, item_row, plain_metadata, plain_rows
from bench.servers import new_client, new_server, running_worker
from bench.services import Services
from dbsync_mq import SyncClient, SyncStatus

_PUMP_SECONDS = 0.01
_WAIT_SECONDS = 30.0


class Arrivals:
    """Node B's agent reports each version it merged, once the merge committed; a waiter
    learns when a row is in, and when the report that it was in came."""

    def __init__(self, client: SyncClient) -> None:
        self._client = client
        self._arrived = threading.Condition()
        self._reported_at = 0.0

    def __call__(self, status: SyncStatus) -> None:
        reported_at = time.perf_counter()
        with self._arrived:
            self._reported_at = reported_at
            self._arrived.notify_all()

    def wait_for(self, key: int) -> float:
        """When the report came after which the row is in B's database."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: self._has(key), _WAIT_SECONDS):
                raise TimeoutError(f"row {key} never reached node B")
            return self._reported_at

    def _has(self, key: int) -> bool:
        with self._client.engine.connect() as connection:
            found = connection.execute(sa.select(Item.id).where(Item.id == key)).first()
        return found is not None


class Ours:
    """Two nodes with their agents running, and a worker process."""

    def __init__(self, run: Run) -> None:
        self.setup = new_server(run.services, "postgresql")
        self._worker = running_worker(self.setup, process=True)
        self._worker.__enter__()
        self.a = new_client(self.setup, "prop-a", timeout=10)
        self.b = new_client(self.setup, "prop-b", timeout=10)
        self.arrivals = Arrivals(self.b)
        self.a.start(debounce=0)
        self.b.start(debounce=0, on_status=self.arrivals)
        self._key = 1

    def once(self) -> float:
        key, self._key = self._key, self._key + 1
        started = time.perf_counter()
        with Session(self.a.engine) as session:
            session.add(Item(**item_row(key)))
            session.commit()
        return self.arrivals.wait_for(key) - started

    def close(self) -> None:
        for client in (self.a, self.b):
            client.close()
            client.engine.dispose()
        self._worker.__exit__(None, None, None)


class Relay:
    """The baseline's middle hop: consume, commit to PostgreSQL, publish to a fanout."""

    def __init__(self, services: Services, queue: str, fanout: str, database_url: str) -> None:
        self._engine = sa.create_engine(database_url)
        plain_metadata.create_all(self._engine)
        self._connection = pika.BlockingConnection(pika.URLParameters(services.broker_url))
        self._channel = self._connection.channel()
        self._channel.confirm_delivery()
        self._channel.basic_consume(queue, self._relay)
        self._fanout = fanout
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-relay", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._connection.process_data_events(time_limit=_PUMP_SECONDS)
        self._connection.close()

    def _relay(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        with self._engine.begin() as connection:
            connection.execute(plain_rows.insert().values(payload=body[:64]))
        channel.basic_publish(self._fanout, "", body, properties)
        channel.basic_ack(method.delivery_tag)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)
        self._engine.dispose()


class Receiver:
    """The baseline's node B: consume from its own queue, commit to its SQLite file."""

    def __init__(self, services: Services, queue: str) -> None:
        self._engine = sa.create_engine(services.sqlite_database("bare-b"))
        plain_metadata.create_all(self._engine)
        self._connection = pika.BlockingConnection(pika.URLParameters(services.broker_url))
        channel = self._connection.channel()
        channel.basic_consume(queue, self._receive)
        self._arrived = threading.Condition()
        self._seen: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="bench-receiver", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._connection.process_data_events(time_limit=_PUMP_SECONDS)
        self._connection.close()

    def _receive(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        with self._engine.begin() as connection:
            connection.execute(plain_rows.insert().values(payload=body[:64]))
        committed_at = time.perf_counter()
        channel.basic_ack(method.delivery_tag)
        with self._arrived:
            self._seen[properties.correlation_id] = committed_at
            self._arrived.notify_all()

    def wait_for(self, correlation: str) -> float:
        """When B had committed the message's row."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: correlation in self._seen, _WAIT_SECONDS):
                raise TimeoutError("the bare message never reached node B")
            return self._seen.pop(correlation)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=15)
        self._engine.dispose()


class Bare:
    """A's side of the baseline, with the relay and B."""

    def __init__(self, run: Run, database_url: str) -> None:
        services = run.services
        namespace = services.namespace()
        self.exchange, self.fanout = f"{namespace}.bare", f"{namespace}.bare.fanout"
        queue, b_queue = f"{namespace}.bare.request", f"{namespace}.bare.b"
        self._engine = sa.create_engine(services.sqlite_database("bare-a"))
        plain_metadata.create_all(self._engine)
        self._connection = pika.BlockingConnection(pika.URLParameters(services.broker_url))
        channel = self._channel = self._connection.channel()
        channel.exchange_declare(self.exchange, "direct", durable=True)
        channel.exchange_declare(self.fanout, "fanout", durable=True)
        channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
        channel.queue_bind(queue, self.exchange, routing_key="request")
        channel.queue_declare(b_queue, durable=True)
        channel.queue_bind(b_queue, self.fanout)
        for kind, name in (("exchange", self.exchange), ("exchange", self.fanout)):
            services.declared(kind, name)
        for name in (queue, b_queue):
            services.declared("queue", name)
        channel.confirm_delivery()
        self.relay = Relay(services, queue, self.fanout, database_url)
        self.receiver = Receiver(services, b_queue)
        self._body = b"p" * 300

    def once(self) -> float:
        correlation = uuid.uuid4().hex
        started = time.perf_counter()
        with self._engine.begin() as connection:
            connection.execute(plain_rows.insert().values(payload=self._body[:64]))
        self._channel.basic_publish(
            self.exchange,
            "request",
            self._body,
            pika.BasicProperties(
                delivery_mode=pika.DeliveryMode.Persistent, correlation_id=correlation
            ),
            mandatory=True,
        )
        return self.receiver.wait_for(correlation) - started

    def close(self) -> None:
        self.receiver.close()
        self.relay.close()
        self._connection.close()
        self._engine.dispose()


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


@scenario("propagation")
def propagation(run: Run) -> list[Measurement]:
    """Commit on node A to the row in node B's database, agents running, vs a bare two-hop."""
    writes = run.pick(30, 200)
    ours = Ours(run)
    bare = Bare(run, ours.setup.database_url)
    times: dict[str, list[float]] = {"ours": [], "bare": []}
    try:
        for index in range(writes + 3):
            order = [("ours", ours.once), ("bare", bare.once)]
            for name, once in order if index % 2 == 0 else reversed(order):
                elapsed = once()
                if index >= 3:  # warm-up rounds
                    times[name].append(elapsed)
    finally:
        bare.close()
        ours.close()
    note = f"{writes} writes, interleaved; agents with debounce=0; worker process, PostgreSQL"
    return [
        Measurement(
            "propagation A→B with agents, p50",
            statistics.median(times["ours"]) * 1000,
            statistics.median(times["bare"]) * 1000,
            "ms",
            at_most(3),
            note=note,
        ),
        Measurement(
            "propagation A→B with agents, p99",
            _percentile(times["ours"], 0.99) * 1000,
            _percentile(times["bare"], 0.99) * 1000,
            "ms",
            note=note,
        ),
    ]
