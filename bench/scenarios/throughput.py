"""Sustained small pushes from 20 nodes, against row-lock transactions on the same PG.

Twenty nodes, each its own ``SyncClient`` and SQLite file, run in load processes
(``bench/fleet.py``: two processes of ten threads; a Python client holds its
GIL while it signs and packs, so twenty threads of one process would measure the
load generator). For the whole window each writes one row and calls ``sync()``
(push; on ``pull-required`` pull, merge and push again), back to back. Nodes
write disjoint keys, as applications with UUID keys do. Accepted pushes are
counted on the server (its version head). The worker runs as a separate
process, with group commit on (its default).
"""

from __future__ import annotations

import sqlalchemy as sa

from bench.fleet import Load, Mix, Target
from bench.harness import Measurement, Run, at_least, median, scenario
from bench.scenarios.fleet import lock_loop_rate
from bench.servers import WorkerProcess, new_server, worker_stats

CLIENTS = 20
LOAD_PROCESSES = 2
PUSH_EVERY_SYNC = Mix(interval=0.0, push_share=1.0, rows=(1, 1), shared_share=0.0)


def _head(engine: sa.Engine) -> int:
    with engine.connect() as connection:
        return int(connection.exec_driver_sql("SELECT version FROM sync_head").scalar_one())


def _describe_worker(log: str) -> str:
    stats = worker_stats(log)
    parts = [
        f"{kind} {count} x {total / count:.1f} ms"
        for kind, (count, total) in sorted(stats.items())
        if kind.split("/")[0] in ("push", "pull")
    ]
    return "worker handled: " + ", ".join(parts)


@scenario("throughput")
def throughput(run: Run) -> Measurement:
    """Sustained small pushes, 20 nodes in load processes, PG server vs FOR UPDATE tx."""
    seconds = run.pick(4, 15)
    rounds = run.pick(2, 3)
    setup = new_server(run.services, "postgresql")
    engine = sa.create_engine(setup.database_url)
    worker = WorkerProcess(setup)
    worker.start()
    target = Target(run.services.broker_url, setup.namespace, setup.database_url)
    load = Load(target, str(run.services.workdir), CLIENTS, LOAD_PROCESSES, CLIENTS)
    for node_id in load.node_ids:
        run.services.node_registered(setup.namespace, node_id)
    ours, baseline, errors = [], [], 0
    try:
        load.run(PUSH_EVERY_SYNC, 1.0)  # warm-up: connections, reply queues, caches
        for _ in range(rounds):
            head = _head(engine)
            report, _cpu = load.run(PUSH_EVERY_SYNC, seconds)
            ours.append((_head(engine) - head) / seconds)
            errors += report.errors
            baseline.append(lock_loop_rate(setup.database_url, CLIENTS, seconds))
    finally:
        load.close()
        worker.stop()
        engine.dispose()
    return Measurement(
        f"sustained 1-row pushes, {CLIENTS} nodes in {LOAD_PROCESSES} load processes, PG, "
        f"{rounds} windows of {seconds} s: accepted pushes/s vs FOR UPDATE+insert tx/s",
        median(ours),
        median(baseline),
        "/s",
        at_least(0.5),
        note=f"{_describe_worker(worker.log())}; sync errors {errors}",
    )
