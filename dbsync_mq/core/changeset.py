"""Wire form of a list of changes: column names once per table, one array per row.

::

    [[table, [column, ...], [[command, key, hlc, clocks, values, extensions?], ...]], ...]

``clocks`` maps column positions to stamps (or is nil); ``values`` lists the row
in column order (or is nil for deletes); the optional ``extensions`` maps
extension names to their data. Composite keys travel as arrays. The
decoder checks every field's shape and raises ``ProtocolError`` naming it.

What decoding costs is bounded by the bytes received, not by what they claim:
deflated changes inflate to at most ``MAX_INFLATION`` times their size, and to
at most ``INFLATED_PER_MESSAGE`` times the message limit, inflation stopping
there; no msgpack header may claim more than the inflated bytes hold
(``codec.Reader``); rows are decoded and checked one at a time, so the first bad
row stops the decoding.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import MappingProxyType
from typing import Any, Final, TypeGuard

from dbsync_mq.core import codec
from dbsync_mq.core.messages import MAX_MESSAGE_BYTES
from dbsync_mq.core.model import COMMANDS, INSERT, Change, Command, Key
from dbsync_mq.errors import CodecError, ProtocolError

_NAME_LIMIT = 128

DEFLATE_FROM: Final = 16 * 1024
"""Packed changes at least this large travel deflated."""

MAX_INFLATION: Final = 32
"""Deflated changes may inflate to at most this many times their size. Decoding builds
at most one object per inflated byte, of about 72 bytes at worst (an empty array), so a
byte received costs at most about 2.3 KB. The encoder never sends denser data."""

INFLATED_PER_MESSAGE: Final = 4
"""Packed changes may take at most this many times the message limit, inflated: level-1
deflate packs typical rows three to five times, so a full message holds about that."""

MAX_INFLATED_BYTES: Final = INFLATED_PER_MESSAGE * MAX_MESSAGE_BYTES
"""The most packed changes may take, deflated or not, under the default message limit."""

_DEFLATED: Final = b"\x00"
_JOINED: Final = b"\x01"
"""Marks packed change lists stored one after the other (a push that came in parts)."""
_SECTION: Final = "changes: a table section is [table, columns, rows]"
_NO_CLOCKS: Final[Mapping[str, int]] = MappingProxyType({})
"""Shared by every decoded change without column clocks (most inserts): a large push
would otherwise hold an empty dict per row."""


def encode_changes(changes: Iterable[Change]) -> bytes:
    """Serialize changes, grouping them by table in first-seen order.

    Past ``DEFLATE_FROM`` bytes the result is deflated (zlib level 1, marked by a
    leading zero byte, which no msgpack array starts with): rows repeat themselves
    a lot, and a few milliseconds of CPU save most of the bytes on the wire.
    """
    sections: dict[str, tuple[dict[str, int], list[list[Any]]]] = {}
    for change in changes:
        columns, rows = sections.setdefault(change.table, ({}, []))
        rows.append(_row(change, columns))
    packed = codec.encode(
        [[table, list(columns), rows] for table, (columns, rows) in sections.items()]
    )
    return _finish(packed)


def _finish(packed: bytes) -> bytes:
    """Packed changes refused beyond the limit, deflated from ``DEFLATE_FROM`` bytes."""
    if len(packed) > MAX_INFLATED_BYTES:
        raise CodecError(
            f"{len(packed)} bytes of changes exceed the {MAX_INFLATED_BYTES}-byte limit: "
            "send fewer at a time"
        )
    if len(packed) < DEFLATE_FROM:
        return packed
    return _deflate(packed)


_SAMPLE: Final = 512
"""Changes encoded first to estimate how many fit in a part."""


def encode_parts(
    changes: Sequence[Change], max_bytes: int, hard_limit: int = MAX_MESSAGE_BYTES
) -> list[bytes]:
    """``changes`` packed in consecutive parts of at most ``max_bytes`` each, in order.

    Sized from a sample, then halved wherever a part came out too large. A single
    change larger than ``max_bytes`` travels alone, up to ``hard_limit`` (what a
    message may hold at all); beyond, it raises ``ChangeTooLarge``.
    """
    if not changes:
        return [encode_changes(())]
    sample = changes[:_SAMPLE]
    per_change = max(1.0, len(encode_changes(sample)) / len(sample))
    size = max(1, int(max_bytes * 0.9 / per_change))
    parts: list[bytes] = []
    for start in range(0, len(changes), size):
        parts.extend(_fitted(changes[start : start + size], max_bytes, hard_limit))
    return parts


def _fitted(changes: Sequence[Change], max_bytes: int, hard_limit: int) -> list[bytes]:
    packed = encode_changes(changes)
    if len(packed) <= max_bytes:
        return [packed]
    if len(changes) == 1:
        if len(packed) <= hard_limit:
            return [packed]
        raise ChangeTooLarge(changes[0], len(packed), hard_limit)
    middle = len(changes) // 2
    return _fitted(changes[:middle], max_bytes, hard_limit) + _fitted(
        changes[middle:], max_bytes, hard_limit
    )


def encode_inserts(table: str, columns: Sequence[str], rows: Sequence[list[Any]]) -> bytes:
    """Packed changes inserting ``rows`` of ``table``: each ``[key, values]``, the values
    in the order of ``columns`` (the whole row, as a repair sends it), stamped 0."""
    return _finish(
        codec.encode([[table, list(columns), [[INSERT, k, 0, None, v] for k, v in rows]]])
    )


def encode_insert_parts(
    table: str, columns: Sequence[str], rows: Sequence[list[Any]], max_bytes: int
) -> list[bytes]:
    """``encode_inserts`` in consecutive parts of at most ``max_bytes`` each (halved
    wherever a part came out larger; a single row larger than that travels alone)."""
    packed = encode_inserts(table, columns, rows)
    if len(packed) <= max_bytes or len(rows) <= 1:
        return [packed]
    middle = len(rows) // 2
    return encode_insert_parts(table, columns, rows[:middle], max_bytes) + encode_insert_parts(
        table, columns, rows[middle:], max_bytes
    )


class ChangeTooLarge(CodecError):
    """One change packs to more bytes than a message may carry."""

    def __init__(self, change: Change, size: int, max_bytes: int) -> None:
        super().__init__(
            f"{change.table} row {change.key!r} packs to {size} bytes, more than the "
            f"{max_bytes} a message may carry"
        )
        self.change = change


def _deflate(packed: bytes) -> bytes:
    """Deflated at level 1; coded with Huffman codes only (at most 8 to 1) when that would
    inflate more than ``MAX_INFLATION`` times, which the decoder refuses."""
    deflated = _DEFLATED + zlib.compress(packed, 1)
    if len(packed) <= MAX_INFLATION * len(deflated):
        return deflated
    huffman = zlib.compressobj(
        1, zlib.DEFLATED, zlib.MAX_WBITS, zlib.DEF_MEM_LEVEL, zlib.Z_HUFFMAN_ONLY
    )
    return _DEFLATED + huffman.compress(packed) + huffman.flush()


def _row(change: Change, columns: dict[str, int]) -> list[Any]:
    values = None
    if change.values is not None:
        if len(change.values) == len(columns) and list(change.values) == list(columns):
            values = list(change.values.values())  # the section's columns, in order
        else:
            for name in change.values:
                columns.setdefault(name, len(columns))
            values = [None] * len(columns)
            for name, value in change.values.items():
                values[columns[name]] = value
    clocks = None
    if change.clocks:
        clocks = {
            columns.setdefault(name, len(columns)): hlc for name, hlc in change.clocks.items()
        }
    key = list(change.key) if isinstance(change.key, tuple) else change.key
    row: list[Any] = [change.command, key, change.hlc, clocks, values]
    if change.extensions:
        row.append(dict(change.extensions))
    return row


def decode_changes(
    data: bytes, max_bytes: int = MAX_MESSAGE_BYTES, *, trusted: bool = False
) -> list[Change]:
    """Parse bytes from ``encode_changes``; raise ``ProtocolError`` on any bad shape.

    ``max_bytes`` is the size limit of the message they came in. ``trusted`` changes
    were checked when they arrived (a stored version): their inflation is not bounded.
    """
    return list(iter_changes(data, max_bytes, trusted=trusted))


def iter_changes(
    data: bytes, max_bytes: int = MAX_MESSAGE_BYTES, *, trusted: bool = False
) -> Iterator[Change]:
    """The changes ``decode_changes`` returns, one at a time, each checked as it is
    decoded: a caller that stops at the first bad one never decodes the rest."""
    if data.startswith(_JOINED):
        if not trusted:
            raise ProtocolError("changes: joined change lists are the server's own")
        for part in codec.decode(data[1:]):
            yield from iter_changes(part, max_bytes, trusted=True)
        return
    try:
        reader = codec.Reader(_inflate(data, None if trusted else max_bytes))
        for _ in range(_array(reader, "changes: expected an array of table sections")):
            yield from _decode_section(reader)
    except CodecError as exc:
        raise ProtocolError(f"changes: {exc}") from None


Section = tuple[str, list[str], list[list[Any]]]
"""A table section as packed: table, column names, rows as arrays (see the module doc)."""


def signed_sections(data: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> list[Section]:
    """The table sections of changes the server sent and signed, read whole.

    The server checked every row when it received it, and its signature proves these
    are its bytes: only the inflation bound and the section shapes are checked here,
    not each row (``ProtocolError`` if a row turns out bad when it is read).
    """
    if data.startswith(_JOINED):
        raise ProtocolError("changes: joined change lists are the server's own")
    try:
        sections = codec.decode(_inflate(data, max_bytes))
    except CodecError as exc:
        raise ProtocolError(f"changes: {exc}") from None
    if not isinstance(sections, list) or not all(
        isinstance(section, list)
        and len(section) == 3
        and _is_name(section[0])
        and isinstance(section[1], list)
        and isinstance(section[2], list)
        for section in sections
    ):
        raise ProtocolError(_SECTION)
    return [(table, columns, rows) for table, columns, rows in sections]


def decode_signed(data: bytes, max_bytes: int = MAX_MESSAGE_BYTES) -> list[Change]:
    """``decode_changes`` for changes the server sent and signed (see ``signed_sections``)."""
    changes: list[Change] = []
    append = changes.append
    for table, columns, rows in signed_sections(data, max_bytes):
        try:
            for row in rows:
                command, key, hlc, clocks, values = row[:5]
                append(
                    Change(
                        table,
                        tuple(key) if isinstance(key, list) else key,
                        command,
                        hlc,
                        None if values is None else dict(zip(columns, values, strict=False)),
                        {columns[at]: stamp for at, stamp in clocks.items()} if clocks else {},
                        row[5] if len(row) == 6 else None,
                    )
                )
        except (TypeError, ValueError, IndexError, AttributeError) as exc:
            raise ProtocolError(f"changes: a row of {table!r} is malformed: {exc}") from None
    return changes


def stored_sections(data: bytes) -> Iterator[tuple[str, list[str], Iterator[list[Any]]]]:
    """Stored (trusted) packed changes section by section, each row the array it was
    packed as, its extension values left packed (``codec.PackedExtension``), so that the rows
    can be packed again without being decoded. A section's rows must be read before
    the next section is."""
    if data.startswith(_JOINED):
        for part in codec.decode(data[1:]):
            yield from stored_sections(part)
        return
    reader = codec.Reader(_inflate(data, None), packed_extensions=True)
    for _ in range(_array(reader, "changes: expected an array of table sections")):
        if _array(reader, _SECTION) != 3:
            raise ProtocolError(_SECTION)
        table, columns = reader.read(), reader.read()
        count = _array(reader, f"changes: rows of {table!r} must be an array")
        yield table, columns, reader.items(count)


def encode_sections(sections: Sequence[Section]) -> bytes:
    """Table sections packed as ``encode_changes`` packs them (deflated when large)."""
    return _finish(codec.encode(list(sections)))


def join_changes(parts: Sequence[bytes]) -> bytes:
    """Several packed change lists as one, without decoding them (a push that came in
    parts, stored as one version). Only ``iter_changes(..., trusted=True)`` reads it."""
    return _JOINED + codec.encode(list(parts))


def _inflate(data: bytes, max_bytes: int | None) -> bytes:
    """The packed changes, inflated if they were deflated, stopping at the limits that
    ``max_bytes`` (the message limit) sets; ``None``: no limit."""
    deflated = data.startswith(_DEFLATED)
    if max_bytes is None:
        return _inflated(data[1:]) if deflated else data
    size_limit = INFLATED_PER_MESSAGE * max_bytes
    if not deflated:
        if len(data) > size_limit:
            raise ProtocolError(f"changes: {len(data)} bytes, beyond the {size_limit}-byte limit")
        return data
    ratio_limit = MAX_INFLATION * len(data)
    if ratio_limit < size_limit:
        refusal = f"changes: deflated data inflates to more than {MAX_INFLATION} times its size"
        return _inflated(data[1:], ratio_limit, refusal)
    refusal = f"changes: deflated data inflates beyond the {size_limit}-byte limit"
    return _inflated(data[1:], size_limit, refusal)


def _inflated(deflated: bytes, limit: int = 0, refusal: str = "") -> bytes:
    """``deflated`` inflated, stopping one byte past ``limit`` (0: none) to refuse it."""
    inflater = zlib.decompressobj()
    try:
        packed = inflater.decompress(deflated, limit + 1 if limit else 0)
    except zlib.error as exc:
        raise ProtocolError(f"changes: not deflate data: {exc}") from None
    if limit and len(packed) > limit:
        raise ProtocolError(refusal)
    if not inflater.eof or inflater.unused_data:
        raise ProtocolError("changes: deflated data truncated, or followed by other data")
    return packed


def _array(reader: codec.Reader, refusal: str) -> int:
    length = reader.array_header()
    if length is None:
        raise ProtocolError(refusal)
    return length


def _decode_section(reader: codec.Reader) -> Iterator[Change]:
    if _array(reader, _SECTION) != 3:
        raise ProtocolError(_SECTION)
    table = reader.read()
    if not _is_name(table):
        raise ProtocolError("changes: table name must be a short string")
    columns = reader.read()
    if not isinstance(columns, list) or not all(_is_name(name) for name in columns):
        raise ProtocolError(f"changes: columns of {table!r} must be short strings")
    if len(set(columns)) != len(columns):
        raise ProtocolError(f"changes: duplicate column names in {table!r}")
    for _ in range(_array(reader, f"changes: rows of {table!r} must be an array")):
        yield _decode_row(table, columns, reader.read())


def _decode_row(table: str, columns: Sequence[str], row: Any) -> Change:
    if not isinstance(row, list) or len(row) not in (5, 6):
        raise ProtocolError(
            f"changes: a row of {table!r} is [command, key, hlc, clocks, values, extensions?]"
        )
    command, key, hlc, clocks, values = row[:5]
    extensions = row[5] if len(row) == 6 else None
    if len(row) == 6 and (
        not isinstance(extensions, dict)
        or not extensions
        or not all(_is_name(name) for name in extensions)
    ):
        raise ProtocolError(f"changes: extensions of a row of {table!r} must be a map by name")
    if not _is_command(command):
        raise ProtocolError(f"changes: unknown command {command!r} in {table!r}")
    if not isinstance(hlc, int) or isinstance(hlc, bool) or hlc < 0:
        raise ProtocolError(f"changes: hlc of a row of {table!r} must be a non-negative integer")
    return Change(
        table=table,
        key=_decode_key(table, key),
        command=command,
        hlc=hlc,
        values=_decode_values(table, columns, values),
        clocks=_decode_clocks(table, columns, clocks),
        extensions=extensions or None,
    )


def _decode_key(table: str, key: Any) -> Key:
    if isinstance(key, list):
        if not key or not all(_is_scalar_key(part) for part in key):
            raise ProtocolError(f"changes: invalid composite key in {table!r}")
        return tuple(key)
    if not _is_scalar_key(key):
        raise ProtocolError(f"changes: invalid key of type {type(key).__name__} in {table!r}")
    scalar: Key = key
    return scalar


def _is_scalar_key(value: Any) -> bool:
    return value is not None and not isinstance(value, (list, dict, float))


def _decode_values(table: str, columns: Sequence[str], values: Any) -> dict[str, Any] | None:
    if values is None:
        return None
    if not isinstance(values, list) or len(values) > len(columns):
        raise ProtocolError(f"changes: values of a row of {table!r} do not match its columns")
    # A row may be shorter than the section's columns: columns added after it.
    return dict(zip(columns[: len(values)], values, strict=True))


def _decode_clocks(table: str, columns: Sequence[str], clocks: Any) -> Mapping[str, int]:
    if clocks is None or clocks == {}:
        return _NO_CLOCKS
    if not isinstance(clocks, dict):
        raise ProtocolError(f"changes: clocks of a row of {table!r} must be a map")
    decoded: dict[str, int] = {}
    for position, hlc in clocks.items():
        valid_position = _is_count(position) and position < len(columns)
        if not valid_position or not _is_count(hlc):
            raise ProtocolError(f"changes: invalid column clock in a row of {table!r}")
        decoded[columns[position]] = hlc
    return decoded


def _is_command(value: Any) -> TypeGuard[Command]:
    # Checked as a string first: an array or a map is unhashable, and `in` would raise.
    return isinstance(value, str) and value in COMMANDS


def _is_count(value: Any) -> bool:
    """A non-negative integer; bool is an int subclass but not one."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _is_name(value: Any) -> bool:
    return isinstance(value, str) and 0 < len(value) <= _NAME_LIMIT
