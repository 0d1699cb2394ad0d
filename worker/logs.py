"""The worker's logs: text for people, one JSON object per line for log shippers.

Every settled request is one line (``worker.process``): kind, request id, node,
outcome, error code, version and duration. In JSON those are fields of their
own beside ``message``::

    {"time": "2026-01-05T10:00:00.123Z", "level": "INFO", "logger": "worker.process",
     "message": "push 3f2a… node=7 -> ack version=42 in 3.1 ms", "kind": "push",
     "request_id": "3f2a…", "node": "7", "outcome": "ack", "code": null,
     "version": 42, "duration_ms": 3.1}

Nothing secret is logged: no payload, row value, token or key; refusals carry
their code, not the reason sent to the node (which may quote a row's value).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    from dbsync_mq.server import Outcome
    from dbsync_mq.transport.base import Delivery

LOG_FORMATS: Final = ("text", "json")
"""The values of ``--log-format``."""

REQUEST_FIELDS: Final = "dbsync_request"
"""The ``extra`` key under which the request line carries its fields."""

TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"

request_logger = logging.getLogger("worker.requests")
"""The logger of the one line per request."""


class JsonFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": dt.datetime.fromtimestamp(record.created, dt.timezone.utc)
            .isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, REQUEST_FIELDS, None)
        if isinstance(fields, dict):
            entry.update(fields)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(verbose: bool = False, log_format: str = "text") -> None:
    """Log to standard error in ``log_format``; pika's own records only when verbose."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # Every pika failure surfaces as one of our errors, naming the broker; pika's own
    # records repeat it with tracebacks, so they show only with --verbose.
    logging.getLogger("pika").setLevel(logging.DEBUG if verbose else logging.CRITICAL)


def log_request(delivery: Delivery, outcome: Outcome, kind: str, seconds: float) -> None:
    """The line of a settled request: a warning for a dead letter, else information.

    A dead letter's reason is the worker's own (a check the message failed before it
    was trusted); a refusal shows its code only.
    """
    node = delivery.message.headers.get("node", "-")
    if isinstance(node, bytes):
        node = node.decode("ascii", "replace")
    fields = {
        "kind": kind,
        "request_id": outcome.request_id,
        "node": str(node)[:16],
        "outcome": outcome.disposition,
        "code": outcome.code,
        "version": outcome.version,
        "duration_ms": round(seconds * 1000, 3),
    }
    dead = outcome.disposition == "dead-letter"
    if dead:
        fields["reason"] = outcome.reason[:200]
    detail = f" ({fields['reason']})" if dead else f" ({outcome.code})" if outcome.code else ""
    version = f" version={outcome.version}" if outcome.version is not None else ""
    request_logger.log(
        logging.WARNING if dead else logging.INFO,
        "%s %s node=%s -> %s%s%s in %.1f ms",
        kind,
        outcome.request_id or "-",
        fields["node"],
        outcome.disposition,
        version,
        detail,
        seconds * 1000,
        extra={REQUEST_FIELDS: fields},
    )
