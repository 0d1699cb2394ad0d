"""The operator's commands: ``status``, ``nodes`` and ``dead-letters`` (tables or JSON)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import click
from rich.console import Console
from rich.table import Table

from dbsync_mq import cli_options as options
from dbsync_mq import commands
from dbsync_mq.admin.nodes import NodeState
from dbsync_mq.admin.status import NODES_SHOWN, Status


def _print_json(document: Any) -> None:
    click.echo(json.dumps(document, indent=2, default=str))


def _when(moment: dt.datetime | None) -> str:
    return "never" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S")


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


# --- status -------------------------------------------------------------------------------


@click.command()
@options.database
@options.broker
@options.namespace
@options.management_url
@click.option(
    "--nodes",
    "nodes_shown",
    type=click.IntRange(min=0),
    default=NODES_SHOWN,
    show_default=True,
    help="Nodes listed, the most behind first (0: all).",
)
@options.json_output
@options.fail_cleanly
def status(
    database_url: str,
    broker_url: str,
    namespace: str,
    management_url: str | None,
    nodes_shown: int,
    as_json: bool,
) -> None:
    """Show the version, queues, dead letters, workers, nodes and pending tokens."""
    report = commands.status(
        database_url,
        broker_url,
        namespace,
        management_url=management_url,
        nodes_shown=nodes_shown or None,
    )
    if as_json:
        _print_json(report.to_json())
        return
    console = Console()
    console.print(f"server version: [bold]{report.version}[/bold]   namespace: {namespace}")
    for note in report.notes:
        console.print(f"[yellow]note: {note}[/yellow]")
    _print_queues(console, report)
    _print_workers(console, report)
    console.print(
        f"nodes: {report.nodes.total} registered, {report.nodes_enabled} enabled"
        + (f"; the {len(report.nodes.nodes)} most behind:" if report.nodes.nodes else "")
    )
    if report.nodes.nodes:
        console.print(_nodes_table(report.nodes.nodes))
    console.print(f"pending enrollment tokens: {len(report.enrollments)}")
    if report.enrollments:
        tokens = Table("created", "expires", "user", "replaces node")
        for token in report.enrollments:
            tokens.add_row(
                _when(token.created_at),
                _when(token.expires_at),
                token.user_id or "",
                str(token.replaces_node or ""),
            )
        console.print(tokens)


def _print_queues(console: Console, report: Status) -> None:
    if report.source == "none":
        return
    queues = Table("queue", "ready", "unacked", "consumers", "publish/s", "deliver/s")
    for queue in report.queues:
        unacked = queue.unacknowledged
        queues.add_row(
            queue.name,
            str(queue.ready),
            "-" if unacked is None else str(unacked),
            str(queue.consumers),
            _rate(queue.publish_rate),
            _rate(queue.deliver_rate),
        )
    console.print(queues)
    dead = report.dead_letters
    colour = "red" if dead else "green"
    console.print(f"dead letters: [{colour}]{dead}[/{colour}]  (dbsync-mq dead-letters list)")


def _print_workers(console: Console, report: Status) -> None:
    if report.workers is None:
        consumers = max((queue.consumers for queue in report.queues), default=0)
        console.print(f"workers: {consumers} (consumers per request queue; no names via AMQP)")
        return
    console.print(f"workers: {len(report.workers)}")
    if report.workers:
        workers = Table("connection", "user", "from", "queues consumed")
        for seen in report.workers:
            workers.add_row(seen.connection, seen.user, seen.peer, str(seen.queues))
        console.print(workers)


def _nodes_table(nodes: list[NodeState]) -> Table:
    table = Table("node", "user", "enabled", "last request", "merged version", "lag")
    for node in nodes:
        enabled = "forgotten" if node.forgotten_at else "yes" if node.enabled else "no"
        table.add_row(
            str(node.node_id),
            node.user_id or "",
            enabled,
            _when(node.last_seen_at),
            "-" if node.merged_version is None else str(node.merged_version),
            str(node.lag),
        )
    return table


# --- nodes --------------------------------------------------------------------------------


@click.group()
def nodes() -> None:
    """List, show, disable, enable and forget registered nodes."""


@nodes.command("list")
@options.database
@click.option("--user", "user_id", default=None, help="Only the nodes of this application user.")
@click.option(
    "--enabled/--disabled", "enabled", default=None, help="Only enabled (or disabled) nodes."
)
@click.option(
    "--min-lag",
    type=click.IntRange(min=0),
    default=None,
    help="Only nodes at least this many versions behind.",
)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="At most this many.")
@options.json_output
@options.fail_cleanly
def list_nodes(
    database_url: str,
    user_id: str | None,
    enabled: bool | None,
    min_lag: int | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """List registered nodes, the most behind first."""
    found = commands.list_nodes(
        database_url, user_id=user_id, enabled=enabled, min_lag=min_lag, limit=limit
    )
    if as_json:
        _print_json(
            {
                "version": found.head,
                "total": found.total,
                "nodes": [node.to_json() for node in found.nodes],
            }
        )
        return
    console = Console()
    console.print(f"{found.total} nodes; server version {found.head}")
    if found.nodes:
        console.print(_nodes_table(found.nodes))


@nodes.command("show")
@options.database
@options.namespace
@click.argument("node_id", type=int)
@options.json_output
@options.fail_cleanly
def show_node(database_url: str, namespace: str, node_id: int, as_json: bool) -> None:
    """Show everything the server database holds about NODE_ID."""
    detail = commands.show_node(database_url, node_id, namespace)
    if detail is None:
        raise click.ClickException(f"no node {node_id}")
    document = detail.to_json()
    if as_json:
        _print_json(document)
        return
    table = Table("", "", show_header=False)
    for name, value in document.items():
        table.add_row(name.replace("_", " "), "-" if value is None else str(value))
    Console().print(table)


def set_enabled(database_url: str, node_id: int, enabled: bool) -> None:
    """Enable or disable a node and say so (shared with the old top-level names)."""
    if not commands.set_node_enabled(database_url, node_id, enabled):
        raise click.ClickException(f"no node {node_id}")
    if enabled:
        click.echo(f"node {node_id} enabled: its requests are served again", err=True)
    else:
        click.echo(f"node {node_id} disabled: its requests are refused", err=True)


@nodes.command("disable")
@options.database
@click.argument("node_id", type=int)
@options.fail_cleanly
def disable_node(database_url: str, node_id: int) -> None:
    """Refuse every further request from NODE_ID."""
    set_enabled(database_url, node_id, False)


@nodes.command("enable")
@options.database
@click.argument("node_id", type=int)
@options.fail_cleanly
def enable_node(database_url: str, node_id: int) -> None:
    """Accept requests from NODE_ID again."""
    set_enabled(database_url, node_id, True)


@nodes.command("forget")
@options.database
@options.broker
@options.namespace
@click.argument("node_id", type=int)
@click.option("--yes", is_flag=True, help="Forget without asking for confirmation.")
@options.fail_cleanly
def forget_node(
    database_url: str, broker_url: str, namespace: str, node_id: int, yes: bool
) -> None:
    """Forget NODE_ID for good: disabled, its reply queue deleted, trimming no longer
    waits for it."""
    if not yes:
        click.confirm(
            f"forget node {node_id}? It is disabled for good and its reply queue deleted",
            abort=True,
            err=True,
        )
    done = commands.forget_node(database_url, broker_url, namespace, node_id)
    click.echo(f"node {node_id} forgotten: disabled for good, trimming no longer waits for it")
    if done.queue_deleted:
        click.echo(f"deleted queue {done.reply_queue}")
        return
    click.echo(
        f"dbsync-mq: queue {done.reply_queue} not deleted ({done.broker_error}); "
        "run the command again once the broker answers",
        err=True,
    )
    raise SystemExit(1)


# --- dead letters -------------------------------------------------------------------------


@click.group("dead-letters")
def dead_letters() -> None:
    """List, show, requeue and purge the dead-letter queue."""


@dead_letters.command("list")
@options.broker
@options.namespace
@click.option(
    "--limit", type=click.IntRange(min=1), default=100, show_default=True, help="Read at most."
)
@options.json_output
@options.fail_cleanly
def list_dead_letters(broker_url: str, namespace: str, limit: int, as_json: bool) -> None:
    """List dead letters with the reason each was refused."""
    found = commands.list_dead_letters(broker_url, namespace, limit)
    if as_json:
        _print_json({"total": found.total, "dead_letters": [vars(x) for x in found.letters]})
        return
    console = Console()
    console.print(f"{found.total} dead letters" + (":" if found.letters else ""))
    if found.letters:
        table = Table(
            "message id", "kind", "node", "from queue", "dead-lettered", "bytes", "reason"
        )
        for letter in found.letters:
            table.add_row(
                letter.message_id,
                letter.kind,
                letter.node,
                letter.queue or "?",
                letter.dead_at or "?",
                str(letter.size),
                letter.reason,
            )
        console.print(table)


@dead_letters.command("show")
@options.broker
@options.namespace
@click.option(
    "--db",
    "database_url",
    envvar="DBSYNC_DATABASE_URL",
    default=None,
    help="Server database: also check the signature with the node's key [env DBSYNC_DATABASE_URL].",
)
@click.argument("message_id")
@options.fail_cleanly
def show_dead_letter(
    broker_url: str, namespace: str, database_url: str | None, message_id: str
) -> None:
    """Show one dead letter: headers, and what decodes (described, never trusted)."""
    shown = commands.show_dead_letter(broker_url, namespace, message_id, database_url=database_url)
    if shown is None:
        raise click.ClickException(f"no dead letter with message id {message_id!r}")
    _print_json(shown)


def _chosen(message_ids: tuple[str, ...], every: bool) -> list[str] | None:
    if every == bool(message_ids):
        raise click.UsageError("give MESSAGE_ID... or --all (not both)")
    return None if every else list(message_ids)


@dead_letters.command("requeue")
@options.broker
@options.namespace
@click.argument("message_ids", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Requeue every dead letter.")
@options.fail_cleanly
def requeue_dead_letters(
    broker_url: str, namespace: str, message_ids: tuple[str, ...], every: bool
) -> None:
    """Send dead letters back to the request queue they came from."""
    done = commands.requeue_dead_letters(broker_url, namespace, _chosen(message_ids, every))
    click.echo(f"requeued {len(done.requeued)}")
    if done.left:
        click.echo(
            f"left {len(done.left)} whose request queue is unknown: {', '.join(done.left)}",
            err=True,
        )
    missing = set(message_ids) - set(done.requeued) - set(done.left)
    if missing:
        click.echo(f"not found: {', '.join(sorted(missing))}", err=True)


@dead_letters.command("purge")
@options.broker
@options.namespace
@click.argument("message_ids", nargs=-1)
@click.option("--all", "every", is_flag=True, help="Delete every dead letter.")
@click.option("--yes", is_flag=True, help="Delete without asking for confirmation.")
@options.fail_cleanly
def purge_dead_letters(
    broker_url: str, namespace: str, message_ids: tuple[str, ...], every: bool, yes: bool
) -> None:
    """Delete dead letters for good."""
    chosen = _chosen(message_ids, every)
    if not yes:
        what = "every dead letter" if chosen is None else f"{len(chosen)} dead letters"
        click.confirm(f"delete {what} for good?", abort=True, err=True)
    click.echo(f"purged {commands.purge_dead_letters(broker_url, namespace, chosen)}")
