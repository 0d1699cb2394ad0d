"""Two or more nodes synchronizing through the real worker, broker and server database."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from dbsync_mq import (
    BrokerUnavailable,
    NotRegistered,
    PullRequired,
    SyncClient,
    SyncTimeout,
    UniqueConstraintError,
)
from dbsync_mq.storage import schema
from dbsync_mq.storage.tracking import BULK_SLICE_ROWS
from tests.conftest import ThreadedWorker, table_rows, write
from tests.models import City, Note, Person, Tag

pytestmark = pytest.mark.broker


def server_rows(server_url: str) -> dict[str, list[object]]:
    engine = sa.create_engine(server_url)
    try:
        return table_rows(engine)
    finally:
        engine.dispose()


def test_inserts_updates_and_deletes_reach_the_other_node(make_node, worker, server_url):
    # Given two registered nodes, one of which writes while offline
    a, b = make_node("a"), make_node("b")
    write(a.engine, City(name="Lima", population=10), City(name="Quito", population=3))
    with Session(a.engine) as session:
        lima = session.scalars(sa.select(City).where(City.name == "Lima")).one()
        session.add(Person(name="Ana", city_id=lima.id))
        session.commit()

    # When it syncs and the other node syncs
    a.sync()
    b.sync()

    # Then the other node holds the same rows as the server
    assert table_rows(b.engine) == table_rows(a.engine) == server_rows(server_url)
    assert len(table_rows(b.engine)["city"]) == 2

    # And updates and deletes travel the same way
    with Session(a.engine) as session:
        session.scalars(sa.select(City).where(City.name == "Quito")).one().population = 4
        session.delete(session.scalars(sa.select(Person)).one())
        session.commit()
    a.sync()
    b.sync()
    rows = table_rows(b.engine)
    assert rows == table_rows(a.engine) == server_rows(server_url)
    assert rows["person"] == []
    assert sorted(row[2] for row in rows["city"]) == [4, 10]


def test_a_node_behind_is_refused_until_it_pulls(make_node, worker, server_url):
    # Given node a pushed while node b was offline with a change of its own
    a, b = make_node("a"), make_node("b")
    write(a.engine, City(name="Lima"))
    a.push()
    write(b.engine, City(name="Cusco"))

    # When b pushes without pulling, it is refused and nothing is applied
    with pytest.raises(PullRequired):
        b.push()
    assert [row[1] for row in server_rows(server_url)["city"]] == ["Lima"]
    assert b.pending_operations() == 1

    # Then after a pull the same push succeeds
    b.pull()
    result = b.push()
    assert result.operations == 1
    assert result.version == 2
    assert table_rows(b.engine) == server_rows(server_url)


def test_a_rollback_leaves_no_operation_to_push(make_node, worker):
    node = make_node("a")
    with Session(node.engine) as session:
        session.add(City(name="Never"))
        session.flush()
        session.rollback()
    assert node.pending_operations() == 0
    assert node.push().operations == 0


def test_bulk_orm_statements_are_captured(make_node, worker, server_url):
    # Given a node that writes only through ORM-enabled bulk statements
    a, b = make_node("a"), make_node("b")
    with Session(a.engine) as session:
        session.execute(sa.insert(City), [{"name": f"c{i}", "population": i} for i in range(5)])
        updated = session.execute(
            sa.update(City).where(City.population >= 3).values(population=100)
        )
        deleted = session.execute(sa.delete(City).where(City.population == 0))
        session.commit()
    # The caller still sees the row counts it would have seen untracked
    assert updated.rowcount == 2
    assert deleted.rowcount == 1

    a.sync()
    b.sync()
    rows = table_rows(b.engine)["city"]
    assert rows == server_rows(server_url)["city"]
    assert sorted((row[1], row[2]) for row in rows) == [
        ("c1", 1),
        ("c2", 2),
        ("c3", 100),
        ("c4", 100),
    ]


def test_a_bulk_insert_larger_than_a_slice_records_every_row_once(make_node, worker):
    # Given a node inserting more rows in one statement than are executed at a time
    a, b = make_node("a"), make_node("b")
    count = 2 * BULK_SLICE_ROWS + 7
    with Session(a.engine) as session:
        session.execute(sa.insert(City), [{"name": f"c{i}", "population": i} for i in range(count)])
        session.commit()

    # Then each row is one pending insert, in the order written
    with a.engine.connect() as connection:
        ids = connection.execute(sa.select(City.id).order_by(City.population)).scalars().all()
    assert [(c.table, c.key, c.command) for c in a.pending_changes()] == [
        ("city", key, "i") for key in ids
    ]
    # And they all reach another node
    a.sync()
    b.sync()
    assert table_rows(b.engine) == table_rows(a.engine)
    assert len(table_rows(b.engine)["city"]) == count


def test_bulk_update_by_primary_key_and_insert_returning_are_captured(make_node, worker):
    a, b = make_node("a"), make_node("b")
    with Session(a.engine) as session:
        cities = session.scalars(
            sa.insert(City).returning(City), [{"name": "x"}, {"name": "y"}]
        ).all()
        assert [city.name for city in cities] == ["x", "y"]
        session.execute(sa.update(City), [{"id": cities[0].id, "name": "renamed"}])
        session.commit()
    a.sync()
    b.sync()
    assert sorted(row[1] for row in table_rows(b.engine)["city"]) == ["renamed", "y"]


def test_every_column_type_round_trips(make_node, worker):
    a, b = make_node("a"), make_node("b")
    values = {
        "id": uuid.uuid4(),
        "text": "héllo ✓",
        "created": dt.datetime(2024, 2, 29, 23, 59, 59, 999999),
        "day": dt.date(1999, 12, 31),
        "at": dt.time(7, 30, 0, 5),
        "span": dt.timedelta(days=2, seconds=5),
        "amount": Decimal("12345.678901"),
        "ratio": 0.1,
        "flag": True,
        "blob": b"\x00\xffbytes",
        "data": {"list": [1, 2.5, None, "x"], "nested": {"ok": True}},
    }
    write(a.engine, Note(**values))
    a.sync()
    b.sync()
    with Session(b.engine) as session:
        copy = session.get(Note, values["id"])
        assert copy is not None
        assert {name: getattr(copy, name) for name in values} == values


def test_a_write_during_a_push_in_flight_is_neither_lost_nor_pushed_twice(
    make_node, worker_runner: ThreadedWorker, server_url
):
    # Given a push that was published but never answered (no worker yet)
    worker_runner.start()
    node = make_node("a", timeout=1)
    write(node.engine, City(name="first"))
    worker_runner.stop()
    with pytest.raises(SyncTimeout):
        node.push()

    # When the application writes again while that push is in flight
    write(node.engine, City(name="second"))
    assert node.pending_operations() == 2

    # Then, once a worker answers, each write reaches the server exactly once
    worker_runner.start()
    node.timeout = 10
    node.sync()
    assert sorted(row[1] for row in server_rows(server_url)["city"]) == ["first", "second"]
    assert node.pending_operations() == 0
    engine = sa.create_engine(server_url)
    with engine.connect() as connection:
        versions = connection.execute(sa.select(sa.func.count()).select_from(schema.versions))
        assert versions.scalar_one() == 2
    engine.dispose()


def test_without_a_broker_local_work_continues(tmp_path):
    # Given a node whose broker cannot be reached
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'offline.db'}")
    client = SyncClient(
        engine, broker_url="amqp://guest:guest@127.0.0.1:1/%2F", models=[City, Person]
    )
    client.install()

    # Local writes still succeed and are logged
    write(engine, City(name="offline"))
    assert client.pending_operations() == 1

    # Registering raises BrokerUnavailable, an error the application can retry later
    with pytest.raises(BrokerUnavailable):
        client.register("token")
    with pytest.raises(NotRegistered):
        client.sync()


def test_a_push_behind_the_server_on_other_rows_is_applied_on_top(make_node, worker, server_url):
    # Given node a pushed while node b, offline, created rows of its own (UUID keys)
    a, b = make_node("a"), make_node("b")
    write(a.engine, Note(id=uuid.uuid4(), text="from a"))
    a.push()
    write(b.engine, Note(id=uuid.uuid4(), text="from b"))

    # When b pushes from version 0, its push shares no row with version 1
    result = b.push()

    # Then it is applied as version 2 without a pull, and b stays at 0 until it pulls
    assert (result.operations, result.accepted_version, result.version) == (1, 2, 0)
    assert sorted(row[1] for row in server_rows(server_url)["note"]) == ["from a", "from b"]
    b.pull()
    assert b.version == 2
    assert table_rows(b.engine) == server_rows(server_url)


def test_a_push_behind_the_server_that_deletes_or_breaks_a_reference_must_pull_first(
    make_node, worker, server_url
):
    a, b = make_node("a"), make_node("b")
    write(a.engine, City(name="Lima"), Note(id=uuid.uuid4(), text="x"))
    a.sync()
    b.sync()
    # a deletes the city; b, unaware, adds a person living there and deletes the note
    with Session(a.engine) as session:
        session.delete(session.scalars(sa.select(City)).one())
        session.commit()
    a.sync()
    with Session(b.engine) as session:
        city = session.scalars(sa.select(City)).one()
        session.add(Person(name="Ana", city_id=city.id))
        session.commit()
    with pytest.raises(PullRequired):
        b.push()  # the foreign key fails against version 2: back to pull

    with Session(b.engine) as session:
        session.delete(session.scalars(sa.select(Note)).one())
        session.commit()
    b.sync()  # the merge keeps the city (dependency), then everything converges
    a.sync()
    assert table_rows(a.engine) == table_rows(b.engine) == server_rows(server_url)
    assert [row[1] for row in table_rows(a.engine)["city"]] == ["Lima"]


def test_a_unique_clash_on_pull_raises_and_leaves_the_node_as_it_was(make_node, worker):
    # Given two nodes that each create a tag labelled "red" while offline
    a, b = make_node("a"), make_node("b")
    write(a.engine, Tag(label="red"))
    a.sync()
    write(b.engine, Tag(label="red"), City(name="also pending"))
    before = (table_rows(b.engine), b.pending_operations(), b.version)

    # When b syncs, the merge finds b's row holding the value the server's row needs
    with pytest.raises(UniqueConstraintError) as clash:
        b.sync()

    # Then it names b's row, and b's database is exactly as it was
    assert clash.value.entries == [(Tag, 1, ("label",))]
    assert (table_rows(b.engine), b.pending_operations(), b.version) == before

    # And once the application renames its row, the sync goes through
    with Session(b.engine) as session:
        session.get(Tag, 1).label = "crimson"
        session.commit()
    b.sync()
    a.sync()
    assert table_rows(a.engine) == table_rows(b.engine)
    assert sorted(row[1] for row in table_rows(a.engine)["tag"]) == ["crimson", "red"]
