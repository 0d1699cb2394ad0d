"""The worker as a real process: killed, signalled, restarted."""

from __future__ import annotations

import signal

import pytest
import sqlalchemy as sa

from dbsync_mq import SyncTimeout
from dbsync_mq.storage import schema
from tests.conftest import table_rows, write
from tests.models import City

pytestmark = [pytest.mark.broker, pytest.mark.e2e]


def _count(server_url: str, table: sa.Table) -> int:
    engine = sa.create_engine(server_url)
    try:
        with engine.connect() as connection:
            return connection.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
    finally:
        engine.dispose()


def test_a_push_redelivered_after_sigkill_between_commit_and_ack_applies_once(
    make_node, worker_process, server_url
):
    # Given a worker that dies by SIGKILL right after committing a push
    worker_process.start("tests.e2e.faults:kill", env={"DBSYNC_TEST_FAULT_STAGE": "after-commit"})
    node = make_node("a", timeout=3)
    write(node.engine, City(name="once"))

    # When the node pushes, the push is committed but never answered nor acked
    with pytest.raises(SyncTimeout):
        node.push()
    assert worker_process.wait() == -signal.SIGKILL
    assert _count(server_url, schema.versions) == 1

    # Then after a restart the redelivered push and the node's resend apply nothing more
    worker_process.start()
    node.timeout = 10
    result = node.sync()
    assert result.version == 1
    assert node.pending_operations() == 0
    assert _count(server_url, schema.versions) == 1
    assert _count(server_url, City.__table__) == 1

    # And another node sees the row exactly once
    other = make_node("b")
    other.sync()
    assert [row[1] for row in table_rows(other.engine)["city"]] == ["once"]


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
