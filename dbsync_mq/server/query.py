"""Remote queries: rows of one tracked model, filtered by equality, a page at a time."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dbsync_mq.core.changeset import encode_changes
from dbsync_mq.core.model import INSERT, Change
from dbsync_mq.errors import RequestRefused
from dbsync_mq.storage.models import ModelSet, TrackedModel
from dbsync_mq.storage.values import check_row, stored_row, wire_row

MAX_QUERY_ROWS: Final = 1_000
"""Most rows one query returns; page through more with ``offset``."""


def queried_model(models: ModelSet, table: str) -> TrackedModel:
    """The model a query names, if nodes may read it."""
    model = models.by_table.get(table)
    if model is None:
        raise RequestRefused("unknown-table", f"table {table!r} is not tracked")
    if not model.pulled:
        raise RequestRefused("direction-refused", f"{table} is push-only: nodes never read it")
    return model


def run_query(connection: Connection, models: ModelSet, body: Mapping[str, Any]) -> bytes:
    """The rows matching ``body["filters"]`` (column -> value), packed as changes."""
    model = queried_model(models, body["table"])
    filters: dict[str, Any] = body["filters"]
    if not all(isinstance(name, str) for name in filters):
        raise RequestRefused("malformed", "filter names must be column names")
    check_row(model.table, filters)
    filters = dict(stored_row(model.table, filters))  # compared as the rows hold them
    limit = MAX_QUERY_ROWS if body["limit"] is None else body["limit"]
    if not 0 <= limit <= MAX_QUERY_ROWS or body["offset"] < 0:
        raise RequestRefused("malformed", f"limit must be 0..{MAX_QUERY_ROWS}, offset >= 0")
    table = model.table
    conditions = [
        table.c[name].is_(None) if value is None else table.c[name] == value
        for name, value in filters.items()
    ]
    statement = (
        sa.select(table)
        .where(*conditions)
        .order_by(*(table.c[name] for name in model.key_columns))
        .limit(limit)
        .offset(body["offset"])
    )
    changes = []
    for row in connection.execute(statement).mappings():
        values = wire_row(table, row)
        changes.append(Change(model.name, model.key_of(values), INSERT, 0, values))
    return encode_changes(changes)
