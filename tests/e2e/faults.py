"""Worker plugins that inject faults at a request stage: ``--plugin tests.e2e.faults:kill``.

``tests.e2e.faults:gather`` holds the first request until several are in hand, so
that pushes are served as one group. The stage and request kind come from
``DBSYNC_TEST_FAULT_STAGE`` and ``DBSYNC_TEST_FAULT_KIND`` (default ``push``).
"""

from __future__ import annotations

import os
import signal
import threading
import time
from typing import Any

from worker.process import Worker


def _matches(stage: str, kind: str) -> bool:
    return stage == os.environ.get("DBSYNC_TEST_FAULT_STAGE") and kind == os.environ.get(
        "DBSYNC_TEST_FAULT_KIND", "push"
    )


def kill(worker: Worker) -> None:
    """SIGKILL the worker process at the stage: no cleanup, no ack."""

    def hook(stage: str, kind: str, _request_id: str) -> None:
        if _matches(stage, kind):
            os.kill(os.getpid(), signal.SIGKILL)

    worker.add_stage_hook(hook)


def terminate(worker: Worker) -> None:
    """SIGTERM the worker process at the stage: it must finish the request in hand."""

    def hook(stage: str, kind: str, _request_id: str) -> None:
        if _matches(stage, kind):
            os.kill(os.getpid(), signal.SIGTERM)

    worker.add_stage_hook(hook)


def gather(worker: Worker, wanted: int | None = None, seconds: float = 10.0) -> None:
    """Hold the worker's first take of a request until ``wanted`` deliveries are in
    hand (``DBSYNC_TEST_GATHER``; at most ``seconds``): a batch in hand, for certain."""
    count = wanted if wanted is not None else int(os.environ.get("DBSYNC_TEST_GATHER", "1"))
    deliveries: Any = worker._deliveries
    take = deliveries.get
    first = threading.Event()

    def get(block: bool = True, timeout: float | None = None) -> Any:
        if not first.is_set():
            deadline = time.monotonic() + seconds
            while deliveries.qsize() < count and time.monotonic() < deadline:
                first.wait(0.01)  # polled: the queue has no event to wait on
            first.set()
        return take(block, timeout)

    deliveries.get = get
