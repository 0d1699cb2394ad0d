"""Pulls that forward stored rows as they are: the same changes as compressing the range."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import pytest

from dbsync_mq.core.changeset import decode_changes, encode_changes, join_changes
from dbsync_mq.core.compression import compress_remote
from dbsync_mq.core.model import DELETE, INSERT, UPDATE, Change
from dbsync_mq.server import forward

PULLED = {"city", "tag"}


def _version(*changes: Change) -> bytes:
    return encode_changes(changes)


def _forwarded(versions: list[bytes], changes: int = 1000, max_bytes: int = 1 << 20) -> list[Any]:
    chunks = forward.survey(versions, PULLED, forward.Chunking(changes, max_bytes))
    assert chunks is not None
    streamed = list(
        forward.packed_chunks(forward.stored_rows(versions, PULLED), changes, max_bytes)
    )
    assert streamed == chunks  # a range too long to keep, read twice, gives the same chunks
    return [change for chunk in chunks for change in decode_changes(chunk)]


def test_a_range_without_repeated_rows_is_forwarded_as_compressing_would_give_it() -> None:
    # Given versions of inserts, updates naming their columns, and deletes (one with its
    # last values), over two tables, and a push-only table the node never sees
    at = dt.datetime(2024, 5, 6, 7, 8, 9, 10)
    first = [
        Change("city", 1, INSERT, 5, {"id": 1, "name": "Lima", "at": at}, {"name": 5}),
        Change("tag", (1, "x"), INSERT, 6, {"city_id": 1, "tag": "x", "n": Decimal("1.50")}),
        Change("audit", 1, INSERT, 6, {"id": 1}),
    ]
    second = [
        Change("city", 2, UPDATE, 7, {"id": 2, "name": "Quito", "at": at}, {"name": 7}),
        Change("city", 3, DELETE, 8, {"id": 3, "name": "gone", "at": at}),
        Change("tag", (4, "y"), DELETE, 9),
    ]
    versions = [_version(*first), join_changes([_version(*second[:1]), _version(*second[1:])])]

    # When the range is forwarded
    forwarded = _forwarded(versions)

    # Then the node gets what compressing the range gives, in the same order
    everything = [c for v in versions for c in decode_changes(v, trusted=True)]
    expected = compress_remote(c for c in everything if c.table in PULLED)
    assert forwarded == expected
    assert forwarded[3].values is None  # a delete carries no row


def test_chunks_hold_at_most_the_changes_and_bytes_asked_for() -> None:
    rows = [
        Change("city", n, INSERT, n, {"id": n, "name": f"city {n:04}" * 4}) for n in range(1, 301)
    ]
    versions = [_version(*rows[:150]), _version(*rows[150:])]

    chunks = forward.survey(versions, PULLED, forward.Chunking(100, 2000))

    assert chunks is not None

    decoded = [decode_changes(chunk) for chunk in chunks]
    assert all(len(chunk) <= 2000 for chunk in chunks)
    assert all(len(changes) <= 100 for changes in decoded)
    assert [c for changes in decoded for c in changes] == rows


@pytest.mark.parametrize(
    "versions",
    [
        # a row written twice must be compressed
        [
            _version(Change("city", 1, INSERT, 1, {"id": 1})),
            _version(Change("city", 1, UPDATE, 2, {"id": 1}, {"id": 2})),
        ],
        # an update that does not name its columns changed every column: compressing says so
        [_version(Change("city", 1, UPDATE, 2, {"id": 1}))],
        # two packings of one decimal key are one row: keys must be compared decoded
        [_version(Change("city", Decimal("1.0"), INSERT, 1, {"id": Decimal("1.0")}))],
    ],
    ids=["repeated row", "update of unknown columns", "decimal key"],
)
def test_a_range_that_compressing_would_change_is_not_forwarded(versions: list[bytes]) -> None:
    with pytest.raises(forward.NotForwardable):
        forward.survey(versions, PULLED, forward.Chunking(1000, 1 << 20))


def test_uuid_and_composite_keys_are_told_apart_exactly() -> None:
    key = uuid.UUID(int=7)
    versions = [
        _version(Change("city", key, INSERT, 1, {"id": key})),
        _version(Change("city", uuid.UUID(int=8), INSERT, 1, {"id": uuid.UUID(int=8)})),
        _version(Change("tag", (1, "x"), INSERT, 1, {"city_id": 1, "tag": "x"})),
        _version(Change("tag", (1, "y"), INSERT, 1, {"city_id": 1, "tag": "y"})),
    ]
    assert len(_forwarded(versions)) == 4
    with pytest.raises(forward.NotForwardable):
        forward.survey([*versions, versions[0]], PULLED, forward.Chunking(1000, 1 << 20))


def test_a_range_whose_chunks_exceed_the_budget_is_surveyed_without_keeping_them() -> None:
    rows = [Change("city", n, INSERT, n, {"id": n, "name": f"city {n:04}"}) for n in range(1, 201)]
    versions = [_version(*rows)]

    assert forward.survey(versions, PULLED, forward.Chunking(10, 1 << 20, budget=100)) is None
    with pytest.raises(forward.NotForwardable):  # and it still checks every row
        forward.survey([*versions, versions[0]], PULLED, forward.Chunking(10, 1 << 20, 100))
