"""msgpack with typed extensions: the only serialization on the wire and in logs.

Besides msgpack's own types (None, bool, int, float, str, bytes, list, dict) the
codec carries, exactly, the values SQLAlchemy columns hold:

==========  ===  ==================================================
type        ext  payload
==========  ===  ==================================================
datetime    1    local microseconds, fold, and the UTC offset if aware
date        2    proleptic Gregorian ordinal
time        3    microseconds of the day, fold, and the UTC offset if aware
timedelta   4    days, seconds, microseconds
Decimal     5    its exact string form (keeps exponent, sign and NaN)
UUID        6    the 16 bytes
int         7    decimal string, for integers beyond 64 bits
==========  ===  ==================================================

Tuples travel as arrays and come back as lists. Aware datetimes and times come
back with a fixed-offset ``timezone``: the instant and the offset are exact, the
zone's name is not carried. Anything else is refused with ``CodecError``.
msgpack's own timestamp extension (-1), which this codec never writes, decodes
as an aware UTC datetime, so no msgpack-specific type reaches the caller.

Decoding never builds more than the bytes hold: msgpack allocates an array as
soon as it reads the header claiming its length, so the bytes are first walked
without building anything (``Unpacker.skip``) to prove that every header's
claim is there. Arrays nested a thousand deep, each claiming millions of items,
are then refused for the price of the walk; what is built is at most one object
per byte.
"""

from __future__ import annotations

import datetime as dt
import io
import struct
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal, InvalidOperation
from typing import Any, Final

import msgpack

from dbsync_mq.errors import CodecError

EXT_DATETIME = 1
EXT_DATE = 2
EXT_TIME = 3
EXT_TIMEDELTA = 4
EXT_DECIMAL = 5
EXT_UUID = 6
EXT_BIGINT = 7

PackedExtension = msgpack.ExtType
"""An extension value left packed by ``Reader(..., packed_extensions=True)``."""

_EPOCH = dt.datetime(1, 1, 1)
_MICRO = dt.timedelta(microseconds=1)
_INT64_MIN, _UINT64_MAX = -(2**63), 2**64 - 1

_NAIVE = struct.Struct(">qB")
_AWARE = struct.Struct(">qBq")
_DATE = struct.Struct(">i")
_DELTA = struct.Struct(">iii")


def _offset_micros(offset: dt.timedelta) -> int:
    return offset // _MICRO


def _zone(offset_micros: int) -> dt.timezone:
    return dt.timezone(dt.timedelta(microseconds=offset_micros))


def _ext(code: int, data: bytes) -> msgpack.ExtType:
    """``msgpack.ExtType(code, data)`` without its argument checks (ours are right)."""
    ext: msgpack.ExtType = tuple.__new__(msgpack.ExtType, (code, data))
    return ext


def _pack_datetime(value: dt.datetime) -> msgpack.ExtType:
    if value.tzinfo is None:  # the common case, without the cost of replace()
        return _ext(EXT_DATETIME, _NAIVE.pack((value - _EPOCH) // _MICRO, value.fold))
    local = (value.replace(tzinfo=None) - _EPOCH) // _MICRO
    offset = value.utcoffset()
    if offset is None:
        return msgpack.ExtType(EXT_DATETIME, _NAIVE.pack(local, value.fold))
    return msgpack.ExtType(EXT_DATETIME, _AWARE.pack(local, value.fold, _offset_micros(offset)))


def _unpack_datetime(data: bytes) -> dt.datetime:
    if len(data) == _NAIVE.size:
        local, fold = _NAIVE.unpack(data)
        naive: dt.datetime = _EPOCH + local * _MICRO
        return naive.replace(fold=fold) if fold else naive
    local, fold, offset = _AWARE.unpack(data)
    aware: dt.datetime = _EPOCH + local * _MICRO
    return aware.replace(fold=fold, tzinfo=_zone(offset))


def _time_micros(value: dt.time) -> int:
    return ((value.hour * 60 + value.minute) * 60 + value.second) * 1_000_000 + value.microsecond


def _pack_time(value: dt.time) -> msgpack.ExtType:
    micros = _time_micros(value)
    offset = value.utcoffset()
    if offset is None:
        return msgpack.ExtType(EXT_TIME, _NAIVE.pack(micros, value.fold))
    return msgpack.ExtType(EXT_TIME, _AWARE.pack(micros, value.fold, _offset_micros(offset)))


def _unpack_time(data: bytes) -> dt.time:
    if len(data) == _NAIVE.size:
        micros, fold = _NAIVE.unpack(data)
        zone = None
    else:
        micros, fold, offset = _AWARE.unpack(data)
        zone = _zone(offset)
    seconds, micro = divmod(micros, 1_000_000)
    minutes, second = divmod(seconds, 60)
    hour, minute = divmod(minutes, 60)
    return dt.time(hour, minute, second, micro, tzinfo=zone, fold=fold)


def _default(value: Any) -> msgpack.ExtType:
    # datetime must be tested before date: it is a subclass.
    if isinstance(value, dt.datetime):
        return _pack_datetime(value)
    if isinstance(value, dt.date):
        return msgpack.ExtType(EXT_DATE, _DATE.pack(value.toordinal()))
    if isinstance(value, dt.time):
        return _pack_time(value)
    if isinstance(value, dt.timedelta):
        return msgpack.ExtType(
            EXT_TIMEDELTA, _DELTA.pack(value.days, value.seconds, value.microseconds)
        )
    if isinstance(value, Decimal):
        return msgpack.ExtType(EXT_DECIMAL, str(value).encode("ascii"))
    if isinstance(value, uuid.UUID):
        return msgpack.ExtType(EXT_UUID, value.bytes)
    if isinstance(value, int) and not _INT64_MIN <= value <= _UINT64_MAX:
        return msgpack.ExtType(EXT_BIGINT, str(value).encode("ascii"))
    raise CodecError(f"cannot encode a value of type {type(value).__qualname__}")


def _ext_hook(code: int, data: bytes) -> Any:
    try:
        return _EXT_DECODERS[code](data)
    except KeyError:
        raise CodecError(f"unknown extension type {code}") from None
    except (struct.error, ValueError, OverflowError, InvalidOperation) as exc:
        raise CodecError(f"invalid payload for extension type {code}: {exc}") from None


_EXT_DECODERS: dict[int, Callable[[bytes], Any]] = {
    EXT_DATETIME: _unpack_datetime,
    EXT_DATE: lambda data: dt.date.fromordinal(_DATE.unpack(data)[0]),
    EXT_TIME: _unpack_time,
    EXT_TIMEDELTA: lambda data: dt.timedelta(*_DELTA.unpack(data)),
    EXT_DECIMAL: lambda data: Decimal(data.decode("ascii")),
    EXT_UUID: lambda data: uuid.UUID(bytes=data),
    EXT_BIGINT: lambda data: int(data.decode("ascii")),
}


def encode(value: Any) -> bytes:
    """Serialize ``value``; raise ``CodecError`` for a type the codec does not carry."""
    try:
        packed: bytes = msgpack.packb(value, default=_default, use_bin_type=True, datetime=False)
        return packed
    except CodecError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        # Raised for, e.g., non-UTF-8 strings or dict keys msgpack refuses.
        raise CodecError(f"cannot encode value: {exc}") from None


_READ_SIZE = 64 * 1024


def _undecodable(exc: Exception) -> CodecError:
    """msgpack raises many unrelated types on garbage input: all become ``CodecError``."""
    if isinstance(exc, CodecError):
        return exc
    return CodecError(f"cannot decode message: {type(exc).__name__}: {exc}")


def _unpacker_options(size: int) -> dict[str, Any]:
    """No header may claim more than ``size`` bytes of input could hold."""
    return {
        "raw": False,
        "ext_hook": _ext_hook,
        "strict_map_key": False,
        # msgpack decodes ext -1 itself, bypassing ext_hook; timestamp=3 makes it a datetime.
        "timestamp": 3,
        "max_str_len": size,
        "max_bin_len": size,
        "max_array_len": size,
        "max_map_len": size,
        "max_ext_len": size,
    }


def _check_whole(data: bytes) -> None:
    """Refuse ``data`` unless it is exactly one value holding all its headers claim.

    ``skip`` walks the value without building it (no allocation per header), so a
    claim beyond the data is found before anything is built for it.
    """
    walker = msgpack.Unpacker(max_buffer_size=max(len(data), 1))
    try:
        walker.feed(data)
        walker.skip()
    except Exception as exc:
        raise _undecodable(exc) from None
    if walker.tell() != len(data):
        raise CodecError(f"cannot decode message: {len(data) - walker.tell()} bytes of extra data")


_SMALL: Final = 128
"""Data up to this size is decoded without the walk: with no header allowed to claim
more than 128 items, nothing it builds can be large."""

_SMALL_OPTIONS: Final = _unpacker_options(_SMALL)


def decode(data: bytes) -> Any:
    """Deserialize bytes produced by ``encode``; raise ``CodecError`` on bad input."""
    if len(data) <= _SMALL:
        options = _SMALL_OPTIONS
    else:
        _check_whole(data)
        options = _unpacker_options(len(data))
    try:
        return msgpack.unpackb(data, **options)
    except Exception as exc:
        raise _undecodable(exc) from None


class Reader:
    """One msgpack value read piece by piece: headers of arrays, then their items.

    Checked whole first, like ``decode``; then only the piece being read is buffered
    and built, so a caller can check each item as it comes and stop at the first bad one.
    With ``packed_extensions`` the extension values (datetimes, decimals...) are not
    decoded: they come as ``msgpack.ExtType`` and ``encode`` packs them as they were.
    """

    def __init__(self, data: bytes, *, packed_extensions: bool = False) -> None:
        _check_whole(data)
        options = _unpacker_options(len(data))
        if packed_extensions:
            # Extension values stay msgpack.ExtType: they pack again exactly as they came.
            del options["ext_hook"], options["timestamp"]
        self._unpacker = msgpack.Unpacker(
            io.BytesIO(data),
            read_size=min(_READ_SIZE, max(len(data), 1)),
            max_buffer_size=max(len(data), 1),
            **options,
        )

    def array_header(self) -> int | None:
        """The length of the array that comes next, or ``None`` if it is not an array."""
        try:
            length: int = self._unpacker.read_array_header()
        except ValueError:  # msgpack's "unexpected type": nothing was consumed
            return None
        except Exception as exc:
            raise _undecodable(exc) from None
        return length

    def read(self) -> Any:
        """The next value, whole."""
        try:
            return self._unpacker.unpack()
        except Exception as exc:
            raise _undecodable(exc) from None

    def items(self, count: int) -> Iterator[Any]:
        """The next ``count`` values, each whole, one at a time."""
        unpack = self._unpacker.unpack
        try:
            for _ in range(count):
                yield unpack()
        except Exception as exc:
            raise _undecodable(exc) from None


def encode_key(key: Any) -> bytes:
    """Serialize a primary key; composite keys (tuples) become arrays."""
    return encode(list(key) if isinstance(key, tuple) else key)


def decode_key(data: bytes) -> Any:
    """Inverse of ``encode_key``: arrays come back as tuples, so keys stay hashable."""
    key = decode(data)
    return tuple(key) if isinstance(key, list) else key
