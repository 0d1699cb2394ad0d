"""Reading the server database from a test: head, versions, rows, a comparable snapshot."""

from __future__ import annotations

from typing import Any

import sqlalchemy as sa

from dbsync_mq.storage import schema
from tests.models import SYNCED, TRACKED


def table_rows(engine: sa.Engine, models: tuple[type, ...] = SYNCED) -> dict[str, list[Any]]:
    """Every row of the given tables, sorted: equal on every node after a sync."""
    contents = {}
    with engine.connect() as connection:
        for model in models:
            table: sa.Table = model.__table__  # type: ignore[attr-defined]
            rows = connection.execute(sa.select(table)).all()
            contents[table.name] = sorted((tuple(row) for row in rows), key=repr)
    return contents


ACTIVITY_COLUMNS = frozenset({"last_seen_at", "merged_version"})
"""Notes of each node's requests, written by the workers every few seconds: an
authenticated request moves them, whether it is served or refused."""


class ServerProbe:
    """A read-only view of the server database, opened per call and disposed."""

    def __init__(self, url: str) -> None:
        self.url = url

    def _read(self, statement: Any) -> list[Any]:
        engine = sa.create_engine(self.url)
        try:
            with engine.connect() as connection:
                return list(connection.execute(statement).all())
        finally:
            engine.dispose()

    def head(self) -> int:
        return int(self._read(sa.select(schema.head.c.version))[0][0])

    def count(self, table: sa.Table) -> int:
        return int(self._read(sa.select(sa.func.count()).select_from(table))[0][0])

    def versions(self) -> list[tuple[int, int | None, str | None]]:
        v = schema.versions.c
        return [tuple(row) for row in self._read(sa.select(v.id, v.node_id, v.request_id))]  # type: ignore[misc]

    def push_request_ids(self) -> list[str]:
        r = schema.requests.c
        return [row[0] for row in self._read(sa.select(r.request_id).where(r.kind == "push"))]

    def rows(self, models: tuple[type, ...] = SYNCED) -> dict[str, list[Any]]:
        engine = sa.create_engine(self.url)
        try:
            return table_rows(engine, models)
        finally:
            engine.dispose()

    def column(self, model: type, name: str) -> list[Any]:
        table: sa.Table = model.__table__  # type: ignore[attr-defined]
        return [row[0] for row in self._read(sa.select(table.c[name]))]

    def snapshot(self) -> dict[str, Any]:
        """Everything an attack must leave untouched: the head, every tracked table
        and the sync tables a request could write."""
        engine = sa.create_engine(self.url)
        try:
            state: dict[str, Any] = {"tables": table_rows(engine, TRACKED)}
            with engine.connect() as connection:
                for table in (
                    schema.head,
                    schema.versions,
                    schema.nodes,
                    schema.requests,
                    schema.enrollments,
                ):
                    columns = [c for c in table.columns if c.name not in ACTIVITY_COLUMNS]
                    rows = connection.execute(sa.select(*columns)).all()
                    state[table.name] = sorted((tuple(row) for row in rows), key=repr)
            return state
        finally:
            engine.dispose()

    def assert_gap_free(self) -> int:
        """Versions are exactly 1..N, each from a distinct request; returns N."""
        versions = self.versions()
        ids = sorted(version[0] for version in versions)
        assert ids == list(range(1, len(ids) + 1)), f"versions are not gap-free: {ids}"
        request_ids = [version[2] for version in versions]
        assert len(set(request_ids)) == len(request_ids), "a request made two versions"
        assert self.head() == len(ids)
        return len(ids)
