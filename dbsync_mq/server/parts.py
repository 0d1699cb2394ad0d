"""A push too large for one message: numbered parts of one request, applied as one version.

Each part is checked as it arrives and stored (``sync_push_parts``) in a
transaction of its own under the version-head lock, so that two workers
storing the last two parts at once cannot both miss the whole. The worker that
stores the last one applies every part as one version, in that transaction,
and the parts go with it; a refusal refuses the whole push. A part delivered
again is harmless: stored once, and answered from the stored reply once the
push was applied. Parts survive a worker crash: the node sends its push again
(every part) until it is answered.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from dbsync_mq.core.changeset import iter_changes, join_changes
from dbsync_mq.core.messages import Request
from dbsync_mq.core.model import Change
from dbsync_mq.errors import RequestRefused
from dbsync_mq.server.push import SeenRows
from dbsync_mq.storage import schema
from dbsync_mq.storage.schema import utcnow


def parts_digest(request: Request) -> bytes:
    """What a push in parts is recorded under, in place of the digest of a single signed
    body: each part has its own, and any of them may be delivered again."""
    return hashlib.sha256(f"parts:{request.node_id}:{request.request_id}".encode()).digest()


def store_part(connection: Connection, request: Request) -> list[bytes] | None:
    """Store this part (once); every part's packed changes, in order, if it was the last
    one missing, else ``None``. Runs under the version-head lock."""
    p = schema.push_parts.c
    body = request.body
    stored = connection.execute(
        sa.select(p.part, p.parts, p.node_id).where(p.request_id == request.request_id)
    ).all()
    if any(row.parts != body["parts"] or row.node_id != request.node_id for row in stored):
        raise RequestRefused("request-id-reused", "request id was used for another push")
    parts = {row.part for row in stored}
    if body["part"] not in parts:
        connection.execute(
            schema.push_parts.insert().values(
                request_id=request.request_id,
                part=body["part"],
                parts=body["parts"],
                node_id=request.node_id,
                changes=body["changes"],
                created_at=utcnow(),
            )
        )
        parts.add(body["part"])
    if len(parts) < body["parts"]:
        return None
    rows = connection.execute(
        sa.select(p.changes).where(p.request_id == request.request_id).order_by(p.part)
    )
    return [row.changes for row in rows]


def assembled(request: Request, parts: Sequence[bytes]) -> tuple[Request, list[Change]]:
    """The whole push: one request carrying every part's changes, and those changes.

    Each part was checked as it arrived; a row in two parts is refused here.
    """
    changes: list[Change] = []
    seen = SeenRows()
    for part in parts:
        for change in iter_changes(part, trusted=True):
            seen.add(change)
            changes.append(change)
    body = {"base": request.body["base"], "changes": join_changes(parts)}
    whole = Request(
        request.kind,
        request.node_id,
        request.request_id,
        request.timestamp_ms,
        body,
        request.extra,
        request.proto,
    )
    return whole, changes


def forget_parts(connection: Connection, request_id: str) -> None:
    """Drop the parts of a push applied or refused."""
    connection.execute(
        schema.push_parts.delete().where(schema.push_parts.c.request_id == request_id)
    )
