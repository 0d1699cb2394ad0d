"""The ``dbsync-mq`` command as a user runs it: a subprocess, its output and exit code."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pika
import pika.exceptions
import pytest
import sqlalchemy as sa

from dbsync_mq.demo import models as demo_models
from dbsync_mq.transport.topology import Topology
from tests.conftest import table_rows, write
from tests.models import City

pytestmark = [pytest.mark.broker, pytest.mark.e2e]


def run(
    *args: str, env: dict[str, str] | None = None, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dbsync_mq", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        input=input,
    )


def test_enroll_prints_the_token_alone_and_reads_the_database_from_the_environment(
    worker_config, tmp_path
):
    import os

    env = {**os.environ, "DBSYNC_DATABASE_URL": worker_config.database_url}
    result = run("enroll", "--ttl-hours", "1", env=env)
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"[A-Za-z0-9_-]{40,}\n", result.stdout)


def test_repair_command_replaces_the_tables_and_refuses_to_lose_changes(
    make_node, worker, broker_url, namespace, tmp_path
):
    # Given a server with rows and a node that has unpushed work of its own
    source, node = make_node("source"), make_node("node")
    write(source.engine, City(name="server row"))
    source.sync()
    write(node.engine, City(name="unpushed"))
    args = (
        "repair",
        "--db",
        str(node.engine.url),
        "--models",
        "tests.models",
        "--broker",
        broker_url,
        "--namespace",
        namespace,
    )

    # When repaired without --force, it refuses and says why
    refused = run(*args)
    assert refused.returncode == 1
    assert "never pushed" in refused.stderr
    assert sorted(row[1] for row in table_rows(node.engine)["city"]) == ["unpushed"]

    # Then with --force it replaces the tables with the server's
    forced = run(*args, "--force")
    assert forced.returncode == 0, forced.stderr
    assert "repaired: 1 rows at version 1, 1 unpushed local changes discarded" in forced.stderr
    assert [row[1] for row in table_rows(node.engine)["city"]] == ["server row"]


def test_status_shows_the_version_nodes_and_queues(make_node, worker, broker_url, namespace):
    node = make_node("a")
    write(node.engine, City(name="x"))
    node.sync()
    result = run(
        "status",
        "--db",
        worker.config.database_url,
        "--broker",
        broker_url,
        "--namespace",
        namespace,
    )
    assert result.returncode == 0, result.stderr
    assert "server version: 1" in result.stdout
    assert f"{namespace}.push" in result.stdout
    assert f"{namespace}.dead" in result.stdout


def test_a_bad_setting_is_one_line_and_exit_code_1(tmp_path):
    result = run("enroll", "--db", f"sqlite:///{tmp_path / 'missing.db'}")
    assert result.returncode == 1
    assert result.stderr.startswith("dbsync-mq: ")
    assert "Traceback" not in result.stderr


# --- what a new user meets -----------------------------------------------------------


def test_the_installed_command_imports_models_from_the_current_directory(tmp_path):
    # Given an application folder holding its models package, and no PYTHONPATH
    (tmp_path / "shop").mkdir()
    (tmp_path / "shop" / "__init__.py").write_text("")
    shutil.copy(demo_models.__file__, tmp_path / "shop" / "models.py")
    env = {name: value for name, value in os.environ.items() if name != "PYTHONPATH"}
    command = Path(sys.executable).parent / "dbsync-mq"

    # When the installed command runs there
    result = subprocess.run(
        [str(command), "init", "--db", "sqlite:///server.db", "--models", "shop.models"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )

    # Then it found the models and created their table
    assert result.returncode == 0, result.stderr
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'server.db'}")
    try:
        assert {"demo_city", "demo_person"} <= set(sa.inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_a_missing_postgresql_driver_is_one_line_naming_the_extra(tmp_path):
    # Given a Python where psycopg cannot be imported
    shadow = tmp_path / "shadow" / "psycopg"
    shadow.mkdir(parents=True)
    (shadow / "__init__.py").write_text(
        'raise ModuleNotFoundError("No module named \'psycopg\'", name="psycopg")\n'
    )
    env = {**os.environ, "PYTHONPATH": str(shadow.parent)}

    # When init is given a PostgreSQL URL
    result = run(
        "init",
        "--db",
        "postgresql+psycopg://app@127.0.0.1:1/app",
        "--models",
        "tests.models",
        env=env,
    )

    # Then one line says what to install
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert "pip install 'dbsync-mq[postgresql]'" in result.stderr


@pytest.fixture
def broker_channel(broker_url: str) -> Iterator[pika.BlockingConnection]:
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    yield connection
    connection.close()


def present(connection: pika.BlockingConnection, kind: str, name: str) -> bool:
    """Whether the queue or exchange ``name`` exists (a passive declare on its own channel)."""
    channel = connection.channel()
    try:
        if kind == "queue":
            channel.queue_declare(name, passive=True)
        else:
            channel.exchange_declare(name, passive=True)
    except pika.exceptions.ChannelClosedByBroker as exc:
        if exc.reply_code == 404:
            return False
        raise
    channel.close()
    return True


def namespace_on_broker(
    connection: pika.BlockingConnection, namespace: str, node_ids: list[int]
) -> dict[str, bool]:
    topology = Topology(namespace)
    queues = [*topology.request_queues, topology.dead_letter_queue]
    queues += [topology.node_queue(node) for node in node_ids]
    exchanges = [
        topology.requests_exchange,
        topology.events_exchange,
        topology.dead_letter_exchange,
    ]
    return {
        **{f"queue {name}": present(connection, "queue", name) for name in queues},
        **{f"exchange {name}": present(connection, "exchange", name) for name in exchanges},
    }


@pytest.fixture
def bystander(broker_channel: pika.BlockingConnection, namespace: str) -> Iterator[str]:
    """A node queue of another namespace whose name starts with this one's."""
    name = Topology(f"{namespace}.staging").node_queue(7)
    broker_channel.channel().queue_declare(name)
    yield name
    broker_channel.channel().queue_delete(name)


def test_teardown_asks_then_deletes_the_namespace_and_its_node_queues_and_nothing_else(
    make_node, worker_runner, broker_url, namespace, node_ids, broker_channel, bystander
):
    # Given a namespace with its topology and two registered nodes' reply queues
    worker_runner.start()
    make_node("a")
    make_node("b")
    worker_runner.stop()
    assert all(namespace_on_broker(broker_channel, namespace, node_ids).values())
    args = ("teardown", "--broker", broker_url, "--namespace", namespace)

    # When the operator answers no, nothing is deleted
    refused = run(*args, input="n\n")
    assert refused.returncode != 0
    assert all(namespace_on_broker(broker_channel, namespace, node_ids).values())

    # When the operator confirms (the node queues found through the management API)
    result = run(*args, input="y\n")

    # Then every queue and exchange of the namespace is gone, and said so
    assert result.returncode == 0, result.stderr
    gone = namespace_on_broker(broker_channel, namespace, node_ids)
    assert not any(gone.values()), gone
    assert sorted(result.stdout.splitlines()) == sorted(f"deleted {name}" for name in gone)
    assert present(broker_channel, "queue", bystander)


def test_teardown_finds_node_queues_in_the_server_database_without_the_management_api(
    make_node, worker_runner, broker_url, namespace, node_ids, server_url, broker_channel
):
    # Given a namespace with a registered node, and no management API where it is looked for
    worker_runner.start()
    make_node("a")
    worker_runner.stop()

    # When it is torn down with the server database, without confirmation
    result = run(
        "teardown",
        "--broker",
        broker_url,
        "--namespace",
        namespace,
        "--db",
        server_url,
        "--management-url",
        "http://127.0.0.1:1/",
        "--yes",
    )

    # Then the node's queue went with the rest, and the missing API was mentioned
    assert result.returncode == 0, result.stderr
    assert "not reachable" in result.stderr
    gone = namespace_on_broker(broker_channel, namespace, node_ids)
    assert not any(gone.values()), gone
