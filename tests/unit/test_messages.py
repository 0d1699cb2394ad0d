"""Requests, replies and events: round trips, and a ProtocolError naming each bad field."""

from __future__ import annotations

import struct
import uuid
from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbsync_mq.core import codec, messages
from dbsync_mq.core.messages import Reply, Request
from dbsync_mq.errors import ProtocolError
from tests.allocation import traced_allocations

RID = "0123456789abcdef0123456789abcdef"

# One valid body per kind, written out: adding or dropping a field in the protocol
# without updating these fails the round trips.
REQUEST_BODIES: dict[str, dict[str, Any]] = {
    messages.PUSH: {"base": 3, "changes": b"\x90"},
    messages.PULL: {"since": 0, "deleted": b"\x90"},
    messages.REGISTER: {"token": "one-time", "public_key": b"k" * 32},
    messages.REPAIR: {},
    messages.QUERY: {"table": "city", "filters": {"name": "Lima"}, "limit": 10, "offset": 0},
    messages.PING: {"version": 4},
}
REPLY_BODIES: dict[str, dict[str, Any]] = {
    messages.PUSH: {"version": 4, "base": 3},
    messages.PULL: {"version": 4, "changes": b"\x90", "versions": [4], "parents": b"\x90"},
    messages.REGISTER: {"node": 1, "server_key": b"k" * 32, "proof": b"p" * 32},
    messages.REPAIR: {"version": 4, "table": "city", "rows": b"\x90", "total": 1},
    messages.QUERY: {"rows": b"\x90"},
    messages.PING: {"version": 4},
}
NULLABLE_BODY_FIELDS = {(messages.QUERY, "limit"), (messages.REPAIR, "table")}

WRONG_VALUES: dict[type, list[Any]] = {
    int: ["7", True, 7.5, None],
    str: [7, b"text", None],
    bytes: ["bytes", 7, None],
    dict: [["a"], "map", None],
    list: [{"a": 1}, "list", None],
    bool: [1, "true", None],
}


def wrong_values(value: Any, nullable: bool) -> list[Any]:
    return [wrong for wrong in WRONG_VALUES[type(value)] if not (nullable and wrong is None)]


def request(kind: str = messages.PUSH, **changes: Any) -> Request:
    fields: dict[str, Any] = {
        "kind": kind,
        "node_id": 7,
        "request_id": RID,
        "timestamp_ms": 1_700_000_000_000,
        "body": REQUEST_BODIES[kind],
        "extra": {"app": "1.2"},
    }
    return Request(**{**fields, **changes})


def request_map(kind: str = messages.PUSH) -> dict[str, Any]:
    """The signed map of a valid request, to break one field of."""
    fields: dict[str, Any] = codec.decode(messages.encode_request(request(kind)))
    return fields


def refused(fields: Any) -> str:
    with pytest.raises(ProtocolError) as caught:
        messages.decode_request(codec.encode(fields))
    return str(caught.value)


@pytest.mark.parametrize("kind", messages.REQUEST_KINDS)
def test_a_request_of_each_kind_round_trips(kind: str) -> None:
    sent = request(kind)

    assert messages.decode_request(messages.encode_request(sent)) == sent


@given(
    node_id=st.integers(min_value=0, max_value=2**63 - 1),
    request_id=st.uuids().map(lambda u: u.hex),
    timestamp_ms=st.integers(min_value=0, max_value=2**63 - 1),
    extra=st.none() | st.dictionaries(st.text(), st.integers() | st.text(), max_size=4),
)
def test_requests_round_trip_with_any_node_id_timestamp_and_extra_data(
    node_id: int, request_id: str, timestamp_ms: int, extra: dict[str, Any] | None
) -> None:
    sent = request(node_id=node_id, request_id=request_id, timestamp_ms=timestamp_ms, extra=extra)

    assert messages.decode_request(messages.encode_request(sent)) == sent


def test_the_request_map_helper_decodes_as_is() -> None:
    # Guard: every case below breaks exactly one field of this map.
    assert messages.decode_request(codec.encode(request_map())) == request()


@pytest.mark.parametrize("name", ["kind", "proto", "node", "rid", "ts", "extra", "body"])
def test_a_request_missing_a_field_is_refused_naming_it(name: str) -> None:
    fields = request_map()
    del fields[name]

    assert f"missing field {name!r}" in refused(fields)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("kind", 1),
        ("kind", None),
        ("proto", "1"),
        ("proto", True),
        ("node", "7"),
        ("node", True),
        ("node", 7.0),
        ("node", None),
        ("rid", 1),
        ("rid", RID.encode()),
        ("ts", True),
        ("ts", "1700000000000"),
        ("extra", ["app"]),
        ("extra", "app"),
        ("body", None),
        ("body", [1, b"x"]),
    ],
)
def test_a_request_field_of_the_wrong_type_is_refused_naming_it(name: str, value: Any) -> None:
    fields = request_map()
    fields[name] = value

    assert f"field {name!r} has the wrong type" in refused(fields)


def test_a_request_with_an_unknown_field_is_refused_naming_it() -> None:
    fields = request_map()
    fields["priority"] = 1

    assert "'priority'" in refused(fields)


def test_a_request_of_an_unknown_kind_is_refused_naming_it() -> None:
    fields = request_map()
    fields["kind"] = "merge"

    assert "unknown request kind 'merge'" in refused(fields)


@pytest.mark.parametrize("proto", [0, messages.PROTOCOL_VERSION + 1, -1])
def test_a_request_of_another_protocol_version_is_refused(proto: int) -> None:
    fields = request_map()
    fields["proto"] = proto

    assert f"unsupported protocol version {proto}" in refused(fields)


@pytest.mark.parametrize(
    "rid",
    [
        "",
        RID[:-1],
        RID + "0",
        RID.upper(),
        str(uuid.UUID(RID)),
        "g" * 32,
        RID[:-1] + "\n",
    ],
)
def test_a_request_id_that_is_not_32_lowercase_hex_digits_is_refused(rid: str) -> None:
    fields = request_map()
    fields["rid"] = rid

    assert "request id" in refused(fields)


BODY_FIELDS = [
    (kind, name) for kind, body in sorted(REQUEST_BODIES.items()) for name in sorted(body)
]


@pytest.mark.parametrize(("kind", "name"), BODY_FIELDS)
def test_a_request_body_missing_a_field_is_refused_naming_it(kind: str, name: str) -> None:
    fields = request_map(kind)
    del fields["body"][name]

    assert f"{kind} request: missing field {name!r}" in refused(fields)


@pytest.mark.parametrize(("kind", "name"), BODY_FIELDS)
def test_a_request_body_field_of_the_wrong_type_is_refused_naming_it(kind: str, name: str) -> None:
    nullable = (kind, name) in NULLABLE_BODY_FIELDS
    for value in wrong_values(REQUEST_BODIES[kind][name], nullable):
        fields = request_map(kind)
        fields["body"][name] = value

        assert f"{kind} request: field {name!r} has the wrong type" in refused(fields), value


@pytest.mark.parametrize("kind", messages.REQUEST_KINDS)
def test_a_request_body_with_an_unknown_field_is_refused_naming_it(kind: str) -> None:
    fields = request_map(kind)
    fields["body"]["surprise"] = 1

    assert f"{kind} request: unknown fields ['surprise']" in refused(fields)


def test_a_query_may_leave_its_limit_unset() -> None:
    body = {**REQUEST_BODIES[messages.QUERY], "limit": None}
    sent = request(messages.QUERY, body=body)

    assert messages.decode_request(messages.encode_request(sent)).body == body


def test_a_push_carrying_a_pull_body_is_refused() -> None:
    fields = request_map(messages.PUSH)
    fields["body"] = REQUEST_BODIES[messages.PULL]

    assert "push request: unknown fields ['deleted', 'since']" in refused(fields)


@pytest.mark.parametrize("data", [b"", b"\xc1", codec.encode([1, 2]), codec.encode("push")])
def test_a_request_that_is_not_a_map_is_refused(data: bytes) -> None:
    with pytest.raises(ProtocolError, match=r"^request: "):
        messages.decode_request(data)


# Replies


def reply(kind: str = messages.PUSH, **changes: Any) -> Reply:
    fields: dict[str, Any] = {
        "request_id": RID,
        "timestamp_ms": 1_700_000_000_001,
        "body": REPLY_BODIES[kind],
        "seq": 2,
        "last": False,
    }
    return Reply(**{**fields, **changes})


def reply_map(kind: str = messages.PUSH) -> dict[str, Any]:
    fields: dict[str, Any] = codec.decode(messages.encode_reply(reply(kind)))
    return fields


def reply_refused(fields: Any, kind: str = messages.PUSH) -> str:
    with pytest.raises(ProtocolError) as caught:
        messages.decode_reply(codec.encode(fields), kind)
    return str(caught.value)


@pytest.mark.parametrize("kind", messages.REQUEST_KINDS)
def test_a_reply_to_each_kind_round_trips(kind: str) -> None:
    sent = reply(kind)

    assert messages.decode_reply(messages.encode_reply(sent), kind) == sent


def test_an_error_reply_round_trips_without_a_body_of_its_kind() -> None:
    sent = Reply(RID, 5, status=messages.ERROR, code="pull-required", reason="behind by 2")

    assert messages.decode_reply(messages.encode_reply(sent), messages.PUSH) == sent


def test_the_reply_map_helper_decodes_as_is() -> None:
    assert messages.decode_reply(codec.encode(reply_map()), messages.PUSH) == reply()


@pytest.mark.parametrize(
    "name", ["kind", "proto", "rid", "ts", "status", "code", "reason", "seq", "last", "body"]
)
def test_a_reply_missing_a_field_is_refused_naming_it(name: str) -> None:
    fields = reply_map()
    del fields[name]

    assert f"missing field {name!r}" in reply_refused(fields)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("proto", True),
        ("rid", 1),
        ("ts", True),
        ("status", 1),
        ("code", 1),
        ("reason", b"why"),
        ("seq", True),
        ("seq", "0"),
        ("last", 1),
        ("last", None),
        ("body", []),
    ],
)
def test_a_reply_field_of_the_wrong_type_is_refused_naming_it(name: str, value: Any) -> None:
    fields = reply_map()
    fields[name] = value

    assert f"field {name!r} has the wrong type" in reply_refused(fields)


@pytest.mark.parametrize(("name", "value"), [("kind", "event"), ("status", "maybe")])
def test_a_map_that_is_not_a_reply_is_refused(name: str, value: str) -> None:
    fields = reply_map()
    fields[name] = value

    assert "not a reply" in reply_refused(fields)


def test_a_reply_with_an_unknown_field_is_refused_naming_it() -> None:
    fields = reply_map()
    fields["hint"] = "x"

    assert "'hint'" in reply_refused(fields)


@pytest.mark.parametrize("kind", messages.REQUEST_KINDS)
def test_an_ok_reply_body_is_checked_against_its_request_kind(kind: str) -> None:
    other = next(k for k in messages.REQUEST_KINDS if REPLY_BODIES[k] != REPLY_BODIES[kind])
    fields = reply_map(other)

    assert f"{kind} reply: " in reply_refused(fields, kind)


# Events


def test_an_event_round_trips_with_what_it_carries() -> None:
    event = messages.Event(42, node_id=7, request_id="r1", changes=b"\x90")
    assert messages.decode_event(messages.encode_event(event, 1_700_000_000_000)) == event
    bare = messages.Event(43)
    assert messages.decode_event(messages.encode_event(bare, 1)) == bare


def test_an_event_carrying_more_changes_than_an_event_may_is_refused() -> None:
    event = messages.Event(1, 2, "r", b"x" * (messages.MAX_EVENT_CHANGES + 1))
    with pytest.raises(ProtocolError, match="changes"):
        messages.decode_event(messages.encode_event(event, 1))


def test_a_reply_is_not_an_event() -> None:
    with pytest.raises(ProtocolError, match="event"):
        messages.decode_event(messages.encode_reply(reply()))


def test_an_event_with_a_bool_version_is_refused() -> None:
    fields = codec.decode(messages.encode_event(messages.Event(1), 2))
    fields["version"] = True

    with pytest.raises(ProtocolError, match="'version'"):
        messages.decode_event(codec.encode(fields))


# Extra data


def test_extra_data_may_be_absent_or_a_small_mapping() -> None:
    messages.check_extra_data(None)
    messages.check_extra_data({"app": "1.2", "user": 7})


def test_extra_data_that_is_not_a_mapping_is_refused() -> None:
    with pytest.raises(ProtocolError, match="mapping"):
        messages.check_extra_data(["app", "1.2"])  # type: ignore[arg-type]


def test_extra_data_that_cannot_be_encoded_is_refused() -> None:
    with pytest.raises(ProtocolError, match=r"^extra_data: "):
        messages.check_extra_data({"when": object()})


def test_extra_data_of_exactly_the_limit_passes_and_one_byte_more_is_refused() -> None:
    # Given extra data whose msgpack form is exactly the limit (sized with msgpack itself)
    limit = messages.MAX_EXTRA_DATA_BYTES
    size = next(n for n in range(limit, 0, -1) if len(msgpack.packb({"k": b"x" * n})) == limit)

    messages.check_extra_data({"k": b"x" * size})
    with pytest.raises(ProtocolError, match=f"limit is {limit}"):
        messages.check_extra_data({"k": b"x" * (size + 1)})


NESTED_CLAIMS = (b"\xdd" + struct.pack(">I", 5_001)) * 1_000 + b"\xc0"
"""Arrays nested 1,000 deep, each claiming about as many items as the message has bytes."""


def with_value(fields: dict[str, Any], name: str, raw: bytes) -> bytes:
    """``fields`` encoded, with field ``name`` replaced by the raw msgpack ``raw``."""
    marker = codec.encode("@@marker@@")
    return codec.encode({**fields, name: "@@marker@@"}).replace(marker, raw)


def test_a_request_claiming_more_than_it_holds_is_refused_allocating_little() -> None:
    data = with_value(request_map(), "extra", NESTED_CLAIMS)

    with traced_allocations() as traced, pytest.raises(ProtocolError):
        messages.decode_request(data)

    assert traced.peak < 4 * 1024 * 1024


def test_a_reply_claiming_more_than_it_holds_is_refused_allocating_little() -> None:
    data = with_value(reply_map(messages.PULL), "body", NESTED_CLAIMS)

    with traced_allocations() as traced, pytest.raises(ProtocolError):
        messages.decode_reply(data, messages.PULL)

    assert traced.peak < 4 * 1024 * 1024
