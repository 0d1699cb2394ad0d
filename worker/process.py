"""The worker process: a consume loop around ``dbsync_mq.server.Server``.

Two threads. The connection thread owns the pika connection: it pumps
deliveries into a local queue, keeps heartbeats flowing and runs every publish
and ack (pika is not thread-safe). The handler thread takes one delivery at a
time (or the pushes in hand, for group commit), lets the server handle it
(database work), then asks the connection thread to publish the replies and,
only after they are confirmed, to settle the delivery; it goes on to the next
request meanwhile, unless a stage hook watches. Stopping cancels the consumers
first, lets the message in hand finish and its answer go out, then closes:
prefetched messages not started go back to their queues.
"""

from __future__ import annotations

import importlib
import logging
import os
import queue
import random
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from typing import Final, TypeVar

import sqlalchemy as sa

from dbsync_mq.config import WorkerConfig
from dbsync_mq.core import messages
from dbsync_mq.errors import BrokerUnavailable, ConfigurationError, DatabaseUnavailable, SyncError
from dbsync_mq.server import Outcome, Server
from dbsync_mq.server.activity import NodeActivity
from dbsync_mq.server.trim import trim
from dbsync_mq.storage.engine import create_engine
from dbsync_mq.storage.models import ModelSet
from dbsync_mq.transport.base import Delivery, Outgoing
from dbsync_mq.transport.rabbitmq import Consumer
from worker.health import Readiness
from worker.logs import log_request
from worker.metrics import QUEUE_READ_SECONDS, Metrics

logger = logging.getLogger(__name__)

RET_OK: Final = 0
"""Stopped on request after finishing the message in hand."""
RET_CONFIG: Final = 2
"""Bad settings, models or database schema: fix and restart."""
RET_KILLED: Final = 3
"""Stopped by a second signal without finishing the message in hand."""

PUMP_SECONDS: Final = 0.2
"""How long the connection thread waits for broker events per turn."""
RECONNECT_MAX_SECONDS: Final = 30.0
"""Longest pause between two attempts to reach the broker or the database."""

StageHook = Callable[[str, str, str], None]
T = TypeVar("T")


def load_models(module_names: Iterable[str]) -> ModelSet:
    """Import the models modules and collect the tracked models they define."""
    names = tuple(module_names)
    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            raise ConfigurationError(f"cannot import models module {name!r}: {exc}") from exc
    return ModelSet.in_modules(names)


def create_server_engine(url: str) -> sa.Engine:
    """An engine suited to the worker.

    No ping before each use (it would cost a round trip per request): a connection
    found dead fails the request with ``DatabaseUnavailable``, SQLAlchemy discards
    the pool, and the retry gets a fresh connection.
    """
    if url.startswith("sqlite"):
        return create_engine(url, connect_args={"timeout": 30})
    return create_engine(url)


def kind_of(delivery: Delivery, outcome: Outcome) -> str:
    """The request kind an outcome answers."""
    return outcome.kind or delivery.message.kind


def _unexpected(delivery: Delivery, exc: Exception) -> Outcome:
    return Outcome("dead-letter", (), f"{type(exc).__name__}: {exc}", delivery.message.kind)


class Backoff:
    """Exponential pauses with jitter: 0.5 s, 1 s, 2 s ... up to a ceiling."""

    def __init__(self, ceiling: float = RECONNECT_MAX_SECONDS) -> None:
        self.ceiling = ceiling
        self.attempt = 0

    def next_delay(self) -> float:
        delay = min(self.ceiling, 0.5 * 2**self.attempt)
        self.attempt += 1
        jitter = float(random.uniform(0.8, 1.2))
        return float(delay * jitter)

    def reset(self) -> None:
        self.attempt = 0


class Worker:
    """Serve requests until ``stop()``; ``run()`` returns an exit code."""

    def __init__(self, config: WorkerConfig, *, engine: sa.Engine | None = None) -> None:
        self.config = config
        self.engine = engine or create_server_engine(config.database_url)
        self.models = load_models(config.models)
        self.metrics = Metrics()
        self._stage_hooks: list[StageHook] = []
        self.server = Server(
            self.engine, self.models, settings=config.server, on_stage=self._on_stage
        )
        self._deliveries: queue.Queue[Delivery] = queue.Queue()
        self.consumer = Consumer(
            config.broker_url,
            config.topology,
            self._deliveries.put,
            prefetch=config.prefetch,
            name=f"dbsync-mq worker {socket.gethostname()} pid {os.getpid()}",
        )
        self._stopping = threading.Event()
        self._idle = threading.Event()
        self._idle.set()
        self._taking = threading.Lock()
        self._settling: set[Future[None]] = set()  # answers the connection thread owes
        self.connected = threading.Event()
        self._handler: threading.Thread | None = None
        self._stopped = threading.Event()
        self.activity = NodeActivity(self.engine)
        self.server.hooks.listen("before_request", self.activity.observe)
        self.readiness = Readiness(
            self.engine, connected=self.connected.is_set, consuming=self.consuming
        )
        self.metrics.watch(self.server.hooks, self.engine, self._queue_figures, self.readiness)

    def add_stage_hook(self, hook: StageHook) -> None:
        """Call ``hook(stage, kind, request_id)`` at each stage of every request.

        Server stages are ``before-transaction``, ``in-transaction`` and
        ``after-commit``; the worker adds ``after-reply`` and ``after-ack``.
        """
        self._stage_hooks.append(hook)

    def stop(self) -> None:
        """Finish the message in hand, then return from ``run``."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def alive(self) -> bool:
        """Whether the process still serves: not stopped, its handler thread running."""
        handler = self._handler
        return not self._stopped.is_set() and (handler is None or handler.is_alive())

    def consuming(self) -> bool:
        """Whether requests are being taken: connected, and not stopping."""
        return self.connected.is_set() and not self.stopping

    def _queue_figures(self) -> dict[str, tuple[int, int]]:
        return self.consumer.call(self.consumer.inspect_queues, timeout=QUEUE_READ_SECONDS)

    # --- connection thread --------------------------------------------------------

    def run(self) -> int:
        handler = threading.Thread(target=self._handle_loop, name="dbsync-handler", daemon=True)
        self._handler = handler
        handler.start()
        recorder = threading.Thread(
            target=self.activity.flush_until, args=(self._stopping,), name="dbsync-activity"
        )
        recorder.start()
        trimmer = None
        if self.config.trim_every is not None:
            trimmer = threading.Thread(
                target=self._trim_every, args=(self.config.trim_every,), name="dbsync-trim"
            )
            trimmer.start()
        backoff = Backoff()
        try:
            while not self.stopping:
                try:
                    self._serve_connection(backoff)
                except ConfigurationError as exc:
                    # Refused credentials or virtual host: no retry will fix them.
                    logger.error("the broker refused the worker: %s", exc)
                    self._stopping.set()
                    return RET_CONFIG
                except BrokerUnavailable as exc:
                    self.connected.clear()
                    self.consumer.close()
                    delay = backoff.next_delay()
                    logger.warning("broker unavailable (%s); reconnecting in %.1f s", exc, delay)
                    self._stopping.wait(delay)
        finally:
            self._stopping.set()
            self.consumer.close()
            self.connected.clear()
            handler.join(timeout=60)
            recorder.join()
            if trimmer is not None:
                trimmer.join()
            self.activity.flush()
            self._stopped.set()
        logger.info("worker stopped")
        return RET_OK

    def _trim_every(self, seconds: float) -> None:
        """Trim the version log every ``seconds`` until the worker stops (its thread)."""
        while not self._stopping.wait(seconds):
            try:
                trim(
                    self.engine,
                    keep_days=self.config.keep_days,
                    request_window_seconds=self.config.server.request_window_seconds,
                )
            except (SyncError, sa.exc.SQLAlchemyError) as exc:
                logger.warning("could not trim the version log: %s", exc)

    def _serve_connection(self, backoff: Backoff) -> None:
        self.consumer.connect()
        backoff.reset()
        self.connected.set()
        logger.info("consuming %s", ", ".join(self.config.topology.request_queues))
        while not self.stopping:
            self.consumer.pump(PUMP_SECONDS)
        self.consumer.stop_consuming()
        while not self._is_idle():
            self.consumer.pump(PUMP_SECONDS)

    def _is_idle(self) -> bool:
        """No request in the handler's hands, and none waiting to be answered."""
        with self._taking:
            return self._idle.is_set() and not self._settling

    # --- handler thread -----------------------------------------------------------

    def _handle_loop(self) -> None:
        held: deque[Delivery] = deque()  # taken while gathering a batch, not a push
        while not self.stopping:
            try:
                delivery = held.popleft() if held else self._deliveries.get(timeout=PUMP_SECONDS)
            except queue.Empty:
                continue
            if delivery.channel_generation != self.consumer.generation:
                continue  # its channel is gone; the broker redelivers it
            with self._taking:  # the connection thread closes only once we are idle
                if self._stopping.is_set():
                    break  # taken as the stop began: left unsettled, the broker requeues it
                self._idle.clear()
            batch = [delivery]
            try:
                if delivery.message.kind == messages.PUSH:
                    batch += self._more_pushes(held)
                    self.metrics.observe_batch(len(batch))
                if len(batch) > 1:
                    self._process_batch(batch)
                else:
                    self._process(delivery)
            except BrokerUnavailable as exc:
                logger.warning(
                    "could not settle %s (%s); it will be redelivered",
                    ", ".join(d.message.message_id for d in batch),
                    exc,
                )
            except Exception:
                logger.exception(
                    "unexpected failure handling %s",
                    ", ".join(d.message.message_id for d in batch),
                )
            finally:
                self._idle.set()

    def _more_pushes(self, held: deque[Delivery]) -> list[Delivery]:
        """The pushes already in hand behind the first, up to ``batch_max`` in all: never
        waits for one. The first other request met is held for the next turn."""
        more: list[Delivery] = []
        while len(more) + 1 < self.config.batch_max and not held:
            try:
                delivery = self._deliveries.get_nowait()
            except queue.Empty:
                break
            if delivery.channel_generation != self.consumer.generation:
                continue
            if delivery.message.kind == messages.PUSH:
                more.append(delivery)
            else:
                held.append(delivery)
        return more

    def _process(self, delivery: Delivery) -> None:
        started = time.perf_counter()
        outcome = self._handle(delivery)
        if outcome is None:
            self.consumer.call(lambda: self.consumer.settle(delivery, "requeue"))
            return
        self._finish(delivery, outcome, started)

    def _process_batch(self, batch: list[Delivery]) -> None:
        """Group commit: the pushes applied in one transaction, then each answered and
        settled in turn, as a single push would be."""
        started = time.perf_counter()
        outcomes = self._retrying(
            lambda: self.server.handle_pushes([d.message for d in batch]),
            lambda exc: [_unexpected(delivery, exc) for delivery in batch],
            batch[0],
        )
        if outcomes is None:

            def requeue_all() -> None:
                for delivery in batch:
                    self.consumer.settle(delivery, "requeue")

            self.consumer.call(requeue_all)
            return
        for delivery, outcome in zip(batch, outcomes, strict=True):
            self._finish(delivery, outcome, started)

    def _finish_behind(self, delivery: Delivery, outcome: Outcome, started: float) -> None:
        """Replies in hand, and nobody watching the stages between: the connection thread
        publishes them (each confirmed) and then settles the request, in one turn, while
        this thread goes on to the next request. The order that makes a request safe is
        kept (committed, replied and confirmed, then acknowledged); the waits for the
        broker's confirms leave the handler's path."""
        items = list(self.metrics.count_reply_bytes(kind_of(delivery, outcome), outcome.outgoing))

        def publish_and_settle() -> None:
            for item in items:
                self.consumer.publish(item)
            self.consumer.settle(delivery, outcome.disposition, outcome.reason)

        future = self.consumer.submit(publish_and_settle)
        with self._taking:
            self._settling.add(future)

        def settled(done: Future[None]) -> None:
            with self._taking:
                self._settling.discard(done)
            error = done.exception()
            if error is None:
                self._log(delivery, outcome, time.perf_counter() - started)
            elif isinstance(error, BrokerUnavailable):
                logger.warning(
                    "could not settle %s (%s); it will be redelivered",
                    delivery.message.message_id,
                    error,
                )
            else:
                logger.error("answering %s failed", delivery.message.message_id, exc_info=error)

        future.add_done_callback(settled)

    def _finish(self, delivery: Delivery, outcome: Outcome, started: float) -> None:
        """Publish the outcome's messages, then settle the delivery."""
        if isinstance(outcome.outgoing, (list, tuple)) and not self._stage_hooks:
            self._finish_behind(delivery, outcome, started)
            return
        try:
            kind = outcome.kind or delivery.message.kind
            self._publish(self.metrics.count_reply_bytes(kind, outcome.outgoing))
        except BrokerUnavailable:
            raise
        except Exception:
            # A streamed reply (pull, repair) failed midway, say the database went away:
            # the node sees the chunks stop; the request goes back to be served again.
            logger.exception("streaming the reply to %s failed", outcome.request_id)
            self.consumer.call(lambda: self.consumer.settle(delivery, "requeue"))
            return
        self._on_stage("after-reply", outcome.kind, outcome.request_id or "")
        self.consumer.call(
            lambda: self.consumer.settle(delivery, outcome.disposition, outcome.reason)
        )
        self._on_stage("after-ack", outcome.kind, outcome.request_id or "")
        self._log(delivery, outcome, time.perf_counter() - started)

    def _handle(self, delivery: Delivery) -> Outcome | None:
        """The server's outcome, retrying while the database is unavailable.

        Returns ``None`` if asked to stop meanwhile: the message is requeued.
        """
        return self._retrying(
            lambda: self.server.handle(delivery.message),
            lambda exc: _unexpected(delivery, exc),
            delivery,
        )

    def _retrying(
        self, serve: Callable[[], T], failed: Callable[[Exception], T], delivery: Delivery
    ) -> T | None:
        """``serve()``, retried while the database is unavailable; ``failed(exc)`` if it
        raises anything else; ``None`` if asked to stop while waiting to retry."""
        backoff = Backoff()
        while True:
            try:
                return serve()
            except DatabaseUnavailable as exc:
                delay = backoff.next_delay()
                logger.warning(
                    "database unavailable (%s); retrying %s in %.1f s",
                    exc,
                    delivery.message.message_id,
                    delay,
                )
                self.metrics.database_retries.inc()
            except Exception as exc:
                logger.exception("handling %s failed", delivery.message.message_id)
                return failed(exc)
            if self._stopping.wait(delay):
                return None

    def _publish(self, outgoing: Iterable[Outgoing]) -> None:
        if isinstance(outgoing, (list, tuple)):
            items = list(outgoing)

            def publish_all() -> None:
                for item in items:
                    self.consumer.publish(item)

            self.consumer.call(publish_all)
            return
        for item in outgoing:  # streamed chunks: one at a time, never all in memory
            self.consumer.call(lambda item=item: self.consumer.publish(item))  # type: ignore[misc]

    def _on_stage(self, stage: str, kind: str, request_id: str) -> None:
        for hook in self._stage_hooks:
            hook(stage, kind, request_id)

    def _log(self, delivery: Delivery, outcome: Outcome, seconds: float) -> None:
        kind = outcome.kind or delivery.message.kind
        self.metrics.observe(
            kind,
            outcome.disposition,
            outcome.code,
            seconds,
            version=outcome.version,
            request_id=outcome.request_id,
        )
        log_request(delivery, outcome, kind, seconds)
