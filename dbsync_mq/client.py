"""``SyncClient``: a node's whole API.

::

    client = SyncClient(engine, broker_url="amqp://guest:guest@localhost:5672/%2F")
    client.install()
    client.sync()

Local writes never wait for the network: they are logged in their own
transaction by the change capture, whatever the state of the broker. The
network is only used by ``register``, ``push``, ``pull``, ``sync`` and ``ping``,
which raise ``BrokerUnavailable`` when offline and can simply be called again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from sqlalchemy.engine import Engine

from dbsync_mq.config import DEFAULT_BROKER_URL, MAX_MESSAGE_BYTES, REQUEST_TIMEOUT_SECONDS
from dbsync_mq.core import messages, signing
from dbsync_mq.core.changeset import decode_changes, encode_changes
from dbsync_mq.core.compression import compress_local
from dbsync_mq.core.merge import Policy, check_policy, plan_merge
from dbsync_mq.core.messages import Reply, Request
from dbsync_mq.core.model import DELETE, Change, RowKey
from dbsync_mq.errors import (
    ConfigurationError,
    MergeError,
    NotRegistered,
    ProtocolError,
    PullRequired,
    PushRejected,
    ReplyRejected,
    SignatureError,
    UniqueConstraintError,
)
from dbsync_mq.results import PingResult, PullResult, PushResult, SyncResult
from dbsync_mq.storage import local, schema, tracking
from dbsync_mq.storage.engine import database_errors, prepare, read_transaction, write_transaction
from dbsync_mq.storage.merging import apply_plan, load_merge_input
from dbsync_mq.storage.models import ModelSet
from dbsync_mq.transport.base import Message
from dbsync_mq.transport.rabbitmq import BrokerClient
from dbsync_mq.transport.topology import DEFAULT_NAMESPACE, Topology

logger = logging.getLogger(__name__)

MAX_SYNC_ATTEMPTS = 5
"""Push attempts ``sync`` makes before giving up when other nodes keep pushing first."""


class SyncClient:
    """A client node: a local database synchronized with the server through RabbitMQ.

    ``models`` restricts the node to some tracked models (default: every model
    decorated with ``dbsync_mq.track``). ``conflict_policy`` is ``"node-wins"``,
    ``"server-wins"``, ``"last-writer-wins"`` or a callable (see
    ``dbsync_mq.core.merge``). The client is thread-safe; one call runs at a time.
    """

    def __init__(
        self,
        engine: Engine,
        *,
        broker_url: str = DEFAULT_BROKER_URL,
        namespace: str = DEFAULT_NAMESPACE,
        models: Iterable[type] | None = None,
        conflict_policy: Policy = "node-wins",
        timeout: float = REQUEST_TIMEOUT_SECONDS,
        clock: Callable[[], float] = time.time,
    ) -> None:
        check_policy(conflict_policy)
        self.engine = prepare(engine)
        self.models = ModelSet.of(models)
        self.topology = Topology(namespace)
        self.conflict_policy = conflict_policy
        self.timeout = timeout
        self._clock = clock
        self._log = local.OperationLog(self.models, clock)
        tracking.attach(engine, self._log)
        self._broker = BrokerClient(broker_url, self.topology)
        self._lock = threading.RLock()
        self._identity: local.Identity | None = None

    # --- set-up -------------------------------------------------------------------

    def install(self) -> None:
        """Create the sync tables and any missing tracked table; safe to call every start."""
        with database_errors():
            schema.client_metadata.create_all(self.engine)
            for model in self.models:
                model.table.create(self.engine, checkfirst=True)

    @property
    def is_registered(self) -> bool:
        """Whether this database already has a node identity."""
        return self._load_identity() is not None

    @property
    def node_id(self) -> int:
        """This node's id; ``NotRegistered`` before ``register``."""
        return self._require_identity().node_id

    @property
    def version(self) -> int:
        """The last server version merged into the local database."""
        return self._require_identity().version

    def register(self, token: str, *, extra_data: Mapping[str, Any] | None = None) -> int:
        """Register this node with a one-time token from ``dbsync-mq enroll``; return its id."""
        with self._lock:
            existing = self._load_identity()
            if existing is not None:
                raise ConfigurationError(f"this database is already node {existing.node_id}")
            messages.check_extra_data(extra_data)
            seed = os.urandom(signing.SEED_BYTES)
            key = signing.private_key_from_seed(seed)
            request = self._request(
                messages.REGISTER,
                0,
                {"token": token, "public_key": signing.public_key_bytes(key)},
                extra_data,
            )
            answer = self._broker.call_direct(
                _message(request, signing.seal(messages.encode_request(request), key)), self.timeout
            )
            node_id, server_key = _accept_registration(answer, request, token)
            identity = local.Identity(node_id, self.topology.namespace, seed, server_key, 0, 0)
            with write_transaction(self.engine) as connection:
                local.save_identity(connection, identity)
            self._identity = identity
            self._broker.ensure_node_queue(node_id)
            logger.info("registered as node %s", node_id)
            return node_id

    # --- sync ---------------------------------------------------------------------

    def sync(
        self, *, extra_data: Mapping[str, Any] | None = None, max_attempts: int = MAX_SYNC_ATTEMPTS
    ) -> SyncResult:
        """Push local changes, pulling and merging first whenever the server is ahead."""
        with self._lock:
            pulled, conflicts = 0, []
            for _attempt in range(max_attempts):
                try:
                    pushed = self.push(extra_data=extra_data)
                except PullRequired:
                    result = self.pull(extra_data=extra_data)
                    pulled += result.changes
                    conflicts.extend(result.conflicts)
                    continue
                if pushed.operations == 0 and pulled == 0:
                    result = self.pull(extra_data=extra_data)
                    pulled, conflicts = result.changes, result.conflicts
                return SyncResult(self.version, pushed.operations, pulled, conflicts)
            raise PullRequired("pull-required", f"still behind after {max_attempts} attempts")

    def push(self, *, extra_data: Mapping[str, Any] | None = None) -> PushResult:
        """Send the local changes; ``PullRequired`` if the server has changes to merge first."""
        with self._lock:
            messages.check_extra_data(extra_data)
            identity = self._require_identity()
            self._settle_inflight(identity)
            identity = self._require_identity()
            prepared = self._prepare_push(identity, extra_data)
            if prepared is None:
                return PushResult(identity.version, 0)
            push, count = prepared
            self._publish(identity, push.request_id, messages.PUSH, push.body)
            reply = self._single_reply(identity, messages.PUSH, push.request_id)
            return self._settle(push, reply, count)

    def pull(self, *, extra_data: Mapping[str, Any] | None = None) -> PullResult:
        """Fetch and merge the server's changes since the last merged version."""
        with self._lock:
            messages.check_extra_data(extra_data)
            identity = self._require_identity()
            self._settle_inflight(identity)
            identity = self._require_identity()
            with read_transaction(self.engine) as connection:
                deleted = [
                    c for c in compress_local(local.unpushed(connection)) if c.command == DELETE
                ]
            body = {"since": identity.version, "deleted": encode_changes(deleted)}
            request = self._request(messages.PULL, identity.node_id, body, extra_data)
            self._publish(identity, request.request_id, messages.PULL, self._seal(request))
            version, changes, parents, own = self._collect_pull(identity, request.request_id)
            return self._merge(identity, version, changes, parents, own)

    def ping(self, *, extra_data: Mapping[str, Any] | None = None) -> PingResult:
        """Ask a worker for the server's version: proves the whole path works."""
        with self._lock:
            identity = self._require_identity()
            started = time.monotonic()
            request = self._request(
                messages.PING, identity.node_id, {"version": identity.version}, extra_data
            )
            self._publish(identity, request.request_id, messages.PING, self._seal(request))
            reply = self._single_reply(identity, messages.PING, request.request_id)
            return PingResult(
                server_version=reply.body["version"],
                local_version=identity.version,
                pending_operations=self.pending_operations(),
                round_trip_seconds=time.monotonic() - started,
            )

    def pending_operations(self) -> int:
        """How many logged operations wait to be pushed."""
        with read_transaction(self.engine) as connection:
            return local.count_unpushed(connection)

    def close(self) -> None:
        """Close the broker connection (it reopens on the next call)."""
        self._broker.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- push internals ---------------------------------------------------------------

    def _prepare_push(
        self, identity: local.Identity, extra_data: Mapping[str, Any] | None
    ) -> tuple[local.InFlight, int] | None:
        with read_transaction(self.engine) as connection:
            operations = local.unpushed(connection)
            if not operations:
                return None
            changes = local.attach_rows(connection, self.models, compress_local(operations))
        body = {"base": identity.version, "changes": encode_changes(changes)}
        request = self._request(messages.PUSH, identity.node_id, body, extra_data)
        push = local.InFlight(
            request.request_id,
            identity.version,
            self._seal(request),
            tuple(op.order for op in operations),
        )
        if len(push.body) > MAX_MESSAGE_BYTES:
            raise ConfigurationError(
                f"a push of {len(push.body)} bytes exceeds the {MAX_MESSAGE_BYTES}-byte limit"
            )
        with write_transaction(self.engine) as connection:
            if local.load_inflight(connection) is not None:
                raise MergeError("another process is pushing from this database")
            local.save_inflight(connection, push)
        return push, len(changes)

    def _settle_inflight(self, identity: local.Identity) -> None:
        """Finish a push left in flight (by a crash or a timeout) before anything else."""
        with read_transaction(self.engine) as connection:
            push = local.load_inflight(connection)
        if push is None:
            return
        logger.info("resending push %s left in flight", push.request_id)
        self._publish(identity, push.request_id, messages.PUSH, push.body)
        reply = self._single_reply(identity, messages.PUSH, push.request_id)
        try:
            self._settle(push, reply, len(push.operation_ids))
        except PushRejected as exc:
            logger.info("push %s in flight was not applied: %s", push.request_id, exc)

    def _settle(self, push: local.InFlight, reply: Reply, count: int) -> PushResult:
        with write_transaction(self.engine) as connection:
            local.delete_inflight(connection, push.request_id)
            if reply.status == messages.OK:
                local.remove_operations(connection, push.operation_ids)
                local.set_position(connection, reply.body["version"])
        self._identity = None
        if reply.status != messages.OK:
            _raise_for(reply, messages.PUSH)
        return PushResult(reply.body["version"], count)

    # --- pull internals ---------------------------------------------------------------

    def _collect_pull(
        self, identity: local.Identity, request_id: str
    ) -> tuple[int, list[Change], dict[RowKey, Any], set[str]]:
        changes: list[Change] = []
        parents: dict[RowKey, Any] = {}
        own: set[str] = set()
        version = identity.version
        for seq, reply in enumerate(self._replies(identity, messages.PULL, request_id)):
            if reply.status != messages.OK:
                _raise_for(reply, messages.PULL)
            if reply.seq != seq:
                raise ProtocolError(f"pull reply chunk {reply.seq} arrived as chunk {seq}")
            version = reply.body["version"]
            changes.extend(decode_changes(reply.body["changes"]))
            parents.update((c.row_key, c.values) for c in decode_changes(reply.body["parents"]))
            own.update(str(entry[1]) for entry in reply.body["versions"] if len(entry) == 2)
        return version, changes, parents, own

    def _merge(
        self,
        identity: local.Identity,
        version: int,
        changes: list[Change],
        parents: dict[RowKey, Any],
        own: set[str],
    ) -> PullResult:
        with write_transaction(self.engine) as connection:
            current = local.load_identity(connection)
            if current is None or current.version != identity.version:
                raise MergeError("the local database moved during the pull; pull again")
            self._drop_own_push(connection, own)
            local_changes = compress_local(local.unpushed(connection))
            data = load_merge_input(connection, self.models, local_changes, changes, parents)
            try:
                plan = plan_merge(self.models.schema, data, self.conflict_policy)
            except UniqueConstraintError as exc:
                raise UniqueConstraintError(
                    [(self.models.get(str(t)).cls, key, cols) for t, key, cols in exc.entries]
                ) from None
            self._log.hlc.observe(plan.max_hlc)
            apply_plan(connection, self.models, plan, lambda: self._log.hlc.tick(self._now_ms()))
            local.set_position(connection, version, plan.max_hlc)
        self._identity = None
        for conflict in plan.conflicts:
            logger.info(
                "conflict %s on %s %r: %s won",
                conflict.kind,
                conflict.table,
                conflict.key,
                conflict.winner,
            )
        return PullResult(version, len(changes), plan.conflicts)

    def _drop_own_push(self, connection: Any, own_request_ids: set[str]) -> None:
        """A pull that contains this node's in-flight push settles it as accepted."""
        push = local.load_inflight(connection)
        if push is not None and push.request_id in own_request_ids:
            local.remove_operations(connection, push.operation_ids)
            local.delete_inflight(connection, push.request_id)

    # --- messaging --------------------------------------------------------------------

    def _request(
        self, kind: str, node_id: int, body: dict[str, Any], extra_data: Mapping[str, Any] | None
    ) -> Request:
        return Request(
            kind=kind,
            node_id=node_id,
            request_id=uuid.uuid4().hex,
            timestamp_ms=self._now_ms(),
            body=body,
            extra=dict(extra_data) if extra_data is not None else None,
        )

    def _seal(self, request: Request) -> bytes:
        key = signing.private_key_from_seed(self._require_identity().private_key)
        return signing.seal(messages.encode_request(request), key)

    def _publish(self, identity: local.Identity, request_id: str, kind: str, body: bytes) -> None:
        self._broker.ensure_node_queue(identity.node_id)
        message = Message(
            body=body,
            kind=kind,
            message_id=request_id,
            correlation_id=request_id,
            headers={"node": str(identity.node_id), "proto": messages.PROTOCOL_VERSION},
        )
        self._broker.publish(message)

    def _replies(self, identity: local.Identity, kind: str, request_id: str) -> Iterator[Reply]:
        server_key = signing.load_public_key(identity.server_key)
        for message in self._broker.receive(identity.node_id, request_id, self.timeout):
            try:
                signed, signature = signing.open_envelope(message.body, MAX_MESSAGE_BYTES)
                signing.verify(signed, signature, server_key)
                reply = messages.decode_reply(signed, kind)
            except ProtocolError as exc:
                logger.warning("ignoring a reply to %s that is not authentic: %s", request_id, exc)
                continue
            if reply.request_id != request_id:
                continue
            yield reply
            if reply.last:
                return

    def _single_reply(self, identity: local.Identity, kind: str, request_id: str) -> Reply:
        for reply in self._replies(identity, kind, request_id):
            return reply
        raise ProtocolError(f"the reply to {request_id} ended early")

    # --- identity -----------------------------------------------------------------------

    def _load_identity(self) -> local.Identity | None:
        if self._identity is None:
            with read_transaction(self.engine) as connection:
                self._identity = local.load_identity(connection)
        return self._identity

    def _require_identity(self) -> local.Identity:
        identity = self._load_identity()
        if identity is None:
            raise NotRegistered("this node is not registered: call register(token) first")
        if identity.namespace != self.topology.namespace:
            raise ConfigurationError(
                f"this database was registered in namespace {identity.namespace!r}, "
                f"not {self.topology.namespace!r}"
            )
        return identity

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)


def _message(request: Request, body: bytes) -> Message:
    return Message(
        body=body,
        kind=request.kind,
        message_id=request.request_id,
        correlation_id=request.request_id,
        headers={"proto": messages.PROTOCOL_VERSION},
    )


def _accept_registration(answer: Message, request: Request, token: str) -> tuple[int, bytes]:
    """Check the registration reply came from a server that knows the token."""
    signed, signature = signing.open_envelope(answer.body, MAX_MESSAGE_BYTES)
    reply = messages.decode_reply(signed, messages.REGISTER)
    if reply.status != messages.OK:
        _raise_for(reply, messages.REGISTER)
    node_id, server_key = reply.body["node"], reply.body["server_key"]
    signing.verify(signed, signature, signing.load_public_key(server_key))
    expected = signing.registration_proof(
        signing.token_digest(token), node_id, server_key, request.request_id
    )
    if not signing.proofs_match(expected, reply.body["proof"]):
        raise SignatureError("the registration reply does not prove knowledge of the token")
    return node_id, server_key


def _raise_for(reply: Reply, kind: str) -> None:
    code, reason = reply.code or "error", reply.reason or ""
    if kind == messages.PUSH:
        if code == "pull-required":
            raise PullRequired(code, reason)
        raise PushRejected(code, reason)
    raise ReplyRejected(code, reason)
