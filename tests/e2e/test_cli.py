"""The ``dbsync-mq`` command as a user runs it: a subprocess, its output and exit code."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.conftest import table_rows, write
from tests.models import City

pytestmark = [pytest.mark.broker, pytest.mark.e2e]


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dbsync_mq", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
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
