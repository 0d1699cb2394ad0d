"""The ``dbsync-mq`` command: a thin shell over ``dbsync_mq.commands``."""

from __future__ import annotations

import datetime as dt
import os
import sys

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

from dbsync_mq import cli_admin, commands
from dbsync_mq import cli_options as options
from dbsync_mq.config import DEFAULT_BATCH_MAX, DEFAULT_PREFETCH, WorkerConfig, split_modules

_db = options.database
_broker = options.broker
_namespace = options.namespace
_models = options.models
_fail_cleanly = options.fail_cleanly

_keep_days = click.option(
    "--keep-days",
    type=click.FloatRange(min=0),
    default=None,
    help="Also trim the versions older than DAYS, whatever the nodes have merged "
    "(a node behind them repairs).",
)


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
    "--batch-max",
    type=click.IntRange(min=1),
    default=DEFAULT_BATCH_MAX,
    show_default=True,
    help="Pushes in hand applied at most in one transaction (group commit); 1: off.",
)
@click.option(
    "--processes",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Worker processes to run on this machine, under one supervisor.",
)
@click.option(
    "--metrics-port",
    type=int,
    default=None,
    help="Serve /metrics, /healthz and /readyz on PORT (PORT+i for process i, see "
    "--metrics-address).",
)
@click.option(
    "--metrics-address",
    default="127.0.0.1",
    show_default=True,
    help="Address the metrics and health endpoint listens on (0.0.0.0 in a container).",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="json: one object per line, for log shippers.",
)
@click.option(
    "--plugin",
    "plugins",
    multiple=True,
    help="module:function called with the worker before it starts (repeatable).",
)
@click.option(
    "--trim-every",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Trim the version log every SECONDS, as `dbsync-mq trim` does [default: never].",
)
@_keep_days
@click.option("-v", "--verbose", is_flag=True, help="Log at DEBUG level.")
@_fail_cleanly
def worker(
    database_url: str,
    models: str,
    broker_url: str,
    namespace: str,
    prefetch: int,
    batch_max: int,
    processes: int,
    metrics_port: int | None,
    metrics_address: str,
    log_format: str,
    plugins: tuple[str, ...],
    trim_every: float | None,
    keep_days: float | None,
    verbose: bool,
) -> None:
    """Serve push, pull, register and other requests until SIGTERM or SIGINT."""
    from worker.logs import configure_logging

    configure_logging(verbose, log_format)
    config = WorkerConfig.from_env(
        os.environ,
        database_url=database_url,
        models=split_modules(models),
        broker_url=broker_url,
        namespace=namespace,
        prefetch=prefetch,
        processes=processes,
        batch_max=batch_max,
        metrics_port=metrics_port,
        metrics_address=metrics_address,
        plugins=plugins,
        trim_every=trim_every,
        keep_days=keep_days,
    )
    sys.exit(commands.worker(config, verbose=verbose, log_format=log_format))


main.add_command(cli_admin.status)
main.add_command(cli_admin.nodes)
main.add_command(cli_admin.dead_letters)


@main.command("disable")
@_db
@click.argument("node_id", type=int)
@_fail_cleanly
def disable(database_url: str, node_id: int) -> None:
    """Refuse every further request from NODE_ID (the same as `nodes disable`)."""
    cli_admin.set_enabled(database_url, node_id, False)


@main.command("enable")
@_db
@click.argument("node_id", type=int)
@_fail_cleanly
def enable(database_url: str, node_id: int) -> None:
    """Accept requests from NODE_ID again (the same as `nodes enable`)."""
    cli_admin.set_enabled(database_url, node_id, True)


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
@_db
@_keep_days
@_fail_cleanly
def trim(database_url: str, keep_days: float | None) -> None:
    """Delete the versions every enabled node has merged (see docs/operations.md)."""
    result = commands.trim(database_url, keep_days=keep_days)
    click.echo(
        f"trimmed through version {result.trimmed_through} of {result.head}: "
        f"{_counted(result.versions, 'version')} and "
        f"{_counted(result.requests, 'stored reply', 'stored replies')} deleted"
    )


def _counted(count: int, one: str, many: str | None = None) -> str:
    return f"{count} {one if count == 1 else many or one + 's'}"


@main.command()
@_broker
@click.option("--keep", is_flag=True, help="Keep the demo's databases and print where.")
@_fail_cleanly
def demo(broker_url: str, keep: bool) -> None:
    """Run a worker and two offline nodes on SQLite, sync them, show what happened."""
    from dbsync_mq.demo.scenario import run

    sys.exit(run(broker_url, keep=keep))
