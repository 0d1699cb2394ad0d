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
from tests.conftest import ThreadedWorker, write
from tests.models import City
from tests.reliability.conftest import AtStage, assert_converged, assert_exactly_once, converge

pytestmark = [pytest.mark.broker, pytest.mark.postgres]

only_postgresql = pytest.mark.parametrize("server_url", ["postgresql"], indirect=True)

STORM_SECONDS = 1.5
"""How long the worker's connections keep being terminated while pushes arrive."""


class Terminator:
    """Terminates the PostgreSQL backends whose application_name is ``name``."""

    def __init__(self, admin_url: str, name: str) -> None:
        self.name = name
        self.engine = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        self.terminated = 0

    def __call__(self) -> int:
        with self.engine.connect() as connection:
            killed = connection.execute(
                sa.text(
                    "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                    "WHERE application_name = :name AND pid <> pg_backend_pid()"
                ),
                {"name": self.name},
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
    url = f"{worker_config.database_url}?application_name={terminator.name}"
    runner = ThreadedWorker(dataclasses.replace(worker_config, database_url=url))
    yield runner
    runner.stop()


def _record_settlements(worker) -> list[tuple[str, str]]:
    """Spy on the worker's acks, rejects and requeues: ``(message id, disposition)``."""
    settled: list[tuple[str, str]] = []
    settle = worker.consumer.settle

    def spy(delivery, disposition: str) -> None:
        settled.append((delivery.message.message_id, disposition))
        settle(delivery, disposition)

    worker.consumer.settle = spy
    return settled


def _retries(worker) -> float:
    return worker.metrics.registry.get_sample_value("dbsync_database_retries_total") or 0.0


@only_postgresql
@pytest.mark.parametrize(
    ("stage", "retries"),
    [
        # idle pooled connections die: a fresh one is used at once (the pool pings before
        # use) or after a retry (it does not): either way the push is not settled early
        ("before-transaction", (0, 2)),
        # the push's own transaction dies twice: retried twice, then committed
        ("in-transaction", (2,)),
    ],
)
def test_a_push_whose_database_connection_is_terminated_is_retried_unacked_then_applied_once(
    stage, retries, named_worker, terminator, make_node, probe, ledger, request
):
    # Given a worker whose database connections are terminated at a stage of a push
    # (on each of the first two times the push reaches it)
    worker = named_worker.start()
    a, b = make_node("a", timeout=20), make_node("b")
    settled = _record_settlements(worker)
    hook = AtStage(stage, terminator, times=2)
    worker.add_stage_hook(hook)
    write(a.engine, City(name="outage"))

    # When the node pushes
    result = a.push()
    ledger.fault(request.node.name, terminator.terminated)

    # Then the worker retried without settling the message, then applied it once and acked
    assert terminator.terminated >= 1
    assert _retries(worker) in retries
    assert result.version == 1
    push_settlements = [d for message_id, d in settled if message_id == hook.seen[0][1]]
    assert push_settlements == ["ack"]
    converge([a, b])
    assert_converged(probe, [a, b])
    assert_exactly_once(probe, ledger, request.node.name, ["outage"], pushes=1)


@only_postgresql
def test_pushes_arriving_while_the_worker_database_connections_keep_dying_are_each_applied_once(
    named_worker, terminator, make_node, probe, ledger, request
):
    # Given a worker and three nodes with writes to push
    worker = named_worker.start()
    nodes = [make_node(f"n{i}", timeout=30) for i in range(3)]
    settled = _record_settlements(worker)
    for i, node in enumerate(nodes):
        write(node.engine, City(name=f"storm-{i}"))

    # When the worker's connections are terminated again and again while the nodes push
    stop = threading.Event()

    def storm() -> None:
        deadline = time.monotonic() + STORM_SECONDS
        while time.monotonic() < deadline and not stop.wait(0.02):
            terminator()

    storming = threading.Thread(target=storm)
    storming.start()
    pushers = [threading.Thread(target=_push, args=(node,)) for node in nodes]
    for pusher in pushers:
        pusher.start()
    for pusher in pushers:
        pusher.join(40)
    stop.set()
    storming.join(10)
    ledger.fault(request.node.name)  # one storm, however many connections it killed

    # Then nothing was dead-lettered, and once the nodes converge each write is there once
    assert terminator.terminated > 0
    assert {disposition for _id, disposition in settled} <= {"ack", "requeue"}
    converge(nodes)
    assert_converged(probe, nodes)
    pushes = len(probe.push_request_ids())
    assert_exactly_once(probe, ledger, request.node.name, [f"storm-{i}" for i in range(3)], pushes)


def _push(node) -> None:
    with contextlib.suppress(PullRequired):
        node.push()
