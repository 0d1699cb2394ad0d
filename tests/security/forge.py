"""Forging requests as an attacker would: any field, any key, any header.

A ``Forge`` holds one node's identity (or a stranger's key) and builds request
messages whose signed map is exactly what the test says, with fields replaced,
removed (``MISSING``) or added.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from dbsync_mq.core import codec, messages, signing
from dbsync_mq.core.changeset import encode_changes
from dbsync_mq.core.model import Change
from dbsync_mq.transport.base import Message

MISSING: Final = object()
"""A field value meaning: leave the field out of the signed map."""

DIRECT_REPLY_TO: Final = "amq.rabbitmq.reply-to.forged"


def now_ms() -> int:
    return int(time.time() * 1000)


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class Forge:
    """Signs as node ``node_id`` with ``seed`` (its real key, or any other)."""

    node_id: int
    seed: bytes = field(repr=False)

    @classmethod
    def stranger(cls, node_id: int = 0) -> Forge:
        return cls(node_id, os.urandom(32))

    @property
    def public_key(self) -> bytes:
        return signing.public_key_bytes(signing.private_key_from_seed(self.seed))

    def fields(self, kind: str, body: Mapping[str, Any], /, **overrides: Any) -> dict[str, Any]:
        """The signed map of a request, with ``overrides`` applied (``MISSING`` removes)."""
        fields: dict[str, Any] = {
            "kind": kind,
            "proto": messages.PROTOCOL_VERSION,
            "node": self.node_id,
            "rid": new_id(),
            "ts": now_ms(),
            "extra": None,
            "body": dict(body),
        }
        for name, value in overrides.items():
            if value is MISSING:
                fields.pop(name, None)
            else:
                fields[name] = value
        return fields

    def seal(self, signed: bytes) -> bytes:
        return signing.seal(signed, signing.private_key_from_seed(self.seed))

    def message(
        self,
        kind: str,
        body: Mapping[str, Any],
        /,
        *,
        message_kind: str | None = None,
        header: Any = None,
        signer: Forge | None = None,
        reply_to: str | None = None,
        **overrides: Any,
    ) -> Message:
        """A request message: the map signed by ``signer`` (default: this node), sent
        as ``message_kind`` (default ``kind``) with header node ``header`` (default
        this node's id)."""
        fields = self.fields(kind, body, **overrides)
        return envelope_message(
            (signer or self).seal(codec.encode(fields)),
            message_kind if message_kind is not None else kind,
            header=self.node_id if header is None else header,
            request_id=fields.get("rid") if isinstance(fields.get("rid"), str) else None,
            reply_to=reply_to,
        )

    def push(self, changes: list[Change] | bytes, base: int, **options: Any) -> Message:
        data = changes if isinstance(changes, bytes) else encode_changes(changes)
        return self.message(messages.PUSH, {"base": base, "changes": data}, **options)

    def pull(self, since: int = 0, **options: Any) -> Message:
        return self.message(
            messages.PULL, {"since": since, "deleted": encode_changes([])}, **options
        )

    def ping(self, **options: Any) -> Message:
        return self.message(messages.PING, {"version": 0}, **options)

    def register(self, token: str, **options: Any) -> Message:
        if "reply_to" not in options:
            options["reply_to"] = DIRECT_REPLY_TO
        options.setdefault("header", MISSING)
        body = {"token": token, "public_key": self.public_key}
        return self.message(messages.REGISTER, body, **options)


def envelope_message(
    body: bytes,
    kind: str,
    *,
    header: Any = MISSING,
    request_id: str | None = None,
    reply_to: str | None = None,
) -> Message:
    """A message around any body. ``request_id`` (if known) is the message and
    correlation id, so that its reply or dead letter can be found."""
    message_id = request_id or new_id()
    headers: dict[str, Any] = {"proto": messages.PROTOCOL_VERSION}
    if header is not MISSING:
        headers["node"] = str(header) if type(header) is int else header
    return Message(
        body=body,
        kind=kind,
        message_id=message_id,
        correlation_id=message_id,
        headers=headers,
        reply_to=reply_to,
    )
