"""Shared by the fault tests: what the nodes saw accepted, the convergence check every
test ends with, and the means of placing a fault (proxy, stage hook, lock waits)."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from dbsync_mq import PullRequired, SyncClient
from dbsync_mq.core import messages
from dbsync_mq.server import Server, issue_enrollment
from dbsync_mq.storage import schema
from tests.ledger import Ledger
from tests.models import City
from tests.probe import ServerProbe, table_rows
from tests.proxy import TcpProxy
from tests.reliability.accepted import AcceptedPushes
from tests.security.conftest import read_reply
from tests.security.forge import Forge, new_id

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


def inflight_ids(node: SyncClient) -> list[str]:
    """The request ids of the pushes ``node`` keeps in flight (at most one)."""
    with node.engine.connect() as connection:
        return list(connection.execute(sa.select(schema.inflight.c.request_id)).scalars())


def assert_converged(probe: ServerProbe, nodes: Iterable[SyncClient]) -> None:
    """Every node's synchronized tables equal the server's, row for row."""
    server = probe.rows()
    for node in nodes:
        assert node.pending_operations() == 0
        assert table_rows(node.engine) == server, f"node {node.node_id} differs from the server"


@pytest.fixture
def accepted() -> AcceptedPushes:
    """The pushes this test's nodes saw accepted."""
    return AcceptedPushes()


@pytest.fixture
def make_node(
    make_node: Callable[..., SyncClient], accepted: AcceptedPushes
) -> Callable[..., SyncClient]:
    """``make_node`` whose nodes report what they saw accepted to ``accepted``."""

    def make(*args: Any, **options: Any) -> SyncClient:
        return accepted.watch(make_node(*args, **options))

    return make


def assert_exactly_once(
    probe: ServerProbe,
    ledger: Ledger,
    test: str,
    names: Iterable[str],
    accepted: AcceptedPushes,
) -> None:
    """Each city written by the test is on the server once, and the versions are exactly
    the pushes the nodes saw accepted: one version per accepted push, the same version
    number the node was told, and no version that no node saw accepted."""
    expected = list(names)
    found = probe.column(City, "name")
    ledger.operations(test, expected, found)
    versions = probe.assert_gap_free()
    ledger.versions(test, len(accepted.pushes), versions)
    assert sorted(found) == sorted(expected)
    seen = sorted((push.version, push.node_id, push.request_id) for push in accepted.pushes)
    assert seen == sorted(probe.versions()), "versions and accepted pushes differ"


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
    is set (if ``hold``). ``reached`` is set when it first fired; ``fired`` lists the
    request ids it acted on; ``seen`` lists every ``(stage, request id)`` the hook was
    called with, whatever the kind."""

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
        self.fired: list[str] = []
        self.seen: list[tuple[str, str]] = []

    def __call__(self, stage: str, kind: str, request_id: str) -> None:
        self.seen.append((stage, request_id))
        if stage != self.stage or kind != self.kind or self.remaining <= 0:
            return
        self.remaining -= 1
        self.fired.append(request_id)
        if self.action is not None:
            self.action()
        self.reached.set()
        if self.hold:
            self.release.wait(30)


def waiting_on_locks(admin_url: str, application_names: Iterable[str]) -> int:
    """How many PostgreSQL backends with these application names wait for a lock."""
    admin = sa.create_engine(admin_url)
    try:
        with admin.connect() as connection:
            return int(
                connection.execute(
                    sa.text(
                        "SELECT count(*) FROM pg_stat_activity "
                        "WHERE application_name = ANY(:names) AND wait_event_type = 'Lock'"
                    ),
                    {"names": list(application_names)},
                ).scalar_one()
            )
    finally:
        admin.dispose()


def with_application_name(url: str, name: str) -> str:
    """A PostgreSQL ``url`` whose connections carry ``name``, to find them in
    ``pg_stat_activity``."""
    return f"{url}{'&' if '?' in url else '?'}application_name={name}"


def register_directly(server: Server) -> Forge:
    """A new node, registered by handing its registration to ``server`` (no broker)."""
    token = new_id()
    issue_enrollment(server.engine, token, dt.timedelta(hours=1))
    stranger = Forge.stranger()
    [item] = server.handle(stranger.register(token)).outgoing
    reply = read_reply(item.message.body, server.public_key, messages.REGISTER)
    return Forge(reply.body["node"], stranger.seed)


def settled(nodes: Iterable[SyncClient], probe: ServerProbe) -> bool:
    """Every node has pushed everything, merged the head, and equals the server."""
    head = probe.head()
    server = probe.rows()
    return all(
        node.pending_operations() == 0
        and node.version == head
        and table_rows(node.engine) == server
        for node in nodes
    )
