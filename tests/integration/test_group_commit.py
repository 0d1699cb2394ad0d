"""Group commit: several pushes in hand applied in one transaction, each its own version."""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Iterator

import pytest
import sqlalchemy as sa

from dbsync_mq import commands
from dbsync_mq.core import messages
from dbsync_mq.core.model import INSERT, Change
from dbsync_mq.server import Server
from dbsync_mq.storage.models import ModelSet
from tests.e2e.operations import city
from tests.models import City, Person
from tests.probe import ServerProbe
from tests.reliability.conftest import register_directly
from tests.security.conftest import read_reply

MODELS = ("tests.models",)


@pytest.fixture
def server(server_url: str) -> Iterator[Server]:
    commands.init(server_url, MODELS)
    engine = sa.create_engine(server_url)
    stages: list[tuple[str, str]] = []
    server = Server(
        engine,
        ModelSet.in_modules(list(MODELS)),
        on_stage=lambda stage, _kind, request_id: stages.append((stage, request_id)),
    )
    server.stages = stages  # type: ignore[attr-defined]
    yield server
    engine.dispose()


def _person(person_id: int, city_id: int) -> Change:
    return Change(
        "person", person_id, INSERT, 1, {"id": person_id, "name": "p", "city_id": city_id}
    )


def test_pushes_in_hand_make_one_version_each_and_a_refused_one_rolls_back_alone(
    server, probe: ServerProbe
):
    # Given four nodes' pushes in hand: two good, one the database refuses midway
    # (a row pointing at a city that does not exist, after a row that would be fine),
    # and a copy of the first, as a redelivery would bring
    a, b, c = (register_directly(server) for _ in range(3))
    first = a.push([city(1, "first")], 0)
    broken = b.push([city(2, "left out"), _person(1, 999)], 1)
    last = c.push([city(3, "last")], 0)

    # When they are served together
    outcomes = server.handle_pushes([first, broken, last, first])

    # Then the good ones are versions 1 and 2, the refused one has its own error reply,
    # and the copy is answered from the first's stored reply
    assert [o.version for o in outcomes] == [1, None, 2, None]
    assert [o.code for o in outcomes] == [None, "constraint-violation", None, None]
    replies = [[i.message.body for i in o.outgoing if not i.event] for o in outcomes]
    assert replies[3] == replies[0]
    refusal = read_reply(replies[1][0], server.public_key, messages.PUSH)
    assert refusal.status == messages.ERROR
    # And one event per version made
    assert [sum(i.event for i in o.outgoing) for o in outcomes] == [1, 0, 1, 0]
    # And nothing of the refused push was written; the others once each, gap-free
    assert probe.assert_gap_free() == 2
    assert sorted(probe.column(City, "name")) == ["first", "last"]
    assert probe.count(Person.__table__) == 0
    assert sorted(probe.push_request_ids()) == sorted([first.message_id, last.message_id])
    # And all were applied in one transaction: every push entered it before any committed
    stages = [stage for stage, _id in server.stages]
    assert stages.index("after-commit") > max(
        i for i, stage in enumerate(stages) if stage == "in-transaction"
    )


def test_a_push_behind_a_push_of_the_same_batch_is_applied_on_top_of_it(server, probe):
    # Given two nodes at version 0, both pushing
    a, b = register_directly(server), register_directly(server)

    # When their pushes are served together
    outcomes = server.handle_pushes([a.push([city(1, "a")], 0), b.push([city(2, "b")], 0)])

    # Then the second is applied on top of the first, as it would be alone
    assert [o.version for o in outcomes] == [1, 2]
    assert probe.assert_gap_free() == 2


def test_requests_that_cannot_join_the_group_are_served_alone(server, probe):
    # Given a good push, one with a bad signature, and a pull among them
    a = register_directly(server)
    good = a.push([city(1, "good")], 0)
    signed = a.push([city(2, "forged")], 0)
    forged = dataclasses.replace(signed, body=signed.body[:-1] + bytes([signed.body[-1] ^ 1]))

    # When they are served together
    outcomes = server.handle_pushes([forged, good, a.pull(0)])

    # Then the forged one is dead-lettered, the good one applied, the pull answered
    assert [o.disposition for o in outcomes] == ["dead-letter", "ack", "ack"]
    assert outcomes[1].version == 1
    assert probe.assert_gap_free() == 1


def test_a_push_refused_midway_through_the_versions_leaves_no_statement_open(
    server, server_url, probe
):
    # Given two versions
    a, b, c = (register_directly(server) for _ in range(3))
    for version, key in enumerate((1, 2)):
        assert server.handle(a.push([city(key, f"a{key}")], version)).version == version + 1
    gc.disable()  # what only the collector would free stays: as in a busy worker
    try:
        # And a push behind both that shares a row with the first: it is refused while
        # the versions it is checked against are still being read
        [refused] = server.handle_pushes([b.push([city(1, "clash")], 0)])
        assert refused.code == "pull-required"

        # When another server commits meanwhile
        other = Server(sa.create_engine(server_url), server.models)
        try:
            assert other.handle(c.push([city(3, "c")], 2)).version == 3
        finally:
            other.engine.dispose()

        # Then the first server's next group still commits (on SQLite, a statement left
        # open would hold an old snapshot, and the next write would fail at once)
        [accepted] = server.handle_pushes([a.push([city(4, "a4")], 3)])
    finally:
        gc.enable()
    assert accepted.version == 4
    assert probe.assert_gap_free() == 4
