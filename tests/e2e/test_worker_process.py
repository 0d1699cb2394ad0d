"""The worker as a real process: signalled and stopped.

SIGKILL at every stage of a push is in tests/reliability/test_worker_crash.py.
"""

from __future__ import annotations

import dataclasses
import signal

import pika
import pytest
import sqlalchemy as sa

from dbsync_mq.storage import schema
from dbsync_mq.transport.topology import Topology
from tests.conftest import write
from tests.e2e.operations import city, forge_of
from tests.models import City
from tests.processes import WorkerProcess
from tests.reliability.conftest import wait_until
from tests.security.conftest import Wire
from worker.process import RET_CONFIG

pytestmark = [pytest.mark.broker, pytest.mark.e2e]


def _count(server_url: str, table: sa.Table) -> int:
    engine = sa.create_engine(server_url)
    try:
        with engine.connect() as connection:
            return connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
    finally:
        engine.dispose()


def test_sigterm_finishes_the_request_in_hand_and_exits_zero(make_node, worker_process, server_url):
    # Given a worker that is told to stop while a push is inside its transaction
    worker_process.start(
        "tests.e2e.faults:terminate", env={"DBSYNC_TEST_FAULT_STAGE": "in-transaction"}
    )
    node = make_node("a")
    write(node.engine, City(name="finished"))

    # When the node pushes, it still gets its answer
    assert node.push().version == 1

    # Then the worker exits with code 0 and the push is committed
    assert worker_process.wait() == 0
    assert _count(server_url, schema.versions) == 1
    assert "finishing the message in hand" in worker_process.output


def test_sigint_on_an_idle_worker_exits_zero(worker_process):
    worker_process.start()
    worker_process.signal(signal.SIGINT)
    assert worker_process.wait() == 0


def test_a_worker_refused_by_the_broker_exits_with_the_configuration_code(worker_config, tmp_path):
    # Given a worker whose broker credentials are wrong
    url = sa.make_url(worker_config.broker_url).set(password="wrong-password")
    config = dataclasses.replace(
        worker_config, broker_url=url.render_as_string(hide_password=False)
    )
    process = WorkerProcess(config, tmp_path / "refused.log")

    # When it starts
    process.start(wait=False)

    # Then it stops at once with one clear line and the configuration exit code
    assert process.wait(timeout=30) == RET_CONFIG
    assert f"refused the login of user {url.username!r}" in process.output
    assert "Traceback" not in process.output


PUSHES_UNDER_LOAD = 40


def test_sigterm_under_load_finishes_what_is_in_hand_acks_it_and_loses_nothing(
    make_node, worker_process, worker_config, broker_url, namespace, probe, tmp_path
):
    # Given a worker with a queue of pushes from three nodes, some of them in its hands
    worker_process.start()
    forges = [forge_of(make_node(name)) for name in "abc"]
    pushes = [
        forges[number % 3].push([city(1000 + number, f"load {number}")], base=0)
        for number in range(PUSHES_UNDER_LOAD)
    ]
    wire = Wire(broker_url, namespace, b"")
    try:
        for message in pushes:
            wire.publish(message)
        wait_until(lambda: probe.head() >= 3, 30, "the worker to be busy")

        # When it is told to stop
        worker_process.signal(signal.SIGTERM)

        # Then it exits 0 after finishing what it held, without a settlement failing
        assert worker_process.wait() == 0
        assert "finishing the message in hand" in worker_process.output
        assert "could not settle" not in worker_process.output
        # And every push is either committed or back in the queue, never both
        committed = set(probe.push_request_ids())
        waiting = set(queued_ids(broker_url, Topology(namespace).request_queue("push")))
        sent = {message.message_id for message in pushes}
        assert committed & waiting == set(), "a committed push was not acknowledged"
        assert committed | waiting == sent
        assert len(committed) + len(waiting) == PUSHES_UNDER_LOAD
    finally:
        wire.close()

    # And a worker started again applies the rest, each once
    restarted = WorkerProcess(worker_config, tmp_path / "restarted.log")
    restarted.start()
    try:
        wait_until(lambda: probe.head() == PUSHES_UNDER_LOAD, 60, "the rest applied")
    finally:
        restarted.terminate()
    assert probe.assert_gap_free() == PUSHES_UNDER_LOAD
    assert sorted(probe.push_request_ids()) == sorted(sent)


def queued_ids(broker_url: str, queue: str) -> list[str]:
    """Message ids of what waits in ``queue``, read without removing anything."""
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        channel = connection.channel()
        ids = []
        while True:
            method, properties, _body = channel.basic_get(queue, auto_ack=False)
            if method is None:
                return ids
            ids.append(properties.message_id)
    finally:
        connection.close()
