"""A pull that finds nothing new is answered from one read, with no snapshot."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import write
from tests.models import City

pytestmark = pytest.mark.broker

_TRANSACTION_CONTROL = ("BEGIN", "COMMIT", "ROLLBACK")


@contextmanager
def recorded_statements(engine: sa.Engine) -> Iterator[list[str]]:
    """The statements ``engine`` runs meanwhile, but for transaction control and the
    worker's batched notes of node activity (written every few seconds, off the path)."""
    statements: list[str] = []

    def record(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        text = " ".join(statement.split())
        if text.upper().startswith(_TRANSACTION_CONTROL):
            return
        if text.upper().startswith("UPDATE SYNC_NODES"):
            return
        statements.append(text)

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        yield statements
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)


def test_a_pull_at_the_head_costs_one_read_and_no_snapshot(make_node, worker):
    # Given a node that has merged everything there is
    a = make_node("a")
    write(a.engine, City(name="Oslo"))
    a.sync()
    head = a.version

    # When it pulls again, with nothing new on the server
    with recorded_statements(worker.engine) as statements:
        result = a.pull()

    # Then it is told the head and nothing else, from a single statement
    assert (result.version, result.changes) == (head, 0)
    assert len(statements) == 1, statements
    assert "sync_versions" not in statements[0]


def test_a_pull_behind_the_head_still_reads_the_versions(make_node, worker):
    # Given a node one version behind
    a, b = make_node("a"), make_node("b")
    b.sync()
    write(a.engine, City(name="Oslo"))
    a.sync()

    # When it pulls
    with recorded_statements(worker.engine) as statements:
        result = b.pull()

    # Then the change is read from the versions and reaches it
    assert (result.version, result.changes) == (a.version, 1)
    assert any("sync_versions" in statement for statement in statements)
