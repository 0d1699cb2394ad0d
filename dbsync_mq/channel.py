"""A node's conversation with the server: signed requests out, verified replies in.

Only this module and ``SyncClient`` know both the node's keys and the broker;
the rest of the client works on decoded replies.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from dbsync_mq.config import MAX_MESSAGE_BYTES, PUBLISH_LIMIT_BYTES
from dbsync_mq.core import codec, messages, signing
from dbsync_mq.core.messages import Reply, Request
from dbsync_mq.errors import (
    ProtocolError,
    PullRequired,
    PushRejected,
    RepairRequired,
    ReplyRejected,
    SignatureError,
)
from dbsync_mq.storage.local import Identity, Registration
from dbsync_mq.transport.base import Message
from dbsync_mq.transport.node import BrokerClient

logger = logging.getLogger(__name__)

ENVELOPE_ROOM = 1024
"""Bytes a request's envelope adds to its changes, besides its ``extra_data``."""


class NodeChannel:
    """Requests signed with the node's key; replies checked against the pinned server key."""

    def __init__(
        self,
        broker: BrokerClient,
        identity: Identity,
        clock: Callable[[], float] = time.time,
        max_message_bytes: int = PUBLISH_LIMIT_BYTES,
    ) -> None:
        self.broker = broker
        self.max_message_bytes = max_message_bytes
        self._keys = (identity.node_id, identity.private_key, identity.server_key)
        self.node_id = identity.node_id
        self._key = signing.private_key_from_seed(identity.private_key)
        self._server_key = signing.load_public_key(identity.server_key)
        self._clock = clock

    def speaks_for(self, identity: Identity) -> bool:
        """Whether this channel signs and verifies with ``identity``'s keys."""
        return self._keys == (identity.node_id, identity.private_key, identity.server_key)

    def seal(
        self,
        kind: str,
        body: dict[str, Any],
        extra_data: Mapping[str, Any] | None,
        request_id: str | None = None,
    ) -> tuple[str, bytes]:
        """A new request's id and its signed envelope (the id given, for a push's parts)."""
        request = new_request(kind, self.node_id, body, extra_data, self._clock, request_id)
        return request.request_id, signing.seal(messages.encode_request(request), self._key)

    def part_room(self, extra_data: Mapping[str, Any] | None) -> tuple[int, int]:
        """Bytes of packed changes a push message may carry: as a rule, and at most (one
        change larger than the rule travels alone up to what a message may hold)."""
        overhead = ENVELOPE_ROOM + len(codec.encode(dict(extra_data or {})))
        return self.max_message_bytes - overhead, MAX_MESSAGE_BYTES - overhead

    def seal_push(
        self, base: int, parts: Sequence[bytes], extra_data: Mapping[str, Any] | None
    ) -> tuple[str, tuple[bytes, ...]]:
        """A push's request id and envelopes: one, or numbered parts of one request when
        its changes came packed in several parts (see ``part_room``)."""
        if len(parts) == 1:
            body = {"base": base, "changes": parts[0]}
            request_id, envelope = self.seal(messages.PUSH, body, extra_data)
            return request_id, (envelope,)
        request_id = uuid.uuid4().hex
        envelopes = tuple(
            self.seal(
                messages.PUSH,
                {"base": base, "changes": part, "part": index, "parts": len(parts)},
                extra_data,
                request_id,
            )[1]
            for index, part in enumerate(parts)
        )
        return request_id, envelopes

    @contextmanager
    def call(
        self, kind: str, body: dict[str, Any], extra_data: Mapping[str, Any] | None
    ) -> Iterator[Iterator[Reply]]:
        """Send a new request; give the iterator of its reply chunks."""
        request_id, envelope = self.seal(kind, body, extra_data)
        with self.exchange(kind, request_id, envelope) as replies:
            yield replies

    def call_once(
        self, kind: str, body: dict[str, Any], extra_data: Mapping[str, Any] | None
    ) -> Reply:
        """Send a new request answered by one reply, and return that reply."""
        request_id, envelope = self.seal(kind, body, extra_data)
        return self.send_once(kind, request_id, envelope)

    def send_once(self, kind: str, request_id: str, envelopes: bytes | Sequence[bytes]) -> Reply:
        """Send (or send again, for a push in flight) a sealed request, in one message or
        several parts; its one reply."""
        with self.exchange(kind, request_id, envelopes) as replies:
            for reply in replies:
                return reply
        raise ProtocolError(f"the reply to {request_id} ended early")

    @contextmanager
    def exchange(
        self, kind: str, request_id: str, envelopes: bytes | Sequence[bytes]
    ) -> Iterator[Iterator[Reply]]:
        """Publish a sealed request (one message, or the parts of one); give its reply
        chunks, in order, verified. Error replies raise (see ``raise_for``)."""
        if isinstance(envelopes, bytes):
            envelopes = [envelopes]
        sent = [request_message(kind, request_id, e, node_id=self.node_id) for e in envelopes]
        with self.broker.request(sent, self.node_id) as messages_in:
            yield self._replies(kind, request_id, messages_in)

    def _replies(self, kind: str, request_id: str, received: Iterator[Message]) -> Iterator[Reply]:
        expected = 0
        for message in received:
            try:
                reply = self._open(message, kind)
            except ProtocolError as exc:
                logger.warning("ignoring a reply to %s that is not authentic: %s", request_id, exc)
                continue
            if reply.request_id != request_id:
                continue
            if reply.status != messages.OK:
                raise_for(reply, kind)
            if reply.seq != expected:
                raise ProtocolError(f"reply chunk {reply.seq} of {request_id} came as {expected}")
            expected += 1
            yield reply
            if reply.last:
                return

    def _open(self, message: Message, kind: str) -> Reply:
        signed, signature = signing.open_envelope(message.body, MAX_MESSAGE_BYTES)
        signing.verify(signed, signature, self._server_key)
        return messages.decode_reply(signed, kind)


def request_message(
    kind: str, request_id: str, envelope: bytes, *, node_id: int | None = None
) -> Message:
    """The broker message carrying a sealed request."""
    headers: dict[str, Any] = {"proto": messages.PROTOCOL_VERSION}
    if node_id is not None:
        headers["node"] = str(node_id)
    return Message(
        body=envelope,
        kind=kind,
        message_id=request_id,
        correlation_id=request_id,
        headers=headers,
    )


def new_request(
    kind: str,
    node_id: int,
    body: dict[str, Any],
    extra_data: Mapping[str, Any] | None,
    clock: Callable[[], float],
    request_id: str | None = None,
) -> Request:
    messages.check_extra_data(extra_data)
    return Request(
        kind=kind,
        node_id=node_id,
        request_id=request_id or uuid.uuid4().hex,
        timestamp_ms=int(clock() * 1000),
        body=body,
        extra=dict(extra_data) if extra_data is not None else None,
    )


def seal_registration(
    token: str,
    seed: bytes,
    extra_data: Mapping[str, Any] | None,
    clock: Callable[[], float],
) -> Registration:
    """The signed registration of a node whose new key is made from ``seed``."""
    key = signing.private_key_from_seed(seed)
    body = {"token": token, "public_key": signing.public_key_bytes(key)}
    request = new_request(messages.REGISTER, 0, body, extra_data, clock)
    envelope = signing.seal(messages.encode_request(request), key)
    return Registration(request.request_id, seed, signing.token_digest(token), envelope)


def register(
    broker: BrokerClient, registration: Registration, token: str, namespace: str
) -> Identity:
    """Send a sealed registration; the new node's identity, at version 0."""
    answer = broker.call_direct(
        request_message(messages.REGISTER, registration.request_id, registration.envelope)
    )
    node_id, server_key = _accept_registration(answer, registration.request_id, token)
    return Identity(node_id, namespace, registration.seed, server_key, 0, 0)


def _accept_registration(answer: Message, request_id: str, token: str) -> tuple[int, bytes]:
    """Check the registration reply came from a server that knows the token."""
    signed, signature = signing.open_envelope(answer.body, MAX_MESSAGE_BYTES)
    reply = messages.decode_reply(signed, messages.REGISTER)
    if reply.status != messages.OK:
        raise_for(reply, messages.REGISTER)
    node_id, server_key = reply.body["node"], reply.body["server_key"]
    signing.verify(signed, signature, signing.load_public_key(server_key))
    expected = signing.registration_proof(
        signing.token_digest(token), node_id, server_key, request_id
    )
    if not signing.proofs_match(expected, reply.body["proof"]):
        raise SignatureError("the registration reply does not prove knowledge of the token")
    return node_id, server_key


def raise_for(reply: Reply, kind: str) -> None:
    """Raise the error an error reply stands for."""
    code, reason = reply.code or "error", reply.reason or ""
    rows = messages.error_rows(reply)
    if code == "repair-required":
        raise RepairRequired(code, reason)
    if kind == messages.PUSH:
        if code == "pull-required":
            raise PullRequired(code, reason)
        raise PushRejected(code, reason, rows)
    raise ReplyRejected(code, reason, rows)
