"""Dates and times keep their meaning on every hop: every datetime is stored and carried as UTC.

The server's PostgreSQL sessions run in a time zone other than UTC here (as on
many servers), so a value that is read or written in the session's zone instead
of UTC shows.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.orm import Session

import dbsync_mq.server
from dbsync_mq import SyncClient, TrackingError
from tests.conftest import write
from tests.models import TRACKED, Note

UTC = dt.timezone.utc
BOGOTA = dt.timezone(dt.timedelta(hours=-5))
WRITTEN = dt.datetime(2026, 11, 1, 9, 30, tzinfo=BOGOTA)
"""An aware value as an application in UTC-5 writes it."""
IN_UTC = dt.datetime(2026, 11, 1, 14, 30)
"""The same instant, as a naive UTC value (what SQLite holds)."""
SERVER_TIME_ZONE = "Asia/Tokyo"


@pytest.fixture
def postgres_url(postgres_url: str) -> str:
    """The test's PostgreSQL database, with sessions in a time zone other than UTC."""
    url = sa.make_url(postgres_url).update_query_dict(
        {"options": f"-c timezone={SERVER_TIME_ZONE}"}
    )
    return url.render_as_string(hide_password=False)


def utc_wall(value: dt.datetime) -> dt.datetime:
    """A stored value as naive UTC: aware values converted, naive ones as they are."""
    if value.tzinfo is None:
        return value
    return value.astimezone(UTC).replace(tzinfo=None)


def stored_times(engine: sa.Engine, key: uuid.UUID) -> tuple[Any, Any]:
    """The ``created`` (naive column) and ``stamped`` (timezone column) values of a note."""
    table = Note.__table__
    with engine.connect() as connection:
        row = connection.execute(
            sa.select(table.c.created, table.c.stamped).where(table.c.id == key)
        ).one()
    return row[0], row[1]


def times_on_server(server_url: str, key: uuid.UUID) -> tuple[dt.datetime, dt.datetime]:
    engine = sa.create_engine(server_url)
    try:
        created, stamped = stored_times(engine, key)
    finally:
        engine.dispose()
    return utc_wall(created), utc_wall(stamped)


@pytest.fixture
def server_engine(worker_config: Any) -> Iterator[sa.Engine]:
    """The server application's own engine, with server-side writes installed."""
    engine = sa.create_engine(worker_config.database_url)
    dbsync_mq.server.install(engine)
    yield engine
    dbsync_mq.server.uninstall(engine)
    engine.dispose()


# --- node -> server -> node -------------------------------------------------------------


@pytest.mark.broker
def test_an_aware_datetime_written_on_a_node_keeps_its_instant_on_the_server_and_other_nodes(
    make_node, worker, server_url
):
    # Given an application in UTC-5 that writes an aware value in both kinds of column
    a, b = make_node("a"), make_node("b")
    key = uuid.uuid4()
    write(a.engine, Note(id=key, created=WRITTEN, stamped=WRITTEN))

    # When it syncs and another node syncs
    a.sync()
    b.sync()

    # Then the writer's SQLite, the server and the other node hold the same instant
    assert stored_times(a.engine, key) == (IN_UTC, IN_UTC)
    assert times_on_server(server_url, key) == (IN_UTC, IN_UTC)
    assert stored_times(b.engine, key) == (IN_UTC, IN_UTC)


@pytest.mark.broker
def test_a_naive_value_in_a_timezone_column_of_a_node_is_utc_on_the_server(
    make_node, worker, server_url
):
    # Given a node that writes a naive value in a timezone=True column (SQLite returns
    # nothing else): it is UTC
    a = make_node("a")
    key = uuid.uuid4()
    write(a.engine, Note(id=key, stamped=IN_UTC))

    # When it syncs
    a.sync()

    # Then the server holds that UTC instant, whatever its session's time zone
    engine = sa.create_engine(server_url)
    try:
        stamped = stored_times(engine, key)[1]
    finally:
        engine.dispose()
    assert utc_wall(stamped) == IN_UTC
    if stamped.tzinfo is not None:
        assert stamped == IN_UTC.replace(tzinfo=UTC)


# --- server -> node ------------------------------------------------------------------------


@pytest.mark.broker
def test_an_aware_datetime_written_on_the_server_lands_on_nodes_as_utc(
    make_node, worker, server_url, server_engine
):
    # Given an admin application in UTC-5 that writes on the server
    key = uuid.uuid4()
    a, b = make_node("a"), make_node("b")
    with Session(server_engine) as session:
        session.add(Note(id=key, created=WRITTEN, stamped=WRITTEN))
        session.commit()

    # When one node pulls it and another repairs
    a.sync()
    b.repair()

    # Then the server and both nodes hold the same instant, as UTC
    assert times_on_server(server_url, key) == (IN_UTC, IN_UTC)
    assert stored_times(a.engine, key) == (IN_UTC, IN_UTC)
    assert stored_times(b.engine, key) == (IN_UTC, IN_UTC)


# --- every write path of a node ------------------------------------------------------------


@pytest.fixture
def node_engine(tmp_path: Path) -> Iterator[sa.Engine]:
    """A node's database with the sync tables (no broker needed: nothing is sent)."""
    engine = sa.create_engine(f"sqlite:///{tmp_path / 'node.db'}")
    client = SyncClient(engine, broker_url="amqp://guest:guest@127.0.0.1:1/%2F", models=TRACKED)
    client.install()
    yield engine
    client.close()
    engine.dispose()


def _unit_of_work_update(session: Session, key: uuid.UUID) -> None:
    session.add(Note(id=key))
    session.flush()
    note = session.get(Note, key)
    assert note is not None
    note.created, note.stamped = WRITTEN, WRITTEN


def _untracked_write(session: Session, key: uuid.UUID) -> None:
    with dbsync_mq.untracked(session):
        session.add(Note(id=key, created=WRITTEN, stamped=WRITTEN))
        session.flush()


def _statement_update(session: Session, key: uuid.UUID) -> None:
    session.add(Note(id=key))
    session.flush()
    session.execute(
        sa.update(Note).where(Note.id == key).values({Note.created: WRITTEN, "stamped": WRITTEN})
    )


def _update_by_key(session: Session, key: uuid.UUID) -> None:
    session.add(Note(id=key))
    session.flush()
    session.execute(sa.update(Note), [{"id": key, "created": WRITTEN, "stamped": WRITTEN}])


WRITES: dict[str, Callable[[Session, uuid.UUID], Any]] = {
    "unit of work insert": lambda s, k: s.add(Note(id=k, created=WRITTEN, stamped=WRITTEN)),
    "unit of work update": _unit_of_work_update,
    "untracked write": _untracked_write,
    "bulk insert": lambda s, k: s.execute(
        sa.insert(Note), [{"id": k, "created": WRITTEN, "stamped": WRITTEN}]
    ),
    "bulk insert returning": lambda s, k: s.scalars(
        sa.insert(Note).returning(Note), [{"id": k, "created": WRITTEN, "stamped": WRITTEN}]
    ).all(),
    "insert values": lambda s, k: s.execute(
        sa.insert(Note).values(id=k, created=WRITTEN, stamped=WRITTEN)
    ),
    "insert of several values": lambda s, k: s.execute(
        sa.insert(Note).values([{"id": k, "created": WRITTEN, "stamped": WRITTEN}])
    ),
    "update statement": _statement_update,
    "bulk update by key": _update_by_key,
}


@pytest.mark.parametrize("path", list(WRITES))
def test_an_aware_datetime_is_stored_as_utc_on_every_write_path_of_a_node(node_engine, path):
    # Given an aware value written through one of the paths the capture sees
    key = uuid.uuid4()
    with Session(node_engine) as session:
        WRITES[path](session, key)
        session.commit()

    # Then SQLite holds the same instant, as UTC, in both kinds of column
    assert stored_times(node_engine, key) == (IN_UTC, IN_UTC)


def _add_and_flush(session: Session) -> None:
    session.add(Note(at=dt.time(9, 30, tzinfo=BOGOTA)))
    session.flush()


def _insert(session: Session) -> None:
    session.execute(sa.insert(Note), [{"id": uuid.uuid4(), "at": dt.time(9, tzinfo=UTC)}])


@pytest.mark.parametrize("path", [_add_and_flush, _insert], ids=["unit of work", "bulk insert"])
def test_a_time_with_an_offset_is_refused_on_a_node(node_engine, path):
    # Given a time of day with a UTC offset (no UTC equivalent without a date)
    # Then the write is refused, naming the column, and nothing is stored
    with Session(node_engine) as session, pytest.raises(TrackingError, match=r"note\.at"):
        path(session)
    with node_engine.connect() as connection:
        assert connection.execute(sa.select(sa.func.count()).select_from(Note)).scalar_one() == 0
