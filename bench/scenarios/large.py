"""A push of many operations from one node and their pull into another: peak memory.

The worker runs as a process of its own (``dbsync-mq worker``) on PostgreSQL; each
node runs its call in a fresh subprocess (``bench.pull_child``), so that every peak
RSS (``VmHWM``) is one process's alone. The baseline of each row is the plain
``sqlite3`` ``executemany`` of the same rows, in a subprocess too.
"""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from sqlalchemy.orm import Session

from bench.harness import Measurement, Run, scenario, value_at_most
from bench.models import Item, item_rows
from bench.scenarios.pull import RSS_LIMIT_MIB, _child
from bench.servers import WorkerProcess, new_client, new_server
from dbsync_mq import SyncClient


def _peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def _node_file(client: SyncClient) -> str:
    """The node's database file, closed so that a subprocess can take it."""
    path = str(client.engine.url.database)
    client.close()
    client.engine.dispose()
    return path


@scenario("large")
def large(run: Run) -> list[Measurement]:
    """A push and a pull of 200,000 operations (20,000 with --quick): peak RSS of each side."""
    size = run.pick(20_000, 200_000)
    setup = new_server(run.services, "postgresql")
    worker = WorkerProcess(setup)
    worker.start()
    try:
        pusher = new_client(setup, "large-push", timeout=600)
        puller = new_client(setup, "large-pull", timeout=600)
        with Session(pusher.engine) as session:
            session.execute(sa.insert(Item), item_rows(1, size))
            session.commit()
        pushed = _child("push", _node_file(pusher), setup.services.broker_url, setup.namespace)
        if pushed["changes"] != size:
            raise RuntimeError(f"pushed {pushed['changes']} operations, expected {size}")
        worker_after_push = max(_peak_rss_mib(pid) for pid in worker.pids())
        pulled = _child("ours", _node_file(puller), setup.services.broker_url, setup.namespace)
        if pulled["changes"] != size:
            raise RuntimeError(f"pulled {pulled['changes']} changes, expected {size}")
        worker_peak = max(_peak_rss_mib(pid) for pid in worker.pids())
        base = _child("baseline", str(run.services.path("large-plain.db")), str(size))
    finally:
        worker.stop()
    rows = [
        ("node pushing", pushed, f"{pushed['seconds']:.1f} s for the sync"),
        ("node pulling", pulled, f"{pulled['seconds']:.1f} s for the pull"),
    ]
    measurements = [
        Measurement(
            f"{size:,} operations: peak RSS of the {who}",
            result["rss_mib"],
            base["rss_mib"],
            "MiB",
            value_at_most(RSS_LIMIT_MIB),
            note=f"{note}; baseline = the sqlite3 executemany process",
        )
        for who, result, note in rows
    ]
    measurements.append(
        Measurement(
            f"{size:,} operations: peak RSS of the worker process (push, then pull)",
            worker_peak,
            base["rss_mib"],
            "MiB",
            value_at_most(RSS_LIMIT_MIB),
            note=f"{worker_after_push:.0f} MiB after the push",
        )
    )
    return measurements
