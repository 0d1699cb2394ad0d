"""Generated requests fed straight to ``Server.handle`` on a real SQLite server database.

For every generated message the server must return an ``Outcome`` (never raise),
never answer ``internal-error``, sign every reply it sends, and leave the
database untouched unless the outcome reports a committed version (a
generated push that happens to be valid is applied like any other: then the
head moves by exactly one). No broker is involved.

At least 10,000 bodies are generated per run (``FUZZ_EXAMPLES``); set
``DBSYNC_FUZZ_SCALE`` to run more (or fewer) locally. An atheris harness for
coverage-guided runs by hand is in ``tests/security/fuzz_atheris.py``.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import random
import shutil
import sqlite3
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dbsync_mq.core import codec, messages, signing
from dbsync_mq.core.changeset import decode_changes
from dbsync_mq.errors import CodecError, ProtocolError
from dbsync_mq.server import Server
from dbsync_mq.storage.models import ModelSet
from dbsync_mq.transport.base import Message
from dbsync_mq.transport.topology import DIRECT_REPLY_TO
from tests.conftest import MODELS
from tests.models import TRACKED
from tests.probe import ServerProbe
from tests.security import cases
from tests.security.conftest import SETTINGS, read_reply
from tests.security.forge import MISSING, Forge, envelope_message, now_ms
from tests.security.fuzz_atheris import MODES, Harness
from worker.process import create_server_engine

SCALE = float(os.environ.get("DBSYNC_FUZZ_SCALE", "1"))
FUZZ_EXAMPLES = {
    "raw": 1_500,
    "signed": 1_500,
    "request": 2_000,
    "push": 3_000,
    "pull": 1_000,
    "other": 500,
    "register": 1_000,
}
"""Examples per strategy: 10,500 in all at scale 1."""


def _examples(name: str) -> settings:
    return settings(
        max_examples=max(1, int(FUZZ_EXAMPLES[name] * SCALE)),
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


# --- the target -------------------------------------------------------------------------


@dataclass
class FuzzTarget:
    server: Server
    target: cases.Target
    probe: ServerProbe
    monitor: sqlite3.Connection
    baseline: Any = None
    handled: int = 0
    committed: int = 0
    codes: dict[str, int] = field(default_factory=dict)

    def data_version(self) -> int:
        return int(self.monitor.execute("PRAGMA data_version").fetchone()[0])

    @property
    def head(self) -> int:
        return int(self.baseline["sync_head"][0][1])


@pytest.fixture(scope="module")
def fuzz(template, tmp_path_factory, ledger) -> Iterator[FuzzTarget]:
    """One server database for every example of the module (each must leave it as it was)."""
    path, target = template
    copy = tmp_path_factory.mktemp("fuzz") / "server.db"
    shutil.copy(path, copy)
    url = f"sqlite:///{copy}"
    engine = create_server_engine(url)
    server = Server(engine, ModelSet.in_modules(MODELS), settings=SETTINGS)
    monitor = sqlite3.connect(copy, isolation_level=None, check_same_thread=False)
    fuzz = FuzzTarget(server, target, ServerProbe(url), monitor)
    fuzz.baseline = fuzz.probe.snapshot()
    yield fuzz
    ledger.bad_inputs("tests/security/test_fuzz.py", fuzz.handled)
    monitor.close()
    engine.dispose()


def serve(fuzz: FuzzTarget, message: Message) -> None:
    """Handle one generated message and check every property the module promises."""
    version = fuzz.data_version()
    outcome = fuzz.server.handle(message)
    outgoing = list(outcome.outgoing)  # pull chunks are generated lazily: run them
    fuzz.handled += 1
    fuzz.codes[outcome.code or outcome.disposition] = (
        fuzz.codes.get(outcome.code or outcome.disposition, 0) + 1
    )
    assert outcome.disposition in ("ack", "dead-letter")
    assert outcome.code != "internal-error", outcome.reason
    for item in outgoing:
        if not item.event:
            kind = message.kind if message.kind in messages.REQUEST_KINDS else messages.PING
            read_reply(item.message.body, fuzz.server.public_key, kind)
    if outcome.version is not None:
        assert outcome.version == fuzz.head + 1
        fuzz.committed += 1
        fuzz.baseline = fuzz.probe.snapshot()
        assert fuzz.head == outcome.version
    elif fuzz.data_version() != version:
        assert fuzz.probe.snapshot() == fuzz.baseline


# --- strategies ---------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(),
    st.text(max_size=12),
    st.binary(max_size=12),
    st.datetimes(timezones=st.none() | st.just(dt.timezone.utc)),
    st.dates(),
    st.times(),
    st.timedeltas(),
    st.decimals(),
    st.uuids(),
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=8,
)
kinds = st.sampled_from([*messages.REQUEST_KINDS, "bogus", "", "reply"])
headers = st.one_of(
    st.just(None),
    st.sampled_from(["1", "2", "3", "0", "999999", "²", "\u0661", "x", ""]),
    st.text(max_size=8),
    st.integers(),
    st.booleans(),
    st.binary(max_size=4),
)

MODELS_BY_TABLE = {model.__table__.name: model.__table__ for model in TRACKED}  # type: ignore[attr-defined]
ALL_COLUMNS = sorted({name for table in MODELS_BY_TABLE.values() for name in table.c.keys()})  # noqa: SIM118
junk_tables = st.sampled_from(["untracked", "sync_nodes", "x" * 129, "", "city; --"])
junk_columns = st.sampled_from([*ALL_COLUMNS, "", "x" * 129, "name; --"]) | st.text(max_size=6)
keys = st.one_of(
    st.integers(min_value=-3, max_value=5),
    st.integers(),
    st.uuids(),
    st.text(max_size=6),
    st.none(),
    st.floats(),
    st.lists(st.integers(min_value=0, max_value=3), max_size=3),
    st.booleans(),
    st.decimals(),
)
BY_TYPE = {
    int: st.integers(min_value=-5, max_value=50) | st.integers(),
    str: st.text(max_size=20),
    float: st.floats(),
    bool: st.booleans(),
    bytes: st.binary(max_size=20),
    dt.datetime: st.datetimes(timezones=st.none() | st.just(dt.timezone.utc)),
    dt.date: st.dates(),
    dt.time: st.times(),
    dt.timedelta: st.timedeltas(),
}


def _column_values(column: Any, *, key: bool = False) -> st.SearchStrategy[Any]:
    """Values a column holds (mostly), anything at all (sometimes)."""
    try:
        python_type = column.type.python_type
    except NotImplementedError:
        python_type = None
    if python_type in BY_TYPE:
        typed = BY_TYPE[python_type]
    elif python_type is uuid.UUID:
        typed = st.uuids()
    elif python_type is Decimal:
        typed = st.decimals()
    else:
        typed = values
    if key:
        return st.one_of(*[typed] * 9, values)
    return st.one_of(typed, typed, typed, st.none(), values)


@st.composite
def rows(draw: st.DrawFn, names: list[str], value_of: Any, key_of: Any) -> list[Any]:
    """``[command, key, hlc, clocks, values]`` rows, keys mostly matching their values."""
    found = []
    for _ in range(draw(st.integers(0, 4))):
        command = draw(st.sampled_from(["i", "i", "u", "d", "x"]))
        row = [draw(value_of(name)) for name in names]
        key = draw(key_of)
        if names and draw(st.integers(0, 9)) > 0:
            key = row[0]  # the key column comes first: a key that matches its row
        clocks = None
        if draw(st.integers(0, 4)) == 0:
            clocks = draw(st.dictionaries(st.integers(-1, 6), st.integers(), max_size=2))
        row_values = None if command == "d" and draw(st.booleans()) else row
        found.append([command, key, draw(st.integers(-1, 2**63)), clocks, row_values])
    return found


@st.composite
def sections(draw: st.DrawFn) -> list[Any]:
    """One table's section: a tracked table with its own columns, usually."""
    if draw(st.integers(0, 9)) == 0:
        names = draw(st.lists(junk_columns, max_size=4, unique=True))
        table_name = draw(junk_tables | st.text(max_size=8))
        return [table_name, names, draw(rows(names, lambda _name: values, keys))]
    table = MODELS_BY_TABLE[draw(st.sampled_from(sorted(MODELS_BY_TABLE)))]
    key_column = next(iter(table.primary_key.columns))
    others = [name for name in table.c.keys() if name != key_column.name]  # noqa: SIM118
    names = draw(st.permutations(others))[: draw(st.integers(0, len(others)))]
    if draw(st.integers(0, 9)) > 0:
        names = [key_column.name, *names]
    if draw(st.integers(0, 9)) == 0:
        names = [*names, draw(junk_columns)]
    if len(set(names)) != len(names):
        names = list(dict.fromkeys(names))

    def value_of(name: str) -> st.SearchStrategy[Any]:
        if name not in table.c:
            return values
        return _column_values(table.c[name], key=name == key_column.name)

    key_of = _column_values(key_column, key=True) | keys
    return [table.name, names, draw(rows(names, value_of, key_of))]


@st.composite
def changesets(draw: st.DrawFn) -> bytes:
    """Bytes shaped like a changeset: valid often, subtly wrong often, garbage sometimes."""
    if draw(st.integers(0, 19)) == 0:
        return draw(st.binary(max_size=64))
    try:
        return codec.encode(draw(st.lists(sections(), max_size=3)))
    except CodecError:  # e.g. a list as a map key: not a changeset any encoder makes
        return b"\x90"


def _sealed(fuzz: FuzzTarget, fields: Any, kind: str, forge: Forge | None = None) -> Message:
    forge = forge or fuzz.target.a
    request_id = fields.get("rid") if isinstance(fields, dict) else None
    return envelope_message(
        forge.seal(codec.encode(fields)),
        kind,
        header=forge.node_id,
        request_id=request_id if isinstance(request_id, str) else None,
    )


# --- the fuzz tests -----------------------------------------------------------------------


@given(body=st.binary(max_size=400), kind=kinds, header=headers)
@_examples("raw")
def test_raw_bytes_of_any_kind_and_header_never_break_the_server(fuzz, body, kind, header):
    serve(fuzz, envelope_message(body, kind, header=MISSING if header is None else header))


@given(value=values, kind=kinds, garbage_signature=st.booleans())
@_examples("signed")
def test_any_validly_signed_value_never_breaks_the_server(fuzz, value, kind, garbage_signature):
    signed = codec.encode(value)
    forge = fuzz.target.a
    body = forge.seal(signed)
    if garbage_signature:
        body = signing.seal(signed, signing.private_key_from_seed(os.urandom(32)))
    serve(fuzz, envelope_message(body, kind, header=forge.node_id))


@given(
    kind=st.sampled_from(messages.REQUEST_KINDS),
    replaced=st.dictionaries(
        st.sampled_from(["kind", "proto", "node", "rid", "ts", "extra", "body", "evil"]),
        values,
        max_size=3,
    ),
    removed=st.sets(st.sampled_from(["kind", "proto", "node", "rid", "ts", "extra", "body"])),
)
@_examples("request")
def test_request_maps_with_any_field_replaced_or_removed_never_break_the_server(
    fuzz, kind, replaced, removed
):
    fields = fuzz.target.a.fields(kind, {}, **replaced)
    for name in removed:
        fields.pop(name, None)
    serve(fuzz, _sealed(fuzz, fields, kind))


@given(
    base=st.sampled_from(["head", "head", "head", 0, -1, 2**64]),
    changes=changesets(),
    node=st.sampled_from("aaaabc"),
    skew_days=st.sampled_from([0] * 9 + [8, -8]),
)
@_examples("push")
def test_generated_pushes_never_break_the_server_nor_change_it_unless_applied(
    fuzz, base, changes, node, skew_days
):
    forge = getattr(fuzz.target, node)
    fields = forge.fields(
        "push",
        {"base": fuzz.head if base == "head" else base, "changes": changes},
        ts=now_ms() + skew_days * cases.DAY_MS,
    )
    serve(fuzz, _sealed(fuzz, fields, "push", forge))


@given(since=st.sampled_from([0, 1, 2, -1, 2**70]) | st.integers(), deleted=changesets())
@_examples("pull")
def test_generated_pulls_never_break_the_server(fuzz, since, deleted):
    fields = fuzz.target.a.fields("pull", {"since": since, "deleted": deleted})
    serve(fuzz, _sealed(fuzz, fields, "pull"))


@given(
    kind=st.sampled_from(["ping", "query", "repair"]),
    body=st.dictionaries(
        st.sampled_from(["version", "table", "filters", "limit", "offset"]), values, max_size=4
    ),
)
@_examples("other")
def test_generated_pings_queries_and_repairs_never_break_the_server(fuzz, kind, body):
    serve(fuzz, _sealed(fuzz, fuzz.target.a.fields(kind, body), kind))


@given(
    token=st.sampled_from(["used", "expired", "fresh-looking"]) | st.text(max_size=50),
    key=st.sampled_from(["own", "other", "short"]) | st.binary(min_size=32, max_size=32),
    reply_to=st.sampled_from([DIRECT_REPLY_TO + ".x", None, DIRECT_REPLY_TO, "dbsync.push"]),
    extra=st.none() | st.dictionaries(st.text(max_size=4), values, max_size=2),
)
@_examples("register")
def test_generated_registrations_never_break_the_server_nor_create_a_node(
    fuzz, token, key, reply_to, extra
):
    forge = Forge.stranger()
    public_key = {"own": forge.public_key, "other": Forge.stranger().public_key, "short": b"k"}
    fields = forge.fields(
        "register",
        {
            "token": fuzz.target.tokens.get(token, token),
            "public_key": public_key.get(key, key) if isinstance(key, str) else key,
        },
        extra=extra,
    )
    message = envelope_message(
        forge.seal(codec.encode(fields)), "register", request_id=fields["rid"], reply_to=reply_to
    )
    serve(fuzz, message)


# --- the decoders on their own --------------------------------------------------------------


@given(data=st.binary(max_size=300))
@settings(max_examples=int(2_000 * SCALE), deadline=None)
def test_the_decoders_raise_only_their_own_errors_on_any_bytes(data):
    for decode in (
        codec.decode,
        decode_changes,
        messages.decode_request,
        lambda d: messages.decode_reply(d, "pull"),
        lambda d: signing.open_envelope(d, 1 << 20),
    ):
        with contextlib.suppress(ProtocolError, CodecError):
            decode(data)


def test_the_generated_requests_reached_past_the_envelope_to_every_kind_of_answer(fuzz):
    # Runs last in the module: the generators above must reach the handlers, not only
    # the envelope checks, or the fuzzing proves little.
    if fuzz.handled < 1_000:
        pytest.fail("run with the rest of the module, in one process: the fuzzers never ran")
    reached = {"dead-letter", "ack", "malformed", "pull-required", "stale-request", "type-mismatch"}
    assert reached <= set(fuzz.codes), fuzz.codes
    assert fuzz.committed > 0, "no generated push was ever valid: the generators are too weak"


def test_the_atheris_harness_runs_on_random_inputs_without_atheris(tmp_path, ledger, request):
    # The harness is run by hand with atheris; here it must at least run, so it never rots.
    harness = Harness(tmp_path)
    generator = random.Random(20240229)
    inputs = [bytes([mode]) for mode in range(len(MODES))]
    inputs += [generator.randbytes(generator.randrange(1, 200)) for _ in range(300)]
    for data in inputs:
        harness.one_input(data)
    ledger.bad_inputs(request.node.name, len(inputs))
