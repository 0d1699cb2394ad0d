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
