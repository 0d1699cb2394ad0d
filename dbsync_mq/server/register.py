"""Registering a node with a one-time enrollment token.

The request is signed with the node's new key (proving it holds it) and names
the token. The reply carries the node id and the server's public key, with an
HMAC keyed by the token's hash: only a server that knows the token can produce
it, so the node pins the right key.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from dbsync_mq.core import signing
from dbsync_mq.core.messages import Request
from dbsync_mq.errors import RequestRefused
from dbsync_mq.server import state
from dbsync_mq.server.hooks import Hooks, RegisterContext
from dbsync_mq.storage import schema
from dbsync_mq.storage.schema import utcnow


def register_node(
    connection: Connection,
    request: Request,
    digest: bytes,
    make_reply: Callable[[int, bytes], bytes],
    hooks: Hooks,
) -> bytes:
    """Create the node named by a valid token, inside the caller's write transaction.

    ``make_reply(node_id, token_hash)`` builds the sealed reply, which is stored so
    that a redelivered request gets the same answer. Returns that reply.
    """
    token_hash = signing.token_digest(request.body["token"])
    # Lock the token's row first, then look the request up in a statement of its own:
    # a copy of this registration that held the lock before us has committed by then,
    # and the lookup sees its reply (looked up before the lock, it would not, and the
    # token it used would make this copy's answer ``invalid-token``).
    enrollment = _lock_enrollment(connection, token_hash)
    stored = state.find_request(connection, request.request_id)
    if stored is not None:
        if stored.digest != digest:
            raise RequestRefused("request-id-reused", "request id was used for another body")
        return stored.reply
    _check_usable(enrollment)
    with Session(bind=connection) as session:
        hooks.run("before_register", RegisterContext(session, request, enrollment.user_id))
        session.flush()
    now = utcnow()
    node_id = connection.execute(
        schema.nodes.insert()
        .values(
            public_key=request.body["public_key"],
            user_id=enrollment.user_id,
            enabled=True,
            registered_at=now,
        )
        .returning(schema.nodes.c.id)
    ).scalar_one()
    connection.execute(
        schema.enrollments.update()
        .where(schema.enrollments.c.token_hash == token_hash)
        .values(used_at=now, node_id=node_id)
    )
    if enrollment.replaces_node is not None:
        connection.execute(
            schema.nodes.update()
            .where(schema.nodes.c.id == enrollment.replaces_node)
            .values(enabled=False)
        )
    reply = make_reply(node_id, token_hash)
    state.store_request(connection, request.request_id, node_id, request.kind, digest, reply)
    return reply


def _lock_enrollment(connection: Connection, token_hash: bytes) -> Any:
    """The token's enrollment row, locked until the transaction ends; ``None`` if unknown."""
    e = schema.enrollments.c
    return connection.execute(
        sa.select(e.user_id, e.replaces_node, e.expires_at, e.used_at)
        .where(e.token_hash == token_hash)
        .with_for_update()
    ).first()


def _check_usable(enrollment: Any) -> None:
    if enrollment is None or enrollment.used_at is not None or enrollment.expires_at <= utcnow():
        # One answer for unknown, used and expired tokens: no oracle for guessing.
        raise RequestRefused("invalid-token", "the enrollment token is unknown, used or expired")
