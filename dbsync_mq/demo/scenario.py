"""``dbsync-mq demo``: a worker and two nodes, offline edits, live sync, a conflict.

Everything lives in a temporary directory and a namespace of its own, which
are removed at the end (unless ``--keep``); the exit code is 0 only if both
nodes end up identical to the server.
"""

from __future__ import annotations

import functools
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from rich.console import Console
from rich.table import Table
from sqlalchemy.orm import Session

from dbsync_mq import commands
from dbsync_mq.agent import SyncStatus
from dbsync_mq.client import SyncClient
from dbsync_mq.demo.models import City, Person
from dbsync_mq.errors import BrokerUnavailable, SyncTimeout
from dbsync_mq.transport.rabbitmq import delete_topology
from dbsync_mq.transport.topology import Topology

MODELS = "dbsync_mq.demo.models"
READY_TIMEOUT_SECONDS = 20.0
SETTLE_TIMEOUT_SECONDS = 30.0

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
    server = sa.create_engine(server_url)
    try:
        out.rule("1. both nodes work offline")
        _write(
            a,
            lambda s: s.add_all(
                [City(name="Lima", population=10_000_000), City(name="Quito", population=2_800_000)]
            ),
        )
        _write(b, lambda s: s.add(City(name="Bogotá", population=7_900_000)))
        _show(out, {"node A": a, "node B": b})

        out.rule("2. their background sync starts: they push, and pull what the other wrote")
        with _agents(out, a, b):
            _settle(a, b, server)
            _show(out, {"node A": a, "node B": b})

            out.rule("3. live: a write on node A reaches node B, which calls nothing")
            started = time.monotonic()
            _write(a, lambda s: s.add(City(name="Cusco", population=430_000)))
            _wait_for(lambda: "Cusco" in _names(b.engine), "the row to reach node B")
            out.print(f"Cusco is in node B's database {time.monotonic() - started:.2f} s later")

        out.rule("4. offline again, a conflict: A renames Quito while B deletes it")
        _write(a, lambda s: _rename(s, "Quito", "San Francisco de Quito"))
        _write(b, lambda s: s.delete(s.scalars(sa.select(City).where(City.name == "Quito")).one()))
        with _agents(out, a, b):
            _settle(a, b, server)

        out.rule("5. everyone agrees")
        states = {"server": _rows(server), "node A": _rows(a.engine), "node B": _rows(b.engine)}
        _show(out, {"server": server, "node A": a, "node B": b})
    finally:
        server.dispose()
    converged = states["server"] == states["node A"] == states["node B"]
    out.print("[green]converged[/green]" if converged else "[red]diverged[/red]")
    return converged


@contextmanager
def _agents(out: Console, *nodes: SyncClient) -> Iterator[None]:
    """Run every node's background sync for the block, printing what they report."""
    for name, node in zip("AB", nodes, strict=False):
        node.start(on_status=functools.partial(_report, out, f"node {name}"))
    try:
        yield
    finally:
        for node in nodes:
            node.stop()


def _settle(a: SyncClient, b: SyncClient, server: sa.Engine) -> None:
    """Wait until both nodes pushed everything and hold the server's rows."""

    def settled() -> bool:
        rows = _rows(server)
        return all(node.pending_operations() == 0 and _rows(node.engine) == rows for node in (a, b))

    _wait_for(settled, "the nodes to settle")


def _wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT_SECONDS
    pause = threading.Event()
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        pause.wait(0.05)


def _write(client: SyncClient, change: object) -> None:
    with Session(client.engine) as session:
        change(session)  # type: ignore[operator]
        session.commit()


def _rename(session: Session, old: str, new: str) -> None:
    session.scalars(sa.select(City).where(City.name == old)).one().name = new


def _report(out: Console, name: str, status: SyncStatus) -> None:
    if status.state in ("syncing", "stopped"):
        return
    conflicts = "".join(
        f"\n    conflict {c.kind} on {c.table} {c.key!r}: {c.winner} won"
        + (f", moved to {c.new_key!r}" if c.new_key is not None else "")
        for c in status.conflicts
    )
    error = f" ({status.last_error})" if status.last_error else ""
    out.print(
        f"[bold]{name}[/bold] {status.state}{error}: version {status.version}, "
        f"{status.pending_operations} operations to push{conflicts}"
    )


def _names(engine: sa.Engine) -> set[str]:
    return {str(row[1]) for row in _rows(engine)}


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
