"""The property everything is tested against: nodes that edit offline and sync converge,
and lose nothing on the way.

Each generated scenario: three nodes, each with its own conflict policy (a named
one or a callable), and an administrator writing to the server database
directly, make random inserts, updates and deletes while offline, in rounds,
syncing (or only pushing) in a random order between rounds. Two workloads run
side by side:

- cities, persons, tags (a unique column), an association table, a
  self-referencing tree and UUID-keyed notes;
- purchases (``tests/integration/purchases.py``): parents inserted with
  children and grandchildren, some with unique columns, under integer keys that
  collide between nodes (they all start from the same state, and the tables
  reach the push parents first or children first); association rows with a
  composite key; UUID-keyed receipts (now and then the same UUID on two
  writers); concurrent changes of different columns of one row; moves of
  children between parents; deletes of whole subtrees.

Afterwards every node syncs until nothing is left to push. Then every node's
tables must equal the server's, row for row, with no dangling reference. Equal
is not enough: the server's purchases must also match what each writer wrote.
Every insert carries values no other write uses (markers, tokens); a journal
records each write as its writer makes it; rows are matched by marker (their
keys may have moved), tags by their purchase's marker and label, receipts by
UUID, and references by the marker of the row they point at. The oracle's
rules (``Journal.check``):

1. Every row on the server was inserted by some writer, and none is there twice.
2. A row nobody deleted is there.
3. A row somebody deleted may be there or not (a policy, or a dependency
   conflict, may undo a delete); if it is, each column holds a value some
   writer gave that column of that row.
4. Otherwise, per column: changed by no update, it holds the inserted value;
   changed by one writer only, that writer's last value (nobody else changed
   it, so no policy may take it away); changed by several writers, the last
   value of one of them (the policy chose). A row inserted by several writers
   (the same UUID or composite key) holds in each column the last value of one
   of its inserters or updaters.

Unique clashes of the first workload are settled the way an application would:
by renaming or deleting its own row and syncing again; the purchases' unique
values are never shared, so they never clash.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy.orm import Session

import dbsync_mq.server
from dbsync_mq import ConflictCase, PullRequired, SyncClient, UniqueConstraintError
from dbsync_mq.storage import local, schema
from tests.conftest import table_rows
from tests.integration import purchases
from tests.integration.purchases import Author, Journal
from tests.models import (
    PURCHASES,
    SYNCED,
    Category,
    City,
    CityTag,
    Note,
    Person,
    Tag,
)

pytestmark = [pytest.mark.broker, pytest.mark.slow]

EXAMPLES = int(os.environ.get("DBSYNC_CONVERGENCE_EXAMPLES", "100"))
"""Scenarios per server database: about 40 s each for SQLite and PostgreSQL."""
NODES = 3
NAMES = ["Lima", "Quito", "Cusco", "Tacna"]
LABELS = ["red", "green", "blue"]
COMPARED = (*SYNCED, *PURCHASES)


def server_wins_where_both_changed(case: ConflictCase) -> dict[str, Any] | None:
    """A callable policy: each side keeps the columns only it changed; the server
    decides the rest, and deletes."""
    if case.local is None or case.remote is None:
        return case.remote  # type: ignore[return-value]
    mine = case.local_changed - case.remote_changed
    return {**case.remote, **{column: case.local[column] for column in mine}}


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
    # Drawn, not random: a replay draws the same keys; now and then two writers draw one.
    key = uuid.UUID(int=data.draw(st.integers(1, 2**64)))
    if session.get(Note, key) is None:
        session.add(Note(id=key, text=data.draw(st.sampled_from(["a", "b", None]))))


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
            result = node.sync()
            for conflict in result.conflicts:
                event(f"conflict: {conflict.kind} on {conflict.table}")
            return
        except UniqueConstraintError as clash:
            with Session(node.engine) as session:
                for model, key, _columns in clash.entries:
                    assert model not in PURCHASES, f"{name}: unique values never shared clash"
                    row = session.get(model, key)
                    if model is Tag:
                        row.label = f"{row.label}-{name}{attempt}"
                    else:
                        session.delete(row)
                session.commit()
    raise AssertionError(f"{name} could not settle its unique clashes")


class TickingClock:
    """A clock shared by the nodes and the administrator that moves 1 ms per reading:
    the same scenario always gets stamps in the same order, so hypothesis can replay
    and shrink it."""

    def __init__(self) -> None:
        self.start = time.time()
        self.ticks = 0

    def reset(self) -> None:
        """Start again, past every stamp already issued (the clocks never step back)."""
        self.start = max(time.time(), self.start + self.ticks / 1000 + 1)
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
            column = table.autoincrement_column
            if table.name not in ("sync_requests", "sync_versions") and column is not None:
                connection.exec_driver_sql(
                    f"SELECT setval(pg_get_serial_sequence('{table.name}', '{column.name}'), "
                    "1, false)"
                )


def reset(server: sa.Engine, nodes: list[SyncClient], clock: TickingClock) -> None:
    """Empty the server and the nodes, keeping the nodes' identities (cheap fresh start)."""
    tables = [model.__table__ for model in COMPARED]  # type: ignore[attr-defined]
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
        **{
            f"{table}.purchase_id": f"SELECT purchase_id FROM {table} "
            "WHERE purchase_id NOT IN (SELECT id FROM purchase)"
            for table in ("purchase_line", "delivery", "purchase_tag", "receipt")
        },
        "parcel.line_id": "SELECT id FROM parcel "
        "WHERE line_id NOT IN (SELECT id FROM purchase_line)",
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
    clock = TickingClock()
    dbsync_mq.server.install(server, clock=clock)  # an admin writes on the server too
    nodes = [make_node(f"n{i}", clock=clock) for i in range(NODES)]
    yield server, nodes, clock
    dbsync_mq.server.uninstall(server)
    server.dispose()


@pytest.mark.timeout(900)  # a failure is shrunk for up to 5 minutes before it is reported
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
    journal = Journal()
    for node in nodes:
        node.conflict_policy = data.draw(st.sampled_from(POLICIES), label="policy")

    # Given rounds of offline edits on every node, synced in a random order
    for _round in range(data.draw(st.integers(1, 4), label="rounds")):
        for index, node in enumerate(nodes):
            edit(node.engine, data, f"n{index}", journal, most=5)
        edit(server, data, "admin", journal, most=3)
        kinds = st.sampled_from(["sync", "push", "pull"])
        calls = st.tuples(st.sampled_from(range(NODES)), kinds)
        for index, call in data.draw(st.lists(calls, max_size=6), label="syncs"):
            if call == "sync":
                sync_like_an_application(nodes[index], f"n{index}")
            elif call == "push":
                push_alone(nodes[index])
            else:
                pull_alone(nodes[index])

    # When every node syncs until nothing is left to push
    sync_until_quiet(nodes)

    # Then every node holds exactly the server's rows, with no dangling reference
    expected = table_rows(server, COMPARED)
    for node in nodes:
        assert node.pending_operations() == 0
        assert table_rows(node.engine, COMPARED) == expected
        assert dangling_references(node.engine) == []
    assert dangling_references(server) == []
    # And the server holds what every writer wrote, by the journal's rules
    assert journal.check(server) == []


def _unjournaled(operation: Operation) -> purchases.Write:
    def write(author: Author, data: st.DataObject) -> None:
        operation(author.session, data)

    write.__name__ = write.__qualname__ = operation.__name__
    return write


WRITES = [*map(_unjournaled, OPERATIONS), *purchases.WRITES]


def edit(engine: sa.Engine, data: st.DataObject, name: str, journal: Journal, most: int) -> None:
    """Up to ``most`` writes, by the writer ``name``, in one transaction."""
    with Session(engine) as session:
        author = Author(name, journal, session)
        for _ in range(data.draw(st.integers(0, most))):
            data.draw(st.sampled_from(WRITES))(author, data)
            session.flush()
        session.commit()


def push_alone(node: SyncClient) -> None:
    """Push without pulling: a push behind the server lands on top of what the node has
    not merged yet, if it can, and the node merges its own push later with the rest."""
    with contextlib.suppress(PullRequired):
        node.push()


def pull_alone(node: SyncClient) -> None:
    """Pull without pushing: the merge meets the node's unpushed log as it is, rows it
    inserted and deleted since its last push included."""
    with contextlib.suppress(UniqueConstraintError):  # the next sync settles it
        node.pull()


def sync_until_quiet(nodes: list[SyncClient]) -> None:
    for _pass in range(2 * NODES):
        for index, node in enumerate(nodes):
            sync_like_an_application(node, f"n{index}")
        if all(node.pending_operations() == 0 for node in nodes):
            break
    for index, node in enumerate(nodes):  # the last pushers' changes reach everyone
        sync_like_an_application(node, f"n{index}")
