"""Pulls arrive in chunks; a node without local changes merges them one at a time."""

from __future__ import annotations

import zlib

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from dbsync_mq.config import ServerSettings
from dbsync_mq.storage import schema
from tests.conftest import table_rows, write
from tests.models import City, Note, Person, Tag

pytestmark = pytest.mark.broker


@pytest.fixture
def server_settings() -> ServerSettings:
    return ServerSettings(pull_chunk_changes=1)


def test_a_pull_of_many_chunks_reaches_the_same_rows(make_node, worker, server_url):
    a, b = make_node("a"), make_node("b")
    write(a.engine, *(City(name=f"c{i}") for i in range(5)))
    with Session(a.engine) as session:
        session.add_all(Person(name=f"p{i}", city_id=i + 1) for i in range(5))
        session.commit()
    a.sync()
    result = b.pull()
    assert result.changes == 10
    engine = sa.create_engine(server_url)
    assert table_rows(b.engine) == table_rows(engine)
    engine.dispose()


def test_unique_values_swapped_across_chunks_are_merged_together(make_node, worker, server_url):
    # Given two nodes that both hold tags red (1) and blue (2)
    a, b = make_node("a"), make_node("b")
    write(a.engine, Tag(label="red"), Tag(label="blue"))
    a.sync()
    b.sync()

    # When a swaps the labels, and b pulls them one change per chunk
    with Session(a.engine) as session:
        red, blue = session.get(Tag, 1), session.get(Tag, 2)
        red.label = "swap"
        session.flush()
        blue.label = "red"
        session.flush()
        red.label = "blue"
        session.commit()
    a.sync()
    b.sync()

    # Then b holds the swapped labels, as the server does
    assert sorted(row[1:] for row in table_rows(b.engine)["tag"]) == [("blue",), ("red",)]
    assert dict(table_rows(b.engine)["tag"]) == {1: "blue", 2: "red"}
    engine = sa.create_engine(server_url)
    assert table_rows(b.engine) == table_rows(engine)
    engine.dispose()


def test_a_version_stored_denser_than_the_inflation_limit_still_serves_pulls(
    make_node, worker, server_url
):
    # Given a version whose stored changes inflate far more than 32 times their size,
    # as the server stored them before that limit
    a, b = make_node("a"), make_node("b")
    write(a.engine, *(Note(text="x" * 10_000) for _ in range(20)))
    a.sync()
    engine = sa.create_engine(server_url)
    with engine.begin() as connection:
        stored = connection.execute(sa.select(schema.versions.c.changes)).scalar_one()
        packed = zlib.decompress(stored[1:])
        dense = b"\x00" + zlib.compress(packed, 1)
        assert len(packed) > 32 * len(dense)
        connection.execute(schema.versions.update().values(changes=dense))

    # When another node pulls it
    b.sync()

    # Then it holds the rows
    assert table_rows(b.engine) == table_rows(engine)
    engine.dispose()
