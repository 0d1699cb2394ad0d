"""Every bad or hostile request the security suite sends, with what must happen to it.

A case builds one message from a ``Target`` (the nodes, the server's head, a
request the server already applied) and names the expected outcome:
``DEAD`` (dead-lettered, no reply: nothing trustworthy to answer), ``OK``
(answered normally, e.g. a replay answered from the stored reply) or an error
code, answered in a reply signed by the server. In every case the server
database must be left exactly as it was.
"""

from __future__ import annotations

import datetime as dt
import random
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Final

import msgpack

from dbsync_mq.core import codec, messages, signing
from dbsync_mq.core.changeset import encode_changes
from dbsync_mq.core.model import DELETE, INSERT, UPDATE, Change
from dbsync_mq.transport.base import Message
from tests.security import bombs
from tests.security.forge import DIRECT_REPLY_TO, MISSING, Forge, envelope_message, now_ms

DEAD: Final = "dead-letter"
OK: Final = "ok"
MAX_BYTES: Final = 256 * 1024
"""The server's message size limit in the security tests."""
DAY_MS: Final = 24 * 3600 * 1000
NESTING: Final = 2_000
"""Deeper than msgpack's decoder accepts (1,024 levels)."""


@dataclass(frozen=True)
class Target:
    """What cases are built against: nodes a and b (enabled), c (disabled), the head,
    and a push by node o the server already applied."""

    a: Forge
    b: Forge
    c: Forge
    head: int
    o: Forge
    """The author of the push the server already applied (no client holds its key)."""
    applied_rid: str
    applied_body: bytes
    """The envelope of a's applied push, as it was sent."""
    tokens: Mapping[str, str] = field(default_factory=dict)
    """Enrollment tokens by state: ``used`` (by node c), ``expired``, ``fresh``."""
    registration: tuple[str, bytes] = ("", b"")
    """Request id and envelope of node c's registration, as it was sent."""


@dataclass(frozen=True)
class Case:
    id: str
    build: Callable[[Target], Message]
    expect: str

    @property
    def category(self) -> str:
        return self.id.split(":", 1)[0]


def _city(id_: Any = 100, **values: Any) -> Change:
    row = {"id": id_, "name": "forged", "population": 0, **values}
    return Change("city", id_, INSERT, 1, row)


_MARKER: Final = "@@nested@@"


def _nested(depth: int) -> bytes:
    """msgpack of a value ``depth`` arrays deep (deeper than msgpack's encoder goes)."""
    return b"\x91" * depth + codec.encode("bottom")


def _splice(data: bytes, raw: bytes) -> bytes:
    """``data`` (encoded with ``_MARKER`` as a value) with the marker replaced by ``raw``."""
    marker = codec.encode(_MARKER)
    assert data.count(marker) == 1
    return data.replace(marker, raw)


def _deep_extra(t: Target, depth: int) -> Message:
    fields = t.a.fields("ping", {"version": 0}, extra={"deep": _MARKER})
    signed = _splice(codec.encode(fields), _nested(depth))
    return envelope_message(t.a.seal(signed), "ping", header=t.a.node_id, request_id=fields["rid"])


def _deep_json(depth: int) -> bytes:
    note = Change("note", uuid.UUID(int=1), INSERT, 1, {"id": uuid.UUID(int=1), "data": _MARKER})
    return _splice(encode_changes([note]), _nested(depth))


def _sections(*sections: Any) -> bytes:
    """A changeset written by hand, to shape it as the encoder never would."""
    return codec.encode(list(sections))


def _padded_push(t: Target, size: int) -> Message:
    """A push of ``size`` random bytes: large packed changes travel deflated, so only
    bytes that do not compress keep the message as large as they are."""
    blob = random.Random(size).randbytes(size)
    key = uuid.UUID(int=size)
    return t.a.push([Change("note", key, INSERT, 1, {"id": key, "blob": blob})], t.head)


# --- envelopes: what arrives before any signature is checked ------------------------------

ENVELOPES = [
    Case("envelope:empty body", lambda t: envelope_message(b"", "push", header=t.a.node_id), DEAD),
    Case(
        "envelope:not msgpack",
        lambda t: envelope_message(b"\xc1\xc1garbage", "push", header=t.a.node_id),
        DEAD,
    ),
    Case(
        "envelope:a map, not an array",
        lambda t: envelope_message(codec.encode({"a": b"x"}), "push", header=t.a.node_id),
        DEAD,
    ),
    Case(
        "envelope:three parts",
        lambda t: envelope_message(
            codec.encode([b"x", b"y" * 64, b"z"]), "push", header=t.a.node_id
        ),
        DEAD,
    ),
    Case(
        "envelope:strings, not bytes",
        lambda t: envelope_message(codec.encode(["x", "y" * 64]), "push", header=t.a.node_id),
        DEAD,
    ),
    Case(
        "envelope:signature of 63 bytes",
        lambda t: _reseal(t.a.push([_city()], t.head), lambda signed, sig: [signed, sig[:63]]),
        DEAD,
    ),
    Case(
        "envelope:signature of 65 bytes",
        lambda t: _reseal(t.a.push([_city()], t.head), lambda signed, sig: [signed, sig + b"!"]),
        DEAD,
    ),
    Case(
        "envelope:signature and request swapped",
        lambda t: _reseal(t.a.push([_city()], t.head), lambda signed, sig: [sig, signed]),
        DEAD,
    ),
    Case(
        "envelope:truncated by half",
        lambda t: _truncate(t.a.push([_city()], t.head), 0.5),
        DEAD,
    ),
    Case(
        "envelope:missing its last byte",
        lambda t: _truncate(t.a.push([_city()], t.head), None),
        DEAD,
    ),
    Case(
        "envelope:truncated map, validly signed",
        lambda t: envelope_message(
            t.a.seal(codec.encode(t.a.fields("push", {"base": 0, "changes": b""}))[:-5]),
            "push",
            header=t.a.node_id,
        ),
        DEAD,
    ),
    Case("envelope:oversized, validly signed", lambda t: _padded_push(t, MAX_BYTES), DEAD),
    Case(
        "envelope:oversized garbage",
        lambda t: envelope_message(b"\x00" * (MAX_BYTES + 1), "push", header=t.a.node_id),
        DEAD,
    ),
    Case(
        "envelope:nested beyond the decoder's depth",
        lambda t: envelope_message(
            t.a.seal(b"\x91" * NESTING + b"\xc0"), "push", header=t.a.node_id
        ),
        DEAD,
    ),
]


def _reseal(message: Message, parts: Callable[[bytes, bytes], list[bytes]]) -> Message:
    """The message with its envelope rebuilt from ``parts(signed_bytes, signature)``."""
    signed, signature = signing.open_envelope(message.body, 1 << 30)
    body = msgpack.packb(parts(signed, signature), use_bin_type=True)
    return envelope_message(body, message.kind, header=message.headers["node"])


def _truncate(message: Message, fraction: float | None) -> Message:
    body = message.body
    cut = body[: int(len(body) * fraction)] if fraction is not None else body[:-1]
    return envelope_message(cut, message.kind, header=message.headers["node"])


# --- the signed request map: every field, wrong ---------------------------------------------

WRONG_FIELD_VALUES: dict[str, list[Any]] = {
    "kind": [1, None, b"push", ["push"], "bogus", "reply"],
    "proto": ["1", True, None, 1.5, 0, 2, 99, -1],
    "node": ["1", True, None, 1.5, -1, 0, [1]],
    "rid": [123, None, b"0" * 32, "short", "G" * 32, "0" * 33, "A" * 32],
    "ts": ["now", None, True, 1.5, [1]],
    "extra": ["x", [], 1, True, b"x"],
    "body": [[], None, "x", b"", 1],
}


def _wrong_field(name: str, value: Any) -> Case:
    def build(t: Target) -> Message:
        return t.a.message("push", {"base": t.head, "changes": b"\x90"}, **{name: value})

    return Case(f"request:{name}={value!r}", build, DEAD)


REQUEST_MAP = [
    *(_wrong_field(name, value) for name, values in WRONG_FIELD_VALUES.items() for value in values),
    *(
        Case(
            f"request:missing {name}",
            lambda t, name=name: t.a.message(
                "push", {"base": t.head, "changes": b"\x90"}, **{name: MISSING}
            ),
            DEAD,
        )
        for name in ("kind", "proto", "node", "rid", "ts", "extra", "body")
    ),
    Case(
        "request:an unknown field",
        lambda t: t.a.message("push", {"base": t.head, "changes": b"\x90"}, evil=1),
        DEAD,
    ),
    Case(
        "request:not a map",
        lambda t: envelope_message(t.a.seal(codec.encode(["push", 1])), "push", header=t.a.node_id),
        DEAD,
    ),
    Case(
        "request:signed as a pull, sent as a push",
        lambda t: t.a.pull(message_kind="push"),
        DEAD,
    ),
    Case("kind:unknown message type", lambda t: t.a.ping(message_kind="bogus"), DEAD),
    Case("kind:empty message type", lambda t: t.a.ping(message_kind=""), DEAD),
    Case("kind:a reply sent as a request", lambda t: t.a.ping(message_kind="reply"), DEAD),
]


# --- queries: read-only, but the table, filters and paging come from the node -------------


def _query(t: Target, table: str = "city", filters: Any = None, **body: Any) -> Message:
    fields = {"table": table, "filters": filters or {}, "limit": None, "offset": 0, **body}
    return t.a.message("query", fields)


QUERIES = [
    Case("query:an untracked table", lambda t: _query(t, "untracked"), "unknown-table"),
    Case("query:a sync table", lambda t: _query(t, "sync_nodes"), "unknown-table"),
    Case("query:a push-only table", lambda t: _query(t, "reading"), "direction-refused"),
    Case("query:SQL in the table name", lambda t: _query(t, "city; --"), "unknown-table"),
    Case(
        "query:a filter on an unknown column",
        lambda t: _query(t, filters={"x": 1}),
        "unknown-column",
    ),
    Case(
        "query:SQL in a filter name",
        lambda t: _query(t, filters={"name = name OR 1=1 --": 1}),
        "unknown-column",
    ),
    Case(
        "query:a filter value of the wrong type",
        lambda t: _query(t, filters={"population": "1 OR 1=1"}),
        "type-mismatch",
    ),
    Case("query:a limit beyond the maximum", lambda t: _query(t, limit=10**6), "malformed"),
    Case("query:a negative limit", lambda t: _query(t, limit=-1), "malformed"),
    Case("query:a negative offset", lambda t: _query(t, offset=-1), "malformed"),
    Case(
        "query:SQL in a filter value is only a value",
        lambda t: _query(t, filters={"name": "' OR '1'='1"}),
        OK,
    ),
    Case(
        "query:by a disabled node",
        lambda t: t.c.message(
            "query", {"table": "city", "filters": {}, "limit": None, "offset": 0}
        ),
        "node-disabled",
    ),
    Case("query:a repair by a disabled node", lambda t: t.c.message("repair", {}), "node-disabled"),
]


# --- each kind's body: every field, wrong -------------------------------------------------

BODY_FIELDS: dict[str, dict[str, Any]] = {
    "push": {"base": 0, "changes": b"\x90"},
    "pull": {"since": 0, "deleted": b"\x90"},
    "ping": {"version": 0},
    "query": {"table": "city", "filters": {}, "limit": None, "offset": 0},
}
WRONG_BODY_VALUES: list[Any] = ["1", None, True, 1.5, [], {}, b"\x90", -(2**63)]


def _wrong_body(kind: str, name: str, value: Any) -> Case | None:
    types, nullable = messages.REQUEST_BODIES[kind][name]
    if (value is None and nullable) or (
        isinstance(value, types) and not (isinstance(value, bool) and types is int)
    ):
        return None  # a value of the right type: not a wrong one

    def build(t: Target) -> Message:
        return t.a.message(kind, {**BODY_FIELDS[kind], name: value})

    return Case(f"body:{kind}.{name}={value!r}", build, DEAD)


BODIES = [
    case
    for kind, fields in BODY_FIELDS.items()
    for name in fields
    for value in WRONG_BODY_VALUES
    if (case := _wrong_body(kind, name, value)) is not None
] + [
    *(
        Case(
            f"body:{kind} missing {name}",
            lambda t, kind=kind, name=name: t.a.message(
                kind, {k: v for k, v in BODY_FIELDS[kind].items() if k != name}
            ),
            DEAD,
        )
        for kind, fields in BODY_FIELDS.items()
        for name in fields
    ),
    *(
        Case(
            f"body:{kind} with an unknown field",
            lambda t, kind=kind: t.a.message(kind, {**BODY_FIELDS.get(kind, {}), "evil": 1}),
            DEAD,
        )
        for kind in ("push", "pull", "ping", "repair", "query")
    ),
    Case(
        "body:pull.deleted not a changeset",
        lambda t: t.a.message("pull", {"since": 0, "deleted": b"\xc1"}),
        "malformed",
    ),
    Case("body:pull.since negative", lambda t: t.a.pull(since=-1), "malformed"),
    Case(
        "body:pull.deleted keyed by a signaling NaN",
        lambda t: t.a.message(
            "pull",
            {"since": 0, "deleted": encode_changes([Change("city", Decimal("sNaN"), DELETE, 1)])},
        ),
        "malformed",
    ),
    Case("body:pull.since ahead of the server", lambda t: t.a.pull(since=10**6), "unknown-version"),
    Case("body:extra nested beyond the decoder's depth", lambda t: _deep_extra(t, NESTING), DEAD),
    Case("body:extra nested 500 deep is carried", lambda t: _deep_extra(t, 500), OK),
]


# --- authentication and authorization -------------------------------------------------------

AUTH = [
    Case(
        "auth:a random signature",
        lambda t: t.a.push([_city()], t.head, signer=Forge.stranger()),
        DEAD,
    ),
    Case(
        "auth:signed by another node's key", lambda t: t.a.push([_city()], t.head, signer=t.b), DEAD
    ),
    Case(
        "auth:an unknown node",
        lambda t: Forge.stranger(987_654).push([_city()], t.head),
        DEAD,
    ),
    *(
        Case(
            f"auth:node header {label}",
            lambda t, header=header: t.a.push([_city()], t.head, header=header),
            DEAD,
        )
        for label, header in [
            ("missing", MISSING),
            ("abc", "abc"),
            ("0", "0"),
            ("-3", "-3"),
            ("empty", ""),
            ("with a space", " 1"),
            ("1.0", "1.0"),
            ("superscript two", "\u00b2"),  # str.isdigit() says yes, int() says no
            ("arabic-indic one", "\u0661"),  # str.isdigit() says yes, int() reads 1
            ("of 5000 digits", "9" * 5_000),
            ("beyond 64 bits", str(2**70)),
            ("beyond the node id column", str(2**31)),
            ("true", True),
        ]
    ),
    Case("auth:a disabled node pushes", lambda t: t.c.push([_city()], t.head), "node-disabled"),
    Case("auth:a disabled node pulls", lambda t: t.c.pull(), "node-disabled"),
    Case("auth:a disabled node pings", lambda t: t.c.ping(), "node-disabled"),
    Case(
        "auth:a request id reused for another body",
        lambda t: t.a.push([_city(101)], t.head, rid=t.applied_rid),
        "request-id-reused",
    ),
    Case(
        "auth:another node reusing a request id",
        lambda t: t.b.push([_city(101)], t.head, rid=t.applied_rid),
        "request-id-reused",
    ),
    Case(
        "auth:a replay of an applied push",
        lambda t: envelope_message(
            t.applied_body, "push", header=t.o.node_id, request_id=t.applied_rid
        ),
        OK,
    ),
    Case(
        "auth:a push from eight days ago",
        lambda t: t.a.push([_city()], t.head, ts=now_ms() - 8 * DAY_MS),
        "stale-request",
    ),
    Case(
        "auth:a push from eight days ahead",
        lambda t: t.a.push([_city()], t.head, ts=now_ms() + 8 * DAY_MS),
        "stale-request",
    ),
    Case("auth:a stale pull", lambda t: t.a.pull(ts=now_ms() - 8 * DAY_MS), "stale-request"),
    Case("auth:a stale ping", lambda t: t.a.ping(ts=now_ms() - 8 * DAY_MS), "stale-request"),
    Case(
        "auth:a timestamp beyond any clock",
        lambda t: t.a.push([_city()], t.head, ts=10**400),
        "stale-request",
    ),
    Case(
        "auth:a timestamp before any clock",
        lambda t: t.a.push([_city()], t.head, ts=-(10**400)),
        "stale-request",
    ),
]


# --- impersonation: acting on behalf of another node --------------------------------------

IMPERSONATION = [
    Case(
        "impersonation:header a, body names b, signed by a",
        lambda t: t.a.push([_city()], t.head, node=t.b.node_id),
        DEAD,
    ),
    Case(
        "impersonation:header a, body names b, signed by b",
        lambda t: t.a.push([_city()], t.head, node=t.b.node_id, signer=t.b),
        DEAD,
    ),
    Case(
        "impersonation:header b, body names a, signed by a",
        lambda t: t.a.push([_city()], t.head, header=t.b.node_id),
        DEAD,
    ),
    Case(
        "impersonation:header and body name b, signed by a",
        lambda t: t.b.push([_city()], t.head, signer=t.a),
        DEAD,
    ),
    Case(
        "impersonation:a disabled node signing as an enabled one",
        lambda t: t.a.push([_city()], t.head, signer=t.c),
        DEAD,
    ),
    Case(
        "impersonation:a pull for b signed by a",
        lambda t: t.b.pull(signer=t.a),
        DEAD,
    ),
]


# --- what a push may change ---------------------------------------------------------------


def _push_case(name: str, changes: Callable[[Target], list[Change] | bytes], code: str) -> Case:
    return Case(f"push:{name}", lambda t: t.a.push(changes(t), t.head), code)


PUSH_CONTENT = [
    _push_case(
        "an untracked table",
        lambda t: [Change("untracked", 1, INSERT, 1, {"id": 1, "name": "x"})],
        "unknown-table",
    ),
    _push_case("a sync table", lambda t: [Change("sync_nodes", 1, DELETE, 1)], "unknown-table"),
    _push_case(
        "a table that does not exist", lambda t: [Change("nowhere", 1, DELETE, 1)], "unknown-table"
    ),
    _push_case(
        "a pull-only table",
        lambda t: [Change("country", 1, INSERT, 1, {"id": 1, "name": "x"})],
        "direction-refused",
    ),
    _push_case(
        "SQL in a table name",
        lambda t: [Change("city; DROP TABLE city; --", 1, DELETE, 1)],
        "unknown-table",
    ),
    _push_case("a quoted table name", lambda t: [Change('"city"', 1, DELETE, 1)], "unknown-table"),
    _push_case(
        "an insert keyed by a signaling NaN",
        lambda t: [Change("city", Decimal("sNaN"), INSERT, 1, {"id": 100, "name": "x"})],
        "type-mismatch",
    ),
    _push_case(
        "an update keyed by a string",
        lambda t: [Change("city", "100", UPDATE, 1, {"id": 100, "name": "x"})],
        "type-mismatch",
    ),
    _push_case("an unknown column", lambda t: [_city(secret="x")], "unknown-column"),
    _push_case(
        "SQL in a column name", lambda t: [_city(**{"name = 'x'; --": 1})], "unknown-column"
    ),
    _push_case("a quoted column name", lambda t: [_city(**{'"name"': "x"})], "unknown-column"),
    _push_case("a string in an integer column", lambda t: [_city(population="5")], "type-mismatch"),
    _push_case(
        "a boolean in an integer column", lambda t: [_city(population=True)], "type-mismatch"
    ),
    _push_case("a float in an integer column", lambda t: [_city(population=1.5)], "type-mismatch"),
    _push_case("an integer in a string column", lambda t: [_city(name=5)], "type-mismatch"),
    _push_case("bytes in a string column", lambda t: [_city(name=b"x")], "type-mismatch"),
    _push_case("null in a non-null column", lambda t: [_city(name=None)], "type-mismatch"),
    _push_case(
        "a datetime in a date column",
        lambda t: [
            Change(
                "note",
                uuid.UUID(int=1),
                INSERT,
                1,
                {"id": uuid.UUID(int=1), "day": dt.datetime(2024, 1, 1)},
            )
        ],
        "type-mismatch",
    ),
    _push_case(
        "a string in a blob column",
        lambda t: [
            Change("note", uuid.UUID(int=1), INSERT, 1, {"id": uuid.UUID(int=1), "blob": "x"})
        ],
        "type-mismatch",
    ),
    _push_case("an integer beyond 64 bits", lambda t: [_city(population=2**70)], "invalid-value"),
    _push_case(
        "an integer beyond the column", lambda t: [_city(population=2**63)], "invalid-value"
    ),
    _push_case(
        "bytes in a JSON column",
        lambda t: [
            Change("note", uuid.UUID(int=1), INSERT, 1, {"id": uuid.UUID(int=1), "data": b"x"})
        ],
        "invalid-value",
    ),
    _push_case(
        "a JSON value nested too deep to store", lambda t: _deep_json(1_000), "invalid-value"
    ),
    _push_case("a string key for an integer key", lambda t: [_city("100")], "type-mismatch"),
    _push_case("a boolean key", lambda t: [_city(True)], "type-mismatch"),
    _push_case(
        "a float key",
        lambda t: _sections(["city", ["id", "name"], [["i", 1.5, 1, None, [1.5, "x"]]]]),
        "malformed",
    ),
    _push_case(
        "a null key",
        lambda t: _sections(["city", ["id"], [["d", None, 1, None, None]]]),
        "malformed",
    ),
    _push_case(
        "a composite key for a single key",
        lambda t: [Change("city", (1, 2), DELETE, 1)],
        "malformed",
    ),
    _push_case(
        "a one-part array key for a single key",
        lambda t: [Change("category", (1,), DELETE, 1)],
        "malformed",
    ),
    _push_case(
        "a string key for a UUID key",
        lambda t: [Change("note", "not-a-uuid", INSERT, 1, {"id": "not-a-uuid"})],
        "type-mismatch",
    ),
    _push_case(
        "a row that does not match its key",
        lambda t: [Change("city", 100, INSERT, 1, {"id": 101, "name": "x"})],
        "malformed",
    ),
    _push_case("the same row twice", lambda t: [_city(), _city()], "malformed"),
    _push_case("an insert without a row", lambda t: [Change("city", 100, INSERT, 1)], "malformed"),
    _push_case("an update without a row", lambda t: [Change("city", 1, UPDATE, 1)], "malformed"),
    _push_case(
        "an unknown command",
        lambda t: _sections(["city", ["id"], [["x", 1, 1, None, [1]]]]),
        "malformed",
    ),
    _push_case("changes that are not msgpack", lambda t: b"\xc1", "malformed"),
    _push_case("changes that are a map", lambda t: codec.encode({"city": 1}), "malformed"),
    _push_case(
        "changes nested beyond the decoder's depth",
        lambda t: b"\x91" * NESTING + b"\xc0",
        "malformed",
    ),
    _push_case("an existing primary key", lambda t: [_city(1)], "constraint-violation"),
    _push_case(
        "a reference to a missing row",
        lambda t: [Change("person", 100, INSERT, 1, {"id": 100, "name": "x", "city_id": 999})],
        "constraint-violation",
    ),
    _push_case(
        "a duplicate unique value",
        lambda t: [
            Change("tag", 100, INSERT, 1, {"id": 100, "label": "same"}),
            Change("tag", 101, INSERT, 1, {"id": 101, "label": "same"}),
        ],
        "constraint-violation",
    ),
    _push_case(
        "one bad change among good ones",
        lambda t: [_city(100), _city(101), _city(102, population="x")],
        "type-mismatch",
    ),
    _push_case(
        "a good change then a constraint violation",
        lambda t: [_city(100), _city(1)],
        "constraint-violation",
    ),
    Case(
        "push:a base behind the server, on a row changed since",
        lambda t: t.a.push([Change("city", 1, UPDATE, 1, {"id": 1, "name": "x"})], t.head - 1),
        "pull-required",
    ),
    Case(
        "push:a base ahead of the server",
        lambda t: t.a.push([_city()], t.head + 1),
        "pull-required",
    ),
    Case("push:a base beyond 64 bits", lambda t: t.a.push([_city()], 2**80), "pull-required"),
]

# --- bombs: bodies of a few kilobytes built to cost the decoder as much as possible -------


def _bomb(name: str, changes: Callable[[], bytes]) -> Case:
    return Case(f"bomb:{name}", lambda t: t.a.push(changes(), t.head), "malformed")


def _bombed_extra(t: Target) -> Message:
    fields = t.a.fields("ping", {"version": 0}, extra={"bomb": _MARKER})
    signed = _splice(codec.encode(fields), bombs.plain_nested_claims())
    return envelope_message(t.a.seal(signed), "ping", header=t.a.node_id, request_id=fields["rid"])


BOMBS = [
    _bomb("changes inflating to 8 million nils", bombs.nils),
    _bomb("changes inflating to 8 million empty arrays", bombs.empty_arrays),
    _bomb("changes inflating to a map claiming 4 million entries", bombs.huge_map),
    _bomb("inflated rows claiming 8 million rows", bombs.claimed_rows),
    _bomb("inflated arrays nested 1,000 deep, each claiming 8 million items", bombs.nested_claims),
    _bomb("arrays nested 1,000 deep, each claiming the body's length", bombs.plain_nested_claims),
    _bomb("750,000 rows each valid in shape, deflated", bombs.rows),
    _bomb("400 valid notes, each with a JSON value of 10,000 empty arrays", bombs.notes),
    _bomb("a string header claiming 4 GB", bombs.long_string),
    _bomb("changes inflating 29 times, to a table name of 265,000 empty arrays", bombs.densest),
    Case(
        "bomb:a pull's deleted keys inflating to 8 million nils",
        lambda t: t.a.message("pull", {"since": 0, "deleted": bombs.nils()}),
        "malformed",
    ),
    Case(
        "bomb:a pull's deleted keys: 750,000 rows, deflated",
        lambda t: t.a.message("pull", {"since": 0, "deleted": bombs.rows()}),
        "malformed",
    ),
    Case("bomb:extra of arrays nested 1,000 deep, each claiming much", _bombed_extra, DEAD),
]

# --- enrollment: registering a node -------------------------------------------------------


def _register(t: Target, token_state: str, **options: Any) -> Message:
    return Forge.stranger().register(t.tokens.get(token_state, token_state), **options)


ENROLLMENT = [
    Case("enrollment:an invented token", lambda t: _register(t, "invented-token"), "invalid-token"),
    Case("enrollment:a used token", lambda t: _register(t, "used"), "invalid-token"),
    Case("enrollment:an expired token", lambda t: _register(t, "expired"), "invalid-token"),
    Case(
        "enrollment:a stale registration",
        lambda t: _register(t, "fresh", ts=now_ms() - 8 * DAY_MS),
        "stale-request",
    ),
    Case(
        "enrollment:a request id already used for a push",
        lambda t: _register(t, "fresh", rid=t.applied_rid),
        "request-id-reused",
    ),
    Case(
        "enrollment:a replayed registration",
        lambda t: envelope_message(
            t.registration[1],
            "register",
            request_id=t.registration[0],
            reply_to=DIRECT_REPLY_TO,
        ),
        OK,
    ),
    Case(
        "enrollment:signed by another key than the one it names",
        lambda t: _register(t, "fresh", signer=Forge.stranger()),
        DEAD,
    ),
    Case(
        "enrollment:a public key of 31 bytes",
        lambda t: Forge.stranger().message(
            "register",
            {"token": t.tokens["fresh"], "public_key": b"k" * 31},
            header=MISSING,
            reply_to=DIRECT_REPLY_TO,
        ),
        DEAD,
    ),
    Case(
        "enrollment:a token that is not a string",
        lambda t: Forge.stranger().message(
            "register",
            {"token": 12345, "public_key": Forge.stranger().public_key},
            header=MISSING,
            reply_to=DIRECT_REPLY_TO,
        ),
        DEAD,
    ),
    Case("enrollment:no reply-to", lambda t: _register(t, "fresh", reply_to=None), DEAD),
    Case(
        "enrollment:a reply-to naming a node's queue",
        lambda t: _register(t, "fresh", reply_to=f"dbsync.node.{t.a.node_id}"),
        DEAD,
    ),
    Case(
        "enrollment:a reply-to naming the request exchange's push queue",
        lambda t: _register(t, "fresh", reply_to="dbsync.push"),
        DEAD,
    ),
    Case(
        "enrollment:a push sent as a registration",
        lambda t: t.a.push([_city()], t.head, message_kind="register", reply_to=DIRECT_REPLY_TO),
        DEAD,
    ),
]


ALL: Final = [
    *ENVELOPES,
    *REQUEST_MAP,
    *BODIES,
    *AUTH,
    *IMPERSONATION,
    *PUSH_CONTENT,
    *QUERIES,
    *BOMBS,
]
CATEGORIES: Final = sorted({case.category for case in ALL})


def by_category(category: str) -> list[Case]:
    return [case for case in ALL if case.category == category]


def markdown() -> str:
    """Every case as a table row (docs/reliability.md lists them all)."""
    lines = ["| case | expected |", "| --- | --- |"]
    for case in [*ALL, *ENROLLMENT]:
        answer = {DEAD: "dead-lettered", OK: "answered normally"}.get(
            case.expect, f"`{case.expect}`"
        )
        lines.append(f"| {case.category}: {case.id.split(':', 1)[1]} | {answer} |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(markdown())
