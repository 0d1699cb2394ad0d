"""A node process killed after publishing a push, before reading the reply."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dbsync_mq.storage import schema
from dbsync_mq.transport.rabbitmq import queue_depths
from dbsync_mq.transport.topology import Topology
from tests.conftest import write
from tests.models import City
from tests.reliability.accepted import AcceptedPush
from tests.reliability.conftest import (
    AtStage,
    assert_converged,
    assert_exactly_once,
    converge,
    inflight_ids,
    wait_until,
)

pytestmark = [pytest.mark.broker, pytest.mark.e2e]

ROOT = Path(__file__).resolve().parents[2]


def _node_process(node, broker_url: str, action: str) -> subprocess.Popen[str]:
    """Run ``action`` for ``node``'s database in a new process."""
    path = node.engine.url.database
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.reliability.node_process",
            path,
            broker_url,
            node.topology.namespace,
            action,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _kill(process: subprocess.Popen[str]) -> None:
    process.send_signal(signal.SIGKILL)
    process.communicate(timeout=10)  # reaps it and closes its pipes
    assert process.returncode == -signal.SIGKILL


@pytest.mark.parametrize("worker_state", ["stopped", "paused"])
def test_a_node_killed_before_reading_its_reply_resends_the_same_request_and_applies_once(
    worker_state,
    make_node,
    worker_runner,
    broker_url,
    namespace,
    probe,
    accepted,
    ledger,
    request,
):
    # Given a registered node with a write to push, and a worker that is stopped or paused
    worker_runner.start()
    a, b = make_node("a"), make_node("b")
    write(a.engine, City(name="killed-client"))
    gate = AtStage("before-transaction", hold=True)
    if worker_state == "stopped":
        worker_runner.stop()
    else:
        worker_runner.worker.add_stage_hook(gate)
    push_queue = Topology(namespace).request_queue("push")

    # When the node's process publishes the push and is killed before the reply
    pushing = _node_process(a, broker_url, "push")
    if worker_state == "stopped":
        wait_until(
            lambda: queue_depths(broker_url, Topology(namespace))[push_queue] == 1,
            15,
            "the push to be published",
        )
    else:
        assert gate.reached.wait(15)
    [request_id] = inflight_ids(a)
    _kill(pushing)
    ledger.fault(request.node.name)

    # Then the request id in flight survived the crash
    assert inflight_ids(a) == [request_id]

    # And a new process, once the worker runs, resends it and settles it from the stored reply
    if worker_state == "stopped":
        worker = worker_runner.start()
        seen = AtStage("never")
        worker.add_stage_hook(seen)
    else:
        seen = gate
        gate.release.set()
    wait_until(lambda: probe.count(schema.versions) == 1, 15, "the push to be applied")
    handled_before = len(seen.seen)
    syncing = _node_process(a, broker_url, "sync")
    out, err = syncing.communicate(timeout=60)
    assert syncing.returncode == 0, err
    synced = json.loads(out)
    assert synced["version"] == 1
    assert synced["accepted"] == [[request_id, 1]]
    accepted.add(AcceptedPush(a.node_id, request_id, 1))
    assert inflight_ids(a) == []
    assert [v[2] for v in probe.versions()] == [request_id]
    assert ("before-transaction", request_id) in seen.seen[handled_before:], "no resend"

    # And every node converges, with the write applied exactly once (a's database is
    # opened afresh: the client object of this process did not see the other processes)
    a = make_node("a", register=False)
    converge([a, b])
    assert_converged(probe, [a, b])
    assert_exactly_once(probe, ledger, request.node.name, ["killed-client"], accepted)
