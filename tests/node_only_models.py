"""A model a node tracks and the server does not: pushes of it are refused."""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

import dbsync_mq


class NodeOnlyBase(DeclarativeBase):
    pass


@dbsync_mq.track
class Gadget(NodeOnlyBase):
    __tablename__ = "gadget"
    __table_args__ = {"sqlite_autoincrement": True}

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(sa.String(50))
