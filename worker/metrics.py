"""Prometheus metrics of one worker process, on a registry of its own.

Two kinds of series. Counters and histograms of what this process did
(requests, pushes and operations applied, refusals by code, dead letters,
reply bytes, database retries, group commit batch sizes): add them up over
the workers. Gauges of the deployment read at scrape time (the version head,
nodes registered and enabled, node lag, queue depths and consumers): every
worker reports the same figures, so take ``max`` over the workers, not ``sum``.

``exported_series(registry)`` lists every series name the registry can
produce; the alert rules and the dashboard in ``deploy/`` are checked against it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Final

import sqlalchemy as sa
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from dbsync_mq.errors import SyncError
from dbsync_mq.server.hooks import Hooks, PushContext
from dbsync_mq.storage import schema
from dbsync_mq.storage.engine import read_transaction
from dbsync_mq.transport.base import Outgoing

logger = logging.getLogger(__name__)

LAG_BUCKETS: Final = (0, 1, 10, 100, 1_000, 10_000, 100_000)
"""Upper bounds of the node lag histogram, in versions behind the head."""

BATCH_BUCKETS: Final = (1, 2, 4, 8, 16, 32, 64, 128)
"""Upper bounds of the group commit batch size histogram, in pushes."""

FLEET_CACHE_SECONDS: Final = 5.0
"""How long the figures read from the server database serve scrapes before a new read."""

QUEUE_READ_SECONDS: Final = 5.0
"""Longest wait for the connection thread to read the queue depths for a scrape."""

QueueFigures = Mapping[str, tuple[int, int]]
"""Queue name -> (ready messages, consumers)."""


class Metrics:
    """The worker's series; the worker calls ``observe`` once per request."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "dbsync_requests", "Requests handled", ["kind", "disposition", "code"], registry=r
        )
        self.seconds = Histogram(
            "dbsync_request_seconds",
            "Time from delivery to settlement",
            ["kind"],
            registry=r,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.database_retries = Counter(
            "dbsync_database_retries",
            "Requests retried because the database was unavailable",
            registry=r,
        )
        self.pushes_applied = Counter(
            "dbsync_pushes_applied", "Pushes applied as new versions", registry=r
        )
        self.operations_applied = Counter(
            "dbsync_operations_applied", "Row operations in the pushes applied", registry=r
        )
        self.rejects = Counter(
            "dbsync_rejects", "Requests answered with an error code", ["kind", "code"], registry=r
        )
        self.dead_letters = Counter(
            "dbsync_dead_letters", "Messages this worker dead-lettered", ["kind"], registry=r
        )
        self.reply_bytes = Counter(
            "dbsync_reply_bytes", "Bytes of reply messages published", ["kind"], registry=r
        )
        self.batch_sizes = Histogram(
            "dbsync_group_commit_batch_size",
            "Pushes applied in one transaction (group commit)",
            registry=r,
            buckets=BATCH_BUCKETS,
        )
        self.ready = Gauge(
            "dbsync_worker_ready", "1 while the worker is ready to serve (as /readyz)", registry=r
        )
        self._operations = OperationTally()

    def observe(
        self,
        kind: str,
        disposition: str,
        code: str | None,
        seconds: float,
        *,
        version: int | None = None,
        request_id: str | None = None,
    ) -> None:
        """Count one settled request; ``version`` is set when a push made one."""
        self.requests.labels(kind, disposition, code or "").inc()
        self.seconds.labels(kind).observe(seconds)
        if code:
            self.rejects.labels(kind, code).inc()
        if disposition == "dead-letter":
            self.dead_letters.labels(kind).inc()
        operations = self._operations.take(request_id)
        if kind == "push" and version is not None:
            self.pushes_applied.inc()
            self.operations_applied.inc(operations)

    def observe_batch(self, size: int) -> None:
        """Record the number of pushes one group commit applied in one transaction."""
        self.batch_sizes.observe(size)

    def count_reply_bytes(self, kind: str, outgoing: Iterable[Outgoing]) -> Iterable[Outgoing]:
        """``outgoing`` as it is (a list stays a list), its bytes counted as published."""
        counter = self.reply_bytes.labels(kind)
        if isinstance(outgoing, (list, tuple)):
            counter.inc(sum(len(item.message.body) for item in outgoing if not item.event))
            return outgoing
        return _counted(outgoing, counter)

    def watch(
        self,
        hooks: Hooks,
        engine: sa.Engine,
        queues: Callable[[], QueueFigures],
        ready: Callable[[], bool],
    ) -> None:
        """Count the operations of applied pushes through ``hooks``; read the deployment's
        figures from ``engine`` and ``queues`` at scrape time; report ``ready``."""
        hooks.listen("after_push", self._operations.note)
        self.registry.register(FleetCollector(engine))
        self.registry.register(QueueCollector(queues))
        self.ready.set_function(lambda: 1.0 if ready() else 0.0)


def _counted(outgoing: Iterable[Outgoing], counter: Any) -> Iterator[Outgoing]:
    for item in outgoing:
        yield item
        if not item.event:
            counter.inc(len(item.message.body))


class OperationTally:
    """Operations of each push between its ``after_push`` hook and its settlement: only a
    push whose transaction committed (its outcome carries a version) is counted."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pending: dict[str, int] = {}

    def note(self, context: PushContext) -> None:
        with self._lock:
            self._pending[context.request.request_id] = len(context.changes)

    def take(self, request_id: str | None) -> int:
        if request_id is None:
            return 0
        with self._lock:
            return self._pending.pop(request_id, 0)


class FleetCollector(Collector):
    """The version head, the nodes and their lag, read from the server database."""

    def __init__(self, engine: sa.Engine, cache_seconds: float = FLEET_CACHE_SECONDS) -> None:
        self.engine = engine
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._read_at = float("-inf")
        self._figures: dict[str, Any] | None = None

    def collect(self) -> Iterator[Metric]:
        figures = self._current()
        head = GaugeMetricFamily("dbsync_head_version", "Current version of the server database")
        registered = GaugeMetricFamily("dbsync_nodes_registered", "Nodes registered")
        enabled = GaugeMetricFamily("dbsync_nodes_enabled", "Nodes enabled")
        lag = HistogramMetricFamily(
            "dbsync_node_lag_versions",
            "Versions between the head and the last version each enabled node merged",
        )
        if figures is not None:
            head.add_metric([], figures["head"])
            registered.add_metric([], figures["registered"])
            enabled.add_metric([], figures["enabled"])
            lag.add_metric([], figures["buckets"], figures["lag_sum"])
        yield from (head, registered, enabled, lag)

    def _current(self) -> dict[str, Any] | None:
        with self._lock:
            if time.monotonic() - self._read_at >= self.cache_seconds:
                try:
                    self._figures = read_fleet(self.engine)
                except (SyncError, sa.exc.SQLAlchemyError) as exc:
                    logger.debug("fleet figures not read: %s", exc)
                    self._figures = None
                self._read_at = time.monotonic()
            return self._figures


def read_fleet(engine: sa.Engine) -> dict[str, Any]:
    """Head, node counts and the lag histogram's cumulative buckets, in two statements."""
    n = schema.nodes.c
    with read_transaction(engine) as connection:
        head = int(connection.execute(sa.select(schema.head.c.version)).scalar() or 0)
        lag = sa.literal(head, sa.BigInteger) - sa.func.coalesce(n.merged_version, 0)
        on = n.enabled == sa.true()
        columns = [
            sa.func.count(),
            sa.func.coalesce(sa.func.sum(sa.case((on, 1), else_=0)), 0),
            sa.func.coalesce(sa.func.sum(sa.case((on, lag), else_=0)), 0),
            *(
                sa.func.coalesce(sa.func.sum(sa.case((on & (lag <= bound), 1), else_=0)), 0)
                for bound in LAG_BUCKETS
            ),
        ]
        row = connection.execute(sa.select(*columns).select_from(schema.nodes)).one()
    registered, enabled, lag_sum, *within = (int(value) for value in row)
    buckets = [(str(bound), count) for bound, count in zip(LAG_BUCKETS, within, strict=True)]
    buckets.append(("+Inf", enabled))
    return {
        "head": head,
        "registered": registered,
        "enabled": enabled,
        "lag_sum": lag_sum,
        "buckets": buckets,
    }


class QueueCollector(Collector):
    """Ready messages and consumers of the request queues and the dead-letter queue."""

    def __init__(self, read: Callable[[], QueueFigures]) -> None:
        self.read = read

    def collect(self) -> Iterator[Metric]:
        messages = GaugeMetricFamily(
            "dbsync_queue_messages", "Messages ready in the queue", labels=["queue"]
        )
        consumers = GaugeMetricFamily(
            "dbsync_queue_consumers", "Consumers of the queue", labels=["queue"]
        )
        try:
            figures = self.read()
        except SyncError as exc:
            logger.debug("queue figures not read: %s", exc)
            figures = {}
        for queue, (ready, count) in sorted(figures.items()):
            messages.add_metric([queue], ready)
            consumers.add_metric([queue], count)
        yield messages
        yield consumers


_SUFFIXES: Final = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum", "_created"),
    "gaugehistogram": ("_bucket", "_gcount", "_gsum"),
    "summary": ("", "_count", "_sum", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "unknown": ("",),
}


def exported_series(registry: CollectorRegistry) -> set[str]:
    """Every series name ``registry`` exposes (``dbsync_requests_total``,
    ``dbsync_request_seconds_bucket`` ...), whether or not it has samples yet."""
    names: set[str] = set()
    for family in registry.collect():
        names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
    return names
