"""A ``Server`` in a process of its own, handling the request messages a test sends it.

Started with the ``spawn`` context of ``multiprocessing`` (a fresh interpreter, as a
worker process is); the test sends messages through a pipe and gets back, for each,
what the server would publish. Two of them on one database race as two workers do.
"""

from __future__ import annotations

import multiprocessing
from dataclasses import dataclass
from multiprocessing.connection import Connection

from dbsync_mq.errors import DatabaseUnavailable
from dbsync_mq.server import Server
from dbsync_mq.transport.base import Message
from worker.process import create_server_engine, load_models

MODELS = ("tests.models",)


@dataclass(frozen=True)
class Handled:
    """What ``Server.handle`` did with one message: its disposition, the version it made
    (``None`` when it made none), its error code, and the bodies of its replies."""

    disposition: str
    version: int | None
    code: str | None
    replies: tuple[bytes, ...]


def serve(database_url: str, pipe: Connection) -> None:
    """Handle each message received on ``pipe`` until ``None`` arrives."""
    engine = create_server_engine(database_url)
    server = Server(engine, load_models(MODELS))
    try:
        while (message := pipe.recv()) is not None:
            try:
                outcome = server.handle(message)
            except DatabaseUnavailable as exc:
                pipe.send(Handled("retry", None, str(exc), ()))
                continue
            replies = tuple(item.message.body for item in outcome.outgoing if not item.event)
            pipe.send(Handled(outcome.disposition, outcome.version, outcome.code, replies))
    finally:
        engine.dispose()


class ServerProcess:
    """A spawned process running ``serve`` on ``database_url``."""

    def __init__(self, database_url: str) -> None:
        context = multiprocessing.get_context("spawn")
        self._pipe, child = context.Pipe()
        self.process = context.Process(target=serve, args=(database_url, child), daemon=True)
        self.process.start()
        child.close()

    def send(self, message: Message) -> None:
        self._pipe.send(message)

    def receive(self, timeout: float = 30) -> Handled:
        if not self._pipe.poll(timeout):
            raise AssertionError(f"the server process answered nothing in {timeout} s")
        handled: Handled = self._pipe.recv()
        return handled

    def close(self) -> None:
        if self.process.is_alive():
            self._pipe.send(None)
            self.process.join(10)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(10)
        self._pipe.close()
