"""The server database cut from under the worker: ``pg_terminate_backend`` on its
connections only, found by the ``application_name`` set in its database URL."""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from dbsync_mq import PullRequired
from dbsync_mq.errors import DatabaseUnavailable
from tests.conftest import ThreadedWorker, write
from tests.models import City
from tests.reliability.conftest import (
    AtStage,
    assert_converged,
    assert_exactly_once,
    converge,
    wait_until,
    with_application_name,
)

pytestmark = [pytest.mark.broker, pytest.mark.postgres]

only_postgresql = pytest.mark.parametrize("server_url", ["postgresql"], indirect=True)

STORM_SECONDS = 1.5
"""How long the worker's connections keep being terminated while pushes arrive."""
TERMINATION_WAIT_MS = 5000
"""How long a termination may take before the terminator stops waiting for it."""


class Terminator:
    """Terminates the PostgreSQL backends whose application_name is ``name``, and waits
    until they are gone: a connection it killed fails at its next use, whenever that is."""

    def __init__(self, admin_url: str, name: str) -> None:
        self.name = name
        self.engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        self.terminated = 0

    def __call__(self) -> int:
        with self.engine.connect() as connection:
            killed = connection.execute(
                sa.text(
                    "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid, :wait_ms)) "
                    "FROM pg_stat_activity "
                    "WHERE application_name = :name AND pid <> pg_backend_pid()"
                ),
                {"name": self.name, "wait_ms": TERMINATION_WAIT_MS},
            ).scalar_one()
        self.terminated += killed
        return int(killed)


@pytest.fixture
def terminator(postgres_admin_url: str) -> Iterator[Terminator]:
    terminator = Terminator(postgres_admin_url, f"dbsync_test_{uuid.uuid4().hex[:12]}")
    yield terminator
    terminator.engine.dispose()


@pytest.fixture
def named_worker(worker_config, terminator) -> Iterator[ThreadedWorker]:
    """A worker whose database connections carry the terminator's application_name."""
    url = with_application_name(worker_config.database_url, terminator.name)
    runner = ThreadedWorker(dataclasses.replace(worker_config, database_url=url))
    yield runner
    runner.stop()


def _record_settlements(worker) -> list[tuple[str, str]]:
    """Spy on the worker's acks, rejects and requeues: ``(message id, disposition)``."""
    settled: list[tuple[str, str]] = []
    settle = worker.consumer.settle

    def spy(delivery, disposition: str, reason: str = "") -> None:
        settled.append((delivery.message.message_id, disposition))
        settle(delivery, disposition, reason)

    worker.consumer.settle = spy
    return settled


def _record_unavailable(worker) -> list[tuple[str, str]]:
    """Spy on the worker's server: ``(message id, kind)`` of every attempt to handle a
    message that failed because the database connection was lost."""
    failed: list[tuple[str, str]] = []
    handle, handle_pushes = worker.server.handle, worker.server.handle_pushes

    def spy(message):
        try:
            return handle(message)
        except DatabaseUnavailable:
            failed.append((message.message_id, message.kind))
            raise

    def spy_group(messages):  # pushes in hand together (group commit)
        try:
            return handle_pushes(messages)
        except DatabaseUnavailable:
            failed.extend((message.message_id, message.kind) for message in messages)
            raise

    worker.server.handle = spy
    worker.server.handle_pushes = spy_group
    return failed


def _retries(worker) -> float:
    return worker.metrics.registry.get_sample_value("dbsync_database_retries_total") or 0.0


@only_postgresql
@pytest.mark.parametrize(
    "stage",
    [
        # the idle pooled connection the push's transaction is about to use dies
        "before-transaction",
        # the push's own transaction dies before its commit
        "in-transaction",
    ],
)
def test_a_push_whose_database_connection_is_terminated_is_retried_unacked_then_applied_once(
    stage, named_worker, terminator, make_node, probe, accepted, ledger, request
):
    # Given a worker whose database connections are terminated at a stage of a push
    # (on each of the first two times the push reaches it)
    worker = named_worker.start()
    a, b = make_node("a", timeout=20), make_node("b")
    settled = _record_settlements(worker)
    unavailable = _record_unavailable(worker)
    hook = AtStage(stage, terminator, times=2)
    worker.add_stage_hook(hook)
    write(a.engine, City(name="outage"))

    # When the node pushes
    result = a.push()
    ledger.fault(request.node.name, terminator.terminated)

    # Then both attempts at the push failed on their dead connection and were retried
    push_id = hook.fired[0]
    assert hook.fired == [push_id] * 2
    assert unavailable == [(push_id, "push")] * 2
    assert _retries(worker) == 2
    # without settling the message, then it was applied once and acked
    assert result.version == 1
    # (the node may read its reply before the worker has settled the message)
    wait_until(lambda: (push_id, "ack") in settled, 10, "the push to be acknowledged")
    assert [d for message_id, d in settled if message_id == push_id] == ["ack"]
    converge([a, b])
    assert_converged(probe, [a, b])
    assert_exactly_once(probe, ledger, request.node.name, ["outage"], accepted)


@only_postgresql
def test_pushes_arriving_while_the_worker_database_connections_keep_dying_are_each_applied_once(
    named_worker, terminator, make_node, probe, accepted, ledger, request
):
    # Given a worker and three nodes with writes to push
    worker = named_worker.start()
    nodes = [make_node(f"n{i}", timeout=30) for i in range(3)]
    settled = _record_settlements(worker)
    unavailable = _record_unavailable(worker)
    for i, node in enumerate(nodes):
        write(node.engine, City(name=f"storm-{i}"))

    # When the worker's connections are terminated again and again, and the nodes push
    # once the first of its connections is dead
    stop = threading.Event()
    first_kill = threading.Event()

    def storm() -> None:
        deadline = time.monotonic() + STORM_SECONDS
        while time.monotonic() < deadline and not stop.is_set():
            if terminator():
                first_kill.set()
            stop.wait(0.02)

    storming = threading.Thread(target=storm)
    storming.start()
    pushers = [threading.Thread(target=_push, args=(node,)) for node in nodes]
    try:
        assert first_kill.wait(10), "no connection of the worker was terminated"
        for pusher in pushers:
            pusher.start()
        for pusher in pushers:
            pusher.join(40)
    finally:
        stop.set()
        storming.join(10)
    ledger.fault(request.node.name)  # one storm, however many connections it killed

    # Then pushes met dead connections, nothing was dead-lettered, and once the nodes
    # converge each write is there once
    assert "push" in {kind for _id, kind in unavailable}
    assert {disposition for _id, disposition in settled} <= {"ack", "requeue"}
    converge(nodes)
    assert_converged(probe, nodes)
    names = [f"storm-{i}" for i in range(3)]
    assert_exactly_once(probe, ledger, request.node.name, names, accepted)


def _push(node) -> None:
    with contextlib.suppress(PullRequired):
        node.push()
