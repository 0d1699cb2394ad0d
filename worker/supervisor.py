"""Several worker processes on one machine: ``dbsync-mq worker --processes N``.

The supervisor only starts, watches and stops its children; each child is a
whole worker (its own broker connection and consumers, its own database pool),
so pushes stay serial through the version-head lock while pulls, repairs and
queries run side by side on as many cores.

- Signals: the first SIGTERM or SIGINT is forwarded to every child as SIGTERM
  (a warm stop: each finishes the requests in hand); a second one kills the
  children (a cold stop: the broker requeues what they held) and exits 3. A
  child takes any number of SIGTERMs as one warm stop, since a service manager
  or a terminal may signal the whole process group as well as the supervisor.
- A child that exits with the configuration code (2) stops the others and the
  supervisor exits 2: no restart fixes bad settings. A child that dies for any
  other reason (a crash, the OOM killer, a stray SIGKILL) is restarted after a
  pause, loudly; more than ``MAX_RESTARTS`` within ``RESTART_WINDOW_SECONDS``
  stops everything with exit code 4, for the service manager to act on.
- A child whose supervisor disappears stops warm by itself.
- ``--metrics-port P`` gives child ``i`` (from 0) the port ``P + i``: each child
  serves its own ``/metrics``, ``/healthz`` and ``/readyz``; scrape them all.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
import time
from collections import deque
from multiprocessing.process import BaseProcess
from types import FrameType
from typing import Final, cast

from dbsync_mq.config import WorkerConfig
from worker.process import RET_CONFIG, RET_KILLED, RET_OK

logger = logging.getLogger(__name__)

RET_CHILDREN_FAILING: Final = 4
"""Children kept dying: more than ``MAX_RESTARTS`` in ``RESTART_WINDOW_SECONDS``."""
MAX_RESTARTS: Final = 5
"""Restarts allowed within ``RESTART_WINDOW_SECONDS`` before the supervisor gives up."""
RESTART_WINDOW_SECONDS: Final = 60.0
"""The span over which restarts are counted."""
RESTART_PAUSE_SECONDS: Final = 1.0
"""Pause before a dead child is replaced."""
WATCH_SECONDS: Final = 0.5
"""How often the supervisor looks at its children and its signals."""
PARENT_CHECK_SECONDS: Final = 1.0
"""How often a child checks that its supervisor is still there."""


def child_config(config: WorkerConfig, index: int) -> WorkerConfig:
    """Child ``index``'s settings: its own metrics port (``metrics_port + index``); only
    the first trims the version log (one trimmer is enough)."""
    port = config.metrics_port
    if port:  # not None (no endpoint) nor 0 (any free port)
        port += index
    trim_every = config.trim_every if index == 0 else None
    return dataclasses.replace(config, processes=1, metrics_port=port, trim_every=trim_every)


def _run_child(config: WorkerConfig, verbose: bool, log_format: str) -> None:
    from worker.logs import configure_logging
    from worker.main import main

    configure_logging(verbose, log_format)
    _watch_parent(os.getppid())
    raise SystemExit(main(config, supervised=True))


def _watch_parent(parent: int) -> None:
    """Stop this child (warm) when the supervisor is gone: the child is re-parented."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_SECONDS)
        logger.error("the supervisor (pid %d) is gone: stopping", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="dbsync-parent-watch", daemon=True).start()


class Supervisor:
    """Runs ``config.processes`` workers until signalled; ``run()`` returns the exit code."""

    def __init__(
        self, config: WorkerConfig, *, verbose: bool = False, log_format: str = "text"
    ) -> None:
        self.config = config
        self.processes = config.processes
        self.verbose = verbose
        self.log_format = log_format
        self._context = multiprocessing.get_context("spawn")
        self._children: dict[int, BaseProcess] = {}
        self._signals = 0
        self._restarts: deque[float] = deque()

    def install_signal_handlers(self) -> None:
        def handle(signum: int, _frame: FrameType | None) -> None:
            self._signals += 1
            name = signal.Signals(signum).name
            if self._signals == 1:
                logger.info("%s: stopping %d worker processes warm", name, len(self._children))
                self._signal_children(signal.SIGTERM)
            else:
                logger.warning("second %s: killing the worker processes", name)
                self._signal_children(signal.SIGKILL)

        signal.signal(signal.SIGTERM, handle)
        signal.signal(signal.SIGINT, handle)

    def run(self) -> int:
        logger.info("supervising %d worker processes", self.processes)
        for index in range(self.processes):
            self._start(index)
        code = self._watch()
        self._signal_children(signal.SIGTERM)
        for child in self._children.values():
            child.join()
        logger.info("worker processes stopped")
        return code

    def _start(self, index: int) -> None:
        child = self._context.Process(
            target=_run_child,
            args=(child_config(self.config, index), self.verbose, self.log_format),
            name=f"dbsync-worker-{index}",
        )
        child.start()
        self._children[index] = child
        logger.info("worker process %d started: pid %s", index, child.pid)

    def _watch(self) -> int:
        """Wait on the children until asked to stop or until one cannot be replaced."""
        while True:
            sentinels = {child.sentinel: index for index, child in self._children.items()}
            ended = multiprocessing.connection.wait(list(sentinels), timeout=WATCH_SECONDS)
            if self._signals:
                return self._stopped()
            for sentinel in ended:
                code = self._ended(sentinels[cast(int, sentinel)])
                if code is not None:
                    return code

    def _stopped(self) -> int:
        for child in self._children.values():
            child.join()
        if self._signals > 1:
            return RET_KILLED
        codes = {child.exitcode for child in self._children.values()}
        return RET_OK if codes <= {RET_OK} else RET_KILLED

    def _ended(self, index: int) -> int | None:
        """A child ended on its own: the supervisor's exit code, or ``None`` if replaced."""
        child = self._children[index]
        child.join()
        code = child.exitcode
        if code == RET_CONFIG:
            logger.error(
                "worker process %d (pid %s) exited with the configuration code", index, child.pid
            )
            return RET_CONFIG
        now = time.monotonic()
        while self._restarts and now - self._restarts[0] > RESTART_WINDOW_SECONDS:
            self._restarts.popleft()
        if len(self._restarts) >= MAX_RESTARTS:
            logger.error(
                "worker process %d (pid %s) exited with %s: %d restarts in %.0f s, giving up",
                index,
                child.pid,
                code,
                len(self._restarts),
                RESTART_WINDOW_SECONDS,
            )
            return RET_CHILDREN_FAILING
        logger.error(
            "worker process %d (pid %s) exited with %s; restarting it", index, child.pid, code
        )
        self._restarts.append(now)
        time.sleep(RESTART_PAUSE_SECONDS)
        if not self._signals:
            self._start(index)
        return None

    def _signal_children(self, signum: int) -> None:
        for child in self._children.values():
            if child.pid is not None and child.exitcode is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signum)


def supervise(config: WorkerConfig, *, verbose: bool = False, log_format: str = "text") -> int:
    """Run ``config.processes`` worker processes until signalled; return the exit code."""
    supervisor = Supervisor(config, verbose=verbose, log_format=log_format)
    supervisor.install_signal_handlers()
    return supervisor.run()
