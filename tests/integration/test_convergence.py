"""The property everything is tested against: nodes that edit offline and sync converge.

Each generated scenario: three nodes, each with its own conflict policy, make
random inserts, updates and deletes on related tables (a parent, a child with a
foreign key, a unique column, an association table, a self-referencing tree,
UUID-keyed rows) while offline, in rounds, syncing in a random order between
rounds, while an administrator writes to the server database directly.
Afterwards every node syncs until nothing is left to push, and every node's
tables must equal the server's, row for row, with no dangling reference.
Unique clashes are settled the way an application would: by renaming or
deleting its own row and syncing again.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

import dbsync_mq.server
from dbsync_mq import SyncClient, UniqueConstraintError
from dbsync_mq.storage import local, schema
from tests.conftest import table_rows
from tests.models import SYNCED, Category, City, CityTag, Note, Person, Tag

pytestmark = [pytest.mark.broker, pytest.mark.slow]

EXAMPLES = int(os.environ.get("DBSYNC_CONVERGENCE_EXAMPLES", "200"))
NODES = 3
NAMES = ["Lima", "Quito", "Cusco", "Tacna"]
LABELS = ["red", "green", "blue"]
POLICIES = ["node-wins", "server-wins", "last-writer-wins"]

Operation = Callable[[Session, st.DataObject], None]


def _pick(data: st.DataObject, session: Session, model: type) -> Any:
    rows = session.scalars(sa.select(model).order_by(model.id)).all()  # type: ignore[attr-defined]
    return data.draw(st.sampled_from(rows)) if rows else None


def add_city(session: Session, data: st.DataObject) -> None:
    session.add(
        City(name=data.draw(st.sampled_from(NAMES)), population=data.draw(st.integers(0, 9)))
    )


def update_city(session: Session, data: st.DataObject) -> None:
    if (city := _pick(data, session, City)) is not None:
        if data.draw(st.booleans()):
            city.name = data.draw(st.sampled_from(NAMES))
        else:
            city.population = data.draw(st.integers(0, 9))


def delete_city(session: Session, data: st.DataObject) -> None:
    if (city := _pick(data, session, City)) is not None:
        for person in session.scalars(sa.select(Person).where(Person.city_id == city.id)):
            person.city_id = None
        for link in session.scalars(sa.select(CityTag).where(CityTag.city_id == city.id)):
            session.delete(link)
        session.flush()
        session.delete(city)


def add_person(session: Session, data: st.DataObject) -> None:
    city = _pick(data, session, City) if data.draw(st.booleans()) else None
    session.add(Person(name=f"p{data.draw(st.integers(0, 99))}", city_id=city.id if city else None))


def move_person(session: Session, data: st.DataObject) -> None:
    if (person := _pick(data, session, Person)) is not None:
        city = _pick(data, session, City)
        person.city_id = city.id if city else None


def delete_person(session: Session, data: st.DataObject) -> None:
    if (person := _pick(data, session, Person)) is not None:
        session.delete(person)


def _free_label(session: Session, data: st.DataObject) -> str | None:
    taken = set(session.scalars(sa.select(Tag.label)))
    free = [label for label in LABELS if label not in taken]
    return data.draw(st.sampled_from(free)) if free else None


def add_tag(session: Session, data: st.DataObject) -> None:
    if (label := _free_label(session, data)) is not None:
        session.add(Tag(label=label))


def rename_tag(session: Session, data: st.DataObject) -> None:
    tag, label = _pick(data, session, Tag), _free_label(session, data)
    if tag is not None and label is not None:
        tag.label = label


def delete_tag(session: Session, data: st.DataObject) -> None:
    if (tag := _pick(data, session, Tag)) is not None:
        for link in session.scalars(sa.select(CityTag).where(CityTag.tag_id == tag.id)):
            session.delete(link)
        session.flush()
        session.delete(tag)


def link(session: Session, data: st.DataObject) -> None:
    city, tag = _pick(data, session, City), _pick(data, session, Tag)
    if city is None or tag is None:
        return
    exists = session.scalars(
        sa.select(CityTag).where(CityTag.city_id == city.id, CityTag.tag_id == tag.id)
    ).first()
    if exists is None:
        session.add(CityTag(city_id=city.id, tag_id=tag.id))


def unlink(session: Session, data: st.DataObject) -> None:
    if (row := _pick(data, session, CityTag)) is not None:
        session.delete(row)


def add_category(session: Session, data: st.DataObject) -> None:
    parent = _pick(data, session, Category)
    session.add(
        Category(name=f"c{data.draw(st.integers(0, 9))}", parent_id=parent.id if parent else None)
    )


def delete_category(session: Session, data: st.DataObject) -> None:
    if (category := _pick(data, session, Category)) is not None:
        for child in session.scalars(sa.select(Category).where(Category.parent_id == category.id)):
            child.parent_id = None
        session.flush()
        session.delete(category)


def add_note(session: Session, data: st.DataObject) -> None:
    session.add(Note(id=uuid.uuid4(), text=data.draw(st.sampled_from(["a", "b", None]))))


def edit_note(session: Session, data: st.DataObject) -> None:
    notes = session.scalars(sa.select(Note).order_by(Note.id)).all()
    if notes:
        note = data.draw(st.sampled_from(notes))
        if data.draw(st.booleans()):
            note.text = data.draw(st.sampled_from(["x", "y"]))
        else:
            session.delete(note)


OPERATIONS: list[Operation] = [
    add_city,
    update_city,
    delete_city,
    add_person,
    move_person,
    delete_person,
    add_tag,
    rename_tag,
    delete_tag,
    link,
    unlink,
    add_category,
    delete_category,
    add_note,
    edit_note,
]


def sync_like_an_application(node: SyncClient, name: str) -> None:
    """Sync; settle unique clashes by renaming or dropping the local row, as an app would."""
    for attempt in range(10):
        try:
            node.sync()
            return
        except UniqueConstraintError as clash:
            with Session(node.engine) as session:
                for model, key, _columns in clash.entries:
                    row = session.get(model, key)
                    if model is Tag:
                        row.label = f"{row.label}-{name}{attempt}"
                    else:
                        session.delete(row)
                session.commit()
    raise AssertionError(f"{name} could not settle its unique clashes")


class TickingClock:
    """A clock shared by the nodes that moves 1 ms per reading: the same scenario
    always gets the same stamps, so hypothesis can replay and shrink it."""

    def __init__(self) -> None:
        self.start = time.time()
        self.ticks = 0

    def reset(self) -> None:
        self.ticks = 0

    def __call__(self) -> float:
        self.ticks += 1
        return self.start + self.ticks / 1000


def _empty(connection: sa.Connection, tables: list[sa.Table]) -> None:
    """Delete every row and restart key sequences, as in a new database."""
    for table in reversed(sa.schema.sort_tables(tables)):
        connection.execute(table.delete())
    if connection.dialect.name == "sqlite":
        if sa.inspect(connection).has_table("sqlite_sequence"):
            connection.exec_driver_sql("DELETE FROM sqlite_sequence")
    else:
        for table in tables:
            if table.name not in ("sync_requests", "sync_versions") and table.c.id.autoincrement:
                connection.exec_driver_sql(
                    f"SELECT setval(pg_get_serial_sequence('{table.name}', 'id'), 1, false)"
                )


def reset(server: sa.Engine, nodes: list[SyncClient], clock: TickingClock) -> None:
    """Empty the server and the nodes, keeping the nodes' identities (cheap fresh start)."""
    tables = [model.__table__ for model in SYNCED]  # type: ignore[attr-defined]
    with server.begin() as connection:
        _empty(connection, [*tables, schema.requests, schema.versions])
        connection.execute(schema.head.update().values(version=0))
    for node in nodes:
        with node.engine.begin() as connection:
            _empty(connection, [*tables, schema.operations, schema.inflight])
            local.set_position(connection, 0)
        node._identity = None
    clock.reset()


def dangling_references(engine: sa.Engine) -> list[str]:
    checks = {
        "person.city_id": "SELECT id FROM person WHERE city_id IS NOT NULL "
        "AND city_id NOT IN (SELECT id FROM city)",
        "city_tag.city_id": "SELECT id FROM city_tag WHERE city_id NOT IN (SELECT id FROM city)",
        "city_tag.tag_id": "SELECT id FROM city_tag WHERE tag_id NOT IN (SELECT id FROM tag)",
        "category.parent_id": "SELECT id FROM category WHERE parent_id IS NOT NULL "
        "AND parent_id NOT IN (SELECT id FROM category)",
    }
    with engine.connect() as connection:
        return [
            f"{name}: {row[0]}"
            for name, sql in checks.items()
            for row in connection.exec_driver_sql(sql)
        ]


@pytest.fixture
def cluster(make_node, worker, server_url):
    server = sa.create_engine(server_url)
    dbsync_mq.server.install(server)  # an admin writes on the server too
    clock = TickingClock()
    nodes = [make_node(f"n{i}", clock=clock) for i in range(NODES)]
    yield server, nodes, clock
    dbsync_mq.server.uninstall(server)
    server.dispose()


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    print_blob=True,  # a failure prints the @reproduce_failure line that replays it
    suppress_health_check=[
        HealthCheck.function_scoped_fixture,
        HealthCheck.too_slow,
        HealthCheck.data_too_large,
    ],
)
@given(data=st.data())
def test_nodes_editing_offline_converge_with_the_server(cluster, data):
    server, nodes, clock = cluster
    reset(server, nodes, clock)
    for node in nodes:
        node.conflict_policy = data.draw(st.sampled_from(POLICIES), label="policy")

    # Given rounds of offline edits on every node, synced in a random order
    for _round in range(data.draw(st.integers(1, 3), label="rounds")):
        edit_offline(nodes, data)
        edit(server, data, most=3)
        order = data.draw(st.lists(st.sampled_from(range(NODES)), max_size=5), label="syncs")
        for index in order:
            sync_like_an_application(nodes[index], f"n{index}")

    # When every node syncs until nothing is left to push
    sync_until_quiet(nodes)

    # Then every node holds exactly the server's rows, with no dangling reference
    expected = table_rows(server)
    for node in nodes:
        assert node.pending_operations() == 0
        assert table_rows(node.engine) == expected
        assert dangling_references(node.engine) == []
    assert dangling_references(server) == []


def edit_offline(nodes: list[SyncClient], data: st.DataObject) -> None:
    for node in nodes:
        edit(node.engine, data, most=5)


def edit(engine: sa.Engine, data: st.DataObject, most: int) -> None:
    with Session(engine) as session:
        for _ in range(data.draw(st.integers(0, most))):
            data.draw(st.sampled_from(OPERATIONS))(session, data)
            session.flush()
        session.commit()


def sync_until_quiet(nodes: list[SyncClient]) -> None:
    for _pass in range(2 * NODES):
        for index, node in enumerate(nodes):
            sync_like_an_application(node, f"n{index}")
        if all(node.pending_operations() == 0 for node in nodes):
            break
    for index, node in enumerate(nodes):  # the last pushers' changes reach everyone
        sync_like_an_application(node, f"n{index}")
