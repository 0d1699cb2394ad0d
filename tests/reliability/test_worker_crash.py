"""The worker process killed with SIGKILL at every stage of a push, then restarted."""

from __future__ import annotations

import signal

import pytest

from dbsync_mq import SyncTimeout
from dbsync_mq.storage import schema
from tests.conftest import write
from tests.models import City, Person
from tests.reliability.conftest import assert_converged, assert_exactly_once, converge

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
