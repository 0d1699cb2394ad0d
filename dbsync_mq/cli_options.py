"""Options and error handling shared by the ``dbsync-mq`` commands."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click

from dbsync_mq.config import DEFAULT_BROKER_URL
from dbsync_mq.errors import SyncError
from dbsync_mq.transport.topology import DEFAULT_NAMESPACE

F = TypeVar("F", bound=Callable[..., Any])

database = click.option(
    "--db",
    "database_url",
    envvar="DBSYNC_DATABASE_URL",
    required=True,
    help="Server database URL [env DBSYNC_DATABASE_URL].",
)
broker = click.option(
    "--broker",
    "broker_url",
    envvar="DBSYNC_BROKER_URL",
    default=DEFAULT_BROKER_URL,
    show_default=True,
    help="RabbitMQ URL [env DBSYNC_BROKER_URL].",
)
namespace = click.option(
    "--namespace",
    envvar="DBSYNC_NAMESPACE",
    default=DEFAULT_NAMESPACE,
    show_default=True,
    help="Prefix of every exchange and queue [env DBSYNC_NAMESPACE].",
)
management_url = click.option(
    "--management-url",
    envvar="DBSYNC_MANAGEMENT_URL",
    default=None,
    help="RabbitMQ management API [default: the broker's host, port 15672; "
    "env DBSYNC_MANAGEMENT_URL].",
)
json_output = click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON document instead of tables."
)


def _import_from_working_directory(_context: click.Context, _param: Any, value: str) -> str:
    """Models modules are found in the current directory, as ``python -m`` finds them
    (an installed command's path holds its own folder instead)."""
    here = os.getcwd()
    if here not in sys.path and "" not in sys.path:
        sys.path.insert(0, here)
    return value


models = click.option(
    "--models",
    envvar="DBSYNC_MODELS",
    required=True,
    callback=_import_from_working_directory,
    help="Comma-separated modules defining tracked models, importable from the current "
    "directory [env DBSYNC_MODELS].",
)


def fail_cleanly(function: F) -> F:
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
