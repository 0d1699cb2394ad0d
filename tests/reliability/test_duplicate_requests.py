"""The same request in two workers at once: one effect, and the same answer to both.

A push (or registration) is handled twice at the same time when a worker loses its
broker connection while the request is in its transaction: the broker redelivers it
to another worker, which waits for the lock the first one holds. The tests below make
that wait certain: the test holds the lock itself while both copies arrive, each in a
server process of its own, and lets go once both wait for it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re
import threading
import uuid
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from dbsync_mq import commands
from dbsync_mq.core import messages, signing
from dbsync_mq.core.model import INSERT, Change
from dbsync_mq.server import Server, issue_enrollment
from dbsync_mq.storage import schema
from dbsync_mq.storage.models import ModelSet
from dbsync_mq.transport.base import Message
from tests.conftest import ThreadedWorker, write
from tests.e2e.faults import gather
from tests.e2e.operations import city, forge_of
from tests.models import City
from tests.processes import WorkerProcess
from tests.reliability.conftest import (
    AtStage,
    assert_converged,
    assert_exactly_once,
    converge,
    inflight_ids,
    register_directly,
    wait_until,
    waiting_on_locks,
    with_application_name,
)
from tests.reliability.server_process import MODELS, Handled, ServerProcess
from tests.security.conftest import Wire, read_reply
from tests.security.forge import Forge, new_id
from worker.process import Worker

pytestmark = pytest.mark.postgres

only_postgresql = pytest.mark.parametrize("server_url", ["postgresql"], indirect=True)

RACES = 20
"""Times the same request is raced through two server processes, each a new request."""


@dataclasses.dataclass
class Racers:
    """Two server processes on one database, whose connections carry ``names``."""

    processes: list[ServerProcess]
    names: list[str]
    admin_url: str

    def race(
        self, engine: sa.Engine, lock: sa.Select[tuple[int]], message: Message
    ) -> list[Handled]:
        """Hand ``message`` to both processes while this test holds ``lock`` (a
        ``SELECT … FOR UPDATE``); release it once both copies wait for it."""
        with engine.connect() as connection, connection.begin():
            assert connection.execute(lock).first() is not None, "nothing to lock"
            for process in self.processes:
                process.send(message)
            wait_until(
                lambda: waiting_on_locks(self.admin_url, self.names) == len(self.names),
                15,
                "both copies to wait for the lock",
            )
        return [process.receive() for process in self.processes]


@pytest.fixture
def server(server_url: str) -> Iterator[Server]:
    """An initialized server database, and a server in this process to enroll nodes."""
    commands.init(server_url, MODELS)
    engine = sa.create_engine(server_url)
    yield Server(engine, ModelSet.in_modules(list(MODELS)))
    engine.dispose()


@pytest.fixture
def racers(server: Server, server_url: str, postgres_admin_url: str) -> Iterator[Racers]:
    prefix = f"dbsync_race_{uuid.uuid4().hex[:8]}"
    names = [f"{prefix}_{i}" for i in range(2)]
    processes: list[ServerProcess] = []
    try:
        for name in names:
            processes.append(ServerProcess(with_application_name(server_url, name)))
        yield Racers(processes, names, postgres_admin_url)
    finally:
        for process in processes:
            process.close()


def _answers(handled: list[Handled], server: Server, kind: str) -> list[messages.Reply]:
    for copy in handled:
        assert len(copy.replies) == 1, copy
    return [read_reply(copy.replies[0], server.public_key, kind) for copy in handled]


def _describe(answers: list[messages.Reply]) -> str:
    return " / ".join(
        f"version {a.body['version']}" if a.status == messages.OK else str(a.code) for a in answers
    )


@only_postgresql
def test_the_same_push_raced_through_two_worker_processes_makes_one_version_and_one_answer(
    server, racers, probe, ledger, request
):
    # Given a registered node and two server processes on the same database
    node = register_directly(server)
    head = sa.select(schema.head.c.version).where(schema.head.c.id == 1).with_for_update()
    failures: list[str] = []

    for race in range(1, RACES + 1):
        # When the same signed push reaches both while another transaction holds the head
        change = Change("city", race, INSERT, 1, {"id": race, "name": f"race-{race}"})
        push = node.push([change], race - 1)
        handled = racers.race(server.engine, head, push)

        # Then both copies get the same successful reply, and only one made the version
        answers = _answers(handled, server, messages.PUSH)
        if (
            handled[0].replies != handled[1].replies
            or any(a.status != messages.OK for a in answers)
            or {copy.version for copy in handled} != {race, None}
        ):
            failures.append(f"race {race}: {_describe(answers)}")
    ledger.fault(request.node.name, RACES)

    assert failures == [], f"{len(failures)} of {RACES} races: {failures}"
    pushes = [(race, node.node_id) for race in range(1, RACES + 1)]
    assert [version[:2] for version in sorted(probe.versions())] == pushes
    assert probe.assert_gap_free() == RACES
    names = [f"race-{race}" for race in range(1, RACES + 1)]
    ledger.operations(request.node.name, names, probe.column(City, "name"))
    ledger.versions(request.node.name, RACES, RACES)


@only_postgresql
def test_the_same_registration_raced_through_two_worker_processes_makes_one_node(
    server, racers, probe, ledger, request
):
    # Given two server processes on the same database
    nodes_before = probe.count(schema.nodes)
    enrollment = schema.enrollments.c
    failures: list[str] = []
    registered: dict[bytes, int] = {}

    for race in range(1, RACES + 1):
        # When the same registration reaches both while another transaction holds its token
        token = new_id()
        issue_enrollment(server.engine, token, dt.timedelta(hours=1))
        stranger = Forge.stranger()
        token_row = (
            sa.select(enrollment.expires_at)
            .where(enrollment.token_hash == signing.token_digest(token))
            .with_for_update()
        )
        handled = racers.race(server.engine, token_row, stranger.register(token))

        # Then both copies get the same successful reply naming one node
        answers = _answers(handled, server, messages.REGISTER)
        if handled[0].replies != handled[1].replies or any(
            a.status != messages.OK for a in answers
        ):
            failures.append(f"race {race}: {' / '.join(str(a.code or 'ok') for a in answers)}")
        else:
            registered[stranger.public_key] = answers[0].body["node"]
    ledger.fault(request.node.name, RACES)

    # And each registration made exactly one node, the one its token names as used
    assert failures == [], f"{len(failures)} of {RACES} races: {failures}"
    assert probe.count(schema.nodes) == nodes_before + RACES
    n = schema.nodes.c
    with server.engine.connect() as connection:
        for public_key, node_id in registered.items():
            ids = connection.execute(sa.select(n.id).where(n.public_key == public_key)).scalars()
            assert list(ids) == [node_id]
        used = connection.execute(
            sa.select(enrollment.node_id).where(enrollment.used_at.is_not(None))
        ).scalars()
        assert sorted(used) == sorted(registered.values())


# --- through the broker -------------------------------------------------------------------


def _answered_lines(worker: WorkerProcess, request_id: str) -> list[str]:
    return [line for line in worker.output.splitlines() if f"push {request_id} " in line]


@only_postgresql
@pytest.mark.broker
@pytest.mark.e2e
@pytest.mark.parametrize("stage", ["in-transaction", "after-commit"])
def test_a_push_redelivered_to_a_second_worker_after_the_first_lost_the_broker_is_applied_once(
    stage,
    make_node,
    worker_config,
    proxy,
    broker_url,
    postgres_admin_url,
    tmp_path,
    probe,
    accepted,
    ledger,
    request,
):
    # Given a worker that reaches the broker through a proxy and holds a node's push at
    # the stage (inside the transaction, or committed and not yet answered)
    first = ThreadedWorker(dataclasses.replace(worker_config, broker_url=proxy.url(broker_url)))
    second: WorkerProcess | None = None
    hold = AtStage(stage, hold=True)
    try:
        first.start().add_stage_hook(hold)
        node = make_node("a", timeout=40)
        write(node.engine, City(name="redelivered"))
        results: list[object] = []
        syncing = threading.Thread(target=lambda: results.append(_sync(node)))
        syncing.start()
        assert hold.reached.wait(15), "the push never reached the first worker"
        [request_id] = hold.fired

        # And a second worker process consuming the same queues
        name = f"dbsync_second_{uuid.uuid4().hex[:8]}"
        config = dataclasses.replace(
            worker_config, database_url=with_application_name(worker_config.database_url, name)
        )
        second = WorkerProcess(config, tmp_path / "second.log")
        second.start()

        # When the first worker's broker connection is cut with the push in hand
        proxy.cut()
        ledger.fault(request.node.name)
        if stage == "in-transaction":
            # the broker redelivers it to the second, which waits for the head lock
            wait_until(
                lambda: waiting_on_locks(postgres_admin_url, [name]) == 1,
                20,
                "the second worker to wait for the version head",
            )
        else:
            wait_until(lambda: _answered_lines(second, request_id), 20, "the second worker")
        hold.release.set()  # the first commits (or goes on), and cannot answer
        syncing.join(60)
        assert not syncing.is_alive(), "the node's sync never returned"

        # Then the node's sync ended with its push accepted once, as version 1
        [result] = results
        assert not isinstance(result, BaseException), repr(result)
        assert result.pushed == 1
        assert [(p.request_id, p.version) for p in accepted.pushes] == [(request_id, 1)]
        assert inflight_ids(node) == []
        # and it was the second worker that answered the redelivery, from the stored reply (it
        # logs the answer once it is acknowledged, which may be after the node has read it)
        wait_until(lambda: _answered_lines(second, request_id), 20, "the second worker's answer")
        [answered] = _answered_lines(second, request_id)
        assert re.search(rf"push {request_id} node=\d+ -> ack in ", answered), answered

        # And the node is not wedged: its next write syncs through the second worker
        write(node.engine, City(name="after-redelivery"))
        assert node.sync().pushed == 1
        converge([node])
        assert_converged(probe, [node])
        names = ["redelivered", "after-redelivery"]
        assert_exactly_once(probe, ledger, request.node.name, names, accepted)
    finally:
        hold.release.set()
        if second is not None:
            second.terminate()
        first.stop()


def _sync(node) -> object:
    try:
        return node.sync()
    except Exception as exc:
        return exc


BATCH = 4
"""Pushes in the first worker's hands at once, served as one group (group commit)."""


@only_postgresql
@pytest.mark.broker
@pytest.mark.e2e
@pytest.mark.parametrize("stage", ["in-transaction", "after-commit"])
def test_a_batch_redelivered_to_a_second_worker_after_the_first_lost_the_broker_is_applied_once(
    stage,
    make_node,
    worker_config,
    worker_runner,
    proxy,
    broker_url,
    namespace,
    postgres_admin_url,
    tmp_path,
    probe,
    ledger,
    request,
):
    # Given pushes of four nodes waiting in the queue
    worker_runner.start()
    forges = [forge_of(make_node(name)) for name in "abcd"]
    worker_runner.stop()
    pushes = [forge.push([city(100 + i, f"batch {i}")], 0) for i, forge in enumerate(forges)]
    wire = Wire(broker_url, namespace, b"")
    try:
        for message in pushes:
            wire.publish(message)
    finally:
        wire.close()

    # And a worker, reaching the broker through a proxy, that takes them all at once and
    # holds the group at the stage (inside its transaction, or committed, not answered)
    first = ThreadedWorker(dataclasses.replace(worker_config, broker_url=proxy.url(broker_url)))
    first.worker = Worker(first.config)
    gather(first.worker, BATCH)
    hold = AtStage(stage, hold=True)
    first.worker.add_stage_hook(hold)
    first.thread = threading.Thread(target=first.worker.run, daemon=True)
    second: WorkerProcess | None = None
    try:
        first.thread.start()
        assert hold.reached.wait(15), "the batch never reached the first worker"

        # And a second worker process consuming the same queues
        name = f"dbsync_second_{uuid.uuid4().hex[:8]}"
        config = dataclasses.replace(
            worker_config, database_url=with_application_name(worker_config.database_url, name)
        )
        second = WorkerProcess(config, tmp_path / "second.log")
        second.start()

        # When the first worker's broker connection is cut with the batch in hand
        proxy.cut()
        ledger.fault(request.node.name)
        sent = [message.message_id for message in pushes]
        if stage == "in-transaction":
            # the broker redelivers them to the second, which waits for the head lock
            wait_until(
                lambda: waiting_on_locks(postgres_admin_url, [name]) == 1,
                20,
                "the second worker to wait for the version head",
            )
        else:
            wait_until(
                lambda: all(_answered_lines(second, i) for i in sent), 20, "the second worker"
            )
        hold.release.set()  # the first commits (or goes on), and cannot answer
        wait_until(lambda: all(_answered_lines(second, i) for i in sent), 30, "every answer")

        # Then each push was applied once, as a version of its own, all by the first
        # worker's group; the second answered every redelivery from its stored reply
        assert probe.assert_gap_free() == BATCH
        assert sorted(probe.push_request_ids()) == sorted(sent)
        for request_id in sent:
            [answered] = _answered_lines(second, request_id)
            assert re.search(rf"push {request_id} node=\d+ -> ack in ", answered), answered
        names = [f"batch {i}" for i in range(BATCH)]
        assert sorted(probe.column(City, "name")) == names
        ledger.operations(request.node.name, names, probe.column(City, "name"))
    finally:
        hold.release.set()
        if second is not None:
            second.terminate()
        first.stop()
