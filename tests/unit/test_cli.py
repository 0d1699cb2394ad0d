"""The ``dbsync-mq`` command: every command has help and documentation; enroll is scriptable."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from dbsync_mq.cli import main

ROOT = Path(__file__).resolve().parents[2]
COMMANDS = sorted(main.commands)
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
    for name in COMMANDS:
        assert re.search(rf"^\s+{name}\s+\S", result.stdout, re.MULTILINE), name


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_has_help_with_a_description(name: str) -> None:
    command: click.Command = main.commands[name]
    description = (command.help or "").strip()
    assert description, f"{name} has no description"

    result = CliRunner().invoke(main, [name, "--help"], env=NO_SERVICES_ENV)

    assert result.exit_code == 0, result.output
    assert f" {name} [OPTIONS]" in result.stdout
    assert description.splitlines()[0] in result.stdout


@pytest.mark.parametrize("name", COMMANDS)
def test_every_command_is_documented_in_the_readme_or_docs(name: str) -> None:
    # Documented means shown as it is typed: `dbsync-mq <command>`.
    documented = re.search(rf"dbsync-mq\s+{name}\b", documentation()) is not None

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
