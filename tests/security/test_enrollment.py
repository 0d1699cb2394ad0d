"""Registering nodes: bad tokens are refused, floods create nothing, answers go only to
direct reply-to."""

from __future__ import annotations

import datetime as dt
import time

import pika
import pytest

from dbsync_mq import ReplyRejected, commands
from dbsync_mq.core import messages
from dbsync_mq.storage import schema
from dbsync_mq.transport.topology import DIRECT_REPLY_TO, Topology
from tests.security import cases
from tests.security.conftest import Answer, answer_of, check_outcome, read_reply
from tests.security.forge import Forge, new_id

FLOOD = 200
"""Bogus registrations sent through the broker in the flood test."""
DIRECT_FLOOD = 1_000
"""Bogus registrations handled directly in the flood test without a broker."""


@pytest.mark.parametrize("case", cases.ENROLLMENT, ids=lambda case: case.id)
def test_each_bad_registration_is_dead_lettered_or_refused_and_creates_nothing(
    case, direct, ledger, request
):
    # Given the server's state before the registration
    before = direct.probe.snapshot()
    message = case.build(direct.target)

    # When the server handles it
    outcome = direct.handle(message)
    ledger.bad_inputs(request.node.name)

    # Then it is refused (or answered from the stored reply) and nothing changed
    check_outcome(case, message, outcome, direct.server.public_key)
    assert direct.probe.snapshot() == before


def test_a_flood_of_bogus_registrations_handled_directly_creates_no_node_and_no_row(
    direct, ledger, request
):
    # Given the server's state before the flood
    before = direct.probe.snapshot()

    # When a thousand registrations with invented tokens arrive
    codes = set()
    for _ in range(DIRECT_FLOOD):
        outcome = direct.handle(Forge.stranger().register(new_id()))
        [reply] = outcome.outgoing
        codes.add(read_reply(reply.message.body, direct.server.public_key, "register").code)
    ledger.bad_inputs(request.node.name, DIRECT_FLOOD)

    # Then each was refused alike and the database holds no trace of any
    assert codes == {"invalid-token"}
    assert direct.probe.snapshot() == before


# --- through the broker -------------------------------------------------------------------


def _token(server_url: str, state: str, make_node) -> str:
    if state == "invented":
        return new_id()
    if state == "expired":
        return commands.enroll(server_url, ttl=dt.timedelta(seconds=-1))
    token = commands.enroll(server_url)
    make_node("first", register=False).register(token)
    return token


@pytest.mark.broker
@pytest.mark.parametrize("state", ["used", "expired", "invented"])
def test_registering_with_a_bad_token_is_refused_with_invalid_token_and_creates_nothing(
    state, make_node, worker, server_url, probe, ledger, request
):
    # Given a token that is used, expired or invented
    token = _token(server_url, state, make_node)
    before = probe.snapshot()
    node = make_node("second", register=False)

    # When a node registers with it
    with pytest.raises(ReplyRejected) as refused:
        node.register(token)
    ledger.bad_inputs(request.node.name)

    # Then it is refused with invalid-token and nothing changed
    assert refused.value.code == "invalid-token"
    assert not node.is_registered
    assert probe.snapshot() == before

    # And the same node registers with a genuine token
    assert node.register(commands.enroll(server_url)) > 0


@pytest.mark.broker
def test_a_registration_flood_through_the_broker_gets_signed_refusals_and_creates_nothing(
    worker, broker_url, namespace, probe, ledger, request, make_node, server_url
):
    # Given the server's state before the flood
    before = probe.snapshot()
    nodes_before = probe.count(schema.nodes)
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    channel = connection.channel()
    answers: list[Answer] = []

    def on_reply(_channel, _method, _properties, body: bytes) -> None:
        reply = read_reply(body, worker.server.public_key, messages.REGISTER)
        answers.append(answer_of(reply, None))

    channel.basic_consume(DIRECT_REPLY_TO, on_reply, auto_ack=True)

    # When two hundred registrations with invented tokens arrive at once
    for _ in range(FLOOD):
        message = Forge.stranger().register(new_id())
        channel.basic_publish(
            Topology(namespace).requests_exchange,
            "register",
            message.body,
            pika.BasicProperties(
                type="register",
                message_id=message.message_id,
                correlation_id=message.correlation_id,
                reply_to=DIRECT_REPLY_TO,
            ),
        )
    ledger.bad_inputs(request.node.name, FLOOD)
    deadline = time.monotonic() + 30
    while len(answers) < FLOOD and time.monotonic() < deadline:
        connection.process_data_events(time_limit=0.1)
    connection.close()

    # Then each got a signed invalid-token answer, and no node nor any row was created
    assert len(answers) == FLOOD
    assert {answer.code for answer in answers} == {"invalid-token"}
    assert probe.snapshot() == before
    assert probe.count(schema.nodes) == nodes_before

    # And a genuine registration still works
    assert make_node("genuine").node_id > 0
