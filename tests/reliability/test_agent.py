"""The background agent: live sync without the application calling anything."""

from __future__ import annotations

import time

import pytest

from dbsync_mq import PushRejected, UniqueConstraintError
from tests.conftest import table_rows, write
from tests.models import TRACKED, City, Tag
from tests.node_only_models import Gadget
from tests.reliability.conftest import wait_until
from tests.statuses import StatusLog

pytestmark = pytest.mark.broker


def test_a_write_on_one_node_appears_on_another_without_it_calling_anything(make_node, worker):
    # Given two nodes running their agents
    a, b = make_node("a"), make_node("b")
    with a.running(), b.running():
        # When the application writes on node A, and nothing else
        write(a.engine, City(name="live"))

        # Then the row reaches node B's database
        wait_until(
            lambda: [row[1] for row in table_rows(b.engine)["city"]] == ["live"],
            15,
            "the row to reach node B",
        )
    assert a.status.state == b.status.state == "stopped"


def test_a_small_version_announced_by_its_event_is_merged_without_a_pull(make_node, worker):
    # Given node B's agent running and caught up, and the kinds of requests served from then
    a, b = make_node("a"), make_node("b")
    served: list[str] = []
    statuses = StatusLog()
    with b.running(on_status=statuses):
        statuses.wait_for(lambda s: s.state == "online")
        worker.add_stage_hook(
            lambda stage, kind, _rid: stage == "after-ack" and served.append(kind)
        )

        # When node A pushes a row (and pulls nothing)
        write(a.engine, City(name="announced"))
        assert a.push().version == 1

        # Then the row reaches node B, which merged the version the event carried: the
        # only request served was A's push
        wait_until(
            lambda: [row[1] for row in table_rows(b.engine)["city"]] == ["announced"],
            15,
            "the row to reach node B",
        )
        assert statuses.wait_for(lambda s: s.version == 1).state == "online"
        # The worker acknowledges a push after its reply is confirmed, which can be after
        # node B merged the event: wait for that acknowledgement before counting
        wait_until(lambda: "push" in served, 15, "the worker to acknowledge the push")
        assert served == ["push"]
    assert b.version == 1
    assert table_rows(b.engine) == table_rows(a.engine)


def test_an_agent_started_while_the_broker_is_unreachable_pushes_soon_after_it_returns(
    make_node, worker, proxy, broker_url, probe, ledger, request
):
    # Given a node with a pending write whose broker is unreachable (connections refused)
    a = make_node("a", broker_url=proxy.url(broker_url))
    write(a.engine, City(name="waited"))
    proxy.cut()
    statuses = StatusLog()
    with a.running(on_status=statuses):
        statuses.wait_for(lambda s: s.state == "offline" and s.last_error is not None)
        ledger.fault(request.node.name)

        # When the broker becomes reachable again
        proxy.restore()
        returned = time.monotonic()

        # Then the agent has pushed the write within two seconds
        wait_until(lambda: probe.column(City, "name") == ["waited"], 10, "the push")
        assert time.monotonic() - returned < 2.0
        statuses.wait_for(lambda s: s.state == "online" and s.pending_operations == 0)


def test_a_refused_push_and_a_unique_clash_reach_the_callback_and_the_agent_goes_on(
    make_node, worker, probe
):
    # Given a node whose agent meets a row the server refuses
    a = make_node("a", models=(*TRACKED, Gadget))
    b = make_node("b")
    statuses = StatusLog()
    with a.running(on_status=statuses, retry_max=0.5):
        write(a.engine, Gadget(name="refused"))
        refused = statuses.wait_for(lambda s: isinstance(s.last_error, PushRejected))
        assert refused.state == "error"
        assert refused.last_error.rows == [("gadget", 1)]

        # When the application holds that row back, the agent pushes the rest
        a.quarantine(refused.last_error.rows)
        write(a.engine, City(name="after"))
        wait_until(lambda: probe.column(City, "name") == ["after"], 15, "the push")

    # And a unique clash with another node's row, made while the agent was stopped,
    # is reported the same way
    write(b.engine, Tag(label="red"))
    b.sync()
    write(a.engine, Tag(label="red"))
    statuses = StatusLog()
    with a.running(on_status=statuses, retry_max=0.5):
        clash = statuses.wait_for(lambda s: isinstance(s.last_error, UniqueConstraintError))
        assert clash.state == "error"

        # Then, once the application settles it, the agent is back online
        with a.engine.begin() as connection:
            connection.exec_driver_sql("UPDATE tag SET label = 'crimson' WHERE label = 'red'")
        write(a.engine, City(name="settled"))
        wait_until(lambda: "settled" in probe.column(City, "name"), 15, "the next push")
        # (the quarantined gadget is the one operation left)
        statuses.wait_for(lambda s: s.state == "online" and s.pending_operations == 1)
    assert sorted(probe.column(Tag, "label")) == ["crimson", "red"]


# --- outages and load ---------------------------------------------------------------------------
