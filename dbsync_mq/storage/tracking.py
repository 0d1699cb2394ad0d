"""Change capture: writes to tracked models, recorded in the writer's own transaction.

Capture is attached to an engine (``attach``): a client attaches its operation
log, the server application its version writer. Unit-of-work writes are seen
through mapper events and written in one batch per flush on the flush's own
connection; ORM-enabled ``insert``/``update``/``delete`` statements are seen
through ``do_orm_execute`` and logged from ``RETURNING`` (or, for bulk updates
by primary key, from their parameters). A rollback discards the log entries
with the rows. Writes that bypass the ORM (raw SQL, database-side cascades)
are not seen: ``repair`` recovers from them. Datetimes written to tracked models
are put in UTC on the way, whether the write is logged or not (``timestamps``).
"""

from __future__ import annotations

import weakref
from collections import defaultdict
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Final, Protocol, TypeVar, overload

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine, Result
from sqlalchemy.engine.result import IteratorResult, SimpleResultMetaData
from sqlalchemy.orm import Mapper, ORMExecuteState, Session, object_session

from dbsync_mq.core.model import DELETE, INSERT, UPDATE, Command, Key, Write
from dbsync_mq.errors import TrackingError
from dbsync_mq.storage import schema, timestamps
from dbsync_mq.storage.local import OperationLog
from dbsync_mq.storage.models import Direction, ModelSet, TrackedModel, register

T = TypeVar("T", bound=type)

BULK_SLICE_ROWS: Final = 1000
"""Rows of a tracked many-rows statement executed at a time (see ``_in_slices``)."""

_BUFFER: Final = "dbsync_mq.captured"
_TOUCHED: Final = "dbsync_mq.touched"
_PAUSED: Final = "dbsync_mq.paused"
_COMMITTING: Final = "dbsync_mq.committing"


class Capture(Protocol):
    """Where the writes made through one engine are recorded."""

    models: ModelSet

    def wants(self, model: TrackedModel) -> bool:
        """Whether writes to ``model`` are recorded."""

    def record(self, connection: Connection, writes: Sequence[Write]) -> None:
        """Record ``writes`` on ``connection``, inside the writer's transaction."""

    def before_writes(self, connection: Connection) -> None:
        """Called before the writes of a flush or statement reach ``connection``."""

    def before_commit(self, connection: Connection) -> None:
        """Called when a session that wrote through ``connection`` commits."""

    def after_commit(self) -> None:
        """Called once a session that wrote through the capture has committed."""


_captures: weakref.WeakKeyDictionary[Engine, Capture | None] = weakref.WeakKeyDictionary()


@overload
def track(cls: T, /) -> T: ...
@overload
def track(*, direction: Direction = "both") -> Callable[[T], T]: ...
def track(cls: T | None = None, /, *, direction: Direction = "both") -> T | Callable[[T], T]:
    """Mark a mapped class as synchronized; use the same decorator on client and server.

    ``direction`` is ``"both"`` (the default), ``"pull"`` for reference data
    written on the server only, or ``"push"`` for data clients send but never
    receive (telemetry)::

        @dbsync_mq.track
        class City(Base): ...

        @dbsync_mq.track(direction="pull")
        class Country(Base): ...

    From then on, writes to the model through any engine whose database holds
    the client sync tables (``SyncClient.install``) are logged.
    """

    def mark(model: T) -> T:
        register(model, direction)
        _install_session_listeners()
        _install_mapper_listeners(model)
        return model

    return mark if cls is None else mark(cls)


def attach(engine: Engine, capture: Capture) -> None:
    """Record writes to ``capture.models`` made through ``engine`` with ``capture``."""
    _install_session_listeners()
    for model in capture.models:
        _install_mapper_listeners(model.cls)
    _captures[engine] = capture


def capture_of(connection: Connection) -> Capture | None:
    """The capture of ``connection``'s engine.

    An engine nobody attached a capture to gets the client operation log if its
    database holds the client sync tables, so that no process writing to an
    installed database goes unlogged, SyncClient or not.
    """
    engine = connection.engine
    try:
        return _captures[engine]
    except KeyError:
        pass
    capture: Capture | None = None
    if sa.inspect(connection).has_table(schema.node.name):
        capture = OperationLog(ModelSet.of())
    _captures[engine] = capture
    return capture


def detach(engine: Engine) -> None:
    """Stop recording writes made through ``engine``."""
    _captures.pop(engine, None)


@contextmanager
def untracked(session: Session) -> Iterator[Session]:
    """Writes made by ``session`` inside this block are not recorded or synchronized.

    For local maintenance that must stay local: the rows change, no operation is
    logged, and nothing is pushed.
    """
    previous = session.info.get(_PAUSED, False)
    session.info[_PAUSED] = True
    try:
        yield session
    finally:
        session.info[_PAUSED] = previous


def _captured(mapper: Mapper[Any], connection: Connection) -> tuple[TrackedModel, Capture] | None:
    """The model ``mapper`` writes and the capture of ``connection``, if it has that model."""
    capture = capture_of(connection)
    if capture is None:
        return None
    table = mapper.local_table
    model = capture.models.by_table.get(table.name) if isinstance(table, sa.Table) else None
    return None if model is None else (model, capture)


def _tracked(mapper: Mapper[Any], connection: Connection) -> tuple[TrackedModel, Capture] | None:
    """As ``_captured``, if the capture records writes to that model."""
    found = _captured(mapper, connection)
    return found if found is not None and found[1].wants(found[0]) else None


# --- unit of work -------------------------------------------------------------


def _buffer(target: Any, connection: Connection, write: Write) -> None:
    session = object_session(target)
    if session is None or session.info.get(_PAUSED):
        return
    session.info.setdefault(_BUFFER, defaultdict(list))[connection].append(write)


def _row_key(model: TrackedModel, target: Any) -> Key:
    state = sa.inspect(target)
    values = {
        name: state.attrs[attr].value
        for name, attr in model.attributes.items()
        if name in model.key_columns
    }
    return model.key_of(values)


def _after_insert(mapper: Mapper[Any], connection: Connection, target: Any) -> None:
    if tracked := _tracked(mapper, connection):
        model = tracked[0]
        _buffer(target, connection, Write(model.name, _row_key(model, target), INSERT))


def _after_delete(mapper: Mapper[Any], connection: Connection, target: Any) -> None:
    if tracked := _tracked(mapper, connection):
        model = tracked[0]
        _buffer(target, connection, Write(model.name, _previous_key(model, target), DELETE))


def _previous_key(model: TrackedModel, target: Any) -> Key:
    """The key the row had in the database before this flush."""
    state = sa.inspect(target)
    values = {}
    for name in model.key_columns:
        history = state.attrs[model.attributes[name]].history
        values[name] = (
            history.deleted[0] if history.deleted else state.attrs[model.attributes[name]].value
        )
    return model.key_of(values)


def _after_update(mapper: Mapper[Any], connection: Connection, target: Any) -> None:
    tracked = _tracked(mapper, connection)
    if tracked is None:
        return
    model = tracked[0]
    state = sa.inspect(target)
    changed = frozenset(
        name for name, attr in model.attributes.items() if state.attrs[attr].history.has_changes()
    )
    if not changed:
        return
    old_key, new_key = _previous_key(model, target), _row_key(model, target)
    if old_key != new_key:
        # A changed primary key is a new row as far as every other node is concerned.
        _buffer(target, connection, Write(model.name, old_key, DELETE))
        _buffer(target, connection, Write(model.name, new_key, INSERT))
        return
    _buffer(target, connection, Write(model.name, new_key, UPDATE, changed))


def _before_flush(session: Session, _flush_context: Any, _instances: Any) -> None:
    written: defaultdict[Mapper[Any], list[Any]] = defaultdict(list)
    for target in (*session.new, *session.dirty):
        written[sa.inspect(target).mapper].append(target)
    deleted = {sa.inspect(target).mapper for target in session.deleted}
    for mapper in written.keys() | deleted:
        found = _captured(mapper, connection := _connection(session, mapper))
        if found is None:
            continue
        model, capture = found
        # Untracked writes too: the rows are read, and pushed, by later changes.
        timestamps.objects_in_utc(model, written.get(mapper, ()))
        if capture.wants(model) and not session.info.get(_PAUSED):
            capture.before_writes(connection)


def _connection(session: Session, mapper: Mapper[Any]) -> Connection:
    return session.connection(bind_arguments={"mapper": mapper})


def _after_flush(session: Session, _flush_context: Any) -> None:
    buffered = session.info.pop(_BUFFER, None)
    for connection, writes in (buffered or {}).items():
        capture = capture_of(connection)
        if capture is not None:
            capture.record(connection, writes)
            _touch(session, connection)


def _touch(session: Session, connection: Connection) -> None:
    session.info.setdefault(_TOUCHED, set()).add(connection)


def _before_commit(session: Session) -> None:
    if not session.info.get(_TOUCHED) and not (session.new or session.dirty or session.deleted):
        return
    session.flush()  # the last writes are captured before the captures finish
    for connection in session.info.pop(_TOUCHED, ()):
        capture = capture_of(connection)
        if capture is not None:
            capture.before_commit(connection)
            session.info.setdefault(_COMMITTING, []).append(capture)


def _after_commit(session: Session) -> None:
    for capture in session.info.pop(_COMMITTING, ()):
        capture.after_commit()


def _discard_buffer(session: Session, *_args: Any) -> None:
    session.info.pop(_BUFFER, None)
    if not session.in_transaction():
        session.info.pop(_TOUCHED, None)
        session.info.pop(_COMMITTING, None)


# --- ORM-enabled statements ---------------------------------------------------


def _statement_target(state: ORMExecuteState) -> tuple[TrackedModel, Capture, Connection] | None:
    if not (state.is_insert or state.is_update or state.is_delete):
        return None
    mapper = state.bind_mapper
    if mapper is None:
        return None
    found = _captured(mapper, connection := _connection(state.session, mapper))
    if found is None:
        return None
    model, capture = found
    if not state.is_delete:
        timestamps.statement_in_utc(state, model)
    if state.session.info.get(_PAUSED) or not capture.wants(model):
        return None
    capture.before_writes(connection)
    _touch(state.session, connection)
    return model, capture, connection


def _on_orm_execute(state: ORMExecuteState) -> Result[Any] | None:
    target = _statement_target(state)
    if target is None:
        return None
    model, capture, connection = target
    if state.is_update and isinstance(state.parameters, list):
        return _bulk_update_by_key(state, model, capture, connection)
    command: Command = INSERT if state.is_insert else UPDATE if state.is_update else DELETE
    if getattr(state.statement, "_post_values_clause", None) is not None:
        raise TrackingError(
            f"{model.name}: upserts (ON CONFLICT) on tracked models are not "
            "captured; write the rows through the session instead"
        )
    _require_returning(connection, model, command)
    return _execute_returning_keys(state, model, capture, connection, command)


def _require_returning(connection: Connection, model: TrackedModel, command: Command) -> None:
    dialect = connection.dialect
    supported = {
        INSERT: dialect.insert_returning,
        UPDATE: dialect.update_returning,
        DELETE: dialect.delete_returning,
    }[command]
    if not supported:
        raise TrackingError(
            f"{model.name}: bulk statements on tracked models need RETURNING, which "
            f"{dialect.name} lacks; write the rows through the session instead"
        )


def _execute_returning_keys(
    state: ORMExecuteState,
    model: TrackedModel,
    capture: Capture,
    connection: Connection,
    command: Command,
) -> Result[Any]:
    statement: Any = state.statement
    own_columns = len(statement._returning)
    keys = [model.table.c[name] for name in model.key_columns]
    if command == INSERT and not statement._multi_values:
        # Rows come back in the caller's order (multi-row VALUES cannot promise it).
        statement = statement.returning(*keys, sort_by_parameter_order=True)
    else:
        statement = statement.returning(*keys)
    rows: Sequence[Any]
    if not own_columns and isinstance(state.parameters, list):
        rows = _in_slices(state, statement, state.parameters)
    else:
        frozen = state.invoke_statement(statement=statement).freeze()
        rows = frozen().all()
    columns = _changed_columns(state, model) if command == UPDATE else frozenset()
    writes = [Write(model.name, _key_from_tail(row, len(keys)), command, columns) for row in rows]
    capture.record(connection, writes)
    if own_columns:
        return frozen().columns(*range(own_columns))
    return _counted_result(len(rows))


def _in_slices(
    state: ORMExecuteState, statement: Any, parameters: list[dict[str, Any]]
) -> list[Any]:
    """Execute a many-rows statement ``BULK_SLICE_ROWS`` rows at a time, in order.

    SQLAlchemy runs a many-rows statement with RETURNING as batches and joins each
    batch's rows to all the rows before it: a time quadratic in the rows (200,000
    rows took minutes). Slices keep that cost to a slice.
    """
    rows: list[Any] = []
    try:
        for start in range(0, len(parameters), BULK_SLICE_ROWS):
            state.parameters = parameters[start : start + BULK_SLICE_ROWS]
            rows.extend(state.invoke_statement(statement=statement).all())
    finally:
        state.parameters = parameters
    return rows


def _key_from_tail(row: Sequence[Any], width: int) -> Key:
    return row[-1] if width == 1 else tuple(row[-width:])


def _changed_columns(state: ORMExecuteState, model: TrackedModel) -> frozenset[str]:
    names: set[str] = set()
    values = getattr(state.statement, "_values", None) or {}
    for column in values:
        names.add(getattr(column, "name", None) or str(column))
    if isinstance(state.parameters, dict):
        names.update(_column_names(model, state.parameters))
    known = names & set(model.columns)
    return frozenset(known) if known else frozenset(model.columns) - set(model.key_columns)


def _column_names(model: TrackedModel, parameters: dict[str, Any]) -> set[str]:
    return {_column_name(model, key) for key in parameters}


def _column_name(model: TrackedModel, attribute: str) -> str:
    """The column behind a mapped attribute key (they differ when a column is renamed)."""
    for name, attr in model.attributes.items():
        if attr == attribute:
            return name
    return attribute


def _bulk_update_by_key(
    state: ORMExecuteState, model: TrackedModel, capture: Capture, connection: Connection
) -> Result[Any]:
    parameters: list[dict[str, Any]] = state.parameters  # type: ignore[assignment]
    result = state.invoke_statement()
    writes = []
    for params in parameters:
        row = {_column_name(model, key): value for key, value in params.items()}
        columns = frozenset(row) - set(model.key_columns)
        writes.append(Write(model.name, model.key_of(row), UPDATE, columns))
    capture.record(connection, writes)
    return result


def _counted_result(count: int) -> Result[Any]:
    """An empty result that still answers ``rowcount``, as the caller's statement would."""
    result: Any = IteratorResult(SimpleResultMetaData([]), iter([]))
    result.rowcount = count
    return result  # type: ignore[no-any-return]


# --- listener installation ----------------------------------------------------


def _install_session_listeners() -> None:
    if event.contains(Session, "after_flush", _after_flush):
        return
    event.listen(Session, "before_flush", _before_flush)
    event.listen(Session, "after_flush", _after_flush)
    event.listen(Session, "before_commit", _before_commit)
    event.listen(Session, "after_commit", _after_commit)
    event.listen(Session, "after_soft_rollback", _discard_buffer)
    event.listen(Session, "do_orm_execute", _on_orm_execute)


def _install_mapper_listeners(cls: type) -> None:
    if event.contains(cls, "after_insert", _after_insert):
        return
    event.listen(cls, "after_insert", _after_insert, propagate=True)
    event.listen(cls, "after_update", _after_update, propagate=True)
    event.listen(cls, "after_delete", _after_delete, propagate=True)
