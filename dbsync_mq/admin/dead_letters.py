"""``dbsync-mq dead-letters``: list, show, requeue and purge the dead-letter queue.

A dead letter is a request no worker could trust or serve: refused before
authentication (size, envelope, unknown node, signature, decoding), a request
that failed with an internal error, or one the broker gave up on after its
delivery limit. ``show`` decodes what can be decoded without trusting it:
bounded, nothing executed, and no value printed (a registration carries a
token, a push carries rows): field names, types and sizes only.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Callable, Collection, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Final

from sqlalchemy.engine import Engine

from dbsync_mq.core import messages, signing
from dbsync_mq.core.changeset import iter_changes
from dbsync_mq.errors import ProtocolError
from dbsync_mq.server import state
from dbsync_mq.storage.engine import opened_engine, read_transaction
from dbsync_mq.transport.dead_letters import DeadLetter, DeadLetterQueue, Requeued
from dbsync_mq.transport.topology import Topology

LIST_LIMIT: Final = 100
"""Dead letters ``list`` reads unless told otherwise."""

MAX_BYTES: Final = messages.MAX_MESSAGE_BYTES
"""Largest body ``show`` decodes (the worker's own limit)."""


@dataclass(frozen=True)
class DeadLetterSummary:
    """One line of ``dead-letters list``."""

    message_id: str
    kind: str
    node: str
    queue: str | None
    reason: str
    dead_at: str | None
    size: int

    @classmethod
    def of(cls, letter: DeadLetter, topology: Topology) -> DeadLetterSummary:
        node = letter.message.headers.get("node")
        if isinstance(node, bytes):
            node = node.decode("ascii", "replace")
        return cls(
            message_id=letter.message.message_id,
            kind=letter.message.kind,
            node=str(node)[:16] if node is not None else "",
            queue=letter.origin(topology),
            reason=letter.reason,
            dead_at=_time(letter.timestamp),
            size=len(letter.message.body),
        )


def _time(seconds: int | None) -> str | None:
    if not isinstance(seconds, int) or isinstance(seconds, bool):
        return None
    try:
        moment = dt.datetime.fromtimestamp(seconds, dt.timezone.utc)
    except (OverflowError, OSError, ValueError):
        return None
    return moment.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class DeadLetterList:
    total: int
    letters: list[DeadLetterSummary]


def list_dead_letters(
    broker_url: str, namespace: str = "dbsync", limit: int = LIST_LIMIT
) -> DeadLetterList:
    """The first ``limit`` dead letters and how many there are."""
    topology = Topology(namespace)
    with DeadLetterQueue(broker_url, topology) as queue:
        total = queue.depth()
        letters = [DeadLetterSummary.of(letter, topology) for _tag, letter in queue.read(limit)]
    return DeadLetterList(total, letters)


def show_dead_letter(
    broker_url: str,
    namespace: str,
    message_id: str,
    *,
    database_url: str | None = None,
) -> dict[str, Any] | None:
    """One dead letter by message id: its properties, headers and what decodes; with
    ``database_url``, whether its signature is the node's. ``None`` when not found."""
    topology = Topology(namespace)
    with contextlib.ExitStack() as stack:
        engine = None if database_url is None else stack.enter_context(opened_engine(database_url))
        with DeadLetterQueue(broker_url, topology) as queue:
            found = next(
                (letter for _, letter in queue.read() if letter.message.message_id == message_id),
                None,
            )
        if found is None:
            return None
        return _shown(found, topology, engine)


def _shown(found: DeadLetter, topology: Topology, engine: Engine | None) -> dict[str, Any]:
    message = found.message
    shown: dict[str, Any] = {
        **asdict(DeadLetterSummary.of(found, topology)),
        "correlation_id": message.correlation_id,
        "reply_to": message.reply_to,
        "redelivered": found.redelivered,
        "headers": {name: _printable(value) for name, value in message.headers.items()},
    }
    shown["decoded"] = decode_untrusted(message.body, engine)
    return shown


def _printable(value: Any) -> Any:
    """A header as JSON can show it (headers are the worker's or the sender's labels)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, Mapping):
        return {str(key): _printable(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_printable(item) for item in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def decode_untrusted(body: bytes, engine: Engine | None = None) -> dict[str, Any]:
    """The envelope and the request map as far as they decode, described, not shown."""
    try:
        signed, signature = signing.open_envelope(body, MAX_BYTES)
    except ProtocolError as exc:
        return {"envelope": f"not decodable: {exc}"}
    described: dict[str, Any] = {"envelope": "ok", "signed_bytes": len(signed)}
    try:
        request = messages.decode_request(signed)
    except ProtocolError as exc:
        described["request"] = f"not decodable: {exc}"
        return described
    described["request"] = {
        "kind": request.kind,
        "node": request.node_id,
        "request_id": request.request_id,
        "time": _time(request.timestamp_ms // 1000),
        "extra_data": sorted(map(str, request.extra)) if request.extra else [],
        "body": {name: _shape(value) for name, value in request.body.items()},
    }
    if request.kind == messages.PUSH:
        described["changes"] = _count_changes(request.body["changes"])
    if engine is not None and request.kind != messages.REGISTER:
        described["signature"] = _check_signature(engine, request.node_id, signed, signature)
    return described


def _shape(value: Any) -> str:
    if isinstance(value, (bytes, str, list, dict)):
        return f"{type(value).__name__} of {len(value)}"
    return type(value).__name__


def _count_changes(data: bytes) -> dict[str, Any]:
    counts: dict[str, int] = {}
    try:
        for change in iter_changes(data, MAX_BYTES):
            label = f"{change.command} {change.table}"
            counts[label] = counts.get(label, 0) + 1
    except ProtocolError as exc:
        return {"not decodable": str(exc), **counts}
    return counts


def _check_signature(engine: Engine, node_id: int, signed: bytes, signature: bytes) -> str:
    with read_transaction(engine) as connection:
        node = state.find_node(connection, node_id)
    if node is None:
        return f"unknown node {node_id}"
    try:
        signing.verify(signed, signature, signing.load_public_key(node.public_key))
    except ProtocolError:
        return f"does not verify with node {node_id}'s key"
    return f"valid: signed with node {node_id}'s key"


def _chooser(message_ids: Collection[str] | None) -> Callable[[DeadLetter], bool]:
    if message_ids is None:
        return lambda _letter: True
    wanted = set(message_ids)
    return lambda letter: letter.message.message_id in wanted


def requeue_dead_letters(
    broker_url: str, namespace: str = "dbsync", message_ids: Collection[str] | None = None
) -> Requeued:
    """Send dead letters (all, or those of ``message_ids``) back to their request queues."""
    with DeadLetterQueue(broker_url, Topology(namespace)) as queue:
        return queue.requeue(_chooser(message_ids))


def purge_dead_letters(
    broker_url: str, namespace: str = "dbsync", message_ids: Collection[str] | None = None
) -> int:
    """Delete dead letters (all, or those of ``message_ids``); return how many."""
    with DeadLetterQueue(broker_url, Topology(namespace)) as queue:
        return queue.purge(None if message_ids is None else _chooser(message_ids))
