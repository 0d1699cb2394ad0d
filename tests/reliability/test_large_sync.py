"""200,000 operations pushed by one node and pulled by another, in bounded memory.

The node runs in processes of its own and the worker too, so that the peak
memory of each (``VmHWM``) is theirs alone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from tests.models import City
from tests.reliability.node_process import peak_rss_mib

pytestmark = [pytest.mark.broker, pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
OPERATIONS = 200_000
RSS_LIMIT_MIB = 300


def _node(node, broker_url: str, action: str) -> dict:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "tests.reliability.node_process",
            str(node.engine.url.database),
            broker_url,
            node.topology.namespace,
            action,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "DBSYNC_TEST_NODE_TIMEOUT": "300"},
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.splitlines()[-1])


def test_a_push_and_a_pull_of_200_000_operations_stay_under_300_mib(
    make_node, worker_process, broker_url, probe
):
    # Given a worker process, and a node holding 200,000 new rows
    worker_process.start()
    a, b = make_node("a"), make_node("b")
    with Session(a.engine) as session:
        session.execute(
            sa.insert(City), [{"name": f"c{i}", "population": i} for i in range(OPERATIONS)]
        )
        session.commit()
    assert a.pending_operations() == OPERATIONS
    a.close()
    b.close()

    # When the node pushes them all, and another node pulls them all, each in its process
    pushed = _node(a, broker_url, "sync")
    pulled = _node(b, broker_url, "pull")

    # Then every row arrived once, as one version
    assert pushed["pushed"] == OPERATIONS
    assert pulled["pulled"] == OPERATIONS
    assert probe.count(City.__table__) == OPERATIONS
    assert probe.head() == 1

    # And no process went past the memory bound
    peaks = {
        "pushing node": pushed["rss_mib"],
        "pulling node": pulled["rss_mib"],
        "worker": peak_rss_mib(worker_process.process.pid),
    }
    assert max(peaks.values()) < RSS_LIMIT_MIB, peaks
