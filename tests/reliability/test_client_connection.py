"""A node's connection: idle for long, stalled, silent, shared by threads and processes.

Every public call returns, or raises a ``SyncError``, within its timeout plus
``MARGIN_SECONDS`` (the documented margin), whatever the broker does.
"""

from __future__ import annotations

import contextlib
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from dbsync_mq import (
    BrokerUnavailable,
    ConfigurationError,
    SyncClient,
    SyncError,
    SyncTimeout,
    commands,
)
from dbsync_mq.storage import schema
from dbsync_mq.transport.rabbitmq import HEARTBEAT_SECONDS
from tests.conftest import write
from tests.models import City
from tests.reliability.conftest import (
    AtStage,
    assert_converged,
    assert_exactly_once,
    converge,
)

pytestmark = pytest.mark.broker

ROOT = Path(__file__).resolve().parents[2]

MARGIN_SECONDS = 1.0
"""What a call may take beyond its timeout when the broker stops answering (docs/usage.md)."""

SHORT_TIMEOUT = 2.0


def _elapsed(call: Callable[[], object]) -> tuple[float, BaseException | None]:
    started = time.monotonic()
    try:
        call()
    except BaseException as exc:
        return time.monotonic() - started, exc
    return time.monotonic() - started, None


@pytest.fixture
def silent_broker() -> Iterator[str]:
    """An address that accepts TCP connections and never says a word."""
    listener = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                held.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"amqp://guest:guest@127.0.0.1:{listener.getsockname()[1]}/%2F"
    stop.set()
    thread.join(5)
    for sock in [*held, listener]:
        sock.close()


# --- idle ---------------------------------------------------------------------------------


def test_a_client_idle_for_three_heartbeats_syncs_on_the_first_try(make_node, worker, probe):
    # Given a node whose connection heartbeats every 2 s (a third of its timeout)
    a = make_node("a", timeout=6)
    a.sync()
    heartbeat = max(2, min(HEARTBEAT_SECONDS, int(a.timeout / 3)))

    # When it stays idle for three heartbeats (the idle time is the scenario itself)
    threading.Event().wait(3 * heartbeat + 1)
    write(a.engine, City(name="after-idle"))

    # Then its next sync works the first time
    assert a.sync().pushed == 1
    assert probe.column(City, "name") == ["after-idle"]


# --- a broker that stops answering ----------------------------------------------------------


def test_a_sync_over_a_silently_dropped_network_fails_within_its_timeout(
    make_node, worker, proxy, broker_url, probe, ledger, request, accepted
):
    # Given a node connected through a proxy
    a = make_node("a", broker_url=proxy.url(broker_url), timeout=SHORT_TIMEOUT)
    a.sync()
    write(a.engine, City(name="silent-drop"))

    # When the network stops carrying anything, without closing a connection
    proxy.stall()
    ledger.fault(request.node.name)
    elapsed, error = _elapsed(a.sync)

    # Then the sync gives up within its timeout with an error to retry later
    assert isinstance(error, (BrokerUnavailable, SyncTimeout)), error
    assert elapsed < SHORT_TIMEOUT + MARGIN_SECONDS

    # And so does the next one, on a connection that cannot even open
    elapsed, error = _elapsed(a.ping)
    assert isinstance(error, (BrokerUnavailable, SyncTimeout)), error
    assert elapsed < SHORT_TIMEOUT + MARGIN_SECONDS

    # And once the network is back the write is applied exactly once
    proxy.restore()
    a.timeout = 10
    converge([a])
    assert_converged(probe, [a])
    assert_exactly_once(probe, ledger, request.node.name, ["silent-drop"], accepted)


def test_a_call_to_a_broker_that_never_answers_fails_within_its_timeout(
    make_node, worker, silent_broker, namespace
):
    # Given a registered node pointed at an address that accepts TCP and never speaks
    registered = make_node("a")
    node = SyncClient(
        registered.engine, broker_url=silent_broker, namespace=namespace, timeout=SHORT_TIMEOUT
    )
    write(node.engine, City(name="never-sent"))

    try:
        for call in (node.sync, node.ping, node.pull):
            # When it calls
            elapsed, error = _elapsed(call)

            # Then it fails in time with the broker named, and never with pika's errors
            assert isinstance(error, BrokerUnavailable), error
            assert "127.0.0.1" in str(error)
            assert elapsed < SHORT_TIMEOUT + MARGIN_SECONDS
    finally:
        node.close()


def test_a_push_whose_confirm_never_comes_fails_within_its_timeout_and_is_applied_once(
    make_node, worker, proxy, broker_url, probe, ledger, request, accepted
):
    # Given a node whose push reaches the broker, after which the network goes silent
    a = make_node("a", broker_url=proxy.url(broker_url), timeout=SHORT_TIMEOUT)
    a.ping()
    gate = AtStage("before-transaction", action=proxy.stall, hold=False)
    worker.add_stage_hook(gate)
    write(a.engine, City(name="unconfirmed"))

    # When it pushes
    elapsed, error = _elapsed(a.push)
    ledger.fault(request.node.name)

    # Then the push fails in time and stays in flight
    assert gate.reached.is_set()
    assert isinstance(error, (BrokerUnavailable, SyncTimeout)), error
    assert elapsed < SHORT_TIMEOUT + MARGIN_SECONDS

    # And it is applied once when the network is back
    proxy.restore()
    a.timeout = 10
    converge([a])
    assert_converged(probe, [a])
    assert_exactly_once(probe, ledger, request.node.name, ["unconfirmed"], accepted)


# --- clear errors ----------------------------------------------------------------------------


def test_an_unreachable_broker_is_named_by_host_and_port_and_never_shows_the_password(
    make_node, worker
):
    node = make_node("a", broker_url="amqp://guest:s3cret@127.0.0.1:1/%2F", register=False)

    with pytest.raises(BrokerUnavailable) as raised:
        node.register("token")

    assert "127.0.0.1:1" in str(raised.value)
    assert "s3cret" not in str(raised.value)


@pytest.mark.parametrize(
    ("url", "named"),
    [
        ("amqp://guest:wrong-password@127.0.0.1:5672/%2F", "guest"),
        ("amqp://guest:guest@127.0.0.1:5672/no-such-vhost", "no-such-vhost"),
    ],
)
def test_refused_credentials_or_virtual_host_are_configuration_errors(make_node, url, named):
    node = make_node("a", broker_url=url, register=False)

    with pytest.raises(ConfigurationError) as raised:
        node.register("token")

    assert not raised.value.retryable
    assert named in str(raised.value)
    assert "wrong-password" not in str(raised.value)


@pytest.mark.parametrize("url", ["http://127.0.0.1:15672/", "localhost:5672", "redis://x"])
def test_a_broker_url_that_is_not_amqp_is_refused_at_once(make_node, url):
    with pytest.raises(ConfigurationError, match="amqp://"):
        make_node("a", broker_url=url, register=False)


def test_calling_sync_before_install_says_to_call_install(tmp_path, broker_url):
    import sqlalchemy as sa

    engine = sa.create_engine(f"sqlite:///{tmp_path / 'fresh.db'}")
    client = SyncClient(engine, broker_url=broker_url)
    try:
        with pytest.raises(ConfigurationError, match=r"call SyncClient\.install\(\) first"):
            client.sync()
    finally:
        client.close()
        engine.dispose()


def test_a_sync_after_a_failed_call_reports_the_push_it_settled(make_node, worker):
    # Given a push whose reply came too late for the call that sent it
    gate = AtStage("before-transaction", hold=True)
    worker.add_stage_hook(gate)
    a = make_node("a")
    write(a.engine, City(name="late"), City(name="later"))
    a.timeout = 0.5
    with pytest.raises(SyncTimeout):
        a.push()
    gate.release.set()

    # When the application syncs again
    a.timeout = 10
    result = a.sync()

    # Then the result counts the operations the server accepted for it
    assert result.pushed == 2
    assert a.pending_operations() == 0


# --- registration -----------------------------------------------------------------------------


DIRECT_REPLY = b"amq.rabbitmq.reply-to."
"""Routing key of a delivery to a direct reply-to consumer: the registration's answer."""


def test_a_registration_whose_answer_was_lost_succeeds_when_retried_with_the_same_token(
    make_node, worker, proxy, broker_url, server_url, probe, node_ids, ledger, request
):
    # Given a registration the server commits, whose answer never reaches the node
    node = make_node("a", broker_url=proxy.url(broker_url), register=False, timeout=3)
    token = commands.enroll(server_url)
    proxy.cut_on_downstream(DIRECT_REPLY)
    with pytest.raises(SyncError):
        node.register(token)
    assert proxy.triggered.is_set()
    ledger.fault(request.node.name)
    assert probe.count(schema.nodes) == 1

    # When it registers again with the same token
    proxy.restore()
    node_id = node.register(token)
    node_ids.append(node_id)

    # Then it is the node the server made the first time, and the only one
    assert probe.count(schema.nodes) == 1
    assert node.node_id == node_id
    write(node.engine, City(name="registered-once"))
    node.sync()
    assert probe.column(City, "name") == ["registered-once"]


# --- several callers of one node ----------------------------------------------------------------


def test_threads_sharing_one_client_all_get_their_replies(make_node, worker, probe):
    # Given one client used by four threads at once
    a = make_node("a")
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            for round_ in range(5):
                write(a.engine, City(name=f"t{index}-{round_}"))
                a.sync()
                a.ping()
                a.query(City, name=f"t{index}-{round_}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]

    # When they all sync, ping and query
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    # Then every call completed and every write reached the server once
    assert errors == []
    assert not any(thread.is_alive() for thread in threads)
    assert sorted(probe.column(City, "name")) == sorted(
        f"t{i}-{r}" for i in range(4) for r in range(5)
    )


def _sync_loop(node: SyncClient, broker_url: str, prefix: str, count: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.reliability.node_process",
            str(node.engine.url.database),
            broker_url,
            node.topology.namespace,
            f"sync-loop:{prefix}:{count}",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_processes_syncing_one_node_database_both_complete(
    make_node, worker, broker_url, probe, ledger, request
):
    # Given a node database, closed by the test
    a = make_node("a")
    a.close()

    # When two processes write and sync it at the same time, many times
    processes = [_sync_loop(a, broker_url, prefix, 8) for prefix in ("p", "q")]
    outputs = [process.communicate(timeout=120) for process in processes]

    # Then both complete, and each write reached the server exactly once
    for process, (out, err) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, err
        assert json.loads(out.splitlines()[-1])["pushed"] >= 1
    names = [f"{prefix}-{i}" for prefix in ("p", "q") for i in range(8)]
    converge([a])
    assert_converged(probe, [a])
    assert sorted(probe.column(City, "name")) == sorted(names)
