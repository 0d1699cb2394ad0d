"""Every feature the seed library offered, against the real broker and databases."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

import dbsync_mq
from dbsync_mq import (
    ConfigurationError,
    PendingChanges,
    PushRejected,
    ReplyRejected,
    commands,
)
from dbsync_mq.channel import NodeChannel
from dbsync_mq.config import ServerSettings
from dbsync_mq.core import messages
from dbsync_mq.core.changeset import encode_changes
from dbsync_mq.core.model import INSERT, Change
from dbsync_mq.storage import local, schema
from tests.conftest import table_rows, write
from tests.models import City, Country, Person, Reading, Untracked

pytestmark = pytest.mark.broker


def server_engine(server_url: str) -> sa.Engine:
    return sa.create_engine(server_url)


def channel_of(node) -> NodeChannel:
    with node.engine.connect() as connection:
        identity = local.load_identity(connection)
    return NodeChannel(node._broker, identity)


# --- repair ---------------------------------------------------------------------------


@pytest.fixture
def server_settings() -> ServerSettings:
    return ServerSettings(repair_chunk_rows=7)


def test_repair_replaces_local_tables_with_the_servers_in_chunks(make_node, worker, server_url):
    # Given a server with 50 cities and a node whose tables went astray behind the ORM's back
    source, node = make_node("source"), make_node("stale")
    write(source.engine, *(City(name=f"c{i}", population=i) for i in range(50)))
    source.sync()
    node.sync()
    with node.engine.begin() as connection:
        connection.exec_driver_sql("DELETE FROM city WHERE id > 40")
        connection.exec_driver_sql("UPDATE city SET name = 'corrupt' WHERE id = 1")

    # When it repairs
    progress: list[tuple[str, int, int]] = []
    result = node.repair(progress=lambda *report: progress.append(report))

    # Then its tables equal the server's, received in several chunks, at the server's version
    engine = server_engine(server_url)
    assert table_rows(node.engine) == table_rows(engine)
    engine.dispose()
    assert result.rows == 50
    assert result.version == node.version == 1
    assert progress[-1] == ("city", 50, 50)
    assert len([p for p in progress if p[0] == "city"]) == 8  # ceil(50 / 7)

    # And the node syncs on from there
    write(node.engine, City(name="after"))
    assert node.sync().pushed == 1


def test_repair_refuses_to_discard_unpushed_changes_unless_forced(make_node, worker):
    node = make_node("a")
    write(node.engine, City(name="unpushed"), Reading(value=2.5))
    with pytest.raises(PendingChanges) as refused:
        node.repair()
    assert sorted((table, command) for table, _key, command in refused.value.operations) == [
        ("city", "i"),
        ("reading", "i"),
    ]
    assert node.pending_operations() == 2

    result = node.repair(force=True)
    assert result.discarded == 2
    assert node.pending_operations() == 0
    assert table_rows(node.engine)["city"] == []
    # push-only rows are not the server's to replace
    assert len(table_rows(node.engine, (Reading,))["reading"]) == 1


# --- query ------------------------------------------------------------------------------


def test_query_reads_server_rows_as_detached_objects(make_node, worker):
    writer, reader = make_node("w"), make_node("r")
    write(
        writer.engine,
        *(
            City(name=n, population=p)
            for n, p in [("Lima", 1), ("Quito", 2), ("Lima", 3), ("Cusco", 4)]
        ),
    )
    writer.sync()

    limas = reader.query(City, name="Lima")
    assert [(c.name, c.population) for c in limas] == [("Lima", 1), ("Lima", 3)]
    assert all(sa.inspect(city).detached for city in limas)
    assert table_rows(reader.engine)["city"] == []  # nothing was written locally

    page = reader.query(City, limit=2, offset=1)
    assert [c.name for c in page] == ["Quito", "Lima"]


def test_query_errors_are_clear(make_node, worker):
    node = make_node("a")
    with pytest.raises(ConfigurationError, match="no attributes"):
        node.query(City, nmae="typo")
    with pytest.raises(ConfigurationError, match="not tracked"):
        node.query(Untracked)
    with pytest.raises(ConfigurationError, match="push-only"):
        node.query(Reading)
    # the server checks too, whatever a node sends
    with pytest.raises(ReplyRejected, match="unknown-column"):
        channel_of(node).call_once(
            messages.QUERY,
            {"table": "city", "filters": {"nope": 1}, "limit": None, "offset": 0},
            None,
        )


# --- directions -------------------------------------------------------------------------


def test_pull_only_models_are_not_pushed_and_are_refused_by_the_server(
    make_node, worker, server_url
):
    node = make_node("a")
    write(node.engine, Country(name="local only"))
    assert node.pending_operations() == 0  # never logged

    change = Change("country", 99, INSERT, 1, {"id": 99, "name": "forged"})
    body = {"base": node.version, "changes": encode_changes([change])}
    with pytest.raises(PushRejected, match="direction-refused"):
        channel_of(node).call_once(messages.PUSH, body, None)
    engine = server_engine(server_url)
    assert table_rows(engine, (Country,))["country"] == []
    engine.dispose()


def test_push_only_models_reach_the_server_but_never_other_nodes(make_node, worker, server_url):
    sender, other = make_node("sender"), make_node("other")
    write(sender.engine, Reading(value=21.5), City(name="shared"))
    sender.sync()
    engine = server_engine(server_url)
    assert [row[1] for row in table_rows(engine, (Reading,))["reading"]] == [21.5]
    engine.dispose()

    other.sync()
    other.repair()
    assert table_rows(other.engine, (Reading,))["reading"] == []
    assert [row[1] for row in table_rows(other.engine)["city"]] == ["shared"]


# --- hooks and extra data -----------------------------------------------------------------


def test_before_push_hook_refuses_with_its_reason_and_nothing_is_written(
    make_node, worker, server_url
):
    seen = []

    def tenant_check(context):
        seen.append((context.node.node_id, dict(context.extra_data), len(context.changes)))
        if context.extra_data.get("tenant") != "acme":
            raise PermissionError("wrong tenant")

    worker.server.hooks.listen("before_push", tenant_check)
    node = make_node("a")
    write(node.engine, City(name="guarded"))

    with pytest.raises(PushRejected, match="wrong tenant"):
        node.push(extra_data={"tenant": "other"})
    engine = server_engine(server_url)
    assert table_rows(engine)["city"] == []
    assert node.pending_operations() == 1

    assert node.push(extra_data={"tenant": "acme"}).operations == 1
    assert seen == [(node.node_id, {"tenant": "other"}, 1), (node.node_id, {"tenant": "acme"}, 1)]
    assert [row[1] for row in table_rows(engine)["city"]] == ["guarded"]
    engine.dispose()


def test_after_push_hook_sees_the_version_and_writes_in_the_same_transaction(
    make_node, worker, server_url
):
    def audit(context):
        context.session.execute(
            sa.text("INSERT INTO untracked (id, name) VALUES (:id, :name)"),
            {"id": context.version, "name": f"push by {context.node.node_id}"},
        )

    worker.server.hooks.listen("after_push", audit)
    engine = server_engine(server_url)
    Untracked.__table__.create(engine)
    node = make_node("a")
    write(node.engine, City(name="audited"))
    node.push()
    with engine.connect() as connection:
        rows = connection.execute(sa.select(Untracked.__table__)).all()
    engine.dispose()
    assert [tuple(row) for row in rows] == [(1, f"push by {node.node_id}")]


def test_before_request_hook_sees_extra_data_of_every_call(make_node, worker):
    calls = []
    worker.server.hooks.listen(
        "before_request", lambda ctx: calls.append((ctx.request.kind, dict(ctx.extra_data)))
    )
    node = make_node("a")
    node.pull(extra_data={"session": "s1"})
    node.query(City, extra_data={"session": "s2"})
    node.ping(extra_data={"session": "s3"})
    node.repair(extra_data={"session": "s4"})
    assert calls == [
        ("pull", {"session": "s1"}),
        ("query", {"session": "s2"}),
        ("ping", {"session": "s3"}),
        ("repair", {"session": "s4"}),
    ]


def test_before_register_hook_decides_and_a_refused_token_stays_usable(
    make_node, worker, server_url
):
    def invitation_required(context):
        if context.extra_data.get("invitation") != "yes":
            raise PermissionError("an invitation is required")

    worker.server.hooks.listen("before_register", invitation_required)
    node = make_node("a", register=False)
    token = commands.enroll(server_url, user_id="42")
    with pytest.raises(ReplyRejected, match="an invitation is required"):
        node.register(token)
    node_id = node.register(token, extra_data={"invitation": "yes"})

    engine = server_engine(server_url)
    with engine.connect() as connection:
        user = connection.execute(
            sa.select(schema.nodes.c.user_id).where(schema.nodes.c.id == node_id)
        ).scalar_one()
    engine.dispose()
    assert user == "42"


# --- registration policy ------------------------------------------------------------------


def test_re_registering_a_lost_device_disables_the_old_node(make_node, worker, server_url):
    old = make_node("old")
    replacement = make_node("new", register=False)
    replacement.register(commands.enroll(server_url, replaces_node=old.node_id))

    with pytest.raises(ReplyRejected, match="node-disabled"):
        old.pull()
    assert replacement.sync().version == 0


def test_a_used_token_cannot_register_twice(make_node, worker, server_url):
    token = commands.enroll(server_url)
    make_node("a", register=False).register(token)
    with pytest.raises(ReplyRejected, match="invalid-token"):
        make_node("b", register=False).register(token)


# --- local maintenance, ping ----------------------------------------------------------------


def test_writes_inside_untracked_are_neither_logged_nor_pushed(make_node, worker):
    node = make_node("a")
    with Session(node.engine) as session, dbsync_mq.untracked(session):
        session.add(City(name="local cache"))
        session.commit()
    with Session(node.engine) as session:
        session.add(City(name="synced"))
        session.commit()
    assert node.pending_operations() == 1
    assert node.push().operations == 1


def test_ping_reports_how_far_behind_the_node_is(make_node, worker):
    writer, reader = make_node("w"), make_node("r")
    write(writer.engine, City(name="x"))
    writer.sync()
    write(writer.engine, Person(name="y"))
    writer.sync()
    write(reader.engine, City(name="z"))

    ping = reader.ping()
    assert (ping.server_version, ping.local_version, ping.behind) == (2, 0, 2)
    assert ping.pending_operations == 1
    assert ping.round_trip_seconds > 0
