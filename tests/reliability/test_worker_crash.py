"""The worker process killed with SIGKILL at every stage of a push, then restarted; and
with a batch of pushes in hand (group commit)."""

from __future__ import annotations

import signal

import pytest

from dbsync_mq import SyncTimeout
from dbsync_mq.storage import schema
from tests.conftest import write
from tests.e2e.operations import city, forge_of
from tests.models import City, Person
from tests.reliability.conftest import (
    assert_converged,
    assert_exactly_once,
    converge,
    wait_until,
)
from tests.security.conftest import Wire

pytestmark = [pytest.mark.broker, pytest.mark.e2e]

STAGES = ("before-transaction", "in-transaction", "after-commit", "after-reply", "after-ack")
"""Server stages (the first three) and worker stages (the last two) of one push."""
COMMITTED_AT = {"before-transaction": 0, "in-transaction": 0}
"""Versions on the server when the worker dies at a stage (1 for the other stages)."""
ANSWERED = ("after-reply", "after-ack")
"""Stages reached after the reply was published: the node hears the answer."""


@pytest.mark.parametrize("stage", STAGES)
def test_a_push_interrupted_by_sigkill_is_applied_exactly_once_after_a_restart(
    stage, make_node, worker_process, probe, accepted, ledger, request
):
    # Given a worker that dies by SIGKILL at the stage, and two nodes writing offline
    worker_process.start("tests.e2e.faults:kill", env={"DBSYNC_TEST_FAULT_STAGE": stage})
    a, b = make_node("a"), make_node("b")
    a.timeout = 1
    write(a.engine, City(id=1, name="a1"), City(id=2, name="a2"))
    write(a.engine, Person(name="pa", city_id=1))

    # When node a pushes, the worker dies at the stage
    try:
        a.push()
        answered = True
    except SyncTimeout:
        answered = False
    ledger.fault(request.node.name)
    assert worker_process.wait() == -signal.SIGKILL
    assert answered == (stage in ANSWERED)
    assert probe.count(schema.versions) == COMMITTED_AT.get(stage, 1)

    # And node b writes while the worker is down
    write(b.engine, City(id=3, name="b1"))

    # Then after a restart every operation reaches the server once and the nodes converge
    worker_process.start()
    a.timeout = 10
    converge([a, b])
    assert_converged(probe, [a, b])
    assert_exactly_once(probe, ledger, request.node.name, ["a1", "a2", "b1"], accepted)
    assert probe.count(Person.__table__) == 1


BATCH = 4
"""Pushes in the worker's hands at once, served as one group (group commit)."""


@pytest.mark.parametrize("stage", STAGES)
def test_a_batch_of_pushes_in_hand_interrupted_by_sigkill_is_applied_exactly_once_after_a_restart(
    stage, make_node, worker_process, broker_url, namespace, probe, ledger, request
):
    # Given pushes of four nodes waiting in the queue, and a worker that takes them
    # all at once and dies by SIGKILL at the stage of the first
    worker_process.start()
    forges = [forge_of(make_node(name)) for name in "abcd"]
    worker_process.terminate()
    pushes = [forge.push([city(100 + i, f"batch {i}")], 0) for i, forge in enumerate(forges)]
    wire = Wire(broker_url, namespace, b"")
    try:
        for message in pushes:
            wire.publish(message)
    finally:
        wire.close()
    worker_process.start(
        "tests.e2e.faults:gather",
        "tests.e2e.faults:kill",
        env={"DBSYNC_TEST_FAULT_STAGE": stage, "DBSYNC_TEST_GATHER": str(BATCH)},
    )

    # When the worker dies with the batch in hand
    assert worker_process.wait() == -signal.SIGKILL
    ledger.fault(request.node.name)

    # Then the group committed as a whole or not at all
    assert probe.count(schema.versions) == (0 if stage in COMMITTED_AT else BATCH)

    # And after a restart every push is applied once, as a version of its own
    worker_process.start()
    wait_until(lambda: probe.head() == BATCH, 30, "every push applied")
    assert probe.assert_gap_free() == BATCH
    assert sorted(probe.push_request_ids()) == sorted(m.message_id for m in pushes)
    names = [f"batch {i}" for i in range(BATCH)]
    assert sorted(probe.column(City, "name")) == names
    ledger.operations(request.node.name, names, probe.column(City, "name"))
