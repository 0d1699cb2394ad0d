"""What a node's agent reports, collected for tests to wait on."""

from __future__ import annotations

import threading

from dbsync_mq import SyncStatus


class StatusLog:
    """Every status an agent reported, with a way to wait for one."""

    def __init__(self) -> None:
        self.seen: list[SyncStatus] = []
        self._changed = threading.Condition()

    def __call__(self, status: SyncStatus) -> None:
        with self._changed:
            self.seen.append(status)
            self._changed.notify_all()

    def wait_for(self, test, timeout: float = 15) -> SyncStatus:
        with self._changed:
            found = self._changed.wait_for(
                lambda: next((s for s in self.seen if test(s)), None), timeout
            )
        assert found, f"no such status in {self.seen}"
        return found
