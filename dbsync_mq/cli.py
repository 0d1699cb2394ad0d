"""The ``dbsync-mq`` command: a thin shell over ``dbsync_mq.commands``."""

from __future__ import annotations

import datetime as dt
import logging
import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from dbsync_mq import commands
from dbsync_mq.config import DEFAULT_BROKER_URL, DEFAULT_PREFETCH, WorkerConfig, split_modules
from dbsync_mq.errors import SyncError
from dbsync_mq.transport.topology import DEFAULT_NAMESPACE

F = TypeVar("F", bound=Callable[..., Any])

_db = click.option(
    "--db",
    "database_url",
    envvar="DBSYNC_DATABASE_URL",
    required=True,
    help="Server database URL [env DBSYNC_DATABASE_URL].",
)
_broker = click.option(
    "--broker",
    "broker_url",
    envvar="DBSYNC_BROKER_URL",
    default=DEFAULT_BROKER_URL,
    show_default=True,
    help="RabbitMQ URL [env DBSYNC_BROKER_URL].",
)
_namespace = click.option(
    "--namespace",
    envvar="DBSYNC_NAMESPACE",
    default=DEFAULT_NAMESPACE,
    show_default=True,
    help="Prefix of every exchange and queue [env DBSYNC_NAMESPACE].",
)


def _import_from_working_directory(_context: click.Context, _param: Any, value: str) -> str:
    """Models modules are found in the current directory, as ``python -m`` finds them
    (an installed command's path holds its own folder instead)."""
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.insert(0, here)
    return value


_models = click.option(
    "--models",
    envvar="DBSYNC_MODELS",
    required=True,
    callback=_import_from_working_directory,
    help="Comma-separated modules defining tracked models, importable from the current "
    "directory [env DBSYNC_MODELS].",
)


def _configure_logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # Every pika failure surfaces as one of our errors, naming the broker; pika's own
    # records repeat it with tracebacks, so they show only with --verbose.
    logging.getLogger("pika").setLevel(logging.DEBUG if verbose else logging.CRITICAL)


def _fail_cleanly(function: F) -> F:
    """Turn our errors into one line on stderr and exit code 1, never a traceback."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return function(*args, **kwargs)
        except SyncError as exc:
            click.echo(f"dbsync-mq: {exc}", err=True)
            sys.exit(1)

    wrapper.__name__ = function.__name__
    wrapper.__doc__ = function.__doc__
    return wrapper  # type: ignore[return-value]


@click.group()
@click.version_option(package_name="dbsync-mq")
def main() -> None:
    """Offline-first synchronization of SQLAlchemy databases through RabbitMQ."""


@main.command()
@_db
@_models
@click.option(
    "--broker",
    "broker_url",
    envvar="DBSYNC_BROKER_URL",
    default=None,
    help="Also declare the RabbitMQ topology [env DBSYNC_BROKER_URL].",
)
@_namespace
@_fail_cleanly
def init(database_url: str, models: str, broker_url: str | None, namespace: str) -> None:
    """Create the server's tables and signing key (idempotent)."""
    commands.init(database_url, split_modules(models), broker_url, namespace)
    click.echo("server database ready", err=True)


@main.command()
@_db
@click.option(
    "--ttl-hours",
    type=float,
    default=24.0,
    show_default=True,
    help="Hours before the token expires.",
)
@click.option("--user", "user_id", default=None, help="Application user the node belongs to.")
@click.option(
    "--replaces",
    "replaces_node",
    type=int,
    default=None,
    help="Node id to disable when the new node registers (a lost device).",
)
@_fail_cleanly
def enroll(
    database_url: str, ttl_hours: float, user_id: str | None, replaces_node: int | None
) -> None:
    """Print a one-time enrollment token, alone on standard output."""
    token = commands.enroll(
        database_url,
        ttl=dt.timedelta(hours=ttl_hours),
        user_id=user_id,
        replaces_node=replaces_node,
    )
    click.echo(token)


@main.command()
@_db
@_models
@_broker
@_namespace
@click.option(
    "--prefetch",
    type=int,
    default=DEFAULT_PREFETCH,
    show_default=True,
    help="Requests held unacknowledged at once.",
)
@click.option(
    "--metrics-port", type=int, default=None, help="Serve Prometheus metrics on 127.0.0.1:PORT."
)
@click.option(
    "--plugin",
    "plugins",
    multiple=True,
    help="module:function called with the worker before it starts (repeatable).",
)
@click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG level.")
@_fail_cleanly
def worker(
    database_url: str,
    models: str,
    broker_url: str,
    namespace: str,
    prefetch: int,
    metrics_port: int | None,
    plugins: tuple[str, ...],
    verbose: bool,
) -> None:
    """Serve push, pull, register and other requests until SIGTERM or SIGINT."""
    _configure_logging(verbose)
    config = WorkerConfig.from_env(
        os.environ,
        database_url=database_url,
        models=split_modules(models),
        broker_url=broker_url,
        namespace=namespace,
        prefetch=prefetch,
        metrics_port=metrics_port,
        plugins=plugins,
    )
    sys.exit(commands.worker(config))


@main.command("disable")
@_db
@click.argument("node_id", type=int)
@_fail_cleanly
def disable(database_url: str, node_id: int) -> None:
    """Refuse every further request from NODE_ID."""
    if not commands.set_node_enabled(database_url, node_id, False):
        raise click.ClickException(f"no node {node_id}")
    click.echo(f"node {node_id} disabled: its requests are refused", err=True)


@main.command("enable")
@_db
@click.argument("node_id", type=int)
@_fail_cleanly
def enable(database_url: str, node_id: int) -> None:
    """Accept requests from NODE_ID again."""
    if not commands.set_node_enabled(database_url, node_id, True):
        raise click.ClickException(f"no node {node_id}")
    click.echo(f"node {node_id} enabled: its requests are served again", err=True)


@main.command()
@_db
@_broker
@_namespace
@_fail_cleanly
def status(database_url: str, broker_url: str, namespace: str) -> None:
    """Show the server version, registered nodes and queue depths."""
    report = commands.status(database_url, broker_url, namespace)
    console = Console()
    console.print(f"server version: [bold]{report.version}[/bold]")
    nodes = Table("node", "user", "enabled", "registered at", title="nodes")
    for node in report.nodes:
        nodes.add_row(
            str(node["id"]),
            str(node["user_id"] or ""),
            str(node["enabled"]),
            str(node["registered_at"]),
        )
    console.print(nodes)
    if report.broker_error:
        console.print(f"[red]broker: {report.broker_error}[/red]")
        return
    queues = Table("queue", "ready messages", title="queues")
    for name, depth in report.queues.items():
        queues.add_row(name, str(depth))
    console.print(queues)


@main.command()
@_broker
@click.option(
    "--namespace",
    envvar="DBSYNC_NAMESPACE",
    required=True,
    help="The namespace to remove [env DBSYNC_NAMESPACE].",
)
@click.option(
    "--db",
    "database_url",
    envvar="DBSYNC_DATABASE_URL",
    default=None,
    help="Server database: its registered nodes' reply queues go too [env DBSYNC_DATABASE_URL].",
)
@click.option(
    "--management-url",
    envvar="DBSYNC_MANAGEMENT_URL",
    default=None,
    help="RabbitMQ management API, to list node reply queues "
    "[default: the broker's host, port 15672; env DBSYNC_MANAGEMENT_URL].",
)
@click.option("--yes", is_flag=True, help="Delete without asking for confirmation.")
@_fail_cleanly
def teardown(
    broker_url: str,
    namespace: str,
    database_url: str | None,
    management_url: str | None,
    yes: bool,
) -> None:
    """Delete a namespace's queues and exchanges, node queues included."""
    plan = commands.plan_teardown(
        broker_url, namespace, database_url=database_url, management_url=management_url
    )
    for note in plan.notes:
        click.echo(f"note: {note}", err=True)
    if not (plan.queues or plan.exchanges):
        click.echo(f"nothing of namespace {namespace!r} on the broker", err=True)
        return
    where = "on the broker" if plan.checked else "(those that exist)"
    click.echo(f"namespace {namespace!r} {where}:", err=True)
    for name in plan.queues:
        click.echo(f"  queue    {name}", err=True)
    for name in plan.exchanges:
        click.echo(f"  exchange {name}", err=True)
    if not yes:
        click.confirm("delete them, with the messages they hold?", abort=True, err=True)
    commands.teardown(broker_url, plan)
    for name in plan.queues:
        click.echo(f"deleted queue {name}")
    for name in plan.exchanges:
        click.echo(f"deleted exchange {name}")


@main.command()
@click.option("--db", "database_url", required=True, help="The node's database URL.")
@_models
@_broker
@_namespace
@click.option("--force", is_flag=True, help="Discard local changes that were never pushed.")
@_fail_cleanly
def repair(database_url: str, models: str, broker_url: str, namespace: str, force: bool) -> None:
    """Replace a node's tracked tables with the server's, showing progress."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
    ) as bar:
        tasks: dict[str, TaskID] = {}

        def show(table: str, done: int, total: int) -> None:
            if table not in tasks:
                tasks[table] = bar.add_task(table, total=total)
            bar.update(tasks[table], completed=done)

        result = commands.repair(
            database_url, split_modules(models), broker_url, namespace, force=force, progress=show
        )
    click.echo(
        f"repaired: {result.rows} rows at version {result.version}"
        + (f", {result.discarded} unpushed local changes discarded" if result.discarded else ""),
        err=True,
    )


@main.command()
@_broker
@click.option("--keep", is_flag=True, help="Keep the demo's databases and print where.")
@_fail_cleanly
def demo(broker_url: str, keep: bool) -> None:
    """Run a worker and two offline nodes on SQLite, sync them, show what happened."""
    from dbsync_mq.demo.scenario import run

    sys.exit(run(broker_url, keep=keep))
