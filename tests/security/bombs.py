"""Bodies of a few kilobytes built to cost the decoder as much as possible.

Each builder returns packed changes (a push's ``changes`` or a pull's
``deleted``): deflated ones inflate about a thousand times (zlib's best), plain
ones carry msgpack headers claiming far more than the bytes that follow.
"""

from __future__ import annotations

import random
import struct
import uuid
import zlib
from typing import Final

from dbsync_mq.core import codec
from dbsync_mq.core.model import INSERT

INFLATED_BYTES: Final = 8_000_000
"""What each deflated bomb inflates to: about 8 KB deflated."""
NESTING: Final = 1_000
"""Arrays nested this deep, each claiming many items."""


def array_header(count: int) -> bytes:
    return b"\xdd" + struct.pack(">I", count)


def map_header(count: int) -> bytes:
    return b"\xdf" + struct.pack(">I", count)


def deflated(packed: bytes) -> bytes:
    """Packed changes as the encoder marks deflated ones, at zlib's best ratio."""
    return b"\x00" + zlib.compress(packed, 9)


def section(rows_header: bytes) -> bytes:
    """One table section of ``city`` with its rows array left open."""
    return b"\x91\x93" + codec.encode("city") + codec.encode(["id"]) + rows_header


def nils() -> bytes:
    """Deflated changes that inflate to one array of 8 million nils."""
    count = INFLATED_BYTES - 5
    return deflated(array_header(count) + b"\xc0" * count)


def empty_arrays() -> bytes:
    """Deflated changes that inflate to one array of 8 million empty arrays."""
    count = INFLATED_BYTES - 5
    return deflated(array_header(count) + b"\x90" * count)


def huge_map() -> bytes:
    """Deflated changes that inflate to a map claiming 4 million entries, nil to an empty map."""
    count = INFLATED_BYTES // 2 - 5
    return deflated(map_header(count) + b"\xc0\x80" * count)


def claimed_rows() -> bytes:
    """Deflated changes whose rows array claims 8 million rows and holds none."""
    return deflated(section(array_header(INFLATED_BYTES)) + b"\xc0" * INFLATED_BYTES)


def nested_claims() -> bytes:
    """Deflated changes: arrays nested 1,000 deep, each claiming 8 million items."""
    return deflated(array_header(INFLATED_BYTES) * NESTING + b"\xc0" * INFLATED_BYTES)


def plain_nested_claims() -> bytes:
    """Plain changes: arrays nested 1,000 deep, each claiming as many items as the
    body has bytes (the most a decoder bounded by the body's length allows)."""
    return array_header(NESTING * 5 + 1) * NESTING + b"\xc0"


def rows() -> bytes:
    """Deflated changes: 750,000 rows each valid in shape (delete city 1)."""
    count = 750_000
    row = codec.encode(["d", 1, 0, None, None])
    return deflated(section(array_header(count)) + row * count)


def notes() -> bytes:
    """Deflated changes: 400 inserts of notes, each valid, each with a JSON value of
    10,000 empty arrays (4 million objects)."""
    rows = [
        [INSERT, uuid.UUID(int=i), 0, None, [uuid.UUID(int=i), [[]] * 10_000]] for i in range(400)
    ]
    return deflated(codec.encode([["note", ["id", "data"], rows]]))


def densest() -> bytes:
    """Deflated changes inflating to just under the most the decoder allows (32 times
    their size): a table name of 265,000 empty arrays, the costliest objects per byte,
    then random bytes that do not compress, to keep under that ratio."""
    count = 265_000
    padding = codec.encode(random.Random(0).randbytes(8_500))
    return deflated(b"\x91\x93" + array_header(count) + b"\x90" * count + padding + b"\x90")


def long_string() -> bytes:
    """Plain changes whose only row value claims a 4 GB string."""
    row = b"\x95" + codec.encode("i") + b"\x01\x00\xc0\x91" + b"\xdb\xff\xff\xff\xf0"
    return section(b"\x91") + row + b"x" * 100
