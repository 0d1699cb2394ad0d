"""The background agent over minutes: a worker away for one, and a cut connection.

Apart from the quicker agent tests (and from the soak) so that the suite's processes
share them out.
"""

from __future__ import annotations

import threading
import time

import pytest

from tests.conftest import write
from tests.models import City
from tests.reliability.conftest import settled, wait_until

pytestmark = pytest.mark.broker


WORKER_AWAY_SECONDS = 60.0


@pytest.mark.slow
def test_agents_outlive_a_worker_stopped_for_a_minute_and_a_cut_connection(
    make_node, worker_runner, proxy, broker_url, probe, ledger, request
):
    # Given two nodes syncing in the background, one of them through a proxy
    worker_runner.start()
    a = make_node("a", broker_url=proxy.url(broker_url))
    b = make_node("b")
    a.start(retry_max=5)
    b.start(retry_max=5)
    try:
        write(a.engine, City(name="a-before"))
        write(b.engine, City(name="b-before"))
        wait_until(lambda: len(probe.column(City, "name")) == 2, 15, "the first pushes")

        # When the worker is away for a minute while both keep writing
        worker_runner.stop()
        ledger.fault(request.node.name)
        away_until = time.monotonic() + WORKER_AWAY_SECONDS
        round_ = 0
        while time.monotonic() < away_until:
            write(a.engine, City(name=f"a-{round_}"))
            write(b.engine, City(name=f"b-{round_}"))
            round_ += 1
            threading.Event().wait(WORKER_AWAY_SECONDS / 6)  # the outage's own pace
        assert a.status.state in ("error", "syncing")

        # And node A's connection is cut as the worker comes back
        proxy.cut()
        ledger.fault(request.node.name)
        worker_runner.start()
        proxy.restore()

        # Then both end converged, with every write on the server once and no error left
        wait_until(lambda: settled([a, b], probe), 90, "the nodes to converge")
        names = ["a-before", "b-before"] + [f"{n}-{i}" for n in "ab" for i in range(round_)]
        assert sorted(probe.column(City, "name")) == sorted(names)
        wait_until(
            lambda: all(n.status.state == "online" and n.status.last_error is None for n in (a, b)),
            15,
            "both agents to report online",
        )
    finally:
        a.stop()
        b.stop()
