"""Tracked models the test suite synchronizes: every relation and column type users rely on."""

from __future__ import annotations

import datetime as dt
import uuid
from decimal import Decimal
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import dbsync_mq


class Base(DeclarativeBase):
    pass


@dbsync_mq.track
class City(Base):
    __tablename__ = "city"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    population: Mapped[int] = mapped_column(default=0)


@dbsync_mq.track
class Person(Base):
    __tablename__ = "person"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(100))
    city_id: Mapped[int | None] = mapped_column(sa.ForeignKey("city.id"))


@dbsync_mq.track
class Tag(Base):
    __tablename__ = "tag"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(primary_key=True)
    label: Mapped[str] = mapped_column(sa.String(50), unique=True)


@dbsync_mq.track
class CityTag(Base):
    """A many-to-many association table, mapped as a class."""

    __tablename__ = "city_tag"
    __table_args__ = (sa.UniqueConstraint("city_id", "tag_id"), {"sqlite_autoincrement": True})

    id: Mapped[int] = mapped_column(primary_key=True)
    city_id: Mapped[int] = mapped_column(sa.ForeignKey("city.id"))
    tag_id: Mapped[int] = mapped_column(sa.ForeignKey("tag.id"))


@dbsync_mq.track
class Category(Base):
    """Self-referencing: a tree."""

    __tablename__ = "category"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50))
    parent_id: Mapped[int | None] = mapped_column(sa.ForeignKey("category.id"))


@dbsync_mq.track
class Note(Base):
    """UUID keys (never collide) and one column of every type the codec carries."""

    __tablename__ = "note"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    text: Mapped[str | None] = mapped_column(sa.Text)
    created: Mapped[dt.datetime | None] = mapped_column(sa.DateTime)
    stamped: Mapped[dt.datetime | None] = mapped_column(sa.DateTime(timezone=True))
    day: Mapped[dt.date | None] = mapped_column(sa.Date)
    at: Mapped[dt.time | None] = mapped_column(sa.Time)
    span: Mapped[dt.timedelta | None] = mapped_column(sa.Interval)
    amount: Mapped[Decimal | None] = mapped_column(sa.Numeric(18, 6))
    ratio: Mapped[float | None] = mapped_column(sa.Float)
    flag: Mapped[bool | None] = mapped_column(sa.Boolean)
    blob: Mapped[bytes | None] = mapped_column(sa.LargeBinary)
    data: Mapped[Any | None] = mapped_column(sa.JSON)


@dbsync_mq.track(direction="pull")
class Country(Base):
    """Reference data written on the server only."""

    __tablename__ = "country"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50))


@dbsync_mq.track(direction="push")
class Reading(Base):
    """Telemetry: clients send it, never receive it."""

    __tablename__ = "reading"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(primary_key=True)
    value: Mapped[float] = mapped_column(sa.Float)


class Untracked(Base):
    __tablename__ = "untracked"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50))


TRACKED = (City, Person, Tag, CityTag, Category, Note, Country, Reading)
SYNCED = (City, Person, Tag, CityTag, Category, Note)
"""The models whose tables every node must hold equal to the server's."""


# --- Purchases: parents, children and grandchildren that nodes insert offline -------------
# Their integer keys collide between nodes; Delivery and Parcel carry a unique column;
# PurchaseTag has a composite key holding its parent's key; Receipt has a UUID key.
# Parcel is declared before the table it references.


@dbsync_mq.track
class Purchase(Base):
    """A parent row: nodes insert it offline and update its columns concurrently."""

    __tablename__ = "purchase"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(primary_key=True)
    marker: Mapped[str] = mapped_column(sa.String(40))
    status: Mapped[str] = mapped_column(sa.String(40), default="new")
    notes: Mapped[str] = mapped_column(sa.String(40), default="")


@dbsync_mq.track
class Parcel(Base):
    """A grandchild (of a purchase, through its line), with a unique column."""

    __tablename__ = "parcel"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(primary_key=True)
    line_id: Mapped[int] = mapped_column(sa.ForeignKey("purchase_line.id"))
    marker: Mapped[str] = mapped_column(sa.String(40), unique=True)
    weight: Mapped[int] = mapped_column(default=0)


@dbsync_mq.track
class PurchaseLine(Base):
    """A child without a unique column."""

    __tablename__ = "purchase_line"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(primary_key=True)
    purchase_id: Mapped[int] = mapped_column(sa.ForeignKey("purchase.id"))
    marker: Mapped[str] = mapped_column(sa.String(40))
    quantity: Mapped[int] = mapped_column(default=1)


@dbsync_mq.track
class Delivery(Base):
    """A child with a unique column."""

    __tablename__ = "delivery"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(primary_key=True)
    purchase_id: Mapped[int] = mapped_column(sa.ForeignKey("purchase.id"))
    marker: Mapped[str] = mapped_column(sa.String(40), unique=True)
    carrier: Mapped[str] = mapped_column(sa.String(40), default="")


@dbsync_mq.track
class PurchaseTag(Base):
    """An association row with a composite key, part of which is its purchase's key."""

    __tablename__ = "purchase_tag"

    purchase_id: Mapped[int] = mapped_column(sa.ForeignKey("purchase.id"), primary_key=True)
    label: Mapped[str] = mapped_column(sa.String(20), primary_key=True)
    note: Mapped[str] = mapped_column(sa.String(40), default="")


@dbsync_mq.track
class Receipt(Base):
    """A child with a UUID key."""

    __tablename__ = "receipt"

    id: Mapped[uuid.UUID] = mapped_column(sa.Uuid, primary_key=True, default=uuid.uuid4)
    purchase_id: Mapped[int] = mapped_column(sa.ForeignKey("purchase.id"))
    marker: Mapped[str] = mapped_column(sa.String(40))
    amount: Mapped[int] = mapped_column(default=0)


PURCHASES = (Purchase, PurchaseLine, Parcel, Delivery, PurchaseTag, Receipt)
"""Synchronized like SYNCED; compared by the tests that write them."""
TRACKED = (*TRACKED, *PURCHASES)  # every tracked model of this module has its table on nodes
