"""Merge conflicts through the real worker and broker: insert collisions and column merges.

Nodes start from the same state, so rows they insert offline get the same integer
keys: the pull moves the node's rows to fresh keys, and nothing of either side may
be lost, whatever the order of tables in the push and however deep the rows nest.
"""

from __future__ import annotations

import uuid

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from dbsync_mq import SyncClient
from tests.conftest import table_rows
from tests.models import (
    PURCHASES,
    SYNCED,
    City,
    Delivery,
    Parcel,
    Person,
    Purchase,
    PurchaseLine,
    PurchaseTag,
    Receipt,
)

pytestmark = pytest.mark.broker

ORDERS = {"parent-first": False, "parent-last": True}


def server_rows(server_url: str) -> dict[str, list[object]]:
    engine = sa.create_engine(server_url)
    try:
        return table_rows(engine, (*SYNCED, *PURCHASES))
    finally:
        engine.dispose()


def sync_all(*nodes: SyncClient) -> None:
    """Every node syncs twice, in turn: the last pusher's changes reach everyone."""
    for _round in range(2):
        for node in nodes:
            node.sync()
    assert all(node.pending_operations() == 0 for node in nodes)


def converged(server_url: str, *nodes: SyncClient) -> dict[str, list[object]]:
    rows = server_rows(server_url)
    for node in nodes:
        assert table_rows(node.engine, (*SYNCED, *PURCHASES)) == rows
    return rows


def touch(session: Session, row: object, column: str) -> None:
    """Write ``column`` again in a later flush: the row's last operation comes later."""
    session.flush()
    setattr(row, column, f"{getattr(row, column)}.")
    session.flush()


# --- insert collisions ---------------------------------------------------------------------


def _city_and_person(session: Session, name: str, parent_last: bool) -> None:
    city = City(name=f"city-{name}")
    session.add(city)
    session.flush()
    session.add(Person(name=f"person-{name}", city_id=city.id))
    if parent_last:
        touch(session, city, "name")


def _persons(connection: sa.Connection) -> set[tuple[str, ...]]:
    rows = connection.execute(
        sa.select(Person.name, City.name).join(City, Person.city_id == City.id)
    )
    return {(person, city.rstrip(".")) for person, city in rows}


def _purchase_with_deliveries(session: Session, name: str, parent_last: bool) -> None:
    purchase = Purchase(marker=f"purchase-{name}")
    session.add(purchase)
    session.flush()
    session.add_all(Delivery(purchase_id=purchase.id, marker=f"{name}{i}") for i in range(2))
    if parent_last:
        touch(session, purchase, "status")


def _deliveries(connection: sa.Connection) -> set[tuple[str, ...]]:
    rows = connection.execute(
        sa.select(Delivery.marker, Purchase.marker).join(
            Purchase, Delivery.purchase_id == Purchase.id
        )
    )
    return {(delivery, purchase) for delivery, purchase in rows}


def _three_levels(session: Session, name: str, parent_last: bool) -> None:
    purchase = Purchase(marker=f"purchase-{name}")
    session.add(purchase)
    session.flush()
    lines = [PurchaseLine(purchase_id=purchase.id, marker=f"line-{name}{i}") for i in range(2)]
    session.add_all(lines)
    session.flush()
    session.add_all(Parcel(line_id=line.id, marker=f"parcel-{line.marker}") for line in lines)
    if parent_last:
        session.flush()
        for line in lines:
            touch(session, line, "marker")
        touch(session, purchase, "marker")


def _parcels(connection: sa.Connection) -> set[tuple[str, ...]]:
    rows = connection.execute(
        sa.select(Parcel.marker, PurchaseLine.marker, Purchase.marker)
        .join(PurchaseLine, Parcel.line_id == PurchaseLine.id)
        .join(Purchase, PurchaseLine.purchase_id == Purchase.id)
    )
    return {tuple(value.rstrip(".") for value in row) for row in rows}


FAMILIES = {
    # a parent and a child without unique columns
    "city-person": (_city_and_person, _persons, {("person-{n}", "city-{n}")}),
    # children with a unique column
    "deliveries": (
        _purchase_with_deliveries,
        _deliveries,
        {("{n}0", "purchase-{n}"), ("{n}1", "purchase-{n}")},
    ),
    # three levels, the grandchildren with a unique column
    "three-levels": (
        _three_levels,
        _parcels,
        {(f"parcel-line-{{n}}{i}", f"line-{{n}}{i}", "purchase-{n}") for i in range(2)},
    ),
}


@pytest.mark.parametrize("parent_last", ORDERS.values(), ids=ORDERS.keys())
@pytest.mark.parametrize("family", FAMILIES)
def test_rows_two_nodes_inserted_offline_under_the_same_keys_all_survive(
    make_node, worker, server_url, family, parent_last
):
    insert, read, expected = FAMILIES[family]
    # Given two nodes that each insert a parent and its children, with the same keys
    a, b = make_node("a"), make_node("b")
    for node, name in ((a, "a"), (b, "b")):
        with Session(node.engine) as session:
            insert(session, name, parent_last)
            session.commit()

    # When they sync
    sync_all(a, b)

    # Then every row survives, under its own parent, on both nodes and on the server
    converged(server_url, a, b)
    wanted = {tuple(part.format(n=n) for part in row) for row in expected for n in "ab"}
    for node in (a, b):
        with node.engine.connect() as connection:
            assert read(connection) == wanted


# --- the same non-integer key inserted twice: one row, two versions --------------------------

WINNER = {"node-wins": "b", "server-wins": "a", "last-writer-wins": "b"}
"""Whose values a row inserted by a, then by b, keeps when b merges with this policy."""
DECIDING = ["node-wins", "server-wins"]
"""Policies that decide differently (the unit tests cover each policy's rules)."""


def _shared_purchase(a: SyncClient, b: SyncClient) -> int:
    with Session(a.engine) as session:
        purchase = Purchase(marker="shared")
        session.add(purchase)
        session.commit()
        key = purchase.id
    sync_all(a, b)
    return key


@pytest.mark.parametrize("policy", DECIDING)
def test_two_nodes_inserting_the_same_composite_key_merge_it_as_one_row(
    make_node, worker, server_url, policy
):
    # Given a purchase both nodes have, tagged offline on each with the same label
    a, b = make_node("a"), make_node("b", conflict_policy=policy)
    key = _shared_purchase(a, b)
    for node in (a, b):
        with Session(node.engine) as session:
            session.add(PurchaseTag(purchase_id=key, label="gift", note=f"from {node is b}"))
            session.commit()

    # When a syncs, then b
    sync_all(a, b)

    # Then the tag is one row, with the values the policy chose
    rows = converged(server_url, a, b)
    assert rows["purchase_tag"] == [(key, "gift", f"from {WINNER[policy] == 'b'}")]


def test_two_nodes_inserting_the_same_uuid_merge_it_as_one_row(make_node, worker, server_url):
    # Given a purchase both nodes have, and a receipt inserted on each with the same UUID
    a, b = make_node("a"), make_node("b")
    key = _shared_purchase(a, b)
    same = uuid.uuid4()
    for node, name in ((a, "a"), (b, "b")):
        with Session(node.engine) as session:
            session.add(Receipt(id=same, purchase_id=key, marker=name, amount=ord(name)))
            session.commit()

    # When a syncs, then b
    sync_all(a, b)

    # Then the receipt is one row, with b's values (b merged it: the node wins)
    rows = converged(server_url, a, b)
    assert rows["receipt"] == [(same, key, "b", ord("b"))]


# --- concurrent updates of one row --------------------------------------------------------


@pytest.mark.parametrize("policy", WINNER)
def test_concurrent_updates_of_different_columns_of_one_row_keep_both(
    make_node, worker, server_url, policy
):
    # Given a city both nodes have
    a, b = make_node("a"), make_node("b", conflict_policy=policy)
    with Session(a.engine) as session:
        session.add(City(name="Lima", population=1))
        session.commit()
    sync_all(a, b)

    # When a changes its population and b its name, offline, and they sync
    with Session(a.engine) as session:
        session.scalars(sa.select(City)).one().population = 7
        session.commit()
    with Session(b.engine) as session:
        session.scalars(sa.select(City)).one().name = "Cusco"
        session.commit()
    sync_all(a, b)

    # Then both changes survive, whatever the policy
    rows = converged(server_url, a, b)
    assert [row[1:] for row in rows["city"]] == [("Cusco", 7)]


@pytest.mark.parametrize("policy", DECIDING)
def test_a_nodes_own_earlier_change_is_not_the_servers_change_to_that_column(
    make_node, worker, server_url, policy
):
    # Given a purchase both nodes have, and an unrelated version a has not pulled
    a, b = make_node("a", conflict_policy=policy), make_node("b")
    _shared_purchase(a, b)
    with Session(b.engine) as session:
        session.add(City(name="elsewhere"))
        session.commit()
    b.push()
    # And a status change of a, applied on top of that version (a stays behind it)
    _set(a, "status", "paid")
    pushed = a.push()
    assert pushed.version < pushed.accepted_version
    # And a notes change of b, merged with a's status
    _set(b, "notes", "fragile")
    b.sync()

    # When a changes the status again, offline, and syncs
    _set(a, "status", "shipped")
    sync_all(a, b)

    # Then a's latest status stands (nobody else changed it), next to b's notes
    rows = converged(server_url, a, b)
    assert [row[2:] for row in rows["purchase"]] == [("shipped", "fragile")]


def _set(node: SyncClient, column: str, value: str) -> None:
    with Session(node.engine) as session:
        setattr(session.scalars(sa.select(Purchase)).one(), column, value)
        session.commit()


def test_a_row_a_node_inserted_and_another_deleted_is_deleted_on_the_first_node_too(
    make_node, worker, server_url
):
    # Given a node whose insert was applied on top of a version it had not pulled
    a, b = make_node("a"), make_node("b")
    with Session(b.engine) as session:
        session.add(City(name="elsewhere"))
        session.commit()
    b.push()
    with Session(a.engine) as session:
        session.add(Person(name="Ana"))
        session.commit()
    pushed = a.push()
    assert pushed.version < pushed.accepted_version  # a has not merged b's version yet

    # When another node deletes that row before the first node pulls
    b.sync()
    with Session(b.engine) as session:
        session.delete(session.scalars(sa.select(Person)).one())
        session.commit()
    b.sync()
    a.pull()

    # Then the row is gone there too
    rows = converged(server_url, a, b)
    assert rows["person"] == []


def test_a_row_deleted_after_a_pull_brought_it_under_a_key_the_node_once_used_is_deleted(
    make_node, worker, server_url
):
    # Given a node that inserted and deleted a city offline, never pushing it
    a, b = make_node("a"), make_node("b")
    with Session(a.engine) as session:
        session.add(City(id=5, name="a's own, gone"))
        session.commit()
        session.delete(session.get(City, 5))
        session.commit()

    # And a pull, before any push of it, that brought another node's city under that key
    with Session(b.engine) as session:
        session.add(City(id=5, name="b's"))
        session.commit()
    b.sync()
    a.pull()

    # When the node deletes that city and syncs
    with Session(a.engine) as session:
        session.delete(session.get(City, 5))
        session.commit()
    a.sync()
    b.sync()

    # Then it is gone from the server and from every node
    engine = sa.create_engine(server_url)
    try:
        assert table_rows(engine)["city"] == []
    finally:
        engine.dispose()
    assert table_rows(a.engine)["city"] == table_rows(b.engine)["city"] == []


def test_a_child_of_a_deleted_row_never_lands_under_another_nodes_row_that_took_its_key(
    make_node, worker, server_url
):
    # Given node B's purchase, pulled by node C, which adds a line to it offline
    a, b, c = make_node("a"), make_node("b"), make_node("c")
    with Session(b.engine) as session:
        session.add(Purchase(id=1, marker="b's"))
        session.commit()
    b.sync()
    c.pull()
    with Session(c.engine) as session:
        session.add(PurchaseLine(purchase_id=1, marker="c's line"))
        session.commit()

    # And node B deleting its purchase, while node A, which never pulled, inserts one of
    # its own offline under the same key
    with Session(b.engine) as session:
        session.delete(session.get(Purchase, 1))
        session.commit()
    b.sync()
    with Session(a.engine) as session:
        session.add(Purchase(id=1, marker="a's"))
        session.commit()

    # When node A syncs, then node C
    # Then C's line is not under A's purchase, and A's purchase is on every node
    purchases, lines_under = _a_then_c_synced(server_url, a, b, c)
    assert "a's" in purchases
    assert "a's" not in lines_under


def test_a_key_deleted_before_a_node_pulled_is_not_taken_again_by_its_next_insert(
    make_node, worker, server_url
):
    # Given node B's purchase, pulled by node C, which adds a line to it offline
    a, b, c = make_node("a"), make_node("b"), make_node("c")
    with Session(b.engine) as session:
        session.add(Purchase(marker="b's"))
        session.commit()
    b.sync()
    c.pull()
    with Session(c.engine) as session:
        (purchase_id,) = session.scalars(sa.select(Purchase.id)).all()
        session.add(PurchaseLine(purchase_id=purchase_id, marker="c's line"))
        session.commit()

    # And node B deleting it, and node A pulling that before inserting a purchase
    with Session(b.engine) as session:
        session.delete(session.get(Purchase, purchase_id))
        session.commit()
    b.sync()
    a.pull()
    with Session(a.engine) as session:
        session.add(Purchase(marker="a's"))
        session.commit()

    # When node A syncs, then node C
    # Then C's line is not under A's purchase, and A's purchase is on every node
    purchases, lines_under = _a_then_c_synced(server_url, a, b, c)
    assert "a's" in purchases
    assert "a's" not in lines_under


def _a_then_c_synced(
    server_url: str, a: SyncClient, b: SyncClient, c: SyncClient
) -> tuple[list[str], list[str | None]]:
    """Node A syncs, then node C, then all converge: the purchases' markers, and the
    marker of the purchase each purchase line is under."""
    a.sync()
    c.sync()
    sync_all(a, b, c)
    rows = converged(server_url, a, b, c)
    purchases = {row[0]: row[1] for row in rows["purchase"]}
    return list(purchases.values()), [purchases.get(row[1]) for row in rows["purchase_line"]]
