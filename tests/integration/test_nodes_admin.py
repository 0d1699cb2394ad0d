"""The operator's view of nodes: their last request and merged version as the workers
record them, the filters of ``nodes list``, ``nodes forget``, and the columns ``init``
adds to a server database made by an older release."""

from __future__ import annotations

import pika
import pika.exceptions
import pytest
import sqlalchemy as sa

from dbsync_mq import ReplyRejected, commands
from dbsync_mq.errors import ConfigurationError
from dbsync_mq.storage import schema
from dbsync_mq.transport.topology import Topology
from tests.conftest import MODELS, write
from tests.models import City

pytestmark = pytest.mark.broker


def set_user(server_url: str, node_id: int, user_id: str) -> None:
    engine = sa.create_engine(server_url)
    with engine.begin() as connection:
        connection.execute(
            schema.nodes.update().where(schema.nodes.c.id == node_id).values(user_id=user_id)
        )
    engine.dispose()


def test_each_node_s_last_request_and_merged_version_are_recorded_and_give_its_lag(
    make_node, worker, server_url
):
    # Given node a that pushed twice then pulled, and node b that never synced
    a, b = make_node("a"), make_node("b")
    write(a.engine, City(name="first"))
    a.push()
    write(a.engine, City(name="second"))
    a.push()
    worker.activity.flush()
    after_pushes = {node.node_id: node for node in commands.list_nodes(server_url).nodes}
    a.pull()

    # When the worker writes its notes
    worker.activity.flush()

    # Then a's last push told it had merged version 1; its pull, version 2
    nodes = {node.node_id: node for node in commands.list_nodes(server_url).nodes}
    assert after_pushes[a.node_id].merged_version == 1
    assert (nodes[a.node_id].merged_version, nodes[a.node_id].lag) == (2, 0)
    assert nodes[a.node_id].last_seen_at is not None
    assert nodes[a.node_id].last_seen_at >= after_pushes[a.node_id].last_seen_at
    # And b counts as having merged nothing
    assert (nodes[b.node_id].merged_version, nodes[b.node_id].lag) == (None, 2)
    assert nodes[b.node_id].last_seen_at is None


def test_nodes_list_filters_by_user_state_and_lag_the_most_behind_first(
    make_node, worker, server_url
):
    # Given three nodes: a up to date, b behind and disabled, c behind and of user u1
    a, b, c = make_node("a"), make_node("b"), make_node("c")
    write(a.engine, City(name="only"))
    a.push()
    a.pull()
    worker.activity.flush()
    set_user(server_url, c.node_id, "u1")
    commands.set_node_enabled(server_url, b.node_id, False)

    def listed(**filters):
        return [node.node_id for node in commands.list_nodes(server_url, **filters).nodes]

    # Then each filter keeps what it says
    assert listed() == [b.node_id, c.node_id, a.node_id]
    assert listed(user_id="u1") == [c.node_id]
    assert listed(enabled=False) == [b.node_id]
    assert listed(enabled=True, min_lag=1) == [c.node_id]
    assert listed(limit=1) == [b.node_id]
    assert commands.list_nodes(server_url, limit=1).total == 3


def _queue_exists(broker_url: str, name: str) -> bool:
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        connection.channel().queue_declare(name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return False
        raise
    finally:
        if connection.is_open:
            connection.close()
    return True


def test_a_forgotten_node_is_disabled_for_good_and_loses_its_reply_queue(
    make_node, worker, server_url, broker_url, namespace
):
    # Given a node with its reply queue, and another node
    gone, other = make_node("gone"), make_node("other")
    queue = Topology(namespace).node_queue(gone.node_id)
    assert _queue_exists(broker_url, queue)

    # When it is forgotten
    done = commands.forget_node(server_url, broker_url, namespace, gone.node_id)

    # Then its queue is gone, it is disabled and marked, and the other node is untouched
    assert done.queue_deleted
    assert not _queue_exists(broker_url, queue)
    shown = commands.show_node(server_url, gone.node_id, namespace)
    assert shown is not None
    assert not shown.state.enabled
    assert shown.state.forgotten_at is not None
    assert commands.list_nodes(server_url, enabled=True).nodes[0].node_id == other.node_id
    # And it cannot be enabled again, nor be served
    with pytest.raises(ConfigurationError, match="forgotten"):
        commands.set_node_enabled(server_url, gone.node_id, True)
    with pytest.raises(ReplyRejected) as refused:
        gone.ping()
    assert refused.value.code == "node-disabled"


def test_forgetting_an_unknown_node_is_an_error(worker_config, server_url, broker_url, namespace):
    with pytest.raises(ConfigurationError, match="no node 42"):
        commands.forget_node(server_url, broker_url, namespace, 42)


def test_init_adds_the_node_columns_missing_from_an_older_server_database(server_url):
    # Given a server database whose sync_nodes table was created by an older release
    engine = sa.create_engine(server_url)
    older = sa.MetaData()
    sa.Table(
        "sync_nodes",
        older,
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("public_key", sa.LargeBinary, nullable=False),
        sa.Column("user_id", sa.String(128)),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("registered_at", sa.DateTime, nullable=False),
    )
    older.create_all(engine)

    # When init runs
    commands.init(server_url, MODELS)

    # Then the new columns exist and the node listing works
    columns = {column["name"] for column in sa.inspect(engine).get_columns("sync_nodes")}
    engine.dispose()
    assert {"last_seen_at", "merged_version", "forgotten_at"} <= columns
    assert commands.list_nodes(server_url).total == 0
