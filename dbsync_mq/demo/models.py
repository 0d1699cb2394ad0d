"""The demo's models: cities and the people who live in them."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import dbsync_mq


class Base(DeclarativeBase):
    pass


@dbsync_mq.track
class City(Base):
    __tablename__ = "demo_city"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(80))
    population: Mapped[int] = mapped_column(default=0)


@dbsync_mq.track
class Person(Base):
    __tablename__ = "demo_person"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(80))
    city_id: Mapped[int | None] = mapped_column(sa.ForeignKey("demo_city.id"))
