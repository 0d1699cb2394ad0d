"""Concurrent pushes: two worker processes and ten nodes; two pushes racing for the head."""

from __future__ import annotations

import threading
import time

import pytest

from dbsync_mq import PullRequired, commands
from dbsync_mq.core.model import INSERT, Change
from dbsync_mq.server import Server
from dbsync_mq.storage.models import ModelSet
from tests.conftest import write
from tests.models import City, Note
from tests.processes import WorkerProcess
from tests.reliability.conftest import (
    AtStage,
    assert_converged,
    assert_exactly_once,
    converge,
    register_directly,
    wait_until,
    waiting_on_locks,
    with_application_name,
)
from tests.security.forge import new_id
from worker.process import create_server_engine

pytestmark = [pytest.mark.broker, pytest.mark.e2e]

NODES = 10
ROUNDS = 3
"""Each node writes and syncs this many times, all nodes at once."""
SYNC_ATTEMPTS = 20
"""Syncs a node may try in one round while the others keep pushing first."""


def _write_and_sync(node, index: int, failures: list[BaseException]) -> None:
    try:
        for round_ in range(ROUNDS):
            write(node.engine, City(name=f"n{index}-r{round_}"), Note(text=f"n{index}-r{round_}"))
            for _attempt in range(SYNC_ATTEMPTS):
                try:
                    node.sync()
                    break
                except PullRequired:
                    continue
            else:
                raise AssertionError(f"node {index} could not push in {SYNC_ATTEMPTS} attempts")
    except BaseException as exc:
        failures.append(exc)


def test_two_workers_serving_ten_concurrent_nodes_make_gap_free_versions_each_push_once(
    make_node, worker_config, tmp_path, probe, accepted, ledger, request
):
    # Given two worker processes consuming the same queues
    workers = [WorkerProcess(worker_config, tmp_path / f"worker{i}.log") for i in range(2)]
    try:
        for worker in workers:
            worker.start()
        nodes = [make_node(f"n{i}", timeout=20) for i in range(NODES)]

        # When ten nodes write and sync at the same time, round after round
        failures: list[BaseException] = []
        threads = [
            threading.Thread(target=_write_and_sync, args=(node, i, failures))
            for i, node in enumerate(nodes)
        ]
        started = time.monotonic()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=max(1.0, 120 - (time.monotonic() - started)))
        assert not any(thread.is_alive() for thread in threads), "a node is still syncing"
        assert failures == []
        ledger.fault(request.node.name)

        # Then versions are 1..N, each a push its node saw accepted, and every write is
        # on the server once
        converge(nodes)
        assert_converged(probe, nodes)
        names = [f"n{i}-r{r}" for i in range(NODES) for r in range(ROUNDS)]
        assert_exactly_once(probe, ledger, request.node.name, names, accepted)
        assert sorted(probe.column(Note, "text")) == sorted(names)

        # And both workers took part
        for worker in workers:
            assert worker.output.count("push ") > 0, worker.output
    finally:
        for worker in workers:
            worker.terminate()


@pytest.mark.postgres
@pytest.mark.parametrize("server_url", ["postgresql"], indirect=True)
def test_a_push_waits_for_the_version_head_another_holds_and_both_make_consecutive_versions(
    server_url, postgres_admin_url, probe, ledger, request
):
    # Given a server whose first push is held inside its transaction
    name = f"dbsync_test_{new_id()[:12]}"
    engine = create_server_engine(with_application_name(server_url, name))
    commands.init(server_url, ("tests.models",))
    holder = AtStage("in-transaction", hold=True)
    server = Server(engine, ModelSet.in_modules(["tests.models"]), on_stage=holder)
    a, b = register_directly(server), register_directly(server)
    first = a.push([Change("city", 1, INSERT, 1, {"id": 1, "name": "first"})], 0)
    second = b.push([Change("city", 2, INSERT, 1, {"id": 2, "name": "second"})], 0)
    outcomes: dict[str, object] = {}
    threads = [
        threading.Thread(target=lambda: outcomes.update(first=server.handle(first))),
        threading.Thread(target=lambda: outcomes.update(second=server.handle(second))),
    ]
    threads[0].start()
    assert holder.reached.wait(10)

    # When a second push arrives meanwhile, it waits on a lock until the first commits
    threads[1].start()
    wait_until(
        lambda: waiting_on_locks(postgres_admin_url, [name]) == 1, 10, "the second push to wait"
    )
    holder.release.set()
    for thread in threads:
        thread.join(20)
    ledger.fault(request.node.name)
    engine.dispose()

    # Then both were applied, as versions 1 and 2 (the second on top of the first)
    assert [outcomes["first"].version, outcomes["second"].version] == [1, 2]
    assert probe.assert_gap_free() == 2
    ledger.operations(request.node.name, ["first", "second"], probe.column(City, "name"))
    ledger.versions(request.node.name, 2, 2)
