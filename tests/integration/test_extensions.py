"""Extensions: non-column data (a photo file) travelling with rows, callbacks after commit."""

from __future__ import annotations

import threading

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

from dbsync_mq import ExtensionError
from dbsync_mq.extensions import _registry, extend
from tests.conftest import write
from tests.models import Person

pytestmark = pytest.mark.broker


class PhotoStores:
    """One photo store per side: the worker's thread is the server, ``current`` a node."""

    def __init__(self) -> None:
        self.stores: dict[str, dict[int, bytes]] = {"server": {}, "a": {}, "b": {}}
        self.current = "a"
        self.fail_saves_on: str | None = None

    def side(self) -> dict[int, bytes]:
        if threading.current_thread().name == "dbsync-handler":
            return self.stores["server"]
        return self.stores[self.current]

    def load(self, person: Person) -> bytes | None:
        if person.name == "unreadable":
            raise OSError("disk error")
        return self.side().get(person.id)

    def save(self, person: Person, data: bytes) -> None:
        if (
            self.fail_saves_on == self.current
            and threading.current_thread().name != "dbsync-handler"
        ):
            raise OSError("disk full")
        self.side()[person.id] = data

    def delete(self, person: Person) -> None:
        self.side().pop(person.id, None)


@pytest.fixture
def photos(monkeypatch) -> PhotoStores:
    stores = PhotoStores()
    monkeypatch.setitem(_registry, Person, {})
    extend(Person, "photo", load=stores.load, save=stores.save, delete=stores.delete)
    return stores


def test_extension_data_travels_with_its_row_and_follows_deletes(make_node, worker, photos):
    a, b = make_node("a"), make_node("b")

    # Given a person with a photo on node a
    write(a.engine, Person(name="Ana"))
    photos.stores["a"][1] = b"\xff\xd8jpeg"

    # When a pushes and b pulls, the photo is saved on the server, then on b
    a.sync()
    assert photos.stores["server"] == {1: b"\xff\xd8jpeg"}
    photos.current = "b"
    result = b.sync()
    assert photos.stores["b"] == {1: b"\xff\xd8jpeg"}
    assert result.extension_failures == []

    # And deleting the row deletes the photo everywhere
    photos.current = "a"
    with Session(a.engine) as session:
        session.delete(session.scalars(sa.select(Person)).one())
        session.commit()
    a.sync()
    photos.current = "b"
    b.sync()
    assert photos.stores["server"] == {}
    assert photos.stores["b"] == {}


def test_a_failing_save_is_reported_and_the_rows_stay_merged(make_node, worker, photos):
    a, b = make_node("a"), make_node("b")
    write(a.engine, Person(name="Ana"))
    photos.stores["a"][1] = b"photo"
    a.sync()

    photos.current = "b"
    photos.fail_saves_on = "b"
    result = b.sync()

    (failure,) = result.extension_failures
    assert (failure.table, failure.key, failure.extension) == ("person", 1, "photo")
    assert "disk full" in failure.error
    with Session(b.engine) as session:
        assert session.scalars(sa.select(Person.name)).all() == ["Ana"]


def test_a_failing_load_stops_the_push_before_it_is_sent(make_node, worker, photos):
    node = make_node("a")
    write(node.engine, Person(name="unreadable"))
    with pytest.raises(ExtensionError, match="disk error"):
        node.push()
    assert node.pending_operations() == 1
    assert node.version == 0
