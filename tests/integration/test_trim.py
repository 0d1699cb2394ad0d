"""Trimming the version log: what goes, what a node behind the horizon does, and a push
in flight across a trim, through the real worker, broker and both server databases."""

from __future__ import annotations

import dataclasses
import datetime as dt

import pika
import pytest
import sqlalchemy as sa

from dbsync_mq import RepairRequired, SyncTimeout, commands
from dbsync_mq.server.trim import TrimResult, trim
from dbsync_mq.storage import local, schema
from dbsync_mq.storage.schema import utcnow
from dbsync_mq.transport.topology import Topology
from tests.conftest import ThreadedWorker, table_rows, write
from tests.models import City
from tests.reliability.conftest import AtStage, wait_until
from tests.statuses import StatusLog

pytestmark = pytest.mark.broker


def trim_server(server_url: str, **options: object) -> TrimResult:
    engine = sa.create_engine(server_url)
    try:
        return trim(engine, **options)  # type: ignore[arg-type]
    finally:
        engine.dispose()


def version_ids(probe) -> list[int]:
    return sorted(row[0] for row in probe.versions())


def city_names(engine: sa.Engine) -> list[str]:
    return sorted(row[1] for row in table_rows(engine)["city"])


def test_trim_removes_exactly_what_every_enabled_node_merged_and_a_disabled_node_holds_nothing(
    make_node, worker, server_url, probe
):
    # Given node a that pushed versions 1 to 3 (its last push was based on 2), node b
    # that pulled them all, and node c that merged only version 0 so far
    a, b, c = make_node("a"), make_node("b"), make_node("c")
    write(a.engine, City(name="one"))
    a.sync()
    b.sync()
    c.sync()
    for name in ("two", "three"):
        write(a.engine, City(name=name))
        a.sync()
    b.sync()
    b.sync()
    worker.activity.flush()

    # When the log is trimmed while c is enabled
    held = trim_server(server_url)

    # Then c holds every version back
    assert (held.trimmed_through, held.versions) == (0, 0)
    assert version_ids(probe) == [1, 2, 3]

    # When c is disabled and the log is trimmed again
    commands.set_node_enabled(server_url, c.node_id, False)
    trimmed = trim_server(server_url)

    # Then exactly the versions a and b both merged are gone, and stored replies stay
    assert (trimmed.trimmed_through, trimmed.versions, trimmed.requests) == (2, 2, 0)
    assert version_ids(probe) == [3]
    assert len(probe.push_request_ids()) == 3

    # And the nodes at the horizon or past it go on pulling as before
    write(a.engine, City(name="four"))
    a.sync()
    b.sync()
    assert city_names(b.engine) == ["four", "one", "three", "two"]

    # And c, enabled again behind the horizon, repairs on its own as it has nothing to push
    commands.set_node_enabled(server_url, c.node_id, True)
    synced = c.sync()
    assert synced.version == c.version == probe.head() == 4
    assert table_rows(c.engine) == probe.rows()

    # And a new node (at version 0) gets the tables as they are
    d = make_node("d")
    d.sync()
    assert table_rows(d.engine) == probe.rows()


def test_a_node_behind_the_retention_horizon_keeps_its_changes_or_repairs_when_it_has_none(
    make_node, worker, server_url, probe
):
    # Given nodes b and c at version 1, and versions 2 and 3 pushed by a since
    a, b, c = make_node("a"), make_node("b"), make_node("c")
    write(a.engine, City(name="one"))
    a.sync()
    b.sync()
    c.sync()
    for name in ("two", "three"):
        write(a.engine, City(name=name))
        a.sync()
    # and b with a local change not pushed yet, on a row nobody else wrote
    write(b.engine, City(id=100, name="b-local"))

    # When versions older than a day are trimmed, two days from now
    trimmed = trim_server(server_url, keep_days=1, now=utcnow() + dt.timedelta(days=2))
    assert (trimmed.trimmed_through, trimmed.versions) == (3, 3)

    # Then b cannot sync: it must repair, and its change is kept
    with pytest.raises(RepairRequired):
        b.sync()
    with pytest.raises(RepairRequired):
        b.pull()
    assert b.version == 1
    assert b.pending_operations() == 1
    assert city_names(b.engine) == ["b-local", "one"]
    assert probe.head() == 3

    # And c, with nothing to push, is repaired by its sync
    synced = c.sync()
    assert (synced.version, c.version) == (3, 3)
    assert table_rows(c.engine) == probe.rows()

    # And b, once it lets its change go, is back in step
    b.repair(force=True)
    write(b.engine, City(name="after"))
    b.sync()
    a.sync()
    assert table_rows(a.engine) == table_rows(b.engine) == probe.rows()


def test_the_agent_of_a_node_behind_the_horizon_repairs_or_reports_repair_required(
    make_node, worker, server_url, probe
):
    # Given nodes b and c at version 1, versions 2 and 3 pushed since, then trimmed,
    # and b with a local change
    a, b, c = make_node("a"), make_node("b"), make_node("c")
    write(a.engine, City(name="one"))
    a.sync()
    b.sync()
    c.sync()
    for name in ("two", "three"):
        write(a.engine, City(name=name))
        a.sync()
    write(b.engine, City(id=100, name="b-local"))
    trim_server(server_url, keep_days=1, now=utcnow() + dt.timedelta(days=2))

    # When both run their agents
    b_statuses, c_statuses = StatusLog(), StatusLog()
    with b.running(on_status=b_statuses), c.running(on_status=c_statuses):
        # Then b's reports RepairRequired and keeps the change
        failed = b_statuses.wait_for(lambda s: s.state == "error")
        assert isinstance(failed.last_error, RepairRequired)
        assert b.pending_operations() == 1
        # And c's repairs it and goes online at the head
        c_statuses.wait_for(lambda s: s.state == "online" and s.version == 3)
    assert table_rows(c.engine) == probe.rows()
    assert city_names(b.engine) == ["b-local", "one"]


def test_a_push_in_flight_across_a_trim_gets_its_stored_answer_and_is_applied_once(
    make_node, worker, server_url, broker_url, namespace, probe
):
    # Given node a whose first push made version 1
    a = make_node("a", timeout=2)
    write(a.engine, City(name="zero"))
    a.sync()
    # and whose second push was applied as version 2 while a gave up waiting, its reply lost
    committed = AtStage("after-commit", hold=True)
    acknowledged = AtStage("after-ack")
    worker.add_stage_hook(committed)
    worker.add_stage_hook(acknowledged)
    write(a.engine, City(name="in-flight"))
    with pytest.raises(SyncTimeout):
        a.push()
    committed.release.set()
    assert acknowledged.reached.wait(15)
    a.close()
    _purge(broker_url, Topology(namespace).node_queue(a.node_id))
    with a.engine.connect() as connection:
        inflight = local.load_inflight(connection)
    assert inflight is not None
    assert version_ids(probe) == [1, 2]
    [first] = [rid for rid in probe.push_request_ids() if rid != inflight.request_id]

    # When the log is trimmed a month later, versions 1 and 2 with it
    trimmed = trim_server(server_url, keep_days=1, now=utcnow() + dt.timedelta(days=30))

    # Then the first push's reply is pruned (a pushed since), the one in flight kept
    assert (trimmed.trimmed_through, trimmed.versions, trimmed.requests) == (2, 2, 1)
    assert probe.push_request_ids() == [inflight.request_id]
    assert first not in probe.push_request_ids()

    # And a's sync settles its push from the stored answer: nothing applied twice
    synced = a.sync()
    assert synced.version == a.version == probe.head() == 2
    assert a.pending_operations() == 0
    assert probe.count(schema.versions) == 0
    assert sorted(probe.column(City, "name")) == ["in-flight", "zero"]
    assert table_rows(a.engine) == probe.rows()


def test_a_worker_with_trim_every_trims_the_log_by_itself(
    worker_config, make_node, probe, server_url
):
    # Given a worker told to trim every fifth of a second
    runner = ThreadedWorker(dataclasses.replace(worker_config, trim_every=0.2))
    worker = runner.start()
    try:
        # When its only node pushes a version and then pulls from it
        a = make_node("a")
        write(a.engine, City(name="one"))
        a.sync()
        a.sync()
        worker.activity.flush()

        # Then the version is trimmed without anyone asking
        wait_until(lambda: probe.count(schema.versions) == 0, 15, "the worker to trim")
        assert probe.head() == 1
    finally:
        runner.stop()


def _purge(broker_url: str, queue: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        connection.channel().queue_purge(queue)
    finally:
        connection.close()
