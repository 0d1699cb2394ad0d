"""``dbsync-mq worker --processes 2``: a supervisor and two workers on PostgreSQL."""

from __future__ import annotations

import os
import re
import signal

import pytest

from tests.e2e.operations import city, forge_of
from tests.processes import WorkerProcess
from tests.reliability.conftest import wait_until
from tests.security.conftest import Wire

pytestmark = [pytest.mark.broker, pytest.mark.e2e]

PUSHES = 60
NODES = "abcd"


@pytest.fixture
def server_url(postgres_url: str) -> str:
    """Several processes share one database: PostgreSQL, as deployed."""
    return postgres_url


def _children(process: WorkerProcess) -> list[int]:
    return [
        int(pid) for pid in re.findall(r"worker process \d+ started: pid (\d+)", process.output)
    ]


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _start_two(process: WorkerProcess) -> None:
    process.start(options=("--processes", "2"))
    wait_until(lambda: process.output.count("consuming ") >= 2, 30, "both workers consuming")


def test_two_processes_apply_pushes_from_several_nodes_each_once_and_stop_on_sigterm(
    make_node, worker_process, broker_url, namespace, probe
):
    # Given a supervisor running two worker processes
    _start_two(worker_process)
    children = _children(worker_process)
    assert len(children) == 2

    # When several nodes' pushes arrive at once, all taken by either process
    forges = [forge_of(make_node(name)) for name in NODES]
    pushes = [
        forges[number % len(forges)].push([city(1000 + number, f"fleet {number}")], base=0)
        for number in range(PUSHES)
    ]
    wire = Wire(broker_url, namespace, b"")
    try:
        for message in pushes:
            wire.publish(message)
        wait_until(lambda: probe.head() >= PUSHES, 60, "every push applied")
    finally:
        wire.close()

    # Then each is applied exactly once, as its own version, without a gap
    assert probe.assert_gap_free() == PUSHES
    assert sorted(probe.push_request_ids()) == sorted(m.message_id for m in pushes)

    # And SIGTERM stops every child warm, and the supervisor exits 0
    worker_process.signal(signal.SIGTERM)
    assert worker_process.wait() == 0
    assert worker_process.output.count("finishing the message in hand") == 2
    assert not any(_running(pid) for pid in children)


def test_a_child_that_dies_is_replaced(worker_process):
    # Given two worker processes
    _start_two(worker_process)
    first, _second = _children(worker_process)

    # When one of them is killed
    os.kill(first, signal.SIGKILL)

    # Then the supervisor says so and starts another, which consumes
    wait_until(lambda: len(_children(worker_process)) == 3, 30, "a new worker process")
    wait_until(lambda: worker_process.output.count("consuming ") >= 3, 30, "it consuming")
    assert "restarting it" in worker_process.output

    # And all stop on SIGTERM
    worker_process.signal(signal.SIGTERM)
    assert worker_process.wait() == 0
    assert not any(_running(pid) for pid in _children(worker_process))
