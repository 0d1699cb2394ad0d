"""Request and reply kinds, their fields, and their validation.

A request's signed bytes are a msgpack map::

    {kind, proto, node, rid, ts, extra, body}

and a reply's (signed by the server)::

    {kind: "reply", proto, rid, ts, status, code, reason, seq, last, body}

``body`` is checked against the schema of its kind: every field present, of the
right type, nothing else. A reply to one request may come in several chunks
(``seq`` counting from 0, ``last`` on the final one).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from dbsync_mq.core import codec
from dbsync_mq.errors import CodecError, ProtocolError

PROTOCOL_VERSION: Final = 1

PUSH: Final = "push"
PULL: Final = "pull"
REGISTER: Final = "register"
REPAIR: Final = "repair"
QUERY: Final = "query"
PING: Final = "ping"
REQUEST_KINDS: Final = (PUSH, PULL, REGISTER, REPAIR, QUERY, PING)
"""Every request kind; each has its own queue."""

REPLY: Final = "reply"
EVENT: Final = "event"

OK: Final = "ok"
ERROR: Final = "error"

MAX_MESSAGE_BYTES: Final = 16 * 1024 * 1024
"""Largest message read: RabbitMQ's default ``max_message_size``, above which the broker
refuses a message anyway. What decoding a message may cost follows from it."""

MAX_EXTRA_DATA_BYTES: Final = 64 * 1024
"""Largest encoded ``extra_data`` a request may carry."""

_REQUEST_ID = re.compile(r"[0-9a-f]{32}")

_Spec = Mapping[str, tuple[type | tuple[type, ...], bool]]
"""Field name -> (accepted types, may be nil)."""

REQUEST_BODIES: Final[Mapping[str, _Spec]] = {
    PUSH: {"base": (int, False), "changes": (bytes, False)},
    PULL: {"since": (int, False), "deleted": (bytes, False)},
    REGISTER: {"token": (str, False), "public_key": (bytes, False)},
    REPAIR: {},
    QUERY: {
        "table": (str, False),
        "filters": (dict, False),
        "limit": (int, True),
        "offset": (int, False),
    },
    PING: {"version": (int, False)},
}

OPTIONAL_REQUEST_FIELDS: Final[Mapping[str, _Spec]] = {
    PUSH: {"part": (int, False), "parts": (int, False)},
}
"""Fields a request body may leave out: a push in several parts numbers them."""

MAX_PUSH_PARTS: Final = 4096
"""Parts of one push at most."""

REPLY_BODIES: Final[Mapping[str, _Spec]] = {
    PUSH: {"version": (int, False), "base": (int, False)},
    PULL: {
        "version": (int, False),
        "changes": (bytes, False),
        "versions": (list, False),
        "parents": (bytes, False),
    },
    REGISTER: {"node": (int, False), "server_key": (bytes, False), "proof": (bytes, False)},
    REPAIR: {
        "version": (int, False),
        "table": (str, True),
        "rows": (bytes, False),
        "total": (int, False),
    },
    QUERY: {"rows": (bytes, False)},
    PING: {"version": (int, False)},
}


@dataclass(frozen=True)
class Request:
    """A request as signed by a node (unsigned for ``register``)."""

    kind: str
    node_id: int
    request_id: str
    timestamp_ms: int
    body: Mapping[str, Any]
    extra: Mapping[str, Any] | None = None
    proto: int = PROTOCOL_VERSION


@dataclass(frozen=True)
class Reply:
    """A server reply, or one chunk of it."""

    request_id: str
    timestamp_ms: int
    status: str = OK
    body: Mapping[str, Any] = field(default_factory=dict)
    code: str | None = None
    reason: str | None = None
    seq: int = 0
    last: bool = True


def encode_request(request: Request) -> bytes:
    """The signed bytes of ``request``."""
    return codec.encode(
        {
            "kind": request.kind,
            "proto": request.proto,
            "node": request.node_id,
            "rid": request.request_id,
            "ts": request.timestamp_ms,
            "extra": request.extra,
            "body": dict(request.body),
        }
    )


def decode_request(signed_bytes: bytes) -> Request:
    """Parse and validate a request; raise ``ProtocolError`` naming the bad field."""
    fields = _decode_map(signed_bytes, "request")
    _check_fields(
        fields,
        {
            "kind": (str, False),
            "proto": (int, False),
            "node": (int, False),
            "rid": (str, False),
            "ts": (int, False),
            "extra": (dict, True),
            "body": (dict, False),
        },
        "request",
    )
    kind = fields["kind"]
    if fields["proto"] != PROTOCOL_VERSION:
        raise ProtocolError(f"unsupported protocol version {fields['proto']!r}")
    if kind not in REQUEST_BODIES:
        raise ProtocolError(f"unknown request kind {kind!r}")
    if not _REQUEST_ID.fullmatch(fields["rid"]):
        raise ProtocolError("request id must be 32 lowercase hex digits")
    body = fields["body"]
    optional = OPTIONAL_REQUEST_FIELDS.get(kind, {})
    _check_fields(
        {name: value for name, value in body.items() if name not in optional},
        REQUEST_BODIES[kind],
        f"{kind} request",
    )
    _check_fields(
        {name: value for name, value in body.items() if name in optional},
        {name: spec for name, spec in optional.items() if name in body},
        f"{kind} request",
    )
    if kind == PUSH:
        _check_parts(body)
    return Request(
        kind=kind,
        node_id=fields["node"],
        request_id=fields["rid"],
        timestamp_ms=fields["ts"],
        body=fields["body"],
        extra=fields["extra"],
    )


def encode_reply(reply: Reply) -> bytes:
    """The signed bytes of ``reply``."""
    return codec.encode(
        {
            "kind": REPLY,
            "proto": PROTOCOL_VERSION,
            "rid": reply.request_id,
            "ts": reply.timestamp_ms,
            "status": reply.status,
            "code": reply.code,
            "reason": reply.reason,
            "seq": reply.seq,
            "last": reply.last,
            "body": dict(reply.body),
        }
    )


def decode_reply(signed_bytes: bytes, request_kind: str) -> Reply:
    """Parse and validate a reply to a request of ``request_kind``."""
    fields = _decode_map(signed_bytes, "reply")
    _check_fields(
        fields,
        {
            "kind": (str, False),
            "proto": (int, False),
            "rid": (str, False),
            "ts": (int, False),
            "status": (str, False),
            "code": (str, True),
            "reason": (str, True),
            "seq": (int, False),
            "last": (bool, False),
            "body": (dict, False),
        },
        "reply",
    )
    if fields["kind"] != REPLY or fields["status"] not in (OK, ERROR):
        raise ProtocolError("not a reply")
    if fields["status"] == OK:
        _check_fields(fields["body"], REPLY_BODIES[request_kind], f"{request_kind} reply")
    else:
        _check_error_rows(fields["body"].get("rows", []))
    return Reply(
        request_id=fields["rid"],
        timestamp_ms=fields["ts"],
        status=fields["status"],
        body=fields["body"],
        code=fields["code"],
        reason=fields["reason"],
        seq=fields["seq"],
        last=fields["last"],
    )


def error_body(rows: Sequence[tuple[str, Any]]) -> dict[str, Any]:
    """The body of an error reply naming the rows at fault (keys as arrays if composite)."""
    if not rows:
        return {}
    return {"rows": [[table, list(key) if isinstance(key, tuple) else key] for table, key in rows]}


def error_rows(reply: Reply) -> list[tuple[str, Any]]:
    """The ``(table, key)`` of the rows an error reply names (composite keys as tuples)."""
    return [
        (table, tuple(key) if isinstance(key, list) else key)
        for table, key in reply.body.get("rows", [])
    ]


def _check_error_rows(rows: Any) -> None:
    if not isinstance(rows, list) or not all(
        isinstance(row, list)
        and len(row) == 2
        and isinstance(row[0], str)
        and not isinstance(row[1], (dict, float, type(None)))
        for row in rows
    ):
        raise ProtocolError("reply: rows of an error must be [table, key] pairs")


MAX_EVENT_CHANGES: Final = 64 * 1024
"""Packed changes an event may carry: a version larger than this is announced only."""


@dataclass(frozen=True)
class Event:
    """A "version committed" notice: the version, and for a small version made by a
    push, the pushing node, its request id and the changes as stored (a node at the
    version before it merges them without a pull)."""

    version: int
    node_id: int | None = None
    request_id: str | None = None
    changes: bytes | None = None


def encode_event(event: Event, timestamp_ms: int) -> bytes:
    """The signed bytes of ``event``."""
    return codec.encode(
        {
            "kind": EVENT,
            "proto": PROTOCOL_VERSION,
            "version": event.version,
            "ts": timestamp_ms,
            "node": event.node_id,
            "rid": event.request_id,
            "changes": event.changes,
        }
    )


_EVENT_FIELDS: Final[_Spec] = {
    "kind": (str, False),
    "proto": (int, False),
    "version": (int, False),
    "ts": (int, False),
    "node": (int, True),
    "rid": (str, True),
    "changes": (bytes, True),
}


def decode_event(signed_bytes: bytes) -> Event:
    """The event in ``signed_bytes``; ``ProtocolError`` if it is not one."""
    fields = _decode_map(signed_bytes, "event")
    _check_fields(fields, _EVENT_FIELDS, "event")
    if fields["kind"] != EVENT:
        raise ProtocolError("not an event")
    changes = fields["changes"]
    if changes is not None and len(changes) > MAX_EVENT_CHANGES:
        raise ProtocolError("event: changes beyond what an event may carry")
    return Event(fields["version"], fields["node"], fields["rid"], changes)


def check_extra_data(extra: Mapping[str, Any] | None) -> None:
    """Raise ``ProtocolError`` if ``extra`` cannot travel with a request."""
    if extra is None:
        return
    if not isinstance(extra, Mapping):
        raise ProtocolError("extra_data must be a mapping")
    try:
        size = len(codec.encode(dict(extra)))
    except CodecError as exc:
        raise ProtocolError(f"extra_data: {exc}") from None
    if size > MAX_EXTRA_DATA_BYTES:
        raise ProtocolError(f"extra_data is {size} bytes; the limit is {MAX_EXTRA_DATA_BYTES}")


def _decode_map(data: bytes, what: str) -> dict[str, Any]:
    try:
        fields = codec.decode(data)
    except CodecError as exc:
        raise ProtocolError(f"{what}: {exc}") from None
    if not isinstance(fields, dict):
        raise ProtocolError(f"{what}: expected a map")
    return fields


def _check_parts(body: Mapping[str, Any]) -> None:
    if ("part" in body) != ("parts" in body):
        raise ProtocolError("push request: part and parts go together")
    if "parts" in body and not (
        2 <= body["parts"] <= MAX_PUSH_PARTS and 0 <= body["part"] < body["parts"]
    ):
        raise ProtocolError(f"push request: part {body['part']} of {body['parts']}")


def _check_fields(fields: Mapping[Any, Any], spec: _Spec, what: str) -> None:
    unknown = set(fields) - set(spec)
    if unknown:
        raise ProtocolError(f"{what}: unknown fields {sorted(map(str, unknown))}")
    for name, (types, nullable) in spec.items():
        if name not in fields:
            raise ProtocolError(f"{what}: missing field {name!r}")
        value = fields[name]
        if value is None and nullable:
            continue
        if not isinstance(value, types) or (isinstance(value, bool) and types is int):
            raise ProtocolError(f"{what}: field {name!r} has the wrong type")
