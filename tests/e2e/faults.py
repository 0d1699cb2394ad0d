"""Worker plugins that inject faults at a request stage: ``--plugin tests.e2e.faults:kill``.

The stage and request kind come from ``DBSYNC_TEST_FAULT_STAGE`` and
``DBSYNC_TEST_FAULT_KIND`` (default ``push``).
"""

from __future__ import annotations

import os
import signal

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
