"""The broker connection cut under a client and under the worker (through a TCP proxy)."""

from __future__ import annotations

import contextlib
import dataclasses
import threading

import pytest

from dbsync_mq import BrokerUnavailable, PullRequired, SyncTimeout
from dbsync_mq.storage import schema
from tests.conftest import ThreadedWorker, write
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

PUBLISH_PUSH = b"\x04push"
"""A basic.publish (and its content header) to routing key / type "push"."""
CONFIRM = b"\x00\x3c\x00\x50"
"""A basic.ack method frame (class 60, method 80): the broker's publisher confirm."""


def _inflight(node) -> int:
    return len(inflight_ids(node))


# --- a client's connection ----------------------------------------------------------------


def test_a_push_cut_before_the_broker_got_it_stays_in_flight_and_a_later_sync_applies_it_once(
    make_node, worker, proxy, broker_url, probe, accepted, ledger, request
):
    # Given a node that reaches the broker through a proxy
    a = make_node("a", broker_url=proxy.url(broker_url))
    write(a.engine, City(name="cut-before"))

    # When the connection is cut as the push is published
    proxy.cut_on_upstream(PUBLISH_PUSH)
    with pytest.raises(BrokerUnavailable):
        a.push()
    ledger.fault(request.node.name)

    # Then nothing reached the server, the push is remembered, and local work goes on
    assert proxy.triggered.is_set()
    assert probe.count(schema.versions) == 0
    assert _inflight(a) == 1
    write(a.engine, City(name="while-offline"))
    with pytest.raises(BrokerUnavailable):
        a.sync()

    # And once the network is back a sync applies each write once
    proxy.restore()
    converge([a])
    assert_converged(probe, [a])
    names = ["cut-before", "while-offline"]
    assert_exactly_once(probe, ledger, request.node.name, names, accepted)


def test_a_push_whose_confirm_is_cut_is_applied_once_when_the_node_resends_it(
    make_node, worker, proxy, broker_url, probe, accepted, ledger, request
):
    # Given a node behind a proxy that loses the broker's confirm of its push
    a = make_node("a", broker_url=proxy.url(broker_url))
    b = make_node("b")
    handled = AtStage("never")
    worker.add_stage_hook(handled)
    write(a.engine, City(name="confirmed-unheard"))
    proxy.cut_on_downstream(CONFIRM)

    # When the node pushes, the broker has the push but the node hears nothing
    with pytest.raises(BrokerUnavailable):
        a.push()
    ledger.fault(request.node.name)
    assert proxy.triggered.is_set()
    wait_until(lambda: probe.count(schema.versions) == 1, 10, "the worker to apply the push")
    [request_id] = inflight_ids(a)

    # Then the resent push (same request id) is answered from the stored reply
    proxy.restore()
    converge([a, b])
    assert handled.seen.count(("before-transaction", request_id)) == 2, "no resend"
    assert_converged(probe, [a, b])
    assert_exactly_once(probe, ledger, request.node.name, ["confirmed-unheard"], accepted)


def test_a_connection_cut_while_the_node_waits_for_its_reply_loses_nothing(
    make_node, worker, proxy, broker_url, probe, accepted, ledger, request
):
    # Given a worker that holds the push until the node's connection is cut
    gate = AtStage("before-transaction", hold=True)
    worker.add_stage_hook(gate)
    a = make_node("a", broker_url=proxy.url(broker_url))
    write(a.engine, City(name="waited"))
    errors: list[Exception] = []

    def push() -> None:
        try:
            a.push()
        except (BrokerUnavailable, SyncTimeout) as exc:
            errors.append(exc)

    pusher = threading.Thread(target=push)
    pusher.start()
    assert gate.reached.wait(10)

    # When the connection is cut while the node waits, then the worker answers
    proxy.cut()
    ledger.fault(request.node.name)
    pusher.join(10)
    gate.release.set()
    assert [type(e) for e in errors] == [BrokerUnavailable]
    wait_until(lambda: probe.count(schema.versions) == 1, 10, "the worker to apply the push")

    # Then the reply waiting in the node's queue settles the push when it is back
    proxy.restore()
    converge([a])
    assert_converged(probe, [a])
    assert_exactly_once(probe, ledger, request.node.name, ["waited"], accepted)


# --- the worker's connection --------------------------------------------------------------


@pytest.fixture
def proxied_worker(worker_config, proxy, broker_url):
    runner = ThreadedWorker(dataclasses.replace(worker_config, broker_url=proxy.url(broker_url)))
    yield runner
    runner.stop()


def _push_refused_or_not(node) -> None:
    """Push; a refusal because another node pushed first is an answer too."""
    with contextlib.suppress(PullRequired):
        node.push()


def _restore_when_refused(proxy, during_outage=None) -> threading.Thread:
    """Once the worker has tried to reconnect and been refused, run ``during_outage``
    (if given) and restore the proxy."""

    def restore() -> None:
        if proxy.refused.wait(15):
            if during_outage is not None:
                during_outage()
            proxy.restore()

    thread = threading.Thread(target=restore, daemon=True)
    thread.start()
    return thread


def test_the_worker_reconnects_by_itself_after_its_idle_connection_is_cut(
    make_node, proxied_worker, proxy, probe, accepted, ledger, request
):
    # Given a worker consuming through a proxy
    worker = proxied_worker.start()
    a = make_node("a")
    connections = proxy.connections

    # When its connection is cut and new connections are refused for a while
    proxy.cut()
    ledger.fault(request.node.name)
    assert proxy.refused.wait(10), "the worker never tried to reconnect"
    assert not worker.connected.is_set()
    proxy.restore()

    # Then it reconnects without a restart and serves pushes again
    assert worker.connected.wait(15)
    assert proxy.connections > connections
    write(a.engine, City(name="after-reconnect"))
    assert a.sync().pushed == 1
    assert_exactly_once(probe, ledger, request.node.name, ["after-reconnect"], accepted)


@pytest.mark.parametrize("stage", ["before-transaction", "after-commit", "after-reply"])
def test_a_push_in_hand_when_the_worker_connection_is_cut_is_answered_after_it_reconnects(
    stage, make_node, proxied_worker, proxy, probe, accepted, ledger, request
):
    # Given a worker whose broker connection is cut while it handles a push
    worker = proxied_worker.start()
    hook = AtStage(stage, proxy.cut)
    worker.add_stage_hook(hook)
    a, b = make_node("a", timeout=20), make_node("b", timeout=20)
    write(a.engine, City(name="in-hand"))
    write(b.engine, City(name="during-outage"))
    b_pushes = threading.Thread(target=_push_refused_or_not, args=(b,))

    def push_from_b() -> None:
        b_pushes.start()
        wait_until(lambda: _inflight(b) == 1, 10, "node b to publish")

    restorer = _restore_when_refused(proxy, push_from_b)

    # When node a pushes, and node b pushes while the worker is disconnected
    result = a.push()
    ledger.fault(request.node.name)
    restorer.join(15)
    b_pushes.join(20)

    # Then the worker reconnected by itself and was handed the unsettled push again
    [in_hand] = hook.fired
    assert worker.connected.wait(15)
    wait_until(lambda: hook.seen.count(("before-transaction", in_hand)) >= 2, 15, "the redelivery")
    # and both pushes were answered and applied once
    assert result.version in (1, 2)
    assert _inflight(b) == 0
    converge([a, b])
    assert_converged(probe, [a, b])
    names = ["in-hand", "during-outage"]
    assert_exactly_once(probe, ledger, request.node.name, names, accepted)
