"""Prometheus metrics of one worker process, on a registry of its own."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


class Metrics:
    """Requests served by kind and outcome, handling time, database retries, head version."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "dbsync_requests",
            "Requests handled",
            ["kind", "disposition", "code"],
            registry=self.registry,
        )
        self.seconds = Histogram(
            "dbsync_request_seconds",
            "Time from delivery to settlement",
            ["kind"],
            registry=self.registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.database_retries = Counter(
            "dbsync_database_retries",
            "Requests retried because the database was unavailable",
            registry=self.registry,
        )
        self.head_version = Gauge(
            "dbsync_head_version", "Last version this worker committed", registry=self.registry
        )

    def observe(self, kind: str, disposition: str, code: str | None, seconds: float) -> None:
        self.requests.labels(kind, disposition, code or "").inc()
        self.seconds.labels(kind).observe(seconds)

    def serve(self, port: int, address: str = "127.0.0.1") -> None:
        """Expose ``/metrics`` over HTTP on ``address:port``."""
        start_http_server(port, addr=address, registry=self.registry)
