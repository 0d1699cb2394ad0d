"""A push larger than one message: parts of one request, applied as one version."""

from __future__ import annotations

import os
import signal

import pytest
import sqlalchemy as sa

from dbsync_mq import PushRejected, SyncTimeout
from dbsync_mq.storage import schema
from tests.conftest import write
from tests.models import City
from tests.reliability.conftest import (
    AtStage,
    assert_converged,
    assert_exactly_once,
    converge,
)

pytestmark = pytest.mark.broker

SMALL_MESSAGES = 128 * 1024
ROWS = 6000


def _cities(prefix: str, count: int = ROWS) -> list[City]:
    # Random names: they do not deflate, so the push needs several messages.
    return [City(name=f"{prefix}-{i}-{os.urandom(24).hex()}") for i in range(count)]


def _names(engine: sa.Engine) -> list[str]:
    with engine.connect() as connection:
        return sorted(connection.execute(sa.select(City.__table__.c.name)).scalars())


def test_a_push_too_large_for_one_message_is_applied_as_one_version(
    make_node, worker, probe, accepted, ledger, request
):
    # Given a node that publishes messages of at most 128 KiB and holds about 500 KiB
    parts = AtStage("part-stored", times=1000)
    worker.add_stage_hook(parts)
    a = make_node("a", max_message_bytes=SMALL_MESSAGES)
    b = make_node("b")
    write(a.engine, *_cities("a"))

    # When it syncs
    result = a.sync()

    # Then the push travelled in parts, and the server made one version of all of it
    assert len(parts.fired) >= 2  # parts stored before the last one came
    assert len(set(parts.fired)) == 1  # of one request
    assert result.pushed == ROWS
    assert probe.count(schema.versions) == 1
    assert probe.count(schema.push_parts) == 0
    converge([a, b])
    assert_converged(probe, [a, b])
    assert_exactly_once(probe, ledger, request.node.name, _names(a.engine), accepted)


def test_a_push_in_parts_survives_a_worker_killed_between_parts(
    make_node, worker_process, probe, accepted, ledger, request
):
    # Given a worker that dies by SIGKILL once it stored the first part of a push
    worker_process.start("tests.e2e.faults:kill", env={"DBSYNC_TEST_FAULT_STAGE": "part-stored"})
    a = make_node("a", max_message_bytes=SMALL_MESSAGES, timeout=3)
    write(a.engine, *_cities("a"))

    # When the node pushes, the worker dies between parts
    with pytest.raises(SyncTimeout):
        a.push()
    assert worker_process.wait() == -signal.SIGKILL
    ledger.fault(request.node.name)
    assert probe.count(schema.push_parts) == 1
    assert probe.count(schema.versions) == 0

    # Then after a restart the push is sent again and applied once, whole
    worker_process.start()
    a.timeout = 20
    converge([a])
    assert probe.count(schema.push_parts) == 0
    assert_converged(probe, [a])
    assert_exactly_once(probe, ledger, request.node.name, _names(a.engine), accepted)


def test_a_push_in_parts_with_one_bad_row_is_refused_whole(make_node, worker, probe):
    # Given a large push with one name longer than the server's column, in its last part
    a = make_node("a", max_message_bytes=SMALL_MESSAGES)
    write(a.engine, *_cities("a"), City(name="x" * 101))

    # When it syncs, nothing of it is applied, and the refusal names the row
    with pytest.raises(PushRejected) as refused:
        a.sync()
    assert refused.value.rows == [("city", ROWS + 1)]
    assert probe.count(schema.versions) == 0
    assert probe.count(schema.push_parts) == 0

    # Then with that row held back, the rest goes through in parts
    a.quarantine(refused.value.rows)
    a.sync()
    assert probe.count(City.__table__) == ROWS
