"""Requests that are malformed or not authentic change nothing; the worker keeps serving."""

from __future__ import annotations

import os
import time
import uuid

import pika
import pytest
import sqlalchemy as sa

from dbsync_mq.core import messages, signing
from dbsync_mq.core.changeset import encode_changes
from dbsync_mq.core.model import INSERT, Change
from dbsync_mq.storage import local, schema
from dbsync_mq.transport.topology import Topology
from tests.conftest import table_rows, write
from tests.models import City

pytestmark = pytest.mark.broker


def _push_envelope(node_id: int, seed: bytes, *, base: int = 0) -> bytes:
    change = Change("city", 1, INSERT, 1, {"id": 1, "name": "forged", "population": 0})
    request = messages.Request(
        kind=messages.PUSH,
        node_id=node_id,
        request_id=uuid.uuid4().hex,
        timestamp_ms=int(time.time() * 1000),
        body={"base": base, "changes": encode_changes([change])},
    )
    key = signing.private_key_from_seed(seed)
    return signing.seal(messages.encode_request(request), key)


def _publish(broker_url: str, namespace: str, body: bytes, node: str, kind: str = "push") -> None:
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish(
            Topology(namespace).requests_exchange,
            kind,
            body,
            pika.BasicProperties(
                type=kind, headers={"node": node}, delivery_mode=2, message_id=uuid.uuid4().hex
            ),
            mandatory=True,
        )
    finally:
        connection.close()


def _dead_letters(broker_url: str, namespace: str, expected: int, timeout: float = 15) -> int:
    """Consume the dead-letter queue until ``expected`` messages arrived or time ran out."""
    connection = pika.BlockingConnection(pika.URLParameters(broker_url))
    received = 0
    try:
        channel = connection.channel()
        deadline = time.monotonic() + timeout
        for method, _props, _body in channel.consume(
            Topology(namespace).dead_letter_queue, inactivity_timeout=0.2
        ):
            if method is not None:
                channel.basic_ack(method.delivery_tag)
                received += 1
            if received >= expected or time.monotonic() > deadline:
                break
        channel.cancel()
    finally:
        connection.close()
    return received


def _server_state(server_url: str) -> tuple[int, dict[str, list[object]]]:
    engine = sa.create_engine(server_url)
    try:
        with engine.connect() as connection:
            head = connection.execute(sa.select(schema.head.c.version)).scalar_one()
        return head, table_rows(engine)
    finally:
        engine.dispose()


def test_unauthentic_or_malformed_requests_are_dead_lettered_and_change_nothing(
    make_node, worker, server_url, broker_url, namespace
):
    # Given a registered node and the server's state before the attack
    node = make_node("a")
    with node.engine.connect() as connection:
        identity = local.load_identity(connection)
    assert identity is not None
    before = _server_state(server_url)
    genuine = _push_envelope(identity.node_id, identity.private_key)
    signed, signature = signing.open_envelope(genuine, 1 << 20)
    tampered = signing.seal(signed, signing.private_key_from_seed(os.urandom(32)))

    # When malformed, forged and unknown-node requests arrive
    _publish(broker_url, namespace, b"\x00not msgpack", str(identity.node_id))
    _publish(broker_url, namespace, tampered, str(identity.node_id))
    _publish(broker_url, namespace, genuine, "987654")
    _publish(broker_url, namespace, signed + signature[:10], str(identity.node_id))

    # Then each one is dead-lettered and the server database is unchanged
    assert _dead_letters(broker_url, namespace, expected=4) == 4
    assert _server_state(server_url) == before

    # And the worker still serves genuine requests
    write(node.engine, City(name="genuine"))
    assert node.sync().pushed == 1
    assert [row[1] for row in _server_state(server_url)[1]["city"]] == ["genuine"]
