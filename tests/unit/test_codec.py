"""The codec: every value a column holds round-trips exactly; everything else is a CodecError."""

from __future__ import annotations

import datetime as dt
import math
import struct
import uuid
from decimal import Decimal
from typing import Any

import msgpack
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from dbsync_mq.core import codec
from dbsync_mq.errors import CodecError
from tests.allocation import traced_allocations

MICRO = dt.timedelta(microseconds=1)

# Any fixed offset Python accepts: strictly inside +/- 24 h, to the microsecond.
fixed_zones = st.timedeltas(
    min_value=-dt.timedelta(hours=24) + MICRO, max_value=dt.timedelta(hours=24) - MICRO
).map(dt.timezone)
folds = st.sampled_from([0, 1])

naive_datetimes = st.builds(lambda d, fold: d.replace(fold=fold), st.datetimes(), folds)
aware_datetimes = st.builds(
    lambda d, fold, zone: d.replace(fold=fold, tzinfo=zone), st.datetimes(), folds, fixed_zones
)
naive_times = st.builds(lambda t, fold: t.replace(fold=fold), st.times(), folds)
aware_times = st.builds(
    lambda t, fold, zone: t.replace(fold=fold, tzinfo=zone), st.times(), folds, fixed_zones
)
wide_integers = st.integers(min_value=-(2**300), max_value=2**300)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=12,
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    wide_integers,
    st.floats(),
    st.text(),
    st.binary(),
    naive_datetimes,
    aware_datetimes,
    st.dates(),
    naive_times,
    aware_times,
    st.timedeltas(),
    st.decimals(),
    st.uuids(),
)
supported_values = st.recursive(
    scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=12,
)


def same(decoded: Any, original: Any) -> bool:
    """Exact equality: same type, and what ``==`` ignores (NaN, -0.0, fold, offset, exponent)."""
    if type(decoded) is not type(original):
        return False
    if isinstance(original, float):
        if math.isnan(original):
            return math.isnan(decoded)
        return decoded == original and math.copysign(1, decoded) == math.copysign(1, original)
    if isinstance(original, Decimal):
        # compare_total tells NaN from sNaN, -0 from 0 and 1.0 from 1.00.
        return decoded.compare_total(original) == 0
    if isinstance(original, (dt.datetime, dt.time)):
        return (decoded.replace(tzinfo=None), decoded.fold, decoded.utcoffset()) == (
            original.replace(tzinfo=None),
            original.fold,
            original.utcoffset(),
        )
    if isinstance(original, list):
        return len(decoded) == len(original) and all(map(same, decoded, original))
    if isinstance(original, dict):
        return decoded.keys() == original.keys() and all(
            same(decoded[key], original[key]) for key in original
        )
    return bool(decoded == original)


def round_trip(value: Any) -> Any:
    return codec.decode(codec.encode(value))


def ext(code: int, payload: bytes) -> bytes:
    """An ext 32 item; unlike ``msgpack.ExtType`` it allows the reserved negative codes."""
    return b"\xc9" + struct.pack(">Ib", len(payload), code) + payload


def test_the_exact_comparison_sees_what_equality_ignores() -> None:
    # Guard for the helper every round-trip test relies on.
    assert not same(-0.0, 0.0)
    assert not same(Decimal("1.0"), Decimal("1.00"))
    assert not same(Decimal("sNaN"), Decimal("NaN"))
    assert not same(dt.datetime(2024, 1, 1, fold=1), dt.datetime(2024, 1, 1))
    utc_noon = dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone.utc)
    assert not same(utc_noon, utc_noon.astimezone(dt.timezone(dt.timedelta(hours=1))))
    assert not same(1, True)
    assert not same([1], (1,))


@given(st.none() | st.booleans() | st.text() | st.binary())
def test_msgpack_native_scalars_round_trip(value: Any) -> None:
    assert same(round_trip(value), value)


@given(wide_integers)
@example(2**63 - 1)
@example(-(2**63))
@example(-(2**63) - 1)
@example(2**64 - 1)
@example(2**64)
@example(-(2**64))
def test_integers_round_trip_including_beyond_64_bits(value: int) -> None:
    assert same(round_trip(value), value)


@given(st.floats())
@example(math.inf)
@example(-math.inf)
@example(math.nan)
@example(-0.0)
@example(5e-324)
def test_floats_round_trip_including_infinities_nan_and_negative_zero(value: float) -> None:
    assert same(round_trip(value), value)


@given(json_values)
def test_nested_lists_and_dicts_as_json_columns_hold_them_round_trip(value: Any) -> None:
    assert same(round_trip(value), value)


@given(naive_datetimes)
@example(dt.datetime.min)
@example(dt.datetime.max)
def test_naive_datetimes_round_trip_with_their_fold(value: dt.datetime) -> None:
    assert same(round_trip(value), value)


@given(aware_datetimes)
@example(dt.datetime(2024, 3, 31, 2, 30, fold=1, tzinfo=dt.timezone(dt.timedelta(seconds=-37))))
@example(dt.datetime.max.replace(tzinfo=dt.timezone(dt.timedelta(hours=-23, minutes=-59))))
@example(dt.datetime.min.replace(tzinfo=dt.timezone(dt.timedelta(hours=23, minutes=59))))
def test_aware_datetimes_round_trip_with_any_fixed_offset_and_fold(value: dt.datetime) -> None:
    assert same(round_trip(value), value)


def test_an_aware_datetime_comes_back_with_a_fixed_offset_zone() -> None:
    # Given a datetime whose zone has a name and an offset below a minute
    class Odd(dt.tzinfo):
        def utcoffset(self, _: dt.datetime | None) -> dt.timedelta:
            return dt.timedelta(minutes=5, seconds=30, microseconds=7)

        def tzname(self, _: dt.datetime | None) -> str:
            return "ODD"

        def dst(self, _: dt.datetime | None) -> dt.timedelta:
            return dt.timedelta(0)

    value = dt.datetime(2030, 5, 6, 7, 8, 9, 10, tzinfo=Odd())

    # When it round-trips
    decoded = round_trip(value)

    # Then the instant and offset are exact, and the zone is a fixed-offset one
    assert isinstance(decoded.tzinfo, dt.timezone)
    assert decoded.utcoffset() == dt.timedelta(minutes=5, seconds=30, microseconds=7)
    assert decoded == value
    assert decoded.replace(tzinfo=None) == value.replace(tzinfo=None)


@given(st.dates())
def test_dates_round_trip_as_dates_not_datetimes(value: dt.date) -> None:
    assert same(round_trip(value), value)


@given(naive_times | aware_times)
@example(dt.time.max)
@example(dt.time(0, 0, tzinfo=dt.timezone(dt.timedelta(seconds=1))))
def test_naive_and_aware_times_round_trip_with_their_fold_and_offset(value: dt.time) -> None:
    assert same(round_trip(value), value)


@given(st.timedeltas())
@example(dt.timedelta.min)
@example(dt.timedelta.max)
@example(-MICRO)
def test_timedeltas_round_trip_over_their_full_range(value: dt.timedelta) -> None:
    assert same(round_trip(value), value)


@given(st.decimals())
@example(Decimal("NaN"))
@example(Decimal("-NaN"))
@example(Decimal("NaN123"))
@example(Decimal("sNaN"))
@example(Decimal("-sNaN7"))
@example(Decimal("Infinity"))
@example(Decimal("-Infinity"))
@example(Decimal("-0"))
@example(Decimal("0E-7"))
@example(Decimal("1.000"))
@example(Decimal("1E+999999"))
@example(Decimal("-12345678901234567890123456789.123456789E-300"))
def test_decimals_round_trip_with_sign_exponent_and_nan_kind(value: Decimal) -> None:
    assert same(round_trip(value), value)


@given(st.uuids())
def test_uuids_round_trip(value: uuid.UUID) -> None:
    assert same(round_trip(value), value)


@given(supported_values)
def test_any_nesting_of_supported_values_round_trips(value: Any) -> None:
    assert same(round_trip(value), value)


def test_tuples_come_back_as_lists() -> None:
    # Documented: msgpack has one array type; keys use encode_key/decode_key instead.
    assert round_trip((1, "a", (2, 3))) == [1, "a", [2, 3]]


class Custom:
    pass


@pytest.mark.parametrize(
    ("value", "type_name"),
    [
        pytest.param(object(), "object", id="object"),
        pytest.param({1, 2}, "set", id="set"),
        pytest.param(frozenset({1}), "frozenset", id="frozenset"),
        pytest.param(Custom(), "Custom", id="custom-class"),
        pytest.param(1 + 2j, "complex", id="complex"),
        pytest.param([1, {"nested": Custom()}], "Custom", id="nested-custom-class"),
    ],
)
def test_unknown_types_are_refused_with_a_message_naming_the_type(
    value: Any, type_name: str
) -> None:
    with pytest.raises(CodecError, match=rf"\b{type_name}\b"):
        codec.encode(value)


def test_a_string_that_is_not_valid_unicode_is_refused() -> None:
    with pytest.raises(CodecError):
        codec.encode("lone surrogate \ud800")


def nested_lists(depth: int) -> list[Any]:
    value: list[Any] = []
    for _ in range(depth):
        value = [value]
    return value


def test_deeply_nested_values_are_refused_on_encode() -> None:
    with pytest.raises(CodecError):
        codec.encode(nested_lists(100_000))


def test_deeply_nested_input_is_refused_on_decode() -> None:
    # One-element arrays nested 100,000 deep, then nil.
    with pytest.raises(CodecError):
        codec.decode(b"\x91" * 100_000 + b"\xc0")


SUPPORTED_TYPES = (
    type(None),
    bool,
    int,
    float,
    str,
    bytes,
    list,
    dict,
    dt.datetime,
    dt.date,
    dt.time,
    dt.timedelta,
    Decimal,
    uuid.UUID,
)


def only_supported_types(value: Any) -> bool:
    if type(value) not in SUPPORTED_TYPES:
        return False
    if isinstance(value, list):
        return all(map(only_supported_types, value))
    if isinstance(value, dict):
        return all(map(only_supported_types, value)) and all(
            map(only_supported_types, value.values())
        )
    return True


@settings(max_examples=2000)
@given(st.binary())
@example(b"\xd6\xff\x00\x00\x00\x01")  # msgpack's own timestamp extension
@example(b"\xc1")  # the one byte msgpack never uses
@example(b"\xdd\xff\xff\xff\xff")  # an array announcing 4 billion items
@example(b"\x92\x01")  # truncated
@example(b"\x01\x02")  # trailing data
def test_decoding_arbitrary_bytes_fails_only_with_codec_error(data: bytes) -> None:
    try:
        value = codec.decode(data)
    except CodecError:
        return
    assert only_supported_types(value), f"decode returned a foreign type: {value!r}"


@given(supported_values, st.data())
def test_every_truncation_of_an_encoding_is_refused(value: Any, data: st.DataObject) -> None:
    encoded = codec.encode(value)
    cut = data.draw(st.integers(min_value=0, max_value=len(encoded) - 1), label="cut")
    with pytest.raises(CodecError):
        codec.decode(encoded[:cut])


@pytest.mark.parametrize("code", [0, 8, 42, 127, -2, -128])
def test_unknown_extension_codes_are_refused(code: int) -> None:
    data = ext(code, b"\x00" * 8)
    with pytest.raises(CodecError, match=rf"unknown extension type {code}\b"):
        codec.decode(data)


def test_msgpack_timestamps_never_leak_msgpack_objects() -> None:
    # The codec never writes ext -1, but msgpack decodes it without calling our hook:
    # it must still come back as a type the rest of the library knows.
    data = msgpack.packb(msgpack.Timestamp(seconds=86_400, nanoseconds=1_000))

    decoded = codec.decode(data)

    assert decoded == dt.datetime(1970, 1, 2, 0, 0, 0, 1, tzinfo=dt.timezone.utc)


DAY_MICROS = 86_400_000_000


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(ext(codec.EXT_DATETIME, b"\x00" * 5), id="datetime-short"),
        pytest.param(ext(codec.EXT_DATETIME, b"\x00" * 12), id="datetime-between-sizes"),
        pytest.param(ext(codec.EXT_DATETIME, struct.pack(">qB", 0, 2)), id="datetime-fold-2"),
        pytest.param(ext(codec.EXT_DATETIME, struct.pack(">qB", 2**62, 0)), id="datetime-max"),
        pytest.param(ext(codec.EXT_DATETIME, struct.pack(">qB", -1, 0)), id="datetime-min"),
        pytest.param(
            ext(codec.EXT_DATETIME, struct.pack(">qBq", 0, 0, DAY_MICROS)),
            id="datetime-offset-24h",
        ),
        pytest.param(ext(codec.EXT_DATE, struct.pack(">i", 0)), id="date-ordinal-0"),
        pytest.param(ext(codec.EXT_DATE, struct.pack(">i", 2**31 - 1)), id="date-past-max"),
        pytest.param(ext(codec.EXT_DATE, b"\x00"), id="date-short"),
        pytest.param(ext(codec.EXT_TIME, struct.pack(">qB", DAY_MICROS, 0)), id="time-24h"),
        pytest.param(ext(codec.EXT_TIME, struct.pack(">qB", -1, 0)), id="time-negative"),
        pytest.param(
            ext(codec.EXT_TIME, struct.pack(">qBq", 0, 0, -DAY_MICROS)), id="time-offset-24h"
        ),
        pytest.param(
            ext(codec.EXT_TIMEDELTA, struct.pack(">iii", 10**9, 0, 0)), id="timedelta-overflow"
        ),
        pytest.param(ext(codec.EXT_TIMEDELTA, b"\x00" * 8), id="timedelta-short"),
        pytest.param(ext(codec.EXT_DECIMAL, b"twelve"), id="decimal-not-a-number"),
        pytest.param(ext(codec.EXT_DECIMAL, b"\xff1"), id="decimal-not-ascii"),
        pytest.param(ext(codec.EXT_DECIMAL, b""), id="decimal-empty"),
        pytest.param(ext(codec.EXT_UUID, b"\x00" * 15), id="uuid-short"),
        pytest.param(ext(codec.EXT_BIGINT, b"12x"), id="bigint-not-a-number"),
        pytest.param(ext(codec.EXT_BIGINT, b""), id="bigint-empty"),
        pytest.param(ext(codec.EXT_BIGINT, "\u0661".encode()), id="bigint-not-ascii"),
        pytest.param(ext(codec.EXT_BIGINT, b"9" * 10_000), id="bigint-too-many-digits"),
    ],
)
def test_bad_extension_payloads_are_refused(data: bytes) -> None:
    with pytest.raises(CodecError, match="invalid payload for extension type"):
        codec.decode(data)


keys = st.one_of(
    st.integers(),
    st.text(),
    st.uuids(),
    st.tuples(st.integers(), st.text()),
    st.tuples(st.uuids(), st.integers(), st.text()),
)


@given(keys)
def test_primary_keys_round_trip_and_composite_keys_come_back_as_tuples(key: Any) -> None:
    decoded = codec.decode_key(codec.encode_key(key))

    assert decoded == key
    assert type(decoded) is type(key)
    hash(decoded)


MAX_ALLOCATED = 4 * 1024 * 1024
"""What decoding any of the few-kilobyte inputs below may allocate at its peak."""


def claims(header: bytes, count: int) -> bytes:
    return header + struct.pack(">I", count)


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(claims(b"\xdd", 5_001) * 1_000 + b"\xc0", id="arrays-nested-each-claiming"),
        pytest.param((claims(b"\xdf", 6_001) + b"\xc0") * 1_000 + b"\xc0", id="maps-nested"),
        pytest.param(claims(b"\xdd", 2**32 - 1) + b"\xc0" * 100, id="array-claiming-4-billion"),
        pytest.param(claims(b"\xdf", 2**32 - 1) + b"\xc0" * 100, id="map-claiming-4-billion"),
        pytest.param(claims(b"\xdb", 2**32 - 1) + b"x" * 100, id="str-claiming-4-gb"),
        pytest.param(claims(b"\xc6", 2**32 - 1) + b"x" * 100, id="bin-claiming-4-gb"),
        pytest.param(claims(b"\xc9", 2**32 - 1) + b"\x05" + b"1" * 100, id="ext-claiming-4-gb"),
        pytest.param(b"\x92" + claims(b"\xc6", 5_000) + b"x" * 4_000, id="bin-longer-than-data"),
    ],
)
def test_headers_claiming_more_than_the_data_holds_are_refused_without_allocating_it(
    data: bytes,
) -> None:
    with traced_allocations() as traced, pytest.raises(CodecError):
        codec.decode(data)

    assert traced.peak < MAX_ALLOCATED


def test_a_value_as_large_as_its_headers_claim_is_decoded() -> None:
    # Guard for the test above: what is really there decodes, however large.
    data = claims(b"\xdd", 100_000) + b"\x90" * 100_000

    assert codec.decode(data) == [[]] * 100_000
