"""``dbsync-mq trim`` as an operator runs it, against the real worker and server database."""

from __future__ import annotations

import pytest

from dbsync_mq.storage import schema
from tests.conftest import table_rows, write
from tests.e2e.operations import cli
from tests.models import City

pytestmark = [pytest.mark.broker, pytest.mark.e2e]


def test_trim_deletes_what_every_node_merged_and_with_keep_days_what_is_older(
    make_node, worker, server_url, probe
):
    # Given node a that pushed two versions and pulled from the second
    a = make_node("a")
    for name in ("one", "two"):
        write(a.engine, City(name=name))
        a.sync()
    a.sync()
    worker.activity.flush()

    # When the operator trims
    trimmed = cli("trim", "--db", server_url)

    # Then both versions are gone, and the command says so
    assert trimmed.returncode == 0, trimmed.stderr
    assert trimmed.stdout.strip() == (
        "trimmed through version 2 of 2: 2 versions and 0 stored replies deleted"
    )
    assert probe.count(schema.versions) == 0

    # Given a third version and node b, which never synced and so holds it back
    b = make_node("b")
    write(a.engine, City(name="three"))
    a.sync()
    held = cli("trim", "--db", server_url)
    assert held.returncode == 0, held.stderr
    assert held.stdout.strip() == (
        "trimmed through version 2 of 3: 0 versions and 0 stored replies deleted"
    )

    # When the operator keeps no day of history
    kept = cli("trim", "--db", server_url, "--keep-days", "0")

    # Then that version goes too, and b (at version 0) gets the tables as they are
    assert kept.returncode == 0, kept.stderr
    assert kept.stdout.startswith("trimmed through version 3 of 3: 1 version and")
    assert probe.count(schema.versions) == 0
    b.sync()
    assert table_rows(b.engine) == probe.rows()


def test_trim_refuses_a_negative_retention():
    refused = cli("trim", "--db", "sqlite://", "--keep-days", "-1")

    assert refused.returncode == 2
    assert "--keep-days" in refused.stderr
