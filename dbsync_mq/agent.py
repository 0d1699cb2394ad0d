"""Background sync: a thread that keeps a node in sync while the application runs.

::

    client.start(on_status=show_indicator)   # or: with client.running(): ...
    ...                                      # local writes as usual, online or not
    client.stop()

The agent pushes shortly after local commits (``debounce``), pushes at once
when the broker comes back, pulls when the worker announces a newer version
(and every ``pull_interval`` without one), and retries with exponential
backoff and jitter while the broker or the worker is away. It reports its
state through ``client.status`` and the ``on_status`` callback; conflicts and
errors (a refused push, a unique clash) reach the application there and never
stop it. The client's own calls keep working beside it: they take turns on the
node's connection.
"""

from __future__ import annotations

import datetime as dt
import enum
import logging
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, fields, replace
from typing import TYPE_CHECKING, Final, Literal

from dbsync_mq.core import messages, signing
from dbsync_mq.core.merge import Conflict
from dbsync_mq.errors import (
    BrokerUnavailable,
    ConfigurationError,
    ProtocolError,
    PullRequired,
    SyncError,
    SyncTimeout,
)
from dbsync_mq.transport.base import Message
from dbsync_mq.transport.node import Subscription

if TYPE_CHECKING:
    from dbsync_mq.client import SyncClient

logger = logging.getLogger(__name__)

AgentState = Literal["stopped", "offline", "online", "syncing", "error"]

MAX_EVENT_BYTES: Final = messages.MAX_EVENT_CHANGES + 4096
"""An event is a signed version number, with at most ``MAX_EVENT_CHANGES`` of changes."""

JITTER: Final = 0.2
"""Every pause is stretched or shrunk at random by up to this fraction, so that a
fleet coming back at once does not reach the broker in step."""


@dataclass(frozen=True)
class SyncStatus:
    """What a sync indicator shows.

    ``state``: ``"online"`` (connected, nothing failing), ``"syncing"``,
    ``"offline"`` (the broker cannot be reached), ``"error"`` (the last sync
    failed: ``last_error`` says why; the agent retries) or ``"stopped"`` (no
    agent runs). ``conflicts`` are those the last sync resolved.
    """

    state: AgentState
    version: int
    pending_operations: int
    last_error: SyncError | None = None
    last_sync_at: dt.datetime | None = None
    conflicts: tuple[Conflict, ...] = ()


StatusListener = Callable[[SyncStatus], None]


class Announced(enum.Enum):
    """What a node made of a version an event announced, when it did not merge it."""

    HAD = "had"
    """The node has that version already (or pushed it)."""
    NEEDS_PULL = "needs-pull"
    """Only a pull can bring it: the event carried no changes, versions are missing
    before it, or the merge needs what the event lacks."""


@dataclass(frozen=True)
class AgentSettings:
    """When the agent syncs. Every setting in seconds."""

    debounce: float = 0.2
    """Wait after a local commit before pushing, so that a burst of commits is one push."""
    pull_interval: float = 60.0
    """Pull at least this often, events or not: what a missed event costs at most."""
    retry_min: float = 0.5
    """First pause after a failed sync; it doubles with every failure..."""
    retry_max: float = 30.0
    """...up to this."""
    reconnect_max: float = 1.0
    """Longest pause between two attempts to reach the broker: how soon the agent
    notices that it is back. Raise it for fleets of many thousand nodes."""

    def __post_init__(self) -> None:
        problems = [
            f"{field.name} must be at least 0, not {getattr(self, field.name)!r}"
            for field in fields(self)
            if not getattr(self, field.name) >= 0
        ]
        if self.pull_interval <= 0:
            problems.append("pull_interval must be more than 0")
        if self.retry_min > self.retry_max:
            problems.append("retry_min must not exceed retry_max")
        if problems:
            raise ConfigurationError("invalid agent settings:\n  " + "\n  ".join(problems))


class _Backoff:
    """``first``, doubling, capped, each with jitter."""

    def __init__(self, first: float, ceiling: float) -> None:
        self.first, self.ceiling, self.failures = first, ceiling, 0

    def next(self) -> float:
        delay = min(self.ceiling, self.first * 2**self.failures)
        self.failures += 1
        return _jittered(delay)

    def reset(self) -> None:
        self.failures = 0


def _jittered(seconds: float) -> float:
    return seconds * random.uniform(1 - JITTER, 1 + JITTER)


class Agent:
    """The thread that syncs one client in the background (see the module docstring)."""

    def __init__(
        self,
        client: SyncClient,
        settings: AgentSettings,
        on_status: StatusListener | None = None,
    ) -> None:
        self._client = client
        self.settings = settings
        self._on_status = on_status
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._events: queue.SimpleQueue[Message] = queue.SimpleQueue()
        self._connected = False
        self._push_at: float | None = time.monotonic()  # whatever waits since last time
        self._pull_at: float = time.monotonic()
        self._retry_at: float | None = None
        self._retries = _Backoff(settings.retry_min, settings.retry_max)
        self._reconnects = _Backoff(min(0.1, settings.reconnect_max), settings.reconnect_max)
        self._lock = threading.Lock()
        self._status = SyncStatus("offline", 0, 0)
        self._thread = threading.Thread(target=self._run, name="dbsync-agent", daemon=True)

    # --- any thread ---------------------------------------------------------------------

    def start(self) -> None:
        self._status = SyncStatus(
            "offline", self._client.version, self._client.pending_operations()
        )
        self._client._log.add_commit_listener(self._on_commit)
        self._client._broker.on_connection(self._on_connection)
        self._thread.start()

    def stop(self, timeout: float) -> bool:
        """Stop after the sync in hand; whether the thread ended within ``timeout``."""
        self._stopping.set()
        self._wake.set()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    @property
    def status(self) -> SyncStatus:
        with self._lock:
            return self._status

    def _on_commit(self) -> None:
        if self._push_at is None:
            self._push_at = time.monotonic() + self.settings.debounce
            self._wake.set()

    def _on_connection(self, up: bool) -> None:
        self._connected = up
        self._wake.set()

    def _on_event(self, message: Message) -> None:
        self._events.put(message)
        self._wake.set()

    # --- the agent's thread -------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._subscribe()
            while not self._stopping.is_set():
                self._wait()
                if self._stopping.is_set():
                    break
                self._read_events()
                if not self._connected:
                    self._reconnect()
                elif self._due():
                    self._sync()
        except Exception:  # a bug: say so loudly, and leave the status telling it
            logger.exception("the sync agent stopped on an unexpected error")
            raise
        finally:
            self._client._log.remove_commit_listener(self._on_commit)
            self._client._broker.on_connection(None)
            self._unsubscribe()
            self._publish(replace(self._status, state="stopped"))

    def _wait(self) -> None:
        now = time.monotonic()
        if not self._connected:
            due = self._retry_at or now
        elif self._retry_at is not None:
            due = self._retry_at
        else:
            due = min(self._pull_at, self._push_at or self._pull_at)
        if due > now:
            self._wake.wait(due - now)
        self._wake.clear()

    def _due(self) -> bool:
        now = time.monotonic()
        if self._retry_at is not None:
            return now >= self._retry_at
        return now >= self._pull_at or (self._push_at is not None and now >= self._push_at)

    def _subscribe(self) -> None:
        identity = self._client._require_identity()
        topology = self._client.topology
        subscription = Subscription(
            topology.node_events_queue(identity.node_id, uuid.uuid4().hex[:12]),
            topology.events_exchange,
            self._on_event,
        )
        self._server_key = signing.load_public_key(identity.server_key)
        self._node_id = identity.node_id
        try:
            self._client._broker.subscribe(subscription)
        except (BrokerUnavailable, SyncTimeout) as exc:
            self._offline(exc)  # the subscription is taken up when the broker is back
        else:
            self._connected = True

    def _unsubscribe(self) -> None:
        try:
            self._client._broker.subscribe(None)
        except SyncError as exc:
            logger.debug("events queue not deleted (%s); it goes with the connection", exc)

    def _reconnect(self) -> None:
        try:
            self._client._broker.open()
        except (BrokerUnavailable, SyncTimeout) as exc:
            self._offline(exc)
            return
        logger.info("broker reachable again: syncing")
        self._connected = True
        self._reconnects.reset()
        self._retry_at = None
        self._push_at = self._pull_at = time.monotonic()  # publish on reconnect, catch up

    def _offline(self, error: SyncError) -> None:
        self._connected = False
        self._retry_at = time.monotonic() + self._reconnects.next()
        self._publish(replace(self._status, state="offline", last_error=error))

    def _read_events(self) -> None:
        events: list[messages.Event] = []
        while True:
            try:
                message = self._events.get_nowait()
            except queue.Empty:
                break
            try:
                signed, signature = signing.open_envelope(message.body, MAX_EVENT_BYTES)
                signing.verify(signed, signature, self._server_key)
                events.append(messages.decode_event(signed))
            except ProtocolError as exc:
                logger.warning("ignoring an event that is not the server's: %s", exc)
        # This node's own pushes are settled by their replies.
        theirs = (event for event in events if event.node_id != self._node_id)
        for event in sorted(theirs, key=lambda e: e.version):
            if not self._merge_announced(event):
                self._pull_at = time.monotonic()
                return

    def _merge_announced(self, event: messages.Event) -> bool:
        """Merge what ``event`` carries; False when only a pull can bring it."""
        try:
            result = self._client._merge_announced(event)
        except SyncError as exc:  # the pull that follows reports it, if it persists
            logger.debug("the changes of version %d wait for a pull: %s", event.version, exc)
            return False
        if result is Announced.HAD:
            return True
        if result is Announced.NEEDS_PULL:
            return False
        self._publish(
            replace(
                self._status,
                version=result.version,
                last_sync_at=dt.datetime.now(dt.timezone.utc),
                conflicts=tuple(result.conflicts),
            )
        )
        return True

    def _sync(self) -> None:
        self._push_at = None  # commits from now on call for another push
        self._publish(replace(self._status, state="syncing"))
        try:
            result = self._client.sync()
        except PullRequired:
            # Other nodes kept pushing first: not a failure, go again soon.
            self._push_at = time.monotonic() + _jittered(self.settings.retry_min)
            return
        except (BrokerUnavailable, SyncTimeout) as exc:
            self._failed(exc, offline=isinstance(exc, BrokerUnavailable))
            return
        except SyncError as exc:
            logger.warning("background sync failed: %s", exc)
            self._failed(exc, offline=False)
            return
        self._retries.reset()
        self._retry_at = None
        self._pull_at = time.monotonic() + _jittered(self.settings.pull_interval)
        self._publish(
            SyncStatus(
                "online",
                result.version,
                self._client.pending_operations(),
                None,
                dt.datetime.now(dt.timezone.utc),
                tuple(result.conflicts),
            )
        )

    def _failed(self, error: SyncError, *, offline: bool) -> None:
        if self._push_at is None:
            self._push_at = time.monotonic()  # what was not pushed still waits
        if offline:
            self._offline(error)
            return
        self._retry_at = time.monotonic() + self._retries.next()
        self._publish(replace(self._status, state="error", last_error=error, conflicts=()))

    def _publish(self, status: SyncStatus) -> None:
        with self._lock:
            changed, self._status = status != self._status, status
        if changed and self._on_status is not None:
            try:
                self._on_status(status)
            except Exception:
                logger.exception("the on_status callback failed")
