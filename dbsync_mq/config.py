"""Settings as frozen dataclasses. ``from_env`` is called by entry points only.

Every bad setting is reported at once, in one ``ConfigurationError``; secrets
(passwords in URLs) are masked in ``repr``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Final

from dbsync_mq.core import messages
from dbsync_mq.errors import ConfigurationError
from dbsync_mq.transport.topology import DEFAULT_NAMESPACE, Topology

DEFAULT_BROKER_URL: Final = "amqp://guest:guest@localhost:5672/%2F"
"""The local RabbitMQ with its default account."""

MAX_MESSAGE_BYTES: Final = messages.MAX_MESSAGE_BYTES
"""Largest message read (16 MiB, RabbitMQ's default ``max_message_size``): a larger
request is dead-lettered, a larger reply ignored. What decoding may cost follows from
it: deflated changes inflate to at most four times this (``core/changeset.py``)."""

PUBLISH_LIMIT_BYTES: Final = 4 * 1024 * 1024
"""Largest message published: large pushes travel in parts, pull and repair replies in
chunks of at most this (RabbitMQ refuses 16 MiB by default, and large messages slow a
quorum queue down)."""

REQUEST_WINDOW_SECONDS: Final = 7 * 24 * 3600
"""How far a request's timestamp may be from the server's clock."""

PULL_CHUNK_CHANGES: Final = 5_000
"""Changes per pull reply message."""

PULL_IN_MEMORY_OPERATIONS: Final = 20_000
"""See ``ServerSettings.pull_in_memory_operations``."""

REPAIR_CHUNK_ROWS: Final = 5_000
"""Rows per repair reply message."""

DEFAULT_PREFETCH: Final = 4
"""Requests a worker process holds unacknowledged at once."""

DEFAULT_BATCH_MAX: Final = 16
"""Pushes in hand a worker applies at most in one transaction (group commit)."""

REQUEST_TIMEOUT_SECONDS: Final = 30.0
"""How long a client waits for a reply before ``SyncTimeout``."""

_PASSWORD = re.compile(r"(://[^:/@]*:)[^@]*@")


def mask(url: str) -> str:
    """``url`` with its password replaced by ``***``."""
    return _PASSWORD.sub(r"\1***@", url)


@dataclass(frozen=True)
class ServerSettings:
    """Limits the server handlers enforce."""

    max_message_bytes: int = MAX_MESSAGE_BYTES
    """Largest request read; the changes in one may inflate to four times this."""
    request_window_seconds: float = REQUEST_WINDOW_SECONDS
    pull_chunk_changes: int = PULL_CHUNK_CHANGES
    repair_chunk_rows: int = REPAIR_CHUNK_ROWS
    reply_bytes: int = PUBLISH_LIMIT_BYTES
    """Largest reply published: pull and repair chunks are cut to fit."""
    pull_in_memory_operations: int = PULL_IN_MEMORY_OPERATIONS
    """A pull of a range of at most this many operations is compressed holding it whole;
    a larger one in two passes, holding a chunk (and a key per row changed)."""


@dataclass(frozen=True)
class WorkerConfig:
    """Everything ``dbsync-mq worker`` needs."""

    database_url: str
    models: tuple[str, ...]
    broker_url: str = DEFAULT_BROKER_URL
    namespace: str = DEFAULT_NAMESPACE
    prefetch: int = DEFAULT_PREFETCH
    metrics_port: int | None = None
    metrics_address: str = "127.0.0.1"
    """Where ``/metrics``, ``/healthz`` and ``/readyz`` listen (``0.0.0.0`` in a container)."""
    plugins: tuple[str, ...] = ()
    server: ServerSettings = field(default_factory=ServerSettings)
    processes: int = 1
    """Worker processes run on this machine by one supervisor (``--processes``)."""
    batch_max: int = DEFAULT_BATCH_MAX
    """Pushes in hand applied at most in one transaction (group commit); 1 turns it off.
    A worker never waits for a batch to fill: it takes what prefetch already gave it."""
    trim_every: float | None = None
    """Seconds between two trims of the version log (``dbsync-mq trim``); ``None``: never."""
    keep_days: float | None = None
    """With ``trim_every``: versions older than this many days are trimmed too, whatever
    the nodes have merged (a node behind them repairs)."""

    def __post_init__(self) -> None:
        problems = []
        if not self.database_url:
            problems.append("a database URL is required (--db or DBSYNC_DATABASE_URL)")
        if not self.models:
            problems.append("at least one models module is required (--models or DBSYNC_MODELS)")
        if self.prefetch < 1:
            problems.append(f"prefetch must be at least 1, not {self.prefetch}")
        if self.batch_max < 1:
            problems.append(f"batch_max must be at least 1, not {self.batch_max}")
        if self.processes < 1:
            problems.append(f"processes must be at least 1, not {self.processes}")
        if self.trim_every is not None and self.trim_every <= 0:
            problems.append(f"trim_every must be more than 0 seconds, not {self.trim_every}")
        if self.keep_days is not None and self.keep_days < 0:
            problems.append(f"keep_days must be 0 or more, not {self.keep_days}")
        try:
            Topology(self.namespace)
        except ConfigurationError as exc:
            problems.append(str(exc))
        if problems:
            raise ConfigurationError("invalid worker settings:\n  " + "\n  ".join(problems))

    def __repr__(self) -> str:
        shown = {f.name: getattr(self, f.name) for f in fields(self)}
        shown["database_url"] = mask(self.database_url)
        shown["broker_url"] = mask(self.broker_url)
        return f"WorkerConfig({', '.join(f'{k}={v!r}' for k, v in shown.items())})"

    @property
    def topology(self) -> Topology:
        return Topology(self.namespace)

    @classmethod
    def from_env(cls, environ: Mapping[str, str], **given: Any) -> WorkerConfig:
        """Settings from ``DBSYNC_*`` variables, overridden by non-None ``given`` values."""
        values: dict[str, Any] = {
            "database_url": environ.get("DBSYNC_DATABASE_URL", ""),
            "broker_url": environ.get("DBSYNC_BROKER_URL", DEFAULT_BROKER_URL),
            "namespace": environ.get("DBSYNC_NAMESPACE", DEFAULT_NAMESPACE),
            "models": split_modules(environ.get("DBSYNC_MODELS", "")),
        }
        values.update({key: value for key, value in given.items() if value is not None})
        return cls(**values)


def split_modules(value: str) -> tuple[str, ...]:
    """``"a.models, b.models"`` -> ``("a.models", "b.models")``."""
    return tuple(part.strip() for part in value.split(",") if part.strip())
