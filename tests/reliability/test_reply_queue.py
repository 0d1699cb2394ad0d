"""A node's reply queue deleted, or expired while the node was offline."""

from __future__ import annotations

import pika
import pika.exceptions
import pytest

from dbsync_mq import SyncTimeout, commands
from dbsync_mq.transport.node import BrokerClient
from dbsync_mq.transport.topology import Topology
from tests.conftest import write
from tests.models import City
from tests.reliability.conftest import (
    AtStage,
    assert_converged,
    assert_exactly_once,
    converge,
    inflight_ids,
    wait_until,
)

pytestmark = pytest.mark.broker

SHORT_EXPIRY_MS = 300
"""x-expires of the reply queue in the expiry test: gone soon after the node leaves."""


def _queue_exists(broker_url: str, queue: str) -> bool:
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        connection.channel().queue_declare(queue, passive=True)
        return True
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code != 404:
            raise
        return False
    finally:
        if connection.is_open:
            connection.close()


def _delete_queue(broker_url: str, queue: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        connection.channel().queue_delete(queue)
    finally:
        connection.close()


def _node_with_short_lived_queue(make_node, broker_url, namespace, server_url):
    """A node whose reply queue expires after ``SHORT_EXPIRY_MS`` without a consumer.

    ``SyncClient`` takes no ``Topology``, so the test swaps in a broker client built
    with one (reported: the public API lacks a way to set the queue expiry).
    """
    node = make_node("a", register=False, timeout=10)
    node._broker = BrokerClient(
        broker_url, Topology(namespace, node_queue_expiry_ms=SHORT_EXPIRY_MS)
    )
    node.register(commands.enroll(server_url))
    return node


@pytest.mark.parametrize("loss", ["deleted", "expired"])
def test_a_reply_lost_with_the_node_queue_is_recovered_by_the_next_sync(
    loss,
    make_node,
    worker_runner,
    broker_url,
    namespace,
    server_url,
    node_ids,
    probe,
    accepted,
    ledger,
    request,
):
    # Given a node whose push was published while no worker ran
    worker_runner.start()
    if loss == "expired":
        a = _node_with_short_lived_queue(make_node, broker_url, namespace, server_url)
        node_ids.append(a.node_id)
    else:
        a = make_node("a")
    b = make_node("b")
    queue = Topology(namespace).node_queue(a.node_id)
    worker_runner.stop()
    write(a.engine, City(name="reply-lost"))
    a.timeout = 0.5
    with pytest.raises(SyncTimeout):
        a.push()
    a.close()
    [request_id] = inflight_ids(a)

    # When the worker applies it and the reply is lost with the node's queue
    handled = AtStage("never")
    worker_runner.start().add_stage_hook(handled)
    wait_until(lambda: probe.head() == 1, 15, "the push to be applied")
    handled_before = len(handled.seen)
    if loss == "deleted":
        _delete_queue(broker_url, queue)
    # (a passive declare renews a queue's lease: probe less often than it expires)
    wait_until(
        lambda: not _queue_exists(broker_url, queue),
        15,
        f"the queue to be {loss}",
        interval=3 * SHORT_EXPIRY_MS / 1000,
    )
    ledger.fault(request.node.name)

    # Then the next sync re-creates the queue, resends the push and completes
    a.timeout = 10
    assert a.sync().version == 1
    assert _queue_exists(broker_url, queue)
    assert ("before-transaction", request_id) in handled.seen[handled_before:], "no resend"
    converge([a, b])
    assert_converged(probe, [a, b])
    assert_exactly_once(probe, ledger, request.node.name, ["reply-lost"], accepted)


def test_a_node_whose_queue_was_deleted_while_offline_syncs_as_before(
    make_node, worker, broker_url, namespace, probe, accepted, ledger, request
):
    # Given two nodes, one of which lost its reply queue while it was offline
    a, b = make_node("a"), make_node("b")
    queue = Topology(namespace).node_queue(a.node_id)
    write(b.engine, City(name="from-b"))
    b.sync()
    a.close()
    _delete_queue(broker_url, queue)
    ledger.fault(request.node.name)
    assert not _queue_exists(broker_url, queue)

    # When it writes and syncs, then it pulls and pushes as if nothing happened
    write(a.engine, City(name="from-a"))
    a.sync()
    assert _queue_exists(broker_url, queue)
    converge([a, b])
    assert_converged(probe, [a, b])
    assert_exactly_once(probe, ledger, request.node.name, ["from-a", "from-b"], accepted)
