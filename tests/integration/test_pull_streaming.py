"""Pulls of long ranges: read in two passes, or as the tables are now for a new node."""

from __future__ import annotations

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from dbsync_mq.config import ServerSettings
from dbsync_mq.storage import schema
from tests.conftest import table_rows, write
from tests.models import City, Person

pytestmark = pytest.mark.broker

IN_MEMORY = 6
"""Operations a pull may hold whole here: every range below is longer."""


@pytest.fixture
def server_settings() -> ServerSettings:
    return ServerSettings(pull_in_memory_operations=IN_MEMORY, pull_chunk_changes=4)


def _history(node) -> None:
    """Inserts, updates and deletes of related rows, over several versions."""
    write(node.engine, *(City(name=f"c{i}", population=i) for i in range(8)))
    node.sync()
    with Session(node.engine) as session:
        session.add_all(Person(name=f"p{i}", city_id=i + 1) for i in range(6))
        for city in session.scalars(sa.select(City)):
            city.population += 10
        session.commit()
    node.sync()
    with Session(node.engine) as session:
        for person in session.scalars(sa.select(Person).where(Person.id > 3)):
            session.delete(person)
        session.delete(session.get(City, 8))
        session.get(City, 1).name = "renamed"
        session.commit()
    node.sync()


def test_a_long_range_read_in_two_passes_reaches_the_servers_rows(make_node, worker, probe):
    # Given a node that took part early, then stayed away while another wrote a history
    a, b = make_node("a"), make_node("b")
    write(b.engine, City(name="b's"))
    b.sync()
    a.sync()
    _history(a)
    with Session(b.engine) as session:  # and b changed a row of its own meanwhile
        session.get(City, 1).population = 99
        session.commit()

    # When it syncs, pulling a range longer than a pull holds whole
    b.sync()
    a.sync()

    # Then both hold the server's rows, b's own change merged with the others'
    assert table_rows(b.engine) == table_rows(a.engine) == probe.rows()
    assert (1, "renamed", 99) in table_rows(b.engine)["city"]


def test_a_new_node_gets_the_tables_as_they_are_not_their_history(
    make_node, worker, probe, server_url
):
    # Given a long history that ends with few rows
    a = make_node("a")
    _history(a)
    with Session(a.engine) as session:
        for person in session.scalars(sa.select(Person)):
            session.delete(person)
        for city in session.scalars(sa.select(City).where(City.id > 2)):
            session.delete(city)
        session.commit()
    a.sync()

    # And versions the new node could not read anyway: the history is not what it gets
    engine = sa.create_engine(server_url)
    with engine.begin() as connection:
        connection.execute(schema.versions.update().values(changes=b"\xc1"))
    engine.dispose()

    # When a new node pulls from version 0
    b = make_node("b")
    result = b.pull()

    # Then it got the two rows there are now
    assert result.changes == 2
    assert table_rows(b.engine) == probe.rows()
