"""The wire form of change lists: exact round trips, and ProtocolError for every bad shape."""

from __future__ import annotations

import datetime as dt
import zlib
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbsync_mq.core import codec
from dbsync_mq.core.changeset import (
    ChangeTooLarge,
    decode_changes,
    decode_signed,
    encode_changes,
    encode_insert_parts,
    encode_inserts,
    encode_parts,
    signed_sections,
)
from dbsync_mq.core.model import COMMANDS, DELETE, INSERT, UPDATE, Change
from dbsync_mq.errors import ProtocolError
from tests.allocation import traced_allocations
from tests.security import bombs

names = st.text(min_size=1, max_size=12)
hlcs = st.integers(min_value=0, max_value=2**64 - 1)
scalar_keys = st.one_of(st.integers(), st.text(), st.uuids())
keys = scalar_keys | st.tuples(scalar_keys, scalar_keys) | st.tuples(st.integers(), st.text())
# NaN is left out: Change compares values with ==.
column_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.text(),
    st.binary(max_size=8),
    st.dates(),
    st.datetimes(),
    st.decimals(allow_nan=False),
    st.uuids(),
)


@st.composite
def change_lists(draw: st.DrawFn) -> list[Change]:
    """Changes over a few tables, interleaved.

    Every row's values cover all of its table's columns, as rows read from a table do:
    the wire form cannot tell a column missing from a row from a null one.
    """
    tables = draw(
        st.dictionaries(names, st.lists(names, min_size=1, max_size=4, unique=True), max_size=3)
    )
    if not tables:
        return []
    changes = []
    for _ in range(draw(st.integers(min_value=0, max_value=10))):
        table = draw(st.sampled_from(sorted(tables)))
        columns = tables[table]
        command = draw(st.sampled_from(sorted(COMMANDS)))
        full_row = st.fixed_dictionaries({column: column_values for column in columns})
        # Deletes usually carry no state, but may carry the last known one.
        values = draw(st.none() | full_row if command == DELETE else full_row)
        clocks = draw(st.dictionaries(st.sampled_from(columns), hlcs))
        changes.append(Change(table, draw(keys), command, draw(hlcs), values, clocks))
    return changes


def grouped_by_table(changes: list[Change]) -> list[Change]:
    """The documented order of the wire form: by table in first-seen order, then as given."""
    tables = list(dict.fromkeys(change.table for change in changes))
    return [change for table in tables for change in changes if change.table == table]


@given(change_lists())
def test_changes_round_trip_grouped_by_table_in_first_seen_order(changes: list[Change]) -> None:
    assert decode_changes(encode_changes(changes)) == grouped_by_table(changes)


@given(change_lists())
def test_changes_the_server_signed_decode_as_every_change_list_does(changes: list[Change]) -> None:
    assert decode_signed(encode_changes(changes)) == grouped_by_table(changes)


def test_a_malformed_row_the_server_signed_is_a_protocol_error() -> None:
    data = codec.encode([["city", ["name"], [[INSERT, 1, 0, {"not": "clocks"}, ["Lima"]]]]])

    with pytest.raises(ProtocolError):
        decode_signed(data)
    with pytest.raises(ProtocolError):
        signed_sections(codec.encode([["city", "name", []]]))


def test_inserts_packed_from_value_lists_decode_as_inserts_of_whole_rows() -> None:
    # Given rows as a repair reads them: a key and the values in column order
    columns = ["id", "name", "at"]
    rows = [[n, [n, f"city {n}", dt.datetime(2024, 1, n)]] for n in range(1, 29)]

    # When they are packed in parts small enough to need several
    parts = encode_insert_parts("city", columns, rows, 200)

    # Then every part fits, and together they are the inserts of the rows in order
    assert len(parts) > 1
    assert all(len(part) <= 200 for part in parts)
    decoded = [change for part in parts for change in decode_changes(part)]
    assert decoded == [
        Change("city", key, INSERT, 0, dict(zip(columns, values, strict=True)))
        for key, values in rows
    ]
    assert decode_changes(encode_inserts("city", columns, rows)) == decoded


def test_composite_keys_come_back_as_tuples_and_clocks_by_column_name() -> None:
    # Given an update of a row with a composite key and per-column clocks
    change = Change(
        "city_tag",
        (7, "x"),
        UPDATE,
        hlc=99,
        values={"city_id": 7, "tag": "x", "at": dt.date(2024, 1, 2), "n": Decimal("1.50")},
        clocks={"tag": 98, "at": 99},
    )

    # When it travels
    (decoded,) = decode_changes(encode_changes([change]))

    # Then it is the same change
    assert decoded.key == (7, "x")
    assert decoded.clocks == {"tag": 98, "at": 99}
    assert decoded == change


def test_a_row_shorter_than_its_section_keeps_only_its_own_columns() -> None:
    # Given a section whose second column arrived after the first row was written
    data = codec.encode([["city", ["name", "population"], [[INSERT, 1, 0, None, ["Lima"]]]]])

    (change,) = decode_changes(data)

    assert change.values == {"name": "Lima"}


def test_an_empty_change_list_round_trips() -> None:
    assert decode_changes(encode_changes([])) == []


def section(*rows: Any, table: Any = "city", columns: Any = None) -> list[Any]:
    return [[table, ["id", "name"] if columns is None else columns, list(rows)]]


def row(
    command: Any = INSERT, key: Any = 1, hlc: Any = 0, clocks: Any = None, values: Any = None
) -> list[Any]:
    return [command, key, hlc, clocks, values]


def test_the_malformed_shape_helpers_build_a_valid_section() -> None:
    # Guard: each malformed case below differs from this one in the named field only.
    (change,) = decode_changes(codec.encode(section(row(UPDATE, 1, 5, {1: 4}, [1, "Lima"]))))

    assert change == Change("city", 1, UPDATE, 5, {"id": 1, "name": "Lima"}, {"name": 4})


MALFORMED = [
    pytest.param({"city": []}, id="sections-not-a-list"),
    pytest.param("changes", id="sections-a-string"),
    pytest.param(["city"], id="section-not-a-list"),
    pytest.param([["city", ["id"]]], id="section-of-two-items"),
    pytest.param([["city", ["id"], [], "more"]], id="section-of-four-items"),
    pytest.param(section(table=""), id="empty-table-name"),
    pytest.param(section(table=7), id="table-name-not-a-string"),
    pytest.param(section(table="t" * 129), id="table-name-too-long"),
    pytest.param(section(columns="id"), id="columns-not-a-list"),
    pytest.param(section(columns=["id", 2]), id="column-name-not-a-string"),
    pytest.param(section(columns=["id", ""]), id="column-name-empty"),
    pytest.param(section(columns=["id", "name", "id"]), id="duplicate-column-names"),
    pytest.param([["city", ["id"], {"rows": []}]], id="rows-not-a-list"),
    pytest.param(section("i"), id="row-not-a-list"),
    pytest.param(section([INSERT, 1, 0, None]), id="row-of-four-items"),
    pytest.param(section([INSERT, 1, 0, None, None, None]), id="row-of-six-items"),
    pytest.param(section(row(command="x")), id="unknown-command"),
    pytest.param(section(row(command="insert")), id="command-spelled-out"),
    pytest.param(section(row(command=None)), id="command-nil"),
    pytest.param(section(row(command=["i"])), id="command-an-array"),
    pytest.param(section(row(command={"i": 1})), id="command-a-map"),
    pytest.param(section(row(key=None)), id="key-nil"),
    pytest.param(section(row(key=1.5)), id="key-a-float"),
    pytest.param(section(row(key={"id": 1})), id="key-a-map"),
    pytest.param(section(row(key=[])), id="composite-key-empty"),
    pytest.param(section(row(key=[1, None])), id="composite-key-with-nil"),
    pytest.param(section(row(key=[1, [2]])), id="composite-key-nested"),
    pytest.param(section(row(key=[1, 2.0])), id="composite-key-with-float"),
    pytest.param(section(row(hlc="5")), id="hlc-a-string"),
    pytest.param(section(row(hlc=5.0)), id="hlc-a-float"),
    pytest.param(section(row(hlc=None)), id="hlc-nil"),
    pytest.param(section(row(hlc=True)), id="hlc-a-bool"),
    pytest.param(section(row(hlc=-1)), id="hlc-negative"),
    pytest.param(section(row(clocks=[5])), id="clocks-not-a-map"),
    pytest.param(section(row(clocks={2: 5})), id="clock-position-past-the-columns"),
    pytest.param(section(row(clocks={-1: 5})), id="clock-position-negative"),
    pytest.param(section(row(clocks={"name": 5})), id="clock-position-a-name"),
    pytest.param(section(row(clocks={True: 5})), id="clock-position-a-bool"),
    pytest.param(section(row(clocks={0: "5"})), id="clock-a-string"),
    pytest.param(section(row(clocks={0: False})), id="clock-a-bool"),
    pytest.param(section(row(clocks={0: -5})), id="clock-negative"),
    pytest.param(section(row(values=[1, "Lima", 3])), id="values-longer-than-columns"),
    pytest.param(section(row(values={"id": 1})), id="values-a-map"),
    pytest.param(section(row(values="Lima")), id="values-a-string"),
]


@pytest.mark.parametrize("changes", MALFORMED)
def test_malformed_changes_are_refused_with_protocol_error(changes: Any) -> None:
    with pytest.raises(ProtocolError, match=r"^changes: "):
        decode_changes(codec.encode(changes))


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x91", b"\x90\x90"])
def test_bytes_that_are_not_msgpack_are_refused_with_protocol_error(data: bytes) -> None:
    with pytest.raises(ProtocolError, match=r"^changes: "):
        decode_changes(data)


anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=3) | st.binary(),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.integers() | st.text(max_size=3), children, max_size=3)
    ),
    max_leaves=6,
)


def sometimes(valid: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return valid | anything


@st.composite
def changes_like(draw: st.DrawFn) -> Any:
    """The shape of a change list, each field either plausible or anything at all."""
    columns = draw(sometimes(st.lists(st.sampled_from(["id", "name", "n"]), max_size=4)))
    rows = draw(
        st.lists(
            sometimes(
                st.tuples(
                    sometimes(st.sampled_from(sorted(COMMANDS))),
                    sometimes(st.integers() | st.lists(st.integers(), max_size=2)),
                    sometimes(st.integers(min_value=-1)),
                    sometimes(st.none() | st.dictionaries(st.integers(-1, 4), st.integers())),
                    sometimes(st.none() | st.lists(anything, max_size=4)),
                ).map(list)
            ),
            max_size=3,
        )
    )
    table = draw(sometimes(st.just("city")))
    return draw(sometimes(st.just([[table, columns, rows]])))


@given(changes_like())
def test_decoding_any_structure_yields_valid_changes_or_protocol_error(structure: Any) -> None:
    try:
        changes = decode_changes(codec.encode(structure))
    except ProtocolError:
        return
    for change in changes:
        assert change.command in COMMANDS
        assert isinstance(change.hlc, int)
        assert not isinstance(change.hlc, bool)
        assert change.hlc >= 0
        hash(change.row_key)
        assert all(isinstance(hlc, int) and hlc >= 0 for hlc in change.clocks.values())


def test_deletes_without_state_travel_without_values() -> None:
    changes = [Change("city", 1, DELETE, 3), Change("city", 2, INSERT, 4, {"id": 2})]

    decoded = decode_changes(encode_changes(changes))

    assert [change.values for change in decoded] == [None, {"id": 2}]


def test_large_change_lists_travel_deflated_and_round_trip():
    changes = [
        Change("city", i, INSERT, 1000 + i, {"id": i, "name": f"city {i}", "population": i})
        for i in range(2000)
    ]
    packed = encode_changes(changes)
    assert packed[:1] == b"\x00"
    assert len(packed) < len(codec.encode([[c.key, c.values] for c in changes])) / 2
    assert decode_changes(packed) == changes


def test_truncated_deflated_changes_are_refused():
    changes = [Change("city", i, INSERT, 1, {"id": i, "name": "x" * 40}) for i in range(2000)]
    packed = encode_changes(changes)
    with pytest.raises(ProtocolError, match=r"truncated|not deflate"):
        decode_changes(packed[:-10])


MAX_ALLOCATED = 4 * 1024 * 1024
"""What decoding any of the bombs may allocate at its peak (each is under 10 KB)."""


@pytest.mark.parametrize(
    "build",
    [
        bombs.nils,
        bombs.empty_arrays,
        bombs.huge_map,
        bombs.claimed_rows,
        bombs.nested_claims,
        bombs.plain_nested_claims,
        bombs.rows,
        bombs.notes,
        bombs.long_string,
    ],
    ids=lambda build: build.__name__,
)
def test_a_body_of_a_few_kilobytes_built_to_blow_up_is_refused_allocating_little(
    build: Callable[[], bytes],
) -> None:
    body = build()
    assert len(body) < 10_000

    with traced_allocations() as traced, pytest.raises(ProtocolError, match=r"^changes: "):
        decode_changes(body)

    assert traced.peak < MAX_ALLOCATED


MAX_COST_PER_BYTE = 2_560
"""What decoding may allocate per byte received: 32 times as many inflated bytes, each at
most one object of about 72 bytes (an empty array, with its place in its parent)."""


def test_the_densest_body_within_the_limits_costs_at_most_2_5_kib_per_byte_received() -> None:
    # Given deflated changes inflating just under 32 times, to the costliest objects
    body = bombs.densest()

    with traced_allocations() as traced, pytest.raises(ProtocolError, match="table name"):
        decode_changes(body)

    assert traced.peak < MAX_COST_PER_BYTE * len(body)


def deflated_rows(text: str, count: int = 100) -> tuple[bytes, bytes]:
    """Packed changes of ``count`` rows, and the same deflated as the encoder once did."""
    rows = [[INSERT, i, 0, None, [i, text]] for i in range(count)]
    packed = codec.encode(section(*rows))
    return packed, b"\x00" + zlib.compress(packed, 1)


def test_deflated_changes_inflating_more_than_32_times_their_size_are_refused() -> None:
    packed, body = deflated_rows("x" * 1_000)
    assert len(packed) > 32 * len(body)

    with pytest.raises(ProtocolError, match="32 times"):
        decode_changes(body)


def test_deflated_changes_inflating_less_than_32_times_their_size_are_accepted() -> None:
    packed, body = deflated_rows("x" * 10)
    assert len(packed) < 32 * len(body)

    assert len(decode_changes(body)) == 100


def inflated(packed: bytes) -> bytes:
    return zlib.decompress(packed[1:]) if packed[:1] == b"\x00" else packed


@pytest.mark.parametrize(
    "values",
    [
        pytest.param({"text": "x" * 10_000}, id="long-repeated-text"),
        pytest.param({"data": [0] * 200}, id="json-of-zeros"),
        pytest.param({"data": [[]] * 1_000}, id="json-of-empty-arrays"),
        pytest.param({"text": None, "blob": None, "data": None, "flag": False}, id="nulls"),
    ],
)
def test_changes_deflating_beyond_the_ratio_still_travel_within_it_and_round_trip(
    values: dict[str, Any],
) -> None:
    changes = [Change("note", i, UPDATE, 5, {"id": i, **values}, {"id": 5}) for i in range(2_000)]

    packed = encode_changes(changes)

    assert len(inflated(packed)) <= 32 * len(packed)
    assert decode_changes(packed) == changes


def test_ten_thousand_typical_rows_round_trip() -> None:
    changes = [
        Change(
            "item",
            i,
            INSERT,
            (1_700_000_000_000 + i) << 16,
            {"id": i, "name": f"item-{i:08d}", "quantity": i % 1000, "price": i / 100},
        )
        for i in range(10_000)
    ]

    assert decode_changes(encode_changes(changes)) == changes


def test_deflated_changes_may_not_inflate_beyond_four_times_the_message_limit() -> None:
    changes = [Change("city", i, INSERT, 1, {"id": i, "name": f"city {i}"}) for i in range(2000)]
    packed = encode_changes(changes)
    size = len(inflated(packed))

    with pytest.raises(ProtocolError, match="beyond"):
        decode_changes(packed, max_bytes=(size - 1) // 4)
    assert decode_changes(packed, max_bytes=-(-size // 4)) == changes


def test_a_malformed_row_is_refused_before_the_rows_after_it_are_decoded() -> None:
    # Given a row with an unknown command, then a row no decoder can read
    unreadable = codec.encode(section(row("x"), row(values=["@"])))
    data = unreadable.replace(codec.encode("@"), b"\xd4\x2a\x00")

    # Then the first bad row is the one refused
    with pytest.raises(ProtocolError, match="unknown command"):
        decode_changes(data)


# --- parts ---------------------------------------------------------------------------------


def _wide_rows(count: int, width: int = 100) -> list[Change]:
    import os

    return [
        Change("city", key, "i", key, {"id": key, "name": os.urandom(width // 2).hex()})
        for key in range(1, count + 1)
    ]


def test_changes_are_packed_in_parts_no_larger_than_asked_and_in_order():
    changes = _wide_rows(3000)

    parts = encode_parts(changes, 40_000)

    assert len(parts) > 5
    assert all(len(part) <= 40_000 for part in parts)
    assert [c for part in parts for c in decode_changes(part)] == changes


def test_a_change_larger_than_a_part_travels_alone_up_to_the_hard_limit():
    changes = [*_wide_rows(10), *_wide_rows(1, width=10_000)]

    parts = encode_parts(changes, 2_000, hard_limit=20_000)

    assert decode_changes(parts[-1]) == changes[-1:]
    with pytest.raises(ChangeTooLarge) as raised:
        encode_parts(changes, 2_000, hard_limit=5_000)
    assert raised.value.change == changes[-1]


def test_no_changes_are_one_empty_part():
    assert [decode_changes(part) for part in encode_parts([], 1000)] == [[]]
