"""The server: one request message in, an ``Outcome`` out. No messaging code here.

Checks run cheapest and least trusting first: the kind, the size and shape of
the envelope, the node's key, the signature; only then is the request decoded.
A message that fails any of these is dead-lettered without a reply (nobody
trustworthy to answer). An authenticated request that cannot be served gets a
signed error reply with a code. Database outages raise ``DatabaseUnavailable``
so that the worker retries the message instead of answering it.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeVar

from sqlalchemy.engine import Connection, Engine

from dbsync_mq.config import ServerSettings
from dbsync_mq.core import messages, signing
from dbsync_mq.core.changeset import iter_changes
from dbsync_mq.core.messages import Reply, Request
from dbsync_mq.core.model import Change, RowKey
from dbsync_mq.errors import DatabaseUnavailable, ProtocolError, RequestRefused, SyncError
from dbsync_mq.extensions import run_callbacks
from dbsync_mq.runtime import collector_paused
from dbsync_mq.server import state
from dbsync_mq.server.hooks import Hooks, RequestContext
from dbsync_mq.server.parts import assembled, forget_parts, parts_digest, store_part
from dbsync_mq.server.pull import PullQuery, ReplySizes, nothing_new_body, pull_bodies
from dbsync_mq.server.push import (
    MAX_REFUSED_ROWS,
    Accepted,
    PushJob,
    apply_push,
    decode_push,
    hashable_key,
)
from dbsync_mq.server.query import run_query
from dbsync_mq.server.register import register_node
from dbsync_mq.server.repair import snapshot_bodies
from dbsync_mq.storage.engine import prepare, read_transaction, write_transaction
from dbsync_mq.storage.models import ModelSet
from dbsync_mq.transport.base import Message, Outgoing
from dbsync_mq.transport.topology import is_direct_reply_address

logger = logging.getLogger(__name__)

T = TypeVar("T")

Disposition = Literal["ack", "dead-letter", "requeue"]
StageHook = Callable[[str, str, str], None]
"""Called with a stage name (``before-transaction``, ``in-transaction``,
``after-commit``; ``part-stored`` for a part of a push that waits for others), the
request kind and its id: for tracing and fault injection."""

REPLY_KIND: Final = messages.REPLY
MAX_NODE_ID: Final = 2**31 - 1
"""Largest node id: ``sync_nodes.id`` is a 32-bit integer column."""


@dataclass(frozen=True)
class Outcome:
    """What to do with a request message: what to publish, then how to settle it."""

    disposition: Disposition
    outgoing: Iterable[Outgoing] = ()
    reason: str = ""
    kind: str = ""
    version: int | None = None
    request_id: str | None = None
    code: str | None = None


@dataclass
class Server:
    """Serves requests against the central database.

    ::

        server = Server(engine, ModelSet.in_modules(["myapp.models"]))
        outcome = server.handle(message)
    """

    engine: Engine
    models: ModelSet
    settings: ServerSettings = field(default_factory=ServerSettings)
    clock: Callable[[], float] = time.time
    on_stage: StageHook | None = None
    hooks: Hooks = field(default_factory=Hooks)

    def __post_init__(self) -> None:
        prepare(self.engine, foreign_keys=True)
        with read_transaction(self.engine) as connection:
            self._key = state.server_key(connection)
        self.public_key = signing.public_key_bytes(self._key)

    # --- entry point ----------------------------------------------------------

    def handle(self, message: Message) -> Outcome:
        """Serve one request message. Raises only ``DatabaseUnavailable`` (retry later)."""
        if message.kind not in messages.REQUEST_KINDS:
            return dead_letter(f"unknown message kind {message.kind!r}", message.kind)
        try:
            signed, signature = signing.open_envelope(message.body, self.settings.max_message_bytes)
            if message.kind == messages.REGISTER:
                return self._register(message, signed, signature)
            request, node, head = self._authenticate(message, signed, signature)
        except ProtocolError as exc:
            return dead_letter(str(exc), message.kind)
        with collector_paused():
            return self._serve(request, signed, node, head)

    def _serve(
        self, request: Request, signed: bytes, node: state.NodeRecord, head: int | None = None
    ) -> Outcome:
        def serve() -> Outcome:
            self._admit(request, node)
            if request.kind == messages.PULL and head is not None:
                answered = self._pull_at_head(request, head)
                if answered is not None:
                    return answered
            return self._dispatch(request, signed, node)

        return self._settled(request, serve)

    def _admit(self, request: Request, node: state.NodeRecord) -> None:
        if not node.enabled:
            raise RequestRefused("node-disabled", f"node {node.node_id} is disabled")
        self.hooks.run("before_request", RequestContext(node, request))

    def _settled(self, request: Request, serve: Callable[[], T]) -> T | Outcome:
        """``serve()``, or the outcome of its refusal or failure."""
        try:
            return serve()
        except RequestRefused as exc:
            return self._refused(request, exc)
        except DatabaseUnavailable:
            raise
        except Exception as exc:
            return self._failed(request, exc)

    def _refused(self, request: Request, exc: RequestRefused) -> Outcome:
        return Outcome(
            "ack",
            [self._error(request, exc.code, exc.reason, exc.rows)],
            exc.reason,
            request.kind,
            request_id=request.request_id,
            code=exc.code,
        )

    def _failed(self, request: Request, exc: Exception) -> Outcome:
        # A bug or a broken database schema: tell the node, keep the message for an operator.
        logger.error("request %s (%s) failed", request.request_id, request.kind, exc_info=exc)
        reason = f"{type(exc).__name__}: {exc}" if isinstance(exc, SyncError) else "internal"
        return Outcome(
            "dead-letter",
            [self._error(request, "internal-error", reason)],
            reason,
            request.kind,
            request_id=request.request_id,
            code="internal-error",
        )

    # --- group commit ---------------------------------------------------------

    def handle_pushes(self, batch: Sequence[Message]) -> list[Outcome]:
        """Serve several push messages in hand, in order: one outcome each.

        Group commit (``dbsync_mq.server.group``): the pushes are applied under one
        hold of the version-head lock, in one transaction, each in a savepoint of its
        own and as a version of its own; a refused push rolls back to its savepoint
        and gets its own error reply. Raises only ``DatabaseUnavailable``: nothing was
        committed, every push may be retried.
        """
        from dbsync_mq.server.group import GroupCommit  # which builds on this module

        with collector_paused():
            return GroupCommit(self).serve(batch)

    def _dispatch(self, request: Request, signed: bytes, node: state.NodeRecord) -> Outcome:
        handlers: dict[str, Callable[[Request, bytes, state.NodeRecord], Outcome]] = {
            messages.PUSH: self._push,
            messages.PULL: self._pull,
            messages.PING: self._ping,
            messages.QUERY: self._query,
            messages.REPAIR: self._repair,
        }
        handler = handlers.get(request.kind)
        if handler is None:
            raise RequestRefused("unsupported", f"this server does not serve {request.kind}")
        return handler(request, signed, node)

    # --- authentication -------------------------------------------------------

    def _authenticate(
        self, message: Message, signed: bytes, signature: bytes
    ) -> tuple[Request, state.NodeRecord, int | None]:
        """The request, its node and the version head as read with the node."""
        node_id = _header_node(message)
        node, head = state.find_node_and_head(self.engine, node_id)
        if node is None:
            raise ProtocolError(f"unknown node {node_id}")
        signing.verify(signed, signature, signing.load_public_key(node.public_key))
        request = messages.decode_request(signed)
        if request.node_id != node_id or request.kind != message.kind:
            raise ProtocolError("the signed request does not match its message properties")
        return request, node, head

    def _check_window(self, request: Request) -> None:
        # Integer milliseconds: a forged timestamp may be any integer, even past float range.
        skew_ms = abs(int(self.clock() * 1000) - request.timestamp_ms)
        window = self.settings.request_window_seconds
        if skew_ms > window * 1000:
            raise RequestRefused(
                "stale-request",
                f"request time is more than {window:.0f} s from the server's; nothing was applied",
            )

    # --- handlers -------------------------------------------------------------

    def _push(self, request: Request, signed: bytes, node: state.NodeRecord) -> Outcome:
        if "parts" in request.body:
            return self._push_part(request, node)
        changes = decode_push(self.models, request, self.settings.max_message_bytes)
        digest = signing.body_digest(signed)
        self._stage("before-transaction", request)
        with write_transaction(self.engine) as connection:
            accepted = self._apply(connection, request, node, changes, digest)
            self._stage("in-transaction", request)
        return self._pushed(request, accepted, changes)

    def _push_part(self, request: Request, node: state.NodeRecord) -> Outcome:
        """Store a part of a push; apply the whole once the last part is in."""
        digest = parts_digest(request)
        changes: list[Change] = []
        try:
            decode_push(self.models, request, self.settings.max_message_bytes)  # this part
            self._stage("before-transaction", request)
            with write_transaction(self.engine) as connection:
                _head, stored = state.lock_head_and_find(connection, request.request_id)
                if stored is not None:
                    if stored.digest != digest:
                        raise RequestRefused("request-id-reused", "request id was used before")
                    accepted: Accepted | None = Accepted(version=None, reply=stored.reply)
                else:
                    accepted, changes = self._apply_parts(connection, request, node, digest)
                if accepted is not None:
                    self._stage("in-transaction", request)
        except RequestRefused:
            with write_transaction(self.engine) as connection:
                forget_parts(connection, request.request_id)  # refused as a whole
            raise
        if accepted is None:  # more parts to come: the reply waits for the last one
            self._stage("part-stored", request)
            return Outcome("ack", (), kind=request.kind, request_id=request.request_id)
        return self._pushed(request, accepted, changes)

    def _apply_parts(
        self, connection: Connection, request: Request, node: state.NodeRecord, digest: bytes
    ) -> tuple[Accepted | None, list[Change]]:
        stored_parts = store_part(connection, request)
        if stored_parts is None:
            return None, []
        whole, changes = assembled(request, stored_parts)
        accepted = self._apply(connection, whole, node, changes, digest)
        forget_parts(connection, request.request_id)
        return accepted, changes

    def _apply(
        self,
        connection: Connection,
        request: Request,
        node: state.NodeRecord,
        changes: list[Change],
        digest: bytes,
    ) -> Accepted:
        job = PushJob(
            connection,
            self.models,
            request,
            node,
            changes,
            digest,
            self.hooks,
            check_fresh=lambda: self._check_window(request),
        )
        return apply_push(
            job, lambda version, base: self._seal(request, {"version": version, "base": base})
        )

    def _pushed(self, request: Request, accepted: Accepted, changes: list[Change]) -> Outcome:
        """The outcome of a push committed (or answered from its stored reply)."""
        self._stage("after-commit", request)
        if accepted.version is not None:
            run_callbacks(self.models, changes)
        outgoing = [self._to_node(request, accepted.reply)]
        if accepted.version is not None:
            # The event first: its confirm is quick (agents' queues are transient), and the
            # other nodes need not wait for the pushing node's reply to be stored.
            outgoing.insert(0, self._event(_announced(accepted.version, request)))
        return Outcome(
            "ack",
            outgoing,
            kind=request.kind,
            version=accepted.version,
            request_id=request.request_id,
        )

    def _pull(self, request: Request, _signed: bytes, _node: state.NodeRecord) -> Outcome:
        self._check_window(request)
        deleted = _deleted_keys(request.body["deleted"], self.settings.max_message_bytes)
        query = PullQuery(request.node_id, request.body["since"], frozenset(deleted))
        sizes = ReplySizes(
            self.settings.pull_chunk_changes,
            self.settings.reply_bytes,
            self.settings.pull_in_memory_operations,
        )
        bodies = pull_bodies(self.engine, self.models, query, sizes)
        first = next(bodies)  # refusals and database failures are met here, not midway
        return Outcome(
            "ack",
            self._chunks(request, itertools.chain([first], bodies)),
            kind=request.kind,
            request_id=request.request_id,
        )

    def _pull_at_head(self, request: Request, head: int) -> Outcome | None:
        """The reply to a pull from a node already at ``head``: nothing new, answered from
        the read that authenticated it, with no snapshot and no streaming. ``None`` when
        the node is behind (or claims a version the server does not know): the full pull
        then serves or refuses it."""
        since = request.body.get("since")
        if type(since) is not int or since != head:
            return None
        self._check_window(request)
        _deleted_keys(request.body["deleted"], self.settings.max_message_bytes)  # still checked
        reply = self._seal(request, nothing_new_body(head))
        return Outcome(
            "ack", [self._to_node(request, reply)], kind=request.kind, request_id=request.request_id
        )

    def _query(self, request: Request, _signed: bytes, _node: state.NodeRecord) -> Outcome:
        self._check_window(request)
        with read_transaction(self.engine) as connection:
            rows = run_query(connection, self.models, request.body)
        reply = self._seal(request, {"rows": rows})
        return Outcome(
            "ack", [self._to_node(request, reply)], kind=request.kind, request_id=request.request_id
        )

    def _repair(self, request: Request, _signed: bytes, _node: state.NodeRecord) -> Outcome:
        self._check_window(request)
        bodies = snapshot_bodies(
            self.engine, self.models, self.settings.repair_chunk_rows, self.settings.reply_bytes
        )
        return Outcome(
            "ack", self._chunks(request, bodies), kind=request.kind, request_id=request.request_id
        )

    def _ping(self, request: Request, _signed: bytes, _node: state.NodeRecord) -> Outcome:
        self._check_window(request)
        with read_transaction(self.engine) as connection:
            head = state.read_head(connection)
        reply = self._seal(request, {"version": head})
        return Outcome(
            "ack", [self._to_node(request, reply)], kind=request.kind, request_id=request.request_id
        )

    def _register(self, message: Message, signed: bytes, signature: bytes) -> Outcome:
        request = messages.decode_request(signed)
        reply_to = message.reply_to
        if request.kind != messages.REGISTER or reply_to is None:
            raise ProtocolError("a registration needs a reply-to address")
        if not is_direct_reply_address(reply_to):
            raise ProtocolError("a registration is answered through direct reply-to only")
        public_key = signing.load_public_key(request.body["public_key"])
        signing.verify(signed, signature, public_key)

        def reply_for(node_id: int, token_hash: bytes) -> bytes:
            proof = signing.registration_proof(
                token_hash, node_id, self.public_key, request.request_id
            )
            body = {"node": node_id, "server_key": self.public_key, "proof": proof}
            return self._seal(request, body)

        try:
            self._check_window(request)
            with write_transaction(self.engine) as connection:
                reply = register_node(
                    connection, request, signing.body_digest(signed), reply_for, self.hooks
                )
        except RequestRefused as exc:
            reply = self._seal_error(request, exc.code, exc.reason)
            return Outcome(
                "ack",
                [self._direct(request, reply_to, reply)],
                exc.reason,
                request.kind,
                request_id=request.request_id,
                code=exc.code,
            )
        return Outcome(
            "ack",
            [self._direct(request, reply_to, reply)],
            kind=request.kind,
            request_id=request.request_id,
        )

    def _stage(self, stage: str, request: Request) -> None:
        if self.on_stage is not None:
            self.on_stage(stage, request.kind, request.request_id)

    # --- replies --------------------------------------------------------------

    def _chunks(self, request: Request, bodies: Iterable[dict[str, Any]]) -> Iterator[Outgoing]:
        pending = None
        seq = 0
        for body in bodies:
            if pending is not None:
                yield self._to_node(request, self._seal(request, pending, seq=seq, last=False))
                seq += 1
            pending = body
        if pending is not None:
            yield self._to_node(request, self._seal(request, pending, seq=seq, last=True))

    def _seal(
        self, request: Request, body: dict[str, Any], *, seq: int = 0, last: bool = True
    ) -> bytes:
        reply = Reply(
            request_id=request.request_id,
            timestamp_ms=self._now_ms(),
            body=body,
            seq=seq,
            last=last,
        )
        return signing.seal(messages.encode_reply(reply), self._key)

    def _seal_error(
        self, request: Request, code: str, reason: str, rows: Sequence[tuple[str, Any]] = ()
    ) -> bytes:
        reply = Reply(
            request_id=request.request_id,
            timestamp_ms=self._now_ms(),
            status=messages.ERROR,
            body=messages.error_body(rows[:MAX_REFUSED_ROWS]),
            code=code,
            reason=reason,
        )
        return signing.seal(messages.encode_reply(reply), self._key)

    def _error(
        self, request: Request, code: str, reason: str, rows: Sequence[tuple[str, Any]] = ()
    ) -> Outgoing:
        return self._to_node(request, self._seal_error(request, code, reason, rows))

    def _to_node(self, request: Request, body: bytes) -> Outgoing:
        return Outgoing(_reply_message(request, body), node_id=request.node_id)

    def _direct(self, request: Request, reply_to: str, body: bytes) -> Outgoing:
        return Outgoing(_reply_message(request, body), reply_to=reply_to)

    def _event(self, event: messages.Event) -> Outgoing:
        body = signing.seal(messages.encode_event(event, self._now_ms()), self._key)
        message = Message(
            body=body,
            kind=messages.EVENT,
            message_id=uuid.uuid4().hex,
            correlation_id="",
            headers={"proto": messages.PROTOCOL_VERSION},
        )
        return Outgoing(message, event=True)

    def _now_ms(self) -> int:
        return int(self.clock() * 1000)


def _announced(version: int, request: Request) -> messages.Event:
    """The event for ``version``, made by ``request``: with its changes as stored when
    they are small, so that agents merge them without pulling."""
    changes = request.body.get("changes")
    if "parts" in request.body or not isinstance(changes, bytes):
        return messages.Event(version)  # a push in parts is stored joined, not as sent
    if len(changes) > messages.MAX_EVENT_CHANGES:
        return messages.Event(version)
    return messages.Event(version, request.node_id, request.request_id, changes)


def _reply_message(request: Request, body: bytes) -> Message:
    return Message(
        body=body,
        kind=REPLY_KIND,
        message_id=uuid.uuid4().hex,
        correlation_id=request.request_id,
        headers={"proto": messages.PROTOCOL_VERSION},
    )


def _header_node(message: Message) -> int:
    value = message.headers.get("node")
    if isinstance(value, bytes):
        value = value.decode("ascii", "replace")
    # ASCII digits only: str.isdigit() also accepts superscripts (int() refuses them) and
    # other scripts' digits (int() reads them); a bounded length, so int() never sees
    # thousands of digits.
    if isinstance(value, str) and value.isascii() and value.isdigit() and len(value) <= 10:
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 < value <= MAX_NODE_ID:
        raise ProtocolError("the message has no valid node header")
    return value


def _deleted_keys(data: bytes, max_bytes: int) -> set[RowKey]:
    try:
        return {hashable_key(change) for change in iter_changes(data, max_bytes)}
    except ProtocolError as exc:
        raise RequestRefused("malformed", f"deleted keys: {exc}") from None


def dead_letter(reason: str, kind: str) -> Outcome:
    return Outcome("dead-letter", (), reason, kind)
