"""One conversation with the server at a time per node database, across threads and processes.

Every client of a node shares its reply queue: a reply consumed by one
process would be lost to another waiting for it, and two pushes from one
database would race for its log. So the calls that talk to the server hold a
lock: a thread lock within the process and, for a SQLite database file, a lock
file beside it (``<database>.dbsync-lock``) between processes. A second caller
waits for the first, up to its timeout. Node databases that are not SQLite
files are serialized within the process only.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager

import filelock
from sqlalchemy.engine import Engine

from dbsync_mq.errors import SyncTimeout

LOCK_SUFFIX = ".dbsync-lock"


def lock_path(engine: Engine) -> str | None:
    """The lock file of a SQLite database file; ``None`` for anything else."""
    url = engine.url
    database = url.database or ""
    if url.get_backend_name() != "sqlite" or database in ("", ":memory:"):
        return None
    if database.startswith("file:"):  # a URI filename: its path, without the query
        database = database[len("file:") :].partition("?")[0]
        if not database or database == ":memory:":
            return None
    return database + LOCK_SUFFIX


class NodeLock:
    """Re-entrant within a thread; held by one thread of one process at a time."""

    def __init__(self, engine: Engine) -> None:
        self._thread_lock = threading.RLock()
        path = lock_path(engine)
        self._file_lock = None if path is None else filelock.FileLock(path, thread_local=False)
        self._depth = 0
        self.path = path

    @contextmanager
    def held(self, timeout: float) -> Iterator[bool]:
        """Hold the lock for the block; ``SyncTimeout`` if it is not free within ``timeout``.

        Gives whether this is the outermost hold: what other holders wrote to the
        database before it is to be read again.
        """
        if not self._thread_lock.acquire(timeout=timeout):
            raise SyncTimeout(f"another thread kept this node busy for {timeout:g} s")
        try:
            with self._process_lock(timeout):
                self._depth += 1
                try:
                    yield self._depth == 1
                finally:
                    self._depth -= 1
        finally:
            self._thread_lock.release()

    @contextmanager
    def _process_lock(self, timeout: float) -> Iterator[None]:
        if self._file_lock is None:
            yield
            return
        try:
            self._file_lock.acquire(timeout=timeout)
        except filelock.Timeout:
            raise SyncTimeout(
                f"another process kept this node busy for {timeout:g} s (lock {self.path})"
            ) from None
        try:
            yield
        finally:
            self._file_lock.release()
