"""How a node writes a pulled chunk: straight to the driver when merging could only insert."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from dbsync_mq.core.changeset import encode_changes
from dbsync_mq.core.model import INSERT, UPDATE, Change
from dbsync_mq.storage import schema
from dbsync_mq.storage.engine import prepare, read_transaction, write_transaction
from dbsync_mq.storage.merging import Pulled, merge_pulled
from dbsync_mq.storage.models import ModelSet
from tests.models import Base, City, Person

MODELS = ModelSet.of([City, Person])
CITY, PERSON = MODELS.get("city").table, MODELS.get("person").table


def _node(path: Path) -> sa.Engine:
    engine = prepare(sa.create_engine(f"sqlite:///{path}"), foreign_keys=True, shared=True)
    schema.client_metadata.create_all(engine)
    Base.metadata.create_all(engine, tables=[CITY, PERSON])
    return engine


def _merge(engine: sa.Engine, *changes: Change) -> tuple[int, int]:
    with write_transaction(engine) as connection:
        merged = merge_pulled(
            connection, MODELS, Pulled(1, [encode_changes(changes)]), "node-wins", lambda: 0
        )
    return merged.changes, merged.max_hlc


def _rows(engine: sa.Engine, table: sa.Table) -> list[tuple[object, ...]]:
    with read_transaction(engine) as connection:
        return [tuple(row) for row in connection.execute(sa.select(table).order_by(table.c.id))]


def test_new_rows_are_inserted_with_the_stamps_they_carry_and_nothing_is_logged(
    tmp_path: Path,
) -> None:
    # Given a new node, and a chunk that lists a person before the city it lives in
    engine = _node(tmp_path / "node.db")
    person = Change("person", 1, INSERT, 7, {"id": 1, "name": "Ana", "city_id": 2})
    city = Change("city", 2, INSERT, 5, {"id": 2, "name": "Lima", "population": 9}, {"name": 8})

    # When it is merged
    changes, max_hlc = _merge(engine, person, city)

    # Then both rows are there, no local change is logged, and the stamps were seen
    assert _rows(engine, CITY) == [(2, "Lima", 9)]
    assert _rows(engine, PERSON) == [(1, "Ana", 2)]
    assert (changes, max_hlc) == (2, 8)
    assert _rows(engine, schema.operations) == []
    engine.dispose()


def test_an_insert_of_a_row_the_node_holds_updates_it(tmp_path: Path) -> None:
    # Given a node that holds city 1 already (not a local change: written by an earlier pull)
    engine = _node(tmp_path / "node.db")
    _merge(engine, Change("city", 1, INSERT, 1, {"id": 1, "name": "old", "population": 1}))

    # When a chunk inserts city 1 again, with city 3 and an update of a city it lacks
    _merge(
        engine,
        Change("city", 1, INSERT, 2, {"id": 1, "name": "new", "population": 2}),
        Change("city", 3, INSERT, 3, {"id": 3, "name": "three", "population": 3}),
        Change("city", 4, UPDATE, 4, {"id": 4, "name": "four", "population": 4}, {"name": 4}),
    )

    # Then the held row takes the new values and the others are inserted
    assert _rows(engine, CITY) == [(1, "new", 2), (3, "three", 3), (4, "four", 4)]
    assert _rows(engine, schema.operations) == []
    engine.dispose()
