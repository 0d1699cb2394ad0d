"""The worker as a real process: signalled and stopped.

SIGKILL at every stage of a push is in tests/reliability/test_worker_crash.py.
"""

from __future__ import annotations

import dataclasses
import signal

import pytest
import sqlalchemy as sa

from dbsync_mq.storage import schema
from tests.conftest import write
from tests.models import City
from tests.processes import WorkerProcess
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
