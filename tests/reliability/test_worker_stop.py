"""A warm stop's edge: a delivery the handler takes at the very moment the stop begins.

The connection thread waits for the handler to be idle before it closes. A handler
that took a delivery just before the stop, but had not yet said it was busy, must not
start on it after the connection closed: it would commit a push it can no longer
acknowledge (the broker would redeliver it, to be answered from the stored reply).
"""

from __future__ import annotations

import queue
import threading
from typing import Any

import pytest

from dbsync_mq.transport.topology import Topology
from tests.e2e.operations import city, forge_of
from tests.reliability.conftest import wait_until
from tests.security.conftest import Wire

pytestmark = pytest.mark.broker


def test_a_delivery_taken_as_the_stop_begins_goes_back_to_its_queue_uncommitted(
    make_node, worker_runner, broker_url, namespace, probe
):
    # Given a worker whose handler takes the next delivery just as a stop begins: the
    # connection is closed by the time the handler could start on it
    worker = worker_runner.start()
    forge = forge_of(make_node("a"))
    deliveries: queue.Queue[Any] = worker._deliveries
    take = deliveries.get
    waiting = threading.Event()

    def take_as_the_stop_begins(*args: Any, **kwargs: Any) -> Any:
        waiting.set()
        delivery = take(*args, **kwargs)
        worker.stop()
        wait_until(lambda: not worker.connected.is_set(), 30, "the connection to close")
        return delivery

    deliveries.get = take_as_the_stop_begins  # type: ignore[method-assign]
    assert waiting.wait(10), "the handler never waited for a delivery"
    wire = Wire(broker_url, namespace, b"")

    # When a push arrives
    try:
        wire.publish(forge.push([city(1, "late")], base=0))
        assert worker_runner.thread is not None
        worker_runner.thread.join(30)
        assert not worker_runner.thread.is_alive()

        # Then it was not applied, and it waits in its queue for the next worker
        assert probe.head() == 0
        assert wire.depth(Topology(namespace).request_queue("push")) == 1
    finally:
        wire.close()
