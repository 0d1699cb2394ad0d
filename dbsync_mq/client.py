"""``SyncClient``: a node's whole API.

::

    client = SyncClient(engine, broker_url="amqp://guest:guest@localhost:5672/%2F")
    client.install()
    client.sync()

Local writes never wait for the network: they are logged in their own
transaction by the change capture, whatever the state of the broker. The
network is used by ``register``, ``push``, ``pull``, ``sync``, ``repair``,
``query`` and ``ping``, which raise ``BrokerUnavailable`` when offline and can
simply be called again.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from dbsync_mq import channel
from dbsync_mq.agent import Agent, AgentSettings, Announced, StatusListener, SyncStatus
from dbsync_mq.channel import NodeChannel
from dbsync_mq.config import (
    DEFAULT_BROKER_URL,
    MAX_MESSAGE_BYTES,
    PUBLISH_LIMIT_BYTES,
    REQUEST_TIMEOUT_SECONDS,
)
from dbsync_mq.core import messages, signing
from dbsync_mq.core.changeset import (
    ChangeTooLarge,
    decode_changes,
    decode_signed,
    encode_changes,
    encode_parts,
    signed_sections,
)
from dbsync_mq.core.compression import compress_local
from dbsync_mq.core.merge import Policy, check_policy
from dbsync_mq.core.messages import Reply
from dbsync_mq.core.model import DELETE, Change, Operation
from dbsync_mq.errors import (
    BrokerUnavailable,
    ConfigurationError,
    MergeError,
    NotRegistered,
    PendingChanges,
    ProtocolError,
    PullRequired,
    PushRejected,
    RepairRequired,
    ReplyRejected,
    SyncTimeout,
    UniqueConstraintError,
)
from dbsync_mq.extensions import run_callbacks
from dbsync_mq.locking import NodeLock
from dbsync_mq.outbox import attach_rows
from dbsync_mq.results import (
    PendingChange,
    PingResult,
    PullResult,
    PushResult,
    QuarantinedRow,
    RepairResult,
    SyncResult,
)
from dbsync_mq.runtime import collector_paused
from dbsync_mq.storage import local, schema, tracking
from dbsync_mq.storage.apply import batches, delete_all, insert_values
from dbsync_mq.storage.engine import database_errors, prepare, read_transaction, write_transaction
from dbsync_mq.storage.merging import Merged, Pulled, merge_pulled
from dbsync_mq.storage.models import ModelSet, tracked_model
from dbsync_mq.transport.node import BrokerClient
from dbsync_mq.transport.topology import DEFAULT_NAMESPACE, NODE_QUEUE_EXPIRY_MS, Topology

logger = logging.getLogger(__name__)

M = TypeVar("M")

MIN_MESSAGE_BYTES = 128 * 1024
"""Smallest ``max_message_bytes``: room for a request's ``extra_data`` and some rows."""

PREPARE_BATCH = 20_000
"""Rows a push reads and packs at a time."""

MAX_SYNC_ATTEMPTS = 5
"""Push attempts ``sync`` makes before giving up when other nodes keep pushing first."""

Progress = Callable[[str, int, int], None]
"""``progress(table, rows_received, rows_in_table)`` during a repair."""


class SyncClient:
    """A client node: a local database synchronized with the server through RabbitMQ.

    ``models`` restricts the node to some tracked models (default: every model
    decorated with ``dbsync_mq.track``). ``conflict_policy`` is ``"node-wins"``,
    ``"server-wins"``, ``"last-writer-wins"`` or a callable (see
    ``dbsync_mq.core.merge``). ``timeout`` is how long a call waits for a reply;
    ``reply_queue_ttl`` how long the broker keeps this node's reply queue once no
    client of it is connected (30 days; the queue is declared again when needed).
    The client is thread-safe; one call runs at a time.
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
        reply_queue_ttl: float = NODE_QUEUE_EXPIRY_MS / 1000,
        max_message_bytes: int = PUBLISH_LIMIT_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        check_policy(conflict_policy)
        if not MIN_MESSAGE_BYTES <= max_message_bytes <= MAX_MESSAGE_BYTES:
            raise ConfigurationError(
                f"max_message_bytes must be from {MIN_MESSAGE_BYTES} to {MAX_MESSAGE_BYTES}"
            )
        self.engine = prepare(engine, shared=True)
        self.models = ModelSet.of(models)
        self.topology = Topology(namespace, node_queue_expiry_ms=int(reply_queue_ttl * 1000))
        self.conflict_policy = conflict_policy
        self.timeout = timeout
        self.max_message_bytes = max_message_bytes
        self._clock = clock
        self._log = local.OperationLog(self.models, clock)
        tracking.attach(engine, self._log)
        self._broker = BrokerClient(broker_url, self.topology, timeout=timeout)
        self._lock = NodeLock(self.engine)
        self._node_channel: NodeChannel | None = None
        self._agent: Agent | None = None
        self._agent_lock = threading.Lock()
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
        """Register this node with a one-time token from ``dbsync-mq enroll``; return its id.

        A registration whose answer was lost (a timeout, a lost connection) is sent
        again as it was by the next ``register`` with the same token: the server
        answers it from its record, so the token is not spent twice.
        """
        with self._turn():
            existing = self._load_identity()
            if existing is not None:
                raise ConfigurationError(f"this database is already node {existing.node_id}")
            registration = self._pending_registration(token, extra_data)
            try:
                identity = channel.register(
                    self._broker, registration, token, self.topology.namespace
                )
            except ReplyRejected:
                with write_transaction(self.engine) as connection:
                    local.delete_registration(connection)  # refused: nothing to settle
                raise
            with write_transaction(self.engine) as connection:
                local.save_identity(connection, identity)
                local.delete_registration(connection)
            self._identity = identity
            logger.info("registered as node %s", identity.node_id)
            try:
                self._broker.ensure_node_queue(identity.node_id)
            except (ConfigurationError, BrokerUnavailable, SyncTimeout) as exc:
                # Enrollment-only credentials may not declare it: the next call does.
                logger.info("reply queue of node %s not declared yet: %s", identity.node_id, exc)
            return identity.node_id

    def _pending_registration(
        self, token: str, extra_data: Mapping[str, Any] | None
    ) -> local.Registration:
        """The registration sent earlier with this token, or a new one, saved before sending."""
        with read_transaction(self.engine) as connection:
            pending = local.load_registration(connection)
        if pending is not None and signing.proofs_match(
            pending.token_digest, signing.token_digest(token)
        ):
            logger.info("sending registration %s again", pending.request_id)
            return pending
        seed = os.urandom(signing.SEED_BYTES)
        registration = channel.seal_registration(token, seed, extra_data, self._clock)
        with write_transaction(self.engine) as connection:
            local.save_registration(connection, registration)
        return registration

    # --- sync ---------------------------------------------------------------------

    def sync(
        self, *, extra_data: Mapping[str, Any] | None = None, max_attempts: int = MAX_SYNC_ATTEMPTS
    ) -> SyncResult:
        """Push local changes, pulling and merging first whenever the server is ahead.

        A node behind the server's trimmed version log is repaired when it has nothing
        to push; with local changes waiting, ``RepairRequired`` is raised and they are
        kept (see ``repair``).
        """
        with self._turn(reload_identity=False):
            pulls: list[PullResult] = []
            for _attempt in range(max_attempts):
                try:
                    pushed = self.push(extra_data=extra_data)
                except PullRequired:
                    pulls.append(self._pull_or_repair(extra_data))
                    continue
                behind = pushed.accepted_version is not None and pushed.version < (
                    pushed.accepted_version
                )
                if behind or (pushed.operations == 0 and not pulls):
                    pulls.append(self._pull_or_repair(extra_data))
                return SyncResult(
                    self.version,
                    pushed.operations,
                    sum(pull.changes for pull in pulls),
                    [conflict for pull in pulls for conflict in pull.conflicts],
                    [failure for pull in pulls for failure in pull.extension_failures],
                )
            raise PullRequired("pull-required", f"still behind after {max_attempts} attempts")

    def _pull_or_repair(self, extra_data: Mapping[str, Any] | None) -> PullResult:
        """``pull``; from behind the trimmed horizon, ``repair`` when nothing is pending
        (its rows count as the changes pulled), else ``RepairRequired``."""
        try:
            return self.pull(extra_data=extra_data)
        except RepairRequired as refused:
            try:
                repaired = self.repair(extra_data=extra_data)
            except PendingChanges:
                raise refused from None
            logger.info(
                "repaired to version %d: the versions it lacked were trimmed", repaired.version
            )
            return PullResult(repaired.version, repaired.rows)

    def push(self, *, extra_data: Mapping[str, Any] | None = None) -> PushResult:
        """Send the local changes; ``PullRequired`` if the server has changes to merge first.

        A push left in flight by an earlier call is settled first; the result counts
        the operations of both.
        """
        with self._turn(reload_identity=False):
            messages.check_extra_data(extra_data)
            settled = None
            prepared = self._prepare_push(extra_data)
            if isinstance(prepared, local.InFlight):  # left in flight by an earlier call
                settled = self._settle_left(prepared)
                prepared = self._prepare_push(extra_data)
            identity = self._require_identity()
            if isinstance(prepared, local.InFlight):
                raise MergeError("another process is pushing from this database")
            if prepared is None:
                return settled or PushResult(identity.version, 0)
            push, count = prepared
            result = self._settle(push, count)
            if settled is None:
                return result
            return PushResult(
                result.version, result.operations + settled.operations, result.accepted_version
            )

    def pull(self, *, extra_data: Mapping[str, Any] | None = None) -> PullResult:
        """Fetch and merge the server's changes since the last merged version."""
        with self._turn():
            self._settle_inflight()
            identity = self._require_identity()
            with read_transaction(self.engine) as connection:
                deleted = [
                    c for c in compress_local(local.unpushed(connection)) if c.command == DELETE
                ]
            body = {"since": identity.version, "deleted": encode_changes(deleted)}
            pulled = Pulled(identity.version)
            with self._channel().call(messages.PULL, body, extra_data) as replies:
                for reply in replies:
                    pulled.version = reply.body["version"]
                    pulled.chunks.append(reply.body["changes"])
                    for parent in decode_signed(reply.body["parents"]):
                        pulled.parents[parent.row_key] = parent.values or {}
                    pulled.own.update(str(e[1]) for e in reply.body["versions"] if len(e) == 2)
            return self._merge(identity, pulled)

    def _merge_announced(self, event: messages.Event) -> PullResult | Announced:
        """Merge the changes an event carries when they are this node's next version and
        the merge needs nothing the event lacks (the parents of unpushed deletes, the
        settling of a push in flight); ``Announced.NEEDS_PULL`` when only a pull can bring
        them, ``Announced.HAD`` when this node has that version already.

        One write transaction decides and merges: the event is on the way from a commit
        on another node to this one's database, and every transaction costs that time.
        """
        with (
            self._turn(reload_identity=False),
            write_transaction(self.engine) as connection,
            collector_paused(),
        ):
            identity = local.load_identity(connection)
            if identity is None or event.node_id == identity.node_id:
                return Announced.HAD
            if event.version <= identity.version:
                return Announced.HAD
            if (
                event.changes is None
                or event.version != identity.version + 1
                or local.load_inflight(connection) is not None
            ):
                return Announced.NEEDS_PULL
            operations = local.unpushed(connection)
            if any(c.command == DELETE for c in compress_local(operations)):
                return Announced.NEEDS_PULL
            pulled = Pulled(event.version, [event.changes])
            merged = self._merge_in(connection, pulled, operations)
        return self._merged(event.version, merged)

    # --- other requests -------------------------------------------------------------

    def repair(
        self,
        *,
        force: bool = False,
        extra_data: Mapping[str, Any] | None = None,
        progress: Progress | None = None,
    ) -> RepairResult:
        """Replace the local tables with the server's, atomically, and continue from there.

        Refuses with ``PendingChanges`` while local changes wait to be pushed,
        unless ``force=True`` discards them. Streamed: memory stays bounded
        whatever the size of the tables. Push-only tables are left as they are.
        """
        with self._turn():
            with read_transaction(self.engine) as connection:
                pending = [
                    (c.table, c.key, c.command) for c in compress_local(local.unpushed(connection))
                ]
            if pending and not force:
                raise PendingChanges(pending)
            if not force:
                self._settle_inflight()
            with (
                self._channel().call(messages.REPAIR, {}, extra_data) as replies,
                write_transaction(self.engine) as connection,
                collector_paused(),
            ):
                result = self._replace_tables(connection, replies, progress)
                connection.execute(schema.operations.delete())
                connection.execute(schema.inflight.delete())
                connection.execute(schema.inflight_parts.delete())
                local.set_position(connection, result.version)
            self._identity = None
            if pending:
                logger.warning("repair discarded %d local changes never pushed", len(pending))
            return RepairResult(result.version, result.rows, len(pending))

    def _replace_tables(
        self, connection: Connection, replies: Iterable[Reply], progress: Progress | None
    ) -> RepairResult:
        pulled = [model for model in self.models if model.pulled]
        delete_all(connection, pulled)
        version, rows, done = 0, 0, dict.fromkeys((m.name for m in pulled), 0)
        for reply in replies:
            version = reply.body["version"]
            table = reply.body["table"]
            if table is None:
                continue
            model = self.models.get(table)
            received = 0
            for section, columns, packed in signed_sections(reply.body["rows"]):
                if section != table:
                    raise ProtocolError(f"repair: rows of {section!r} in a chunk of {table!r}")
                values = [row[4] for row in packed if len(row) >= 5 and row[4] is not None]
                insert_values(connection, model, columns, values)
                received += len(values)
            rows += received
            done[table] = done.get(table, 0) + received
            if progress is not None:
                progress(table, done[table], reply.body["total"])
        return RepairResult(version, rows)

    def query(
        self,
        model: type[M],
        *,
        limit: int | None = None,
        offset: int = 0,
        extra_data: Mapping[str, Any] | None = None,
        **filters: Any,
    ) -> list[M]:
        """Rows of ``model`` on the server whose attributes equal ``filters``.

        Returns detached objects (not added to any session), ordered by key, at
        most ``limit`` (and at most 1,000) from ``offset``.
        """
        tracked = tracked_model(model)
        columns = {attr: name for name, attr in tracked.attributes.items()}
        unknown = sorted(set(filters) - set(columns))
        if unknown:
            raise ConfigurationError(f"{model.__name__} has no attributes {unknown}")
        if not tracked.pulled:
            raise ConfigurationError(f"{model.__name__} is push-only: it cannot be queried")
        body = {
            "table": tracked.name,
            "limit": limit,
            "offset": offset,
            "filters": {columns[key]: value for key, value in filters.items()},
        }
        with self._turn():
            reply = self._channel().call_once(messages.QUERY, body, extra_data)
        rows = decode_changes(reply.body["rows"])
        return [tracked.instance(change.values or {}) for change in rows]

    def ping(self, *, extra_data: Mapping[str, Any] | None = None) -> PingResult:
        """Ask a worker for the server's version: proves the whole path works."""
        with self._turn():
            identity = self._require_identity()
            started = time.monotonic()
            reply = self._channel().call_once(
                messages.PING, {"version": identity.version}, extra_data
            )
            return PingResult(
                server_version=reply.body["version"],
                local_version=identity.version,
                pending_operations=self.pending_operations(),
                round_trip_seconds=time.monotonic() - started,
            )

    def pending_operations(self) -> int:
        """How many logged operations wait to be pushed (quarantined ones included)."""
        with read_transaction(self.engine) as connection:
            return local.count_unpushed(connection)

    # --- rows the server refuses ------------------------------------------------------

    def pending_changes(self) -> list[PendingChange]:
        """Every row with local changes the server has not accepted, one per row."""
        with read_transaction(self.engine) as connection:
            changes = compress_local(local.unpushed(connection))
            held = {(table, key) for table, key, _code, _reason in local.quarantined(connection)}
        return [PendingChange(c.table, c.key, c.command, c.row_key in held) for c in changes]

    def quarantine(
        self, rows: Iterable[tuple[str, Any]], *, code: str | None = None, reason: str = ""
    ) -> int:
        """Hold these rows' local changes back from pushes, so the others go through.

        ``rows`` are ``(table, key)`` pairs, such as ``PushRejected.rows``. Nothing is
        lost: the rows and their logged changes stay; fix a row and ``release`` it to
        push it again. Returns how many rows were newly held.
        """
        with write_transaction(self.engine) as connection:
            return local.quarantine(connection, list(rows), code, reason or None)

    def quarantined(self) -> list[QuarantinedRow]:
        """The rows held back from pushes, oldest first."""
        with read_transaction(self.engine) as connection:
            return [QuarantinedRow(*row) for row in local.quarantined(connection)]

    def release(self, rows: Iterable[tuple[str, Any]] | None = None) -> int:
        """Push these quarantined rows again (every one with ``None``); how many were held."""
        with write_transaction(self.engine) as connection:
            return local.release(connection, None if rows is None else list(rows))

    # --- background sync ----------------------------------------------------------------

    def start(
        self,
        *,
        on_status: StatusListener | None = None,
        debounce: float = AgentSettings.debounce,
        pull_interval: float = AgentSettings.pull_interval,
        retry_max: float = AgentSettings.retry_max,
        reconnect_max: float = AgentSettings.reconnect_max,
    ) -> None:
        """Keep this node in sync in a background thread until ``stop()``.

        Pushes ``debounce`` seconds after local commits and at once when the broker
        comes back; pulls when the server announces a newer version and at least
        every ``pull_interval``; retries failures with backoff up to ``retry_max``
        (``reconnect_max`` while the broker is unreachable). ``on_status`` is called
        with a ``SyncStatus`` on every change, from the agent's thread. The other
        calls keep working meanwhile. See ``dbsync_mq.agent``.
        """
        settings = AgentSettings(
            debounce=debounce,
            pull_interval=pull_interval,
            retry_max=retry_max,
            reconnect_max=reconnect_max,
            retry_min=min(AgentSettings.retry_min, retry_max),
        )
        self._require_identity()
        with self._agent_lock:
            if self._agent is not None and self._agent.running:
                raise ConfigurationError("the background sync is already running")
            self._agent = Agent(self, settings, on_status)
            self._agent.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the background sync after the sync in hand (waits up to ``timeout``)."""
        with self._agent_lock:
            agent, self._agent = self._agent, None
        if agent is not None and not agent.stop(timeout):
            logger.warning("the background sync did not stop within %g s", timeout)

    @contextmanager
    def running(self, **options: Any) -> Iterator[SyncClient]:
        """``start(**options)`` for the block, ``stop()`` after it."""
        self.start(**options)
        try:
            yield self
        finally:
            self.stop()

    @property
    def status(self) -> SyncStatus:
        """The background sync's state, version, pending operations, last error and sync."""
        agent = self._agent
        if agent is not None and agent.running:
            return agent.status
        identity = self._load_identity()
        return SyncStatus("stopped", identity.version if identity else 0, self.pending_operations())

    def close(self) -> None:
        """Stop the background sync and close the broker connection (it reopens when used)."""
        self.stop()
        self._broker.close()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # --- push internals ---------------------------------------------------------------

    def _prepare_push(
        self, extra_data: Mapping[str, Any] | None
    ) -> tuple[local.InFlight, int] | local.InFlight | None:
        """The push of the unpushed changes, recorded as in flight, and how many changes
        it holds; ``None`` with nothing to push; the push found in flight, if any (to
        settle first). One read finds the node's identity, a push in flight and what to
        push: a push follows a local commit as closely as it can."""
        try:
            with read_transaction(self.engine) as connection, collector_paused():
                if self._identity is None:
                    self._identity = local.load_identity(connection)
                identity = self._require_identity()
                node = self._channel()
                left = local.load_inflight(connection)
                if left is not None:
                    return left
                operations = local.unpushed(connection)
                held = {
                    (table, key) for table, key, _code, _reason in local.quarantined(connection)
                }
                if held:
                    operations = [op for op in operations if op.row_key not in held]
                if not operations:
                    return None
                operation_ids = tuple(op.order for op in operations)
                compressed = compress_local(operations)
                del operations
                parts, count = self._pack(connection, compressed, *node.part_room(extra_data))
        except ConfigurationError:
            if self._identity is None:
                self._require_identity()  # names what is missing: install(), register()
            raise
        request_id, bodies = node.seal_push(identity.version, parts, extra_data)
        push = local.InFlight(request_id, identity.version, bodies, operation_ids)
        with write_transaction(self.engine) as connection:
            if local.load_inflight(connection) is not None:
                raise MergeError("another process is pushing from this database")
            local.save_inflight(connection, push)
        return push, count

    def _pack(
        self, connection: Connection, compressed: list[Change], room: int, hard_limit: int
    ) -> tuple[list[bytes], int]:
        """The changes with their rows, packed in parts that fit a message, and how many.

        Rows are read a batch at a time: memory holds the log and one batch of rows.
        """
        parts: list[bytes] = []
        count = 0
        for batch in batches(compressed, PREPARE_BATCH):
            changes = attach_rows(connection, self.models, batch)
            count += len(changes)
            try:
                parts.extend(encode_parts(changes, room, hard_limit))
            except ChangeTooLarge as exc:
                row = [(exc.change.table, exc.change.key)]
                raise PushRejected("row-too-large", str(exc), row) from None
        return parts or [encode_changes([])], count

    def _settle_inflight(self) -> PushResult | None:
        """Finish a push left in flight (by a crash or a timeout) before anything else."""
        with read_transaction(self.engine) as connection:
            push = local.load_inflight(connection)
        return None if push is None else self._settle_left(push)

    def _settle_left(self, push: local.InFlight) -> PushResult | None:
        logger.info("sending push %s again: it was left in flight", push.request_id)
        try:
            return self._settle(push, len(push.operation_ids))
        except PushRejected as exc:
            logger.info("push %s in flight was not applied: %s", push.request_id, exc)
            return None

    def _settle(self, push: local.InFlight, count: int) -> PushResult:
        """Send ``push`` (again), wait for its reply and record its outcome."""
        try:
            reply = self._channel().send_once(messages.PUSH, push.request_id, push.bodies)
        except PushRejected:
            with write_transaction(self.engine) as connection:
                local.delete_inflight(connection, push.request_id)
            raise
        accepted = reply.body["version"]
        # Applied right after the node's version: the node now has that version. Applied
        # on top of versions it has not pulled: it stays where it is until it pulls them.
        version = accepted if accepted == push.base_version + 1 else push.base_version
        with write_transaction(self.engine) as connection:
            local.delete_inflight(connection, push.request_id)
            local.remove_operations(connection, push.operation_ids)
            local.set_position(connection, version)
        self._identity = None
        return PushResult(version, count, accepted)

    # --- pull internals ---------------------------------------------------------------

    def _merge(self, identity: local.Identity, pulled: Pulled) -> PullResult:
        with write_transaction(self.engine) as connection, collector_paused():
            current = local.load_identity(connection)
            if current is None or current.version != identity.version:
                self._identity = None  # another process moved it: start from its version
                raise MergeError("the local database moved during the pull; pull again")
            merged = self._merge_in(connection, pulled)
        return self._merged(pulled.version, merged)

    def _merge_in(
        self,
        connection: Connection,
        pulled: Pulled,
        operations: Sequence[Operation] | None = None,
    ) -> Merged:
        """Merge ``pulled`` and move the node to its version, in the caller's transaction
        (``operations``: the unpushed log, when the caller has just read it)."""
        _drop_own_push(connection, pulled.own)
        try:
            merged = merge_pulled(
                connection,
                self.models,
                pulled,
                self.conflict_policy,
                lambda: self._log.hlc.tick(self._now_ms()),
                operations,
            )
        except UniqueConstraintError as exc:
            raise UniqueConstraintError(
                [(self.models.get(str(t)).cls, key, cols) for t, key, cols in exc.entries]
            ) from None
        self._log.hlc.observe(merged.max_hlc)
        local.set_position(connection, pulled.version, merged.max_hlc)
        return merged

    def _merged(self, version: int, merged: Merged) -> PullResult:
        """After a merge committed: log its conflicts, run the callbacks."""
        self._identity = None
        for conflict in merged.conflicts:
            logger.info(
                "conflict %s on %s %r: %s won",
                conflict.kind,
                conflict.table,
                conflict.key,
                conflict.winner,
            )
        failures = run_callbacks(self.models, merged.applied)
        return PullResult(version, merged.changes, merged.conflicts, failures)

    @contextmanager
    def _turn(self, *, reload_identity: bool = True) -> Iterator[None]:
        """This node's turn to talk to the server (see ``dbsync_mq.locking``).

        The identity is read again (another process may have moved the node since):
        here, or with ``reload_identity=False`` by the first read that needs it.
        """
        with self._lock.held(self.timeout) as outermost:
            if outermost:
                self._identity = None
                if reload_identity:
                    self._load_identity()  # and the sync tables must be there
            yield

    # --- identity -----------------------------------------------------------------------

    def _channel(self) -> NodeChannel:
        identity = self._require_identity()
        node = self._node_channel
        if node is None or not node.speaks_for(identity):
            node = NodeChannel(self._broker, identity, self._clock, self.max_message_bytes)
            self._node_channel = node
        return node

    def _load_identity(self) -> local.Identity | None:
        if self._identity is None:
            try:
                with read_transaction(self.engine) as connection:
                    self._identity = local.load_identity(connection)
            except ConfigurationError:
                if not sa.inspect(self.engine).has_table(schema.node.name):
                    raise ConfigurationError(
                        "this database has no sync tables: call SyncClient.install() first"
                    ) from None
                raise
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


def _drop_own_push(connection: Connection, own_request_ids: set[str]) -> None:
    """A pull that contains this node's in-flight push settles it as accepted."""
    if not own_request_ids:
        return
    push = local.load_inflight(connection)
    if push is not None and push.request_id in own_request_ids:
        local.remove_operations(connection, push.operation_ids)
        local.delete_inflight(connection, push.request_id)
