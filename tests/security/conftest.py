"""Targets for the attacks: a server handled directly (no broker), and a live worker.

``direct`` is a copy of a prepared SQLite server database with three nodes
(a, b; c disabled) and one applied push, served by ``Server.handle``: fast,
so every case runs on its own. ``live`` is the same set-up through the real
broker and worker, on SQLite and PostgreSQL, with ``Wire`` to publish raw
messages and collect dead letters and replies.
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pika
import pytest
import sqlalchemy as sa

from dbsync_mq import commands
from dbsync_mq.config import ServerSettings
from dbsync_mq.core import messages, signing
from dbsync_mq.core.model import INSERT, Change
from dbsync_mq.server import Outcome, Server, initialize, issue_enrollment
from dbsync_mq.storage import local, schema
from dbsync_mq.storage.models import ModelSet
from dbsync_mq.transport.base import Message
from dbsync_mq.transport.topology import Topology
from tests.conftest import MODELS, write
from tests.models import City
from tests.probe import ServerProbe, table_rows
from tests.security import cases
from tests.security.forge import Forge, new_id
from worker.process import create_server_engine

SETTINGS = ServerSettings(max_message_bytes=cases.MAX_BYTES)
COLLECT_SECONDS = 20.0
"""Longest wait for the dead letters and replies of one batch of cases."""


@pytest.fixture
def server_settings() -> ServerSettings:
    return SETTINGS


# --- outcomes --------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """A reply as the node would read it: to which node, which request, what code."""

    node: int | None
    request_id: str
    code: str  # cases.OK or the error code


def read_reply(body: bytes, server_key: bytes, kind: str) -> messages.Reply:
    """Verify a reply's signature with the server's key, then decode it."""
    signed, signature = signing.open_envelope(body, 1 << 30)
    signing.verify(signed, signature, signing.load_public_key(server_key))
    return messages.decode_reply(signed, kind)


def answer_of(reply: messages.Reply, node: int | None) -> Answer:
    code = cases.OK if reply.status == messages.OK else reply.code or "?"
    return Answer(node, reply.request_id, code)


def expected_answer(case: cases.Case, message: Message) -> Answer | None:
    if case.expect == cases.DEAD:
        return None
    header = message.headers.get("node")
    node = int(header) if isinstance(header, str) and header.isdigit() else None
    return Answer(node, message.correlation_id, case.expect)


def check_outcome(case: cases.Case, message: Message, outcome: Outcome, server_key: bytes) -> None:
    """The server's outcome is the case's: a dead letter without reply, or one signed reply."""
    assert isinstance(outcome, Outcome)
    replies = [item for item in outcome.outgoing if not item.event]
    if case.expect == cases.DEAD:
        assert (outcome.disposition, replies) == ("dead-letter", []), outcome.reason
        return
    assert outcome.disposition == "ack", outcome.reason
    assert len(replies) == 1
    kind = message.kind if message.kind in messages.REQUEST_KINDS else messages.PING
    reply = read_reply(replies[0].message.body, server_key, kind)
    assert answer_of(reply, replies[0].node_id) == expected_answer(case, message), reply.reason


# --- the direct target --------------------------------------------------------------------


@dataclass
class Direct:
    server: Server
    target: cases.Target
    probe: ServerProbe

    def handle(self, message: Message) -> Outcome:
        return self.server.handle(message)


def _register_with(
    server: Server, engine: sa.Engine, token: str
) -> tuple[Forge, tuple[str, bytes]]:
    """Register a new node through ``server``; return it and its registration message."""
    issue_enrollment(engine, token, dt.timedelta(hours=1))
    forge = Forge.stranger()
    message = forge.register(token)
    outcome = server.handle(message)
    [item] = list(outcome.outgoing)
    reply = read_reply(item.message.body, server.public_key, messages.REGISTER)
    return Forge(reply.body["node"], forge.seed), (message.correlation_id, message.body)


def _register(server: Server, engine: sa.Engine) -> Forge:
    return _register_with(server, engine, new_id())[0]


def origin_push(forge: Forge, base: int = 0) -> Message:
    """The genuine push every target has applied: city 1, "origin"."""
    return forge.push([Change("city", 1, INSERT, 1, {"id": 1, "name": "origin"})], base)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, cases.Target]:
    """A server database with nodes a, b, c (disabled), o, and o's push applied."""
    path = tmp_path_factory.mktemp("template") / "server.db"
    engine = create_server_engine(f"sqlite:///{path}")
    models = ModelSet.in_modules(MODELS)
    initialize(engine, models)
    server = Server(engine, models, settings=SETTINGS)
    tokens = {"used": new_id(), "expired": new_id(), "fresh": new_id()}
    a, b, o = _register(server, engine), _register(server, engine), _register(server, engine)
    c, registration = _register_with(server, engine, tokens["used"])
    issue_enrollment(engine, tokens["expired"], dt.timedelta(seconds=-1))
    issue_enrollment(engine, tokens["fresh"], dt.timedelta(hours=1))
    with engine.begin() as connection:
        connection.execute(
            schema.nodes.update().where(schema.nodes.c.id == c.node_id).values(enabled=False)
        )
    applied = origin_push(o)
    outcome = server.handle(applied)
    assert outcome.version == 1
    engine.dispose()
    target = cases.Target(a, b, c, 1, o, applied.correlation_id, applied.body, tokens, registration)
    return path, target


@pytest.fixture
def direct(template: tuple[Path, cases.Target], tmp_path: Path) -> Iterator[Direct]:
    """A fresh copy of the template, served without a broker."""
    path, target = template
    copy = tmp_path / "server.db"
    shutil.copy(path, copy)
    url = f"sqlite:///{copy}"
    engine = create_server_engine(url)
    server = Server(engine, ModelSet.in_modules(MODELS), settings=SETTINGS)
    yield Direct(server, target, ServerProbe(url))
    engine.dispose()


# --- the live target ------------------------------------------------------------------------


class Wire:
    """Raw access to the broker, as an attacker with broker credentials has."""

    def __init__(self, broker_url: str, namespace: str, server_key: bytes) -> None:
        self.topology = Topology(namespace)
        self.server_key = server_key
        self.connection = pika.BlockingConnection(pika.URLParameters(broker_url))
        self.channel = self.connection.channel()
        self.channel.confirm_delivery()

    def publish(self, message: Message) -> None:
        routing_key = message.kind if message.kind in messages.REQUEST_KINDS else messages.PUSH
        self.channel.basic_publish(
            self.topology.requests_exchange,
            routing_key,
            message.body,
            pika.BasicProperties(
                type=message.kind,
                message_id=message.message_id,
                correlation_id=message.correlation_id,
                headers=dict(message.headers),
                reply_to=message.reply_to,
                delivery_mode=pika.DeliveryMode.Persistent,
            ),
            mandatory=True,
        )

    def _drain(self, queue: str, count: int, timeout: float) -> list[tuple[Any, bytes]]:
        received: list[tuple[Any, bytes]] = []
        deadline = time.monotonic() + timeout
        if count == 0:
            return received
        for method, properties, body in self.channel.consume(queue, inactivity_timeout=0.1):
            if method is not None:
                self.channel.basic_ack(method.delivery_tag)
                received.append((properties, body))
            if len(received) >= count or time.monotonic() > deadline:
                break
        self.channel.cancel()
        return received

    def dead_letters(self, count: int, timeout: float = COLLECT_SECONDS) -> list[str]:
        """Message ids of ``count`` dead letters (fewer if time runs out)."""
        return [
            properties.message_id
            for properties, _body in self._drain(self.topology.dead_letter_queue, count, timeout)
        ]

    def answers(
        self, node: int, count: int, kinds: dict[str, str], timeout: float = COLLECT_SECONDS
    ) -> list[Answer]:
        """``count`` replies from ``node``'s queue, verified; ``kinds`` maps request ids
        to request kinds (to decode reply bodies)."""
        found = []
        for properties, body in self._drain(self.topology.node_queue(node), count, timeout):
            kind = kinds.get(properties.correlation_id, messages.PING)
            found.append(answer_of(read_reply(body, self.server_key, kind), node))
        return found

    def depth(self, queue: str) -> int:
        return int(self.channel.queue_declare(queue, passive=True).method.message_count)

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()


@dataclass
class Live:
    target: cases.Target
    wire: Wire
    probe: ServerProbe
    nodes: dict[str, Any]

    def attack(
        self, batch: Iterable[cases.Case]
    ) -> tuple[Counter[str], list[Answer], Counter[Answer]]:
        """Publish every case; return (dead letters expected, answers expected, answers got)."""
        expected_dead: Counter[str] = Counter()
        expected: list[Answer] = []
        kinds: dict[str, str] = {}
        for case in batch:
            message = case.build(self.target)
            self.wire.publish(message)
            kinds[message.correlation_id] = message.kind
            answer = expected_answer(case, message)
            if answer is None:
                expected_dead[message.message_id] += 1
            else:
                expected.append(answer)
        got: Counter[Answer] = Counter()
        for node in sorted({answer.node for answer in expected if answer.node is not None}):
            wanted = sum(1 for answer in expected if answer.node == node)
            got.update(self.wire.answers(node, wanted, kinds))
        return expected_dead, expected, got


def _identity(node: Any) -> Forge:
    with node.engine.connect() as connection:
        identity = local.load_identity(connection)
    assert identity is not None
    return Forge(identity.node_id, identity.private_key)


@pytest.fixture
def live(
    make_node: Any, worker: Any, broker_url: str, namespace: str, server_url: str
) -> Iterator[Live]:
    """A worker, nodes a, b and c (disabled), and node o's "origin" push applied."""
    nodes = {name: make_node(name) for name in "abco"}
    assert commands.set_node_enabled(server_url, nodes["c"].node_id, False)
    a, b, c, o = (_identity(nodes[name]) for name in "abco")
    wire = Wire(broker_url, namespace, worker.server.public_key)
    try:
        applied = origin_push(o)  # by a node whose client never runs again: its own push is
        wire.publish(applied)  # a version it would believe it already holds
        [answer] = wire.answers(o.node_id, 1, {applied.correlation_id: messages.PUSH})
        assert answer.code == cases.OK
        nodes["a"].sync()  # every node that syncs later starts level with the server
        nodes["b"].sync()
        for node in nodes.values():
            node.close()
        target = cases.Target(a, b, c, 1, o, applied.correlation_id, applied.body)
        yield Live(target, wire, ServerProbe(server_url), nodes)
    finally:
        wire.close()


def prove_a_genuine_sync_works(live: Live) -> None:
    """After an attack, nodes a and b still sync through the same worker."""
    a, b = live.nodes["a"], live.nodes["b"]
    write(a.engine, City(name="genuine"))
    assert a.sync().pushed == 1
    b.sync()
    assert "genuine" in live.probe.column(City, "name")
    assert table_rows(a.engine) == table_rows(b.engine) == live.probe.rows()
