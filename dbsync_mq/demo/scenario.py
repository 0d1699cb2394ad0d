"""``dbsync-mq demo``: a worker and two nodes, offline edits, a sync, a conflict.

Everything lives in a temporary directory and a namespace of its own, which
are removed at the end (unless ``--keep``); the exit code is 0 only if both
nodes end up identical to the server.
"""

from __future__ import annotations

import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa
from rich.console import Console
from rich.table import Table
from sqlalchemy.orm import Session

from dbsync_mq import commands
from dbsync_mq.client import SyncClient
from dbsync_mq.demo.models import City, Person
from dbsync_mq.errors import BrokerUnavailable, SyncTimeout
from dbsync_mq.results import SyncResult
from dbsync_mq.transport.rabbitmq import delete_topology
from dbsync_mq.transport.topology import Topology

MODELS = "dbsync_mq.demo.models"
READY_TIMEOUT_SECONDS = 20.0

console = Console()


def run(broker_url: str, *, keep: bool = False) -> int:
    """Run the demo; return 0 if every node converged with the server."""
    workdir = Path(tempfile.mkdtemp(prefix="dbsync-demo-"))
    namespace = f"dbsync-demo-{secrets.token_hex(4)}"
    server_url = f"sqlite:///{workdir / 'server.db'}"
    commands.init(server_url, (MODELS,), broker_url, namespace)
    worker = _start_worker(server_url, broker_url, namespace, workdir)
    nodes: list[SyncClient] = []
    try:
        nodes = [
            _node(workdir / f"{name}.db", server_url, broker_url, namespace) for name in ("a", "b")
        ]
        converged = _scenario(console, nodes[0], nodes[1], server_url)
    finally:
        for node in nodes:
            node.close()
        _stop_worker(worker)
        delete_topology(broker_url, Topology(namespace), tuple(n.node_id for n in nodes))
        if keep:
            console.print(f"databases kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    return 0 if converged else 1


def _start_worker(
    server_url: str, broker_url: str, namespace: str, workdir: Path
) -> subprocess.Popen[bytes]:
    log = (workdir / "worker.log").open("wb")
    console.print(f"[bold]worker[/bold]: starting (log in {workdir / 'worker.log'})")
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "dbsync_mq",
            "worker",
            "--db",
            server_url,
            "--models",
            MODELS,
            "--broker",
            broker_url,
            "--namespace",
            namespace,
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _stop_worker(worker: subprocess.Popen[bytes]) -> None:
    worker.send_signal(signal.SIGTERM)
    try:
        code = worker.wait(timeout=20)
    except subprocess.TimeoutExpired:
        worker.kill()
        code = worker.wait()
    console.print(f"[bold]worker[/bold]: stopped with exit code {code}")


def _node(path: Path, server_url: str, broker_url: str, namespace: str) -> SyncClient:
    client = SyncClient(
        sa.create_engine(f"sqlite:///{path}"),
        broker_url=broker_url,
        namespace=namespace,
        models=[City, Person],
        timeout=10,
    )
    client.install()
    client.register(commands.enroll(server_url))
    _wait_until_served(client)
    return client


def _wait_until_served(client: SyncClient) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while True:
        try:
            client.ping()
            return
        except (BrokerUnavailable, SyncTimeout):
            if time.monotonic() > deadline:
                raise


def _scenario(out: Console, a: SyncClient, b: SyncClient, server_url: str) -> bool:
    out.rule("1. both nodes work offline")
    _write(
        a,
        lambda s: s.add_all(
            [City(name="Lima", population=10_000_000), City(name="Quito", population=2_800_000)]
        ),
    )
    _write(b, lambda s: s.add(City(name="Bogotá", population=7_900_000)))
    _show(out, {"node A": a, "node B": b})

    out.rule("2. they reconnect and sync")
    _report(out, "node A", a.sync())
    _report(out, "node B", b.sync())
    _report(out, "node A", a.sync())
    _show(out, {"node A": a, "node B": b})

    out.rule("3. a conflict: A renames Quito while B deletes it")
    _write(a, lambda s: _rename(s, "Quito", "San Francisco de Quito"))
    _write(b, lambda s: s.delete(s.scalars(sa.select(City).where(City.name == "Quito")).one()))
    _report(out, "node A", a.sync())
    _report(out, "node B", b.sync())
    _report(out, "node A", a.sync())

    out.rule("4. everyone agrees")
    server = sa.create_engine(server_url)
    states = {"server": _rows(server), "node A": _rows(a.engine), "node B": _rows(b.engine)}
    _show(out, {"server": server, "node A": a, "node B": b})
    server.dispose()
    converged = states["server"] == states["node A"] == states["node B"]
    out.print("[green]converged[/green]" if converged else "[red]diverged[/red]")
    return converged


def _write(client: SyncClient, change: object) -> None:
    with Session(client.engine) as session:
        change(session)  # type: ignore[operator]
        session.commit()


def _rename(session: Session, old: str, new: str) -> None:
    session.scalars(sa.select(City).where(City.name == old)).one().name = new


def _report(out: Console, name: str, result: SyncResult) -> None:
    conflicts = "".join(
        f"\n    conflict {c.kind} on {c.table} {c.key!r}: {c.winner} won"
        + (f", moved to {c.new_key!r}" if c.new_key is not None else "")
        for c in result.conflicts
    )
    out.print(
        f"[bold]{name}[/bold] sync: pushed {result.pushed}, pulled {result.pulled}, "
        f"now at version {result.version}{conflicts}"
    )


def _rows(engine: sa.Engine) -> list[tuple[object, ...]]:
    with engine.connect() as connection:
        table = City.__table__
        return [tuple(r) for r in connection.execute(sa.select(table).order_by(table.c.id))]


def _show(out: Console, sources: dict[str, SyncClient | sa.Engine]) -> None:
    for name, source in sources.items():
        engine = source.engine if isinstance(source, SyncClient) else source
        table = Table("id", "name", "population", title=f"{name}: cities")
        for row in _rows(engine):
            table.add_row(*(str(value) for value in row))
        out.print(table)
