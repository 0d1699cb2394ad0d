"""Rows the server refuses are named, can be held back, and never block the others."""

from __future__ import annotations

import pytest

from dbsync_mq import PendingChange, PushRejected, QuarantinedRow, RequestRefused
from tests.conftest import write
from tests.models import TRACKED, City
from tests.node_only_models import Gadget

pytestmark = pytest.mark.broker


def _refused(node) -> PushRejected:
    with pytest.raises(PushRejected) as raised:
        node.sync()
    return raised.value


def test_a_row_of_a_table_the_server_does_not_track_is_named_and_can_be_held_back(
    make_node, worker, probe
):
    # Given a node that tracks a table the server does not, and wrote valid rows around it
    node = make_node("a", models=(*TRACKED, Gadget))
    write(node.engine, City(name="before"))
    write(node.engine, Gadget(name="unknown to the server"))
    write(node.engine, City(name="after"))

    # When it syncs, the refusal names exactly the row at fault
    refusal = _refused(node)
    assert refusal.code == "unknown-table"
    assert refusal.rows == [("gadget", 1)]
    assert probe.column(City, "name") == []

    # And once that row is quarantined the others are pushed
    assert node.quarantine(refusal.rows, code=refusal.code, reason=refusal.reason) == 1
    node.sync()
    assert sorted(probe.column(City, "name")) == ["after", "before"]

    # Then the held row is kept, listed, and refused again if released unchanged
    assert node.quarantined() == [QuarantinedRow("gadget", 1, "unknown-table", refusal.reason)]
    assert node.pending_changes() == [PendingChange("gadget", 1, "i", quarantined=True)]
    write(node.engine, City(name="later"))
    node.sync()
    assert node.release() == 1
    assert _refused(node).rows == [("gadget", 1)]
    assert sorted(probe.column(City, "name")) == ["after", "before", "later"]


def test_every_row_with_a_value_the_server_refuses_is_named_at_once(make_node, worker, probe):
    # Given a node that wrote two names longer than the server's column, among valid rows
    node = make_node("a")
    write(node.engine, City(name="fine"), City(name="x" * 101), City(name="y" * 300))

    # When it syncs
    refusal = _refused(node)

    # Then both rows are named, and holding them back lets the rest through
    assert refusal.code == "invalid-value"
    assert sorted(refusal.rows) == [("city", 2), ("city", 3)]
    node.quarantine(refusal.rows)
    node.sync()
    assert probe.column(City, "name") == ["fine"]
    assert node.pending_operations() == 2


def test_a_hook_refusal_naming_rows_lets_the_node_push_the_rest(make_node, worker, probe):
    # Given a server hook that refuses cities named "forbidden", naming them
    def refuse_forbidden(context) -> None:
        bad = [
            (change.table, change.key)
            for change in context.changes
            if change.table == "city" and (change.values or {}).get("name") == "forbidden"
        ]
        if bad:
            raise RequestRefused("forbidden-name", "this name is not allowed", bad)

    worker.server.hooks.listen("before_push", refuse_forbidden)
    node = make_node("a")
    write(node.engine, City(name="allowed"), City(name="forbidden"))

    # When it syncs, holds back what the hook named, and syncs again
    refusal = _refused(node)
    assert (refusal.code, refusal.rows) == ("forbidden-name", [("city", 2)])
    node.quarantine(refusal.rows)
    node.sync()

    # Then the allowed row reached the server and the other waits on the node
    assert probe.column(City, "name") == ["allowed"]
    assert [row.key for row in node.quarantined()] == [2]
