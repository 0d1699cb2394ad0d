"""Writes made on the server with ordinary ORM sessions become versions nodes pull."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

import dbsync_mq.server
from dbsync_mq import PullRequired
from dbsync_mq.core.changeset import decode_changes
from dbsync_mq.core.model import UPDATE
from dbsync_mq.storage import schema
from tests.conftest import table_rows, write
from tests.models import City, Country, Person, Reading

pytestmark = pytest.mark.broker


@pytest.fixture
def server_engine(worker_config) -> Iterator[sa.Engine]:
    """The server application's own engine, with server-side writes installed."""
    engine = sa.create_engine(worker_config.database_url)
    dbsync_mq.server.install(engine)
    yield engine
    dbsync_mq.server.uninstall(engine)
    engine.dispose()


def versions(engine: sa.Engine) -> list[tuple[int, int | None]]:
    with engine.connect() as connection:
        rows = connection.execute(
            sa.select(schema.versions.c.id, schema.versions.c.node_id).order_by(
                schema.versions.c.id
            )
        )
        return [tuple(row) for row in rows]  # type: ignore[misc]


def test_a_server_side_write_made_while_a_node_is_offline_reaches_it(
    make_node, worker, server_engine
):
    # Given a node that works offline while an admin edits the server
    node = make_node("a")
    write(node.engine, City(name="from the node"))
    with Session(server_engine) as session:
        session.add_all([City(name="from the admin"), Country(name="Peru")])
        session.commit()
    assert versions(server_engine) == [(1, None)]

    # When the node comes back and syncs
    result = node.sync()

    # Then it holds the admin's rows, and the server holds the node's
    assert result.pulled == 2
    assert table_rows(node.engine) == table_rows(server_engine)
    assert table_rows(node.engine, (Country,))["country"] == [(1, "Peru")]
    assert sorted(row[1] for row in table_rows(server_engine)["city"]) == [
        "from the admin",
        "from the node",
    ]


def test_a_rolled_back_server_transaction_makes_no_version(worker, server_engine):
    with Session(server_engine) as session:
        session.add(City(name="never"))
        session.flush()
        session.rollback()
    with Session(server_engine) as session:
        session.add(Reading(value=1.0))  # push-only rows never travel: no version
        session.commit()
    assert versions(server_engine) == []


def test_server_side_updates_and_deletes_travel_as_changes(make_node, worker, server_engine):
    node = make_node("a")
    with Session(server_engine) as session:
        lima = City(name="Lima")
        session.add(lima)
        session.flush()
        session.add(Person(name="Ana", city_id=lima.id))
        session.commit()
    node.sync()
    with Session(server_engine) as session:
        session.scalars(sa.select(City)).one().population = 99
        session.delete(session.scalars(sa.select(Person)).one())
        session.commit()
    node.sync()
    assert table_rows(node.engine) == table_rows(server_engine)
    assert table_rows(node.engine)["person"] == []
    assert table_rows(node.engine)["city"][0][2] == 99


def test_a_server_side_row_deleted_and_inserted_again_changed_every_column(server_engine):
    # Given a city, renamed, deleted and inserted again under its key in one transaction
    write(server_engine, City(name="Lima", population=1))
    with Session(server_engine) as session:
        city = session.scalars(sa.select(City)).one()
        city.name = "Lima2"
        session.flush()
        session.delete(city)
        session.flush()
        session.add(City(id=city.id, name="Lima3", population=5))
        session.commit()

    # Then the version names every column as changed, not just the renamed one
    with server_engine.connect() as connection:
        packed = connection.execute(
            sa.select(schema.versions.c.changes).order_by(schema.versions.c.id.desc())
        ).first()
    (change,) = decode_changes(packed[0])
    assert (change.command, set(change.clocks)) == (UPDATE, {"id", "name", "population"})


def push_until_accepted(node, attempts: int = 50) -> None:
    for _attempt in range(attempts):
        try:
            node.push()
            return
        except PullRequired:
            node.pull()
    raise AssertionError("never accepted")


def admin_writes(engine: sa.Engine, count: int) -> None:
    for j in range(count):
        with Session(engine) as session:
            session.add(City(name=f"admin-{j}"))
            session.commit()


def run_concurrently(*functions) -> list[BaseException]:
    """Run each function in a thread of its own; return what they raised."""
    failures: list[BaseException] = []

    def guarded(function):
        try:
            function()
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=guarded, args=(f,)) for f in functions]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    return failures


@pytest.mark.parametrize("server_url", ["postgresql"], indirect=True)
def test_concurrent_server_writes_and_pushes_leave_no_gap_and_lose_nothing(
    make_node, worker, server_engine
):
    # Given ten nodes and an admin all writing at the same time
    nodes = [make_node(f"n{i}") for i in range(10)]
    for index, node in enumerate(nodes):
        write(node.engine, *(City(name=f"node{index}-{j}") for j in range(3)))

    # When they all run concurrently
    failures = run_concurrently(
        *(lambda node=node: push_until_accepted(node) for node in nodes),
        lambda: admin_writes(server_engine, 10),
    )
    assert failures == []

    # Then versions run 1..N without a gap: ten pushes and ten admin transactions
    ids = [version for version, _node in versions(server_engine)]
    assert ids == list(range(1, 21))
    assert sum(node_id is None for _v, node_id in versions(server_engine)) == 10

    # And every row exists exactly once, on the server and on every node after a pull
    names = sorted(row[1] for row in table_rows(server_engine)["city"])
    expected = sorted([f"node{i}-{j}" for i in range(10) for j in range(3)])
    assert names == sorted(expected + [f"admin-{j}" for j in range(10)])
    for node in nodes:
        node.sync()
        assert table_rows(node.engine) == table_rows(server_engine)


@pytest.mark.parametrize("server_url", ["sqlite"], indirect=True)
def test_an_admin_transaction_overlapping_a_push_on_a_sqlite_server_commits_and_so_does_the_push(
    make_node, worker, server_engine
):
    # Given a node with a write to push, and an admin transaction on the server that has
    # read before the push arrives
    node = make_node("a")
    write(node.engine, City(name="from the node"))
    committed = threading.Event()
    worker.add_stage_hook(lambda stage, _kind, _rid: stage == "after-commit" and committed.set())
    outcome: list[object] = []
    with Session(server_engine) as session:
        before = session.scalars(sa.select(City.name)).all()

        # When the node pushes meanwhile (the worker commits, or waits for the admin: up to
        # three seconds are given to it), and the admin then writes what it read
        pushing = threading.Thread(target=lambda: outcome.append(node.sync()))
        pushing.start()
        committed.wait(3)
        session.add(City(name=f"admin after {len(before)} cities"))
        session.commit()
    pushing.join(30)

    # Then both are versions, and the node holds the admin's row
    assert not pushing.is_alive()
    [result] = outcome
    assert result.pushed == 1
    node.sync()
    assert [node_id is None for _v, node_id in versions(server_engine)] in (
        [False, True],
        [True, False],
    )
    assert table_rows(node.engine) == table_rows(server_engine)
