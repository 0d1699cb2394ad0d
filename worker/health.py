"""The worker's HTTP endpoint: ``/metrics``, ``/healthz`` and ``/readyz``.

- ``/healthz`` answers 200 while the process runs its loop (liveness: restart it
  when this fails);
- ``/readyz`` answers 200 when the worker is connected to the broker, consuming,
  and the database answers ``SELECT 1``; 503 otherwise, with the failing checks
  (readiness: do not count on it, do not send it traffic, alert when it lasts);
- ``/metrics`` is the Prometheus exposition of the worker's registry.

Bodies are small JSON documents, e.g. ``{"ready": false, "checks": {"broker":
false, "consuming": false, "database": true}}``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

import sqlalchemy as sa
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from dbsync_mq.errors import SyncError

logger = logging.getLogger(__name__)

DATABASE_CHECK_SECONDS: Final = 2.0
"""How long one database check answers readiness probes before the next ``SELECT 1``."""


class Readiness:
    """Whether the worker can serve: broker connected, consuming, database reachable."""

    def __init__(
        self,
        engine: sa.Engine,
        *,
        connected: Callable[[], bool],
        consuming: Callable[[], bool],
        cache_seconds: float = DATABASE_CHECK_SECONDS,
    ) -> None:
        self.engine = engine
        self.connected = connected
        self.consuming = consuming
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._checked_at = float("-inf")
        self._database = False

    def checks(self) -> dict[str, bool]:
        return {
            "broker": self.connected(),
            "consuming": self.consuming(),
            "database": self._database_answers(),
        }

    def __call__(self) -> bool:
        return all(self.checks().values())

    def _database_answers(self) -> bool:
        with self._lock:  # one probe at a time reaches the database
            if time.monotonic() - self._checked_at >= self.cache_seconds:
                self._database = self._select_one()
                self._checked_at = time.monotonic()
            return self._database

    def _select_one(self) -> bool:
        try:
            with self.engine.connect() as connection:
                connection.execute(sa.text("SELECT 1"))
        except (SyncError, sa.exc.SQLAlchemyError, OSError) as exc:
            logger.debug("readiness: database check failed: %s", exc)
            return False
        return True


class HealthServer:
    """Serves the three paths on ``address:port`` from a daemon thread (port 0: any)."""

    def __init__(
        self,
        registry: CollectorRegistry,
        readiness: Readiness,
        alive: Callable[[], bool],
        *,
        address: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        handler = _handler(registry, readiness, alive)
        self._server = ThreadingHTTPServer((address, port), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="dbsync-health", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> HealthServer:
        self._thread.start()
        return self

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _handler(
    registry: CollectorRegistry, readiness: Readiness, alive: Callable[[], bool]
) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, generate_latest(registry), CONTENT_TYPE_LATEST)
            elif path == "/healthz":
                living = alive()
                self._json(200 if living else 503, {"alive": living})
            elif path == "/readyz":
                checks = readiness.checks()
                ready = all(checks.values())
                self._json(200 if ready else 503, {"ready": ready, "checks": checks})
            else:
                self._json(404, {"paths": ["/metrics", "/healthz", "/readyz"]})

        def _json(self, status: int, body: dict[str, Any]) -> None:
            self._send(status, json.dumps(body).encode(), "application/json")

        def _send(self, status: int, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # probes every few seconds would drown the request log

    return Handler
