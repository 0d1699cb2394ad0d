"""Pulls that forward the stored rows as they are.

Most pulls are of ranges where no row was written twice and that the pulling
node did not write itself: rows others added or changed since. Compressing such
a range changes nothing (see ``core.compression``: one change per row is its own
compressed form), so the rows are taken from the stored versions as packed
arrays, their values left packed (datetimes, decimals... are never decoded), and
packed again a chunk at a time. A range that does not qualify, found while it is
surveyed, goes the general way (``server.pull``).

The survey keeps a key per row and packs the chunks as it goes: a range whose
chunks come to at most ``PACKED_BUDGET`` bytes (packed and deflated: several
hundred thousand typical rows) is read once; a longer one is read a second time as it
is sent, a chunk at a time, so that what a worker holds stays bounded.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any, Final

from dbsync_mq.core import codec
from dbsync_mq.core.changeset import Section, encode_sections, stored_sections
from dbsync_mq.core.model import DELETE, INSERT, UPDATE
from dbsync_mq.runtime import collector_paused

_EXACT_KEY_EXTENSIONS: Final = frozenset((codec.EXT_DATE, codec.EXT_UUID, codec.EXT_BIGINT))
"""Extension types whose packed form is one per value: two keys are the same row exactly
when their bytes are equal. (Two packings of one decimal or datetime may differ.)"""

PACKED_BUDGET: Final = 16 * 1024 * 1024
"""Bytes of packed chunks a survey keeps to send, so that a range is read once: four
replies' worth. A longer range is read a second time as it is sent."""

StoredRow = tuple[str, list[str], list[Any]]
"""A row as stored: its table, its section's columns, its packed array."""


class NotForwardable(Exception):
    """The range needs compressing: a row written twice, a key that is not exact..."""


def _key(key: Any) -> Any:
    """A hashable identity of a packed key, equal for the same row only."""
    if isinstance(key, list):
        return tuple(_key(part) for part in key)
    if isinstance(key, codec.PackedExtension):
        if key.code not in _EXACT_KEY_EXTENSIONS:
            raise NotForwardable
        return key
    if isinstance(key, (int, str, bytes)) and not isinstance(key, bool):
        return key
    raise NotForwardable


def _forwarded(row: list[Any]) -> list[Any]:
    """The row as the compressed change of it reads: a delete carries no values and no
    extensions; an update must name the columns it changed (one that does not means
    every column, which compressing spells out)."""
    command = row[0] if row else None
    if command == DELETE:
        return [*row[:4], None]
    if command == UPDATE and not row[3]:
        raise NotForwardable
    if command not in (INSERT, UPDATE):
        raise NotForwardable
    return row


@dataclass(frozen=True)
class Chunking:
    """How forwarded rows are cut: at most ``changes`` rows and about ``max_bytes`` a
    chunk; a survey keeps at most ``budget`` bytes of packed chunks to send."""

    changes: int
    max_bytes: int
    budget: int = PACKED_BUDGET


def survey(versions: Iterable[bytes], pulled: set[str], chunking: Chunking) -> list[bytes] | None:
    """Check that every row of ``versions`` (stored packed changes, in order) can be
    forwarded, packing the chunks as it goes; return them, or ``None`` if they came to
    more than the budget (the range is then read again: ``stored_rows``). Raises
    ``NotForwardable``."""
    seen: set[tuple[str, Any]] = set()
    chunk: list[StoredRow] = []
    packed: list[bytes] | None = []
    size = 0
    for table, columns, row in _pulled_rows(versions, pulled):
        identity = (table, _key(row[1]))
        if identity in seen:
            raise NotForwardable
        seen.add(identity)
        forwarded = _forwarded(row)
        if packed is None:
            continue
        chunk.append((table, columns, forwarded))
        if len(chunk) == chunking.changes:
            parts = _fitted(chunk, chunking.max_bytes)
            packed.extend(parts)
            size += sum(len(part) for part in parts)
            chunk = []
            if size > chunking.budget:
                packed = None  # too long to keep: read again when sending
    if packed is not None and chunk:
        packed.extend(_fitted(chunk, chunking.max_bytes))
    return packed


def _pulled_rows(versions: Iterable[bytes], pulled: set[str]) -> Iterator[StoredRow]:
    for packed in versions:
        for table, columns, rows in stored_sections(packed):
            for row in rows:
                if table in pulled:
                    yield table, columns, row


def stored_rows(versions: Iterable[bytes], pulled: set[str]) -> Iterator[StoredRow]:
    """The rows of ``versions`` to pulled tables, as ``survey`` found them fit."""
    for table, columns, row in _pulled_rows(versions, pulled):
        yield table, columns, _forwarded(row)


def packed_chunks(rows: Iterable[StoredRow], changes: int, max_bytes: int) -> Iterator[bytes]:
    """The rows packed as change lists of at most ``changes`` rows and about
    ``max_bytes`` (halved where larger; one row travels alone whatever its size)."""
    stream = iter(rows)
    while True:
        with collector_paused():  # a chunk's rows all stay alive until it is packed
            chunk = list(islice(stream, changes))
            packed = _fitted(chunk, max_bytes) if chunk else []
        if not packed:
            return
        yield from packed


def _fitted(chunk: Sequence[StoredRow], max_bytes: int) -> list[bytes]:
    packed = encode_sections(_sections(chunk))
    if len(packed) <= max_bytes or len(chunk) == 1:
        return [packed]
    middle = len(chunk) // 2
    return _fitted(chunk[:middle], max_bytes) + _fitted(chunk[middle:], max_bytes)


def _sections(chunk: Sequence[StoredRow]) -> list[Section]:
    """Consecutive rows of one table and one column list share a section."""
    sections: list[Section] = []
    for table, columns, row in chunk:
        if not sections or sections[-1][0] != table or sections[-1][1] is not columns:
            sections.append((table, columns, []))
        sections[-1][2].append(row)
    return sections
