"""Process entry: signals, plugins, metrics endpoint, exit codes."""

from __future__ import annotations

import importlib
import logging
import os
import signal
import sys
from types import FrameType

from dbsync_mq.config import WorkerConfig
from dbsync_mq.errors import ConfigurationError, DatabaseUnavailable
from worker.health import HealthServer
from worker.process import RET_CONFIG, RET_KILLED, Worker

logger = logging.getLogger(__name__)


def load_plugin(worker: Worker, spec: str) -> None:
    """Run ``module:function`` with the worker, before it starts serving."""
    module_name, _, function_name = spec.partition(":")
    try:
        function = getattr(importlib.import_module(module_name), function_name or "install")
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(f"cannot load plugin {spec!r}: {exc}") from exc
    function(worker)


def install_signal_handlers(worker: Worker, *, supervised: bool = False) -> None:
    """First SIGTERM/SIGINT: warm stop. Second: cold stop, exit at once.

    ``supervised``: every signal is a warm stop; the supervisor makes a cold stop
    by killing the process (a service manager or a terminal may signal the whole
    group as well as the supervisor, which forwards the signal too).
    """

    def handle(signum: int, _frame: FrameType | None) -> None:
        if worker.stopping and not supervised:
            logger.warning("second %s: exiting without finishing", signal.Signals(signum).name)
            os._exit(RET_KILLED)
        logger.info("%s: finishing the message in hand", signal.Signals(signum).name)
        worker.stop()

    signal.signal(signal.SIGTERM, handle)
    signal.signal(signal.SIGINT, handle)


def main(config: WorkerConfig, *, supervised: bool = False) -> int:
    """Run a worker until signalled; return the process exit code.

    ``supervised``: the process is one of several run by ``worker.supervisor``."""
    try:
        worker = Worker(config)
        for spec in config.plugins:
            load_plugin(worker, spec)
    except (ConfigurationError, DatabaseUnavailable) as exc:
        print(f"dbsync-mq worker: {exc}", file=sys.stderr)
        return RET_CONFIG
    endpoint = None
    if config.metrics_port is not None:
        endpoint = HealthServer(
            worker.metrics.registry,
            worker.readiness,
            alive=worker.alive,
            address=config.metrics_address,
            port=config.metrics_port,
        ).start()
    install_signal_handlers(worker, supervised=supervised)
    logger.info("worker starting: %r", config)
    try:
        return worker.run()
    finally:
        if endpoint is not None:
            endpoint.close()
