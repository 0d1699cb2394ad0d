"""The tables the benchmarks write: one tracked model, and plain tables for the baselines.

Rows are generated, never random: every run and every baseline writes the same values.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import dbsync_mq

MODULE = "bench.models"
"""What the worker's ``--models`` option names."""

_EPOCH = dt.datetime(2024, 1, 1)
_WORDS = ("alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel")


class Base(DeclarativeBase):
    pass


@dbsync_mq.track
class Item(Base):
    """A typical application row: a key, text, numbers, a timestamp."""

    __tablename__ = "bench_item"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(64))
    quantity: Mapped[int]
    price: Mapped[float]
    created: Mapped[dt.datetime]
    note: Mapped[str | None] = mapped_column(sa.String(200))


ITEM = cast(sa.Table, Item.__table__)
COLUMNS = tuple(column.name for column in ITEM.columns)

plain_metadata = sa.MetaData()
"""Untracked tables that only the baselines write."""

plain_rows = sa.Table(
    "bench_plain",
    plain_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("payload", sa.LargeBinary, nullable=False),
)

counter = sa.Table(
    "bench_counter",
    plain_metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    sa.Column("value", sa.BigInteger, nullable=False),
)


def item_row(key: int) -> dict[str, Any]:
    """The row with primary key ``key``."""
    word = _WORDS[key % len(_WORDS)]
    return {
        "id": key,
        "name": f"{word}-{key:08d}",
        "quantity": key % 1000,
        "price": (key % 100_000) / 100,
        "created": _EPOCH + dt.timedelta(seconds=key),
        "note": f"{word} item {key} of the benchmark, {key % 7} boxes" if key % 3 else None,
    }


def item_rows(start: int, count: int) -> list[dict[str, Any]]:
    """Rows ``start`` .. ``start + count - 1``."""
    return [item_row(key) for key in range(start, start + count)]
