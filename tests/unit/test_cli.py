"""The ``dbsync-mq`` command: every command has help and documentation; enroll is scriptable."""

from __future__ import annotations

import datetime as dt
import re
import sys
import uuid
from pathlib import Path

import click
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from dbsync_mq.cli import main
from dbsync_mq.storage import schema

ROOT = Path(__file__).resolve().parents[2]


def _paths(group: click.Group, prefix: str = "") -> list[str]:
    """Every command as it is typed after ``dbsync-mq``: ``init``, ``nodes list``..."""
    found = []
    for name, command in group.commands.items():
        found.append(prefix + name)
        if isinstance(command, click.Group):
            found += _paths(command, f"{prefix}{name} ")
    return sorted(found)


COMMANDS = _paths(main)


def command_at(path: str) -> click.Command:
    command: click.Command = main
    for name in path.split():
        assert isinstance(command, click.Group)
        command = command.commands[name]
    return command


# No broker, whatever the environment running the tests says.
NO_SERVICES_ENV = {
    "DBSYNC_BROKER_URL": None,
    "DBSYNC_DATABASE_URL": None,
    "DBSYNC_MODELS": None,
    "DBSYNC_NAMESPACE": None,
}


def documentation() -> str:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*"))]
    return "\n".join(page.read_text(encoding="utf-8") for page in pages if page.is_file())


def test_the_cli_has_commands() -> None:
    assert {"init", "enroll", "worker"} <= set(COMMANDS)


def test_the_top_level_help_lists_every_command() -> None:
    result = CliRunner().invoke(main, ["--help"], env=NO_SERVICES_ENV)

    assert result.exit_code == 0, result.output
    assert "Offline-first synchronization" in result.stdout
    for name in main.commands:
        assert re.search(rf"^\s+{name}\s+\S", result.stdout, re.MULTILINE), name


def test_the_operator_commands_are_groups_with_subcommands() -> None:
    assert {"nodes list", "nodes show", "nodes forget", "nodes disable", "nodes enable"} <= set(
        COMMANDS
    )
    assert {"dead-letters list", "dead-letters show", "dead-letters requeue"} <= set(COMMANDS)
    assert "dead-letters purge" in COMMANDS


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help_with_a_description(name: str) -> None:
    command = command_at(name)
    description = (command.help or "").strip()
    assert description, f"{name} has no description"

    result = CliRunner().invoke(main, [*name.split(), "--help"], env=NO_SERVICES_ENV)

    assert result.exit_code == 0, result.output
    assert f" {name} [OPTIONS]" in result.stdout
    assert description.splitlines()[0] in result.stdout


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_is_documented_in_the_readme_or_docs(name: str) -> None:
    # Documented means shown as it is typed: `dbsync-mq <command>`.
    spelled = r"\s+".join(re.escape(word) for word in name.split())
    documented = re.search(rf"dbsync-mq\s+{spelled}\b", documentation()) is not None

    assert documented, f"`dbsync-mq {name}` appears neither in README.md nor under docs/"


def test_enroll_after_init_prints_only_a_url_safe_token(tmp_path: Path) -> None:
    # Given a server database initialised without a broker
    database = f"sqlite:///{tmp_path / 'server.db'}"
    runner = CliRunner()
    init = runner.invoke(
        main, ["init", "--db", database, "--models", "tests.models"], env=NO_SERVICES_ENV
    )
    assert init.exit_code == 0, init.output

    # When a token is issued
    result = runner.invoke(main, ["enroll", "--db", database], env=NO_SERVICES_ENV)

    # Then standard output holds the token and nothing else, ready for $(dbsync-mq enroll)
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 1, result.stdout
    assert re.fullmatch(r"[A-Za-z0-9_-]{40,}", lines[0])


def test_two_enrollments_issue_different_tokens(tmp_path: Path) -> None:
    database = f"sqlite:///{tmp_path / 'server.db'}"
    runner = CliRunner()
    runner.invoke(main, ["init", "--db", database, "--models", "tests.models"], env=NO_SERVICES_ENV)

    tokens = {
        runner.invoke(main, ["enroll", "--db", database], env=NO_SERVICES_ENV).stdout
        for _ in range(2)
    }

    assert len(tokens) == 2


# --- what a new user meets -----------------------------------------------------------

MISSING_DRIVER_URL = "postgresql+psycopg://app@127.0.0.1:1/app"


def commands_with(option: str) -> list[str]:
    return [name for name in COMMANDS if any(p.name == option for p in command_at(name).params)]


@pytest.mark.parametrize("name", commands_with("database_url"))
def test_a_missing_postgresql_driver_is_one_line_naming_the_extra(
    name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a machine without psycopg
    monkeypatch.setitem(sys.modules, "psycopg", None)
    arguments = {"teardown": ["--namespace", "app"], "dead-letters show": ["id"]}
    for node_command in ("disable", "enable", "nodes disable", "nodes enable", "nodes show"):
        arguments[node_command] = ["1"]
    arguments["nodes forget"] = ["1", "--yes"]
    for with_models in commands_with("models"):
        arguments[with_models] = ["--models", "tests.models"]

    # When a command is given a PostgreSQL URL
    result = CliRunner().invoke(
        main,
        [*name.split(), "--db", MISSING_DRIVER_URL, *arguments.get(name, [])],
        env=NO_SERVICES_ENV,
    )

    # Then it fails with one line that says what to install, never a traceback
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), result.exception
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "pip install 'dbsync-mq[postgresql]'" in lines[0]


def test_the_readme_shows_the_postgresql_extra_for_the_server() -> None:
    assert "pip install 'dbsync-mq[postgresql]'" in (ROOT / "README.md").read_text()


@pytest.mark.parametrize("name", commands_with("models"))
def test_models_modules_are_found_in_the_current_directory(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a module that exists only in the current directory (defining no tracked model)
    module = f"local_models_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{module}.py").write_text('"""No tracked model here."""\n')
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    database = f"sqlite:///{tmp_path / 'server.db'}"

    # When a command is told to import it
    result = CliRunner().invoke(
        main,
        [name, "--db", database, "--models", module, "--broker", "amqp://guest:guest@127.0.0.1:1/"],
        env=NO_SERVICES_ENV,
    )
    sys.modules.pop(module, None)

    # Then it was imported (and found to hold no tracked model)
    assert result.exit_code != 0
    assert "cannot import models module" not in result.stderr
    assert f"no tracked models in {module}" in result.stderr


def test_disable_and_enable_say_what_they_did(tmp_path: Path) -> None:
    # Given a server with one registered node
    database = f"sqlite:///{tmp_path / 'server.db'}"
    runner = CliRunner()
    runner.invoke(main, ["init", "--db", database, "--models", "tests.models"], env=NO_SERVICES_ENV)
    engine = sa.create_engine(database)
    with engine.begin() as connection:
        connection.execute(
            schema.nodes.insert().values(
                id=7, public_key=b"k" * 32, registered_at=dt.datetime(2026, 1, 1)
            )
        )
    engine.dispose()

    # When it is disabled, then enabled again
    disabled = runner.invoke(main, ["disable", "--db", database, "7"], env=NO_SERVICES_ENV)
    enabled = runner.invoke(main, ["enable", "--db", database, "7"], env=NO_SERVICES_ENV)

    # Then each says what it did
    assert disabled.exit_code == enabled.exit_code == 0
    assert "node 7 disabled" in disabled.output
    assert "node 7 enabled" in enabled.output
