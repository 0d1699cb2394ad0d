"""A loopback TCP proxy that tests put between a client or worker and RabbitMQ.

``cut()`` closes every connection and refuses new ones (accepted, then closed at
once) until ``restore()``: what a broker restart or a network cut looks like to
pika. ``cut_on_upstream(pattern)`` and ``cut_on_downstream(pattern)`` cut at the
moment a pattern crosses the proxy, to place a fault inside one AMQP exchange:
upstream (client to broker) the chunk carrying it is dropped, downstream
(broker to client) it is dropped too, so the broker has acted but the client
never hears of it. ``stall()`` stops forwarding without closing anything (a
silent network drop: nothing arrives, nothing fails) until ``restore()``.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

_CHUNK = 65536
_POLL_SECONDS = 0.05


@dataclass
class _Trigger:
    pattern: bytes
    upstream: bool


class TcpProxy:
    """Forward ``127.0.0.1:<port>`` to ``target``; one thread per connection pair."""

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self._listener.settimeout(_POLL_SECONDS)
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, socket.socket]] = set()
        self._open = threading.Event()
        self._open.set()
        self._flowing = threading.Event()
        self._flowing.set()
        self._held: list[socket.socket] = []
        self._closed = threading.Event()
        self._trigger: _Trigger | None = None
        self.refused = threading.Event()
        """Set when a connection is refused while cut."""
        self.triggered = threading.Event()
        """Set when a ``cut_on_*`` pattern fired."""
        self.connections = 0
        self._thread = threading.Thread(target=self._accept_loop, name="tcp-proxy", daemon=True)
        self._thread.start()

    @classmethod
    def for_url(cls, url: str) -> TcpProxy:
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 5672)

    def url(self, target_url: str) -> str:
        """``target_url`` with its host and port replaced by the proxy's."""
        parts = urlsplit(target_url)
        credentials = parts.netloc.rpartition("@")[0]
        netloc = f"{credentials}@127.0.0.1:{self.port}" if credentials else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    # --- faults -----------------------------------------------------------------------

    def cut(self) -> None:
        """Close every connection now and refuse new ones until ``restore``."""
        self._open.clear()
        self.refused.clear()
        with self._lock:
            pairs, self._pairs = self._pairs, set()
        for pair in pairs:
            for sock in pair:
                _close(sock)

    def stall(self) -> None:
        """Stop forwarding, closing nothing: connections accepted meanwhile hang too."""
        self._flowing.clear()

    def restore(self) -> None:
        """Accept and forward connections again."""
        self._trigger = None
        self._open.set()
        self._flowing.set()

    @property
    def is_cut(self) -> bool:
        return not self._open.is_set()

    def cut_on_upstream(self, pattern: bytes) -> None:
        """Cut when ``pattern`` goes from client to broker; that chunk never arrives."""
        self.triggered.clear()
        self._trigger = _Trigger(pattern, upstream=True)

    def cut_on_downstream(self, pattern: bytes) -> None:
        """Cut when ``pattern`` goes from broker to client; the client never sees it."""
        self.triggered.clear()
        self._trigger = _Trigger(pattern, upstream=False)

    def close(self) -> None:
        self._closed.set()
        self._flowing.set()
        self.cut()
        for sock in self._held:
            _close(sock)
        self._thread.join(timeout=5)
        _close(self._listener)

    # --- forwarding ---------------------------------------------------------------------

    def _accept_loop(self) -> None:
        while not self._closed.is_set():
            try:
                client, _address = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            if not self._open.is_set():
                _close(client)
                self.refused.set()
                continue
            if not self._flowing.is_set():
                self._held.append(client)  # accepted, never answered
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _close(client)
                continue
            pair = (client, upstream)
            with self._lock:
                self._pairs.add(pair)
                self.connections += 1
            threading.Thread(target=self._pump, args=(pair,), daemon=True).start()

    def _pump(self, pair: tuple[socket.socket, socket.socket]) -> None:
        client, upstream = pair
        selector = selectors.DefaultSelector()
        try:
            selector.register(client, selectors.EVENT_READ)
            selector.register(upstream, selectors.EVENT_READ)
            while self._open.is_set() and not self._closed.is_set():
                if not self._flowing.wait(_POLL_SECONDS):
                    continue
                for key, _events in selector.select(timeout=_POLL_SECONDS):
                    source: socket.socket = key.fileobj  # type: ignore[assignment]
                    sink = upstream if source is client else client
                    if not self._forward(source, sink, pair):
                        return
        except (OSError, ValueError):
            self._drop(pair)
        finally:
            selector.close()

    def _forward(
        self, source: socket.socket, sink: socket.socket, pair: tuple[socket.socket, ...]
    ) -> bool:
        try:
            data = source.recv(_CHUNK)
        except OSError:
            data = b""
        trigger = self._trigger
        if (
            data
            and trigger is not None
            and (source is pair[0]) == trigger.upstream
            and trigger.pattern in data
        ):
            self._trigger = None
            self.triggered.set()
            self.cut()
            return False
        while data and not self._flowing.wait(_POLL_SECONDS):  # stalled: hold it
            if self._closed.is_set():
                return False
        if not data or not self._open.is_set():
            self._drop(pair)
            return False
        try:
            sink.sendall(data)
        except OSError:
            self._drop(pair)
            return False
        return True

    def _drop(self, pair: tuple[socket.socket, ...]) -> None:
        with self._lock:
            self._pairs.discard(pair)  # type: ignore[arg-type]
        for sock in pair:
            _close(sock)


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    with contextlib.suppress(OSError):
        sock.close()
