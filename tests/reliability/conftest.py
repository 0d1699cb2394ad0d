"""Shared by the fault tests: a server probe and the convergence check every test ends with."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Iterator

import pytest

from dbsync_mq import PullRequired, SyncClient
from tests.ledger import Ledger
from tests.models import City
from tests.probe import ServerProbe, table_rows
from tests.proxy import TcpProxy

CONVERGE_ROUNDS = 6
"""Sync rounds allowed before nodes that stopped writing must agree with the server."""


def converge(nodes: Iterable[SyncClient], *, rounds: int = CONVERGE_ROUNDS) -> None:
    """Sync every node until none has anything left to push, then once more each, so
    that every node merged every version."""
    nodes = list(nodes)
    deadline = time.monotonic() + 60
    for _round in range(rounds):
        for node in nodes:
            try:
                node.sync()
            except PullRequired:
                continue  # others pushed meanwhile: the next round merges and retries
        if all(node.pending_operations() == 0 for node in nodes):
            break
        assert time.monotonic() < deadline, "nodes did not converge in time"
    for node in nodes:
        node.sync()


def assert_converged(probe: ServerProbe, nodes: Iterable[SyncClient]) -> None:
    """Every node's synchronized tables equal the server's, row for row."""
    server = probe.rows()
    for node in nodes:
        assert node.pending_operations() == 0
        assert table_rows(node.engine) == server, f"node {node.node_id} differs from the server"


def assert_exactly_once(
    probe: ServerProbe, ledger: Ledger, test: str, names: Iterable[str], pushes: int
) -> None:
    """Each city written by the test is on the server once; ``pushes`` made as many versions."""
    expected = list(names)
    found = probe.column(City, "name")
    ledger.operations(test, expected, found)
    versions = probe.assert_gap_free()
    ledger.versions(test, pushes, versions)
    assert sorted(found) == sorted(expected)
    assert versions == pushes


@pytest.fixture
def proxy(broker_url: str) -> Iterator[TcpProxy]:
    """A TCP proxy in front of the broker, for cutting connections."""
    proxy = TcpProxy.for_url(broker_url)
    yield proxy
    proxy.close()


def wait_until(
    condition: Callable[[], bool], timeout: float, what: str, *, interval: float = 0.02
) -> None:
    """Poll ``condition`` (where no event exists to wait on) until true or time is up."""
    deadline = time.monotonic() + timeout
    pause = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        pause.wait(interval)


class AtStage:
    """A worker stage hook that acts at the first ``times`` ``kind`` requests reaching
    ``stage``: it runs ``action`` (if any), then holds the handler until ``release``
    is set (if ``hold``). ``reached`` is set when it first fired; ``seen`` lists every
    ``(stage, request id)`` the hook was called with."""

    def __init__(
        self,
        stage: str,
        action: Callable[[], object] | None = None,
        *,
        hold: bool = False,
        kind: str = "push",
        times: int = 1,
    ) -> None:
        self.stage, self.kind, self.action, self.hold = stage, kind, action, hold
        self.remaining = times
        self.reached = threading.Event()
        self.release = threading.Event()
        self.seen: list[tuple[str, str]] = []

    def __call__(self, stage: str, kind: str, request_id: str) -> None:
        self.seen.append((stage, request_id))
        if stage != self.stage or kind != self.kind or self.remaining <= 0:
            return
        self.remaining -= 1
        if self.action is not None:
            self.action()
        self.reached.set()
        if self.hold:
            self.release.wait(30)
