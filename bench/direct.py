"""A node that talks to ``Server.handle`` directly: the worker's work without a broker.

It registers through the server's own registration handler and builds push
messages exactly as ``SyncClient`` does (signed msgpack envelope, node header),
so ``Server.handle`` does everything it does for a delivery from RabbitMQ.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterable
from typing import Any

from bench.models import ITEM
from dbsync_mq import commands
from dbsync_mq.core import messages, signing
from dbsync_mq.core.changeset import encode_changes
from dbsync_mq.core.messages import Request
from dbsync_mq.core.model import INSERT, Change
from dbsync_mq.server import Server
from dbsync_mq.transport.base import Message

DIRECT_REPLY_TO = "amq.rabbitmq.reply-to"
"""RabbitMQ's direct reply-to pseudo-queue: addresses under it are the only ones the
server answers registrations on."""


def insert_changes(rows: Iterable[dict[str, Any]], hlc: int = 1) -> list[Change]:
    """One insert change per row of ``bench_item``."""
    return [Change(ITEM.name, row["id"], INSERT, hlc, row) for row in rows]


class DirectNode:
    """A registered node whose messages are handed to ``server.handle``."""

    def __init__(self, server: Server, database_url: str) -> None:
        self.server = server
        self._key = signing.private_key_from_seed(os.urandom(signing.SEED_BYTES))
        self.node_id = self._register(commands.enroll(database_url))

    def _register(self, token: str) -> int:
        body = {"token": token, "public_key": signing.public_key_bytes(self._key)}
        request = new_request(messages.REGISTER, 0, body)
        message = Message(
            body=signing.seal(messages.encode_request(request), self._key),
            kind=messages.REGISTER,
            message_id=request.request_id,
            correlation_id=request.request_id,
            headers={"proto": messages.PROTOCOL_VERSION},
            reply_to=f"{DIRECT_REPLY_TO}.bench-direct",
        )
        reply = self.reply_to(message)
        node_id: int = reply.body["node"]
        return node_id

    def push(self, base: int, changes: list[Change]) -> Message:
        """A push message on top of version ``base``, ready for ``server.handle``."""
        body = {"base": base, "changes": encode_changes(changes)}
        return self.message(new_request(messages.PUSH, self.node_id, body))

    def message(self, request: Request) -> Message:
        return Message(
            body=signing.seal(messages.encode_request(request), self._key),
            kind=request.kind,
            message_id=request.request_id,
            correlation_id=request.request_id,
            headers={"node": str(self.node_id), "proto": messages.PROTOCOL_VERSION},
        )

    def reply_to(self, message: Message) -> messages.Reply:
        """Handle ``message`` and return the (first) reply; raise if it is an error."""
        outcome = self.server.handle(message)
        outgoing = [item for item in outcome.outgoing if not item.event]
        if not outgoing:
            why = f"{outcome.disposition}: {outcome.reason}"
            raise RuntimeError(f"{message.kind} got no reply ({why})")
        first = outgoing[0]
        signed, _signature = signing.open_envelope(first.message.body, 1 << 30)
        reply = messages.decode_reply(signed, message.kind)
        if reply.status != messages.OK:
            raise RuntimeError(f"{message.kind} refused: {reply.code}: {reply.reason}")
        return reply


def new_request(kind: str, node_id: int, body: dict[str, Any]) -> Request:
    """A request of ``kind`` from ``node_id``, stamped now, with a fresh id."""
    return Request(
        kind=kind,
        node_id=node_id,
        request_id=uuid.uuid4().hex,
        timestamp_ms=int(time.time() * 1000),
        body=body,
    )
