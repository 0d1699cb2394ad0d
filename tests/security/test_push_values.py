"""Values that look like SQL are data: stored and delivered byte for byte."""

from __future__ import annotations

import datetime as dt
import uuid

import pytest
from sqlalchemy.orm import Session

from dbsync_mq.core import messages
from dbsync_mq.core.model import INSERT, Change
from tests.conftest import write
from tests.models import City, Note
from tests.probe import table_rows
from tests.security import cases

UTC_MINUS_5 = dt.timezone(dt.timedelta(hours=-5))

METACHARACTERS = [
    "Robert'); DROP TABLE city;--",
    "' OR '1'='1",
    '"; DELETE FROM sync_versions; --',
    "%s %(name)s :name ? $1 {0}",
    "\\ backslash \\' \\\" \\x00",
    "-- comment /* block */ #",
    "`tick` [bracket] ;",
    "\r\n\t\x0b\x0c",
    "😀 ünïcödé ‮right-to-left",
    "x" * 100,
]


@pytest.mark.broker
def test_values_with_sql_metacharacters_are_stored_and_delivered_verbatim(
    make_node, worker, probe, ledger, request
):
    # Given a node that writes values full of SQL metacharacters
    a, b = make_node("a"), make_node("b")
    notes = {
        uuid.uuid4(): (text, {text: [text, {"k": text}]}, text.encode("utf-8") + b"\x00\xff")
        for text in METACHARACTERS
    }
    write(a.engine, *(City(name=text) for text in METACHARACTERS))
    write(
        a.engine,
        *(Note(id=key, text=t, data=d, blob=blob) for key, (t, d, blob) in notes.items()),
    )
    ledger.bad_inputs(request.node.name, 2 * len(METACHARACTERS))

    # When it syncs and another node syncs
    a.sync()
    b.sync()

    # Then the server and the other node hold exactly those values
    assert sorted(probe.column(City, "name")) == sorted(METACHARACTERS)
    with Session(b.engine) as session:
        for key, (text, data, blob) in notes.items():
            note = session.get(Note, key)
            assert note is not None
            assert (note.text, note.data, note.blob) == (text, data, blob)
    assert table_rows(b.engine) == table_rows(a.engine) == probe.rows()


@pytest.mark.broker
def test_a_nul_character_in_text_is_stored_or_refused_whole_never_half_applied(
    live, server_url, ledger, request
):
    # Given a push whose second row holds a NUL character (PostgreSQL text cannot)
    t = live.target
    before = live.probe.snapshot()
    rows = [
        Change("city", 200, INSERT, 1, {"id": 200, "name": "plain"}),
        Change("city", 201, INSERT, 1, {"id": 201, "name": "nul\x00inside"}),
    ]
    message = t.a.push(rows, t.head)

    # When it arrives through the broker
    live.wire.publish(message)
    ledger.bad_inputs(request.node.name)
    [answer] = live.wire.answers(t.a.node_id, 1, {message.correlation_id: messages.PUSH})

    # Then SQLite stores both rows verbatim; PostgreSQL refuses the whole push
    if server_url.startswith("sqlite"):
        assert answer.code == cases.OK
        assert sorted(live.probe.column(City, "name")) == ["nul\x00inside", "origin", "plain"]
    else:
        assert answer.code == "invalid-value"
        assert live.probe.snapshot() == before


def test_pushed_datetimes_are_stored_in_utc_whatever_offset_they_carry(direct):
    # Given a push whose datetimes carry an offset of UTC-5 (a client that sends them as is)
    t = direct.target
    key = uuid.uuid4()
    written = dt.datetime(2026, 11, 1, 9, 30, tzinfo=UTC_MINUS_5)
    change = Change("note", key, INSERT, 1, {"id": key, "created": written, "stamped": written})

    # When the server applies it
    outcome = direct.handle(t.a.push([change], t.head))

    # Then the naive column and the timezone column hold that instant in UTC
    assert outcome.version == t.head + 1, outcome.reason
    in_utc = dt.datetime(2026, 11, 1, 14, 30)
    assert direct.probe.column(Note, "created") == direct.probe.column(Note, "stamped") == [in_utc]


def test_a_pushed_time_of_day_with_an_offset_is_refused(direct):
    # Given a push holding a time of day with an offset, which UTC cannot express
    t = direct.target
    before = direct.probe.snapshot()
    key = uuid.uuid4()
    change = Change("note", key, INSERT, 1, {"id": key, "at": dt.time(9, 30, tzinfo=UTC_MINUS_5)})

    # When the server handles it
    outcome = direct.handle(t.a.push([change], t.head))

    # Then it is refused whole, naming the column
    assert outcome.code == "invalid-value"
    assert "note.at" in outcome.reason
    assert direct.probe.snapshot() == before
