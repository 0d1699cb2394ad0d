"""What an operator runs on a bad day, against the real broker, its management API and the
server database: ``status --json``, ``dead-letters``, the metrics and health endpoint."""

from __future__ import annotations

import base64
import dataclasses
import json

import pytest
import sqlalchemy as sa

from dbsync_mq import commands
from dbsync_mq.core import signing
from dbsync_mq.core.model import INSERT, Change
from dbsync_mq.storage import schema
from dbsync_mq.transport.topology import Topology
from tests.conftest import write
from tests.e2e.operations import city, cli, cli_json, forge_of, free_port, http_get, scrape
from tests.models import City, Tag
from tests.proxy import TcpProxy
from tests.reliability.conftest import wait_until
from tests.security.conftest import Wire, read_reply
from tests.security.forge import envelope_message

pytestmark = [pytest.mark.broker, pytest.mark.e2e]

UNDECODABLE = b"\x93not a request"


@pytest.fixture
def wire(broker_url, namespace):
    raw = Wire(broker_url, namespace, b"")
    yield raw
    raw.close()


def management_depths(server_url, broker_url, namespace):
    """Ready messages per queue as the management API reports them now."""
    report = commands.status(server_url, broker_url, namespace)
    assert report.source == "management", report.notes
    return {queue.name: queue.ready for queue in report.queues}


def test_status_reports_queued_pushes_and_the_dead_letter_which_can_be_listed_requeued_and_purged(
    make_node, worker_runner, server_url, broker_url, namespace, wire, probe
):
    topology = Topology(namespace)
    push_queue, dead_queue = topology.request_queue("push"), topology.dead_letter_queue
    args = ("--broker", broker_url, "--namespace", namespace)
    # Given a worker that dead-lettered one undecodable message, then stopped
    worker_runner.start()
    node = make_node("a")
    garbage = envelope_message(UNDECODABLE, "push", header=node.node_id)
    wire.publish(garbage)
    wait_until(lambda: wire.depth(dead_queue) == 1, 20, "the dead letter")
    worker_runner.stop()
    # and three pushes published while no worker runs
    forge = forge_of(node)
    for number in range(3):
        wire.publish(forge.push([city(100 + number, f"queued {number}")], base=0))
    wait_until(
        lambda: management_depths(server_url, broker_url, namespace)[push_queue] == 3,
        30,
        "the management API to count the pushes",
    )

    # When the operator asks for the status as JSON
    report = cli_json("status", "--db", server_url, *args)

    # Then it shows the queued pushes, the dead letter, no worker, and the node
    assert report["queue_source"] == "management"
    assert report["queues"][push_queue]["ready"] == 3
    assert report["queues"][push_queue]["consumers"] == 0
    assert report["queues"][dead_queue]["ready"] == 1
    assert report["dead_letters"] == 1
    assert report["workers"] == []
    assert report["version"] == 0
    assert [n["node_id"] for n in report["nodes"]["listed"]] == [node.node_id]

    # And dead-letters list names it with the reason it was refused
    listed = cli_json("dead-letters", "list", *args)
    assert listed["total"] == 1
    [letter] = listed["dead_letters"]
    assert letter["message_id"] == garbage.message_id
    assert (letter["kind"], letter["queue"]) == ("push", push_queue)
    assert "not an envelope" in letter["reason"]
    shown = cli("dead-letters", "show", garbage.message_id, *args)
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["decoded"]["envelope"].startswith("not decodable")
    assert wire.depth(dead_queue) == 1  # reading it removed nothing

    # When it is requeued, it is back in the push queue and out of the dead letters
    requeued = cli("dead-letters", "requeue", garbage.message_id, *args)
    assert requeued.returncode == 0, requeued.stderr
    assert requeued.stdout.strip() == "requeued 1"
    assert (wire.depth(push_queue), wire.depth(dead_queue)) == (4, 0)

    # When a worker runs again it applies the pushes and dead-letters the garbage once more
    worker_runner.start()
    wait_until(lambda: wire.depth(dead_queue) == 1 and probe.head() == 3, 30, "the worker")

    # Then purge deletes it and says how many
    purged = cli("dead-letters", "purge", "--all", "--yes", *args)
    assert purged.returncode == 0, purged.stderr
    assert purged.stdout.strip() == "purged 1"
    assert wire.depth(dead_queue) == 0
    assert probe.count(schema.versions) == 3


def test_the_metrics_count_exactly_what_was_served_and_readiness_follows_the_broker(
    make_node, worker_process, worker_config, broker_url, namespace, wire
):
    # Given a worker process reaching the broker through a proxy, serving its metrics
    port = free_port()
    proxy = TcpProxy.for_url(broker_url)
    worker_process.config = dataclasses.replace(worker_config, broker_url=proxy.url(broker_url))
    try:
        worker_process.start(options=("--metrics-port", str(port)))
        wait_until(lambda: http_get(port, "/readyz")[0] == 200, 20, "the worker to be ready")
        a, b = make_node("a"), make_node("b")
        forge = forge_of(a)

        # When two nodes push three times (four rows), one push is refused and two
        # undecodable messages arrive
        wire.publish(forge.push([city(1, "one"), city(2, "two")], base=0))
        wire.publish(forge.push([city(3, "three")], base=1))
        wire.publish(forge_of(b).push([city(4, "four")], base=2))
        wire.publish(forge.push([city(5, "x")], base=99))  # ahead of the server: refused
        for _ in range(2):
            wire.publish(envelope_message(UNDECODABLE, "push", header=a.node_id))
        dead = ("dbsync_dead_letters_total", (("kind", "push"),))
        head = ("dbsync_head_version", ())
        wait_until(
            lambda: (samples := scrape(port)).get(dead) == 2 and samples.get(head) == 3,
            30,
            "the dead letters counted and the head read (figures read at most every 5 s)",
        )

        # Then the metrics say exactly that
        samples = scrape(port)
        assert samples[("dbsync_pushes_applied_total", ())] == 3
        assert samples[("dbsync_operations_applied_total", ())] == 4
        assert samples[("dbsync_rejects_total", (("code", "pull-required"), ("kind", "push")))] == 1
        assert samples[dead] == 2
        assert samples[("dbsync_nodes_registered", ())] == 2
        dead_queue = (("queue", Topology(namespace).dead_letter_queue),)
        assert samples[("dbsync_queue_messages", dead_queue)] == 2
        assert samples[("dbsync_worker_ready", ())] == 1
        status, body = http_get(port, "/healthz")
        assert (status, json.loads(body)) == (200, {"alive": True})

        # When the broker connection is cut, the worker is alive but not ready
        proxy.cut()
        wait_until(lambda: http_get(port, "/readyz")[0] == 503, 30, "unready after the cut")
        status, body = http_get(port, "/readyz")
        assert json.loads(body)["checks"] == {"broker": False, "consuming": False, "database": True}
        assert http_get(port, "/healthz")[0] == 200

        # And ready again once the broker is back
        proxy.restore()
        wait_until(lambda: http_get(port, "/readyz")[0] == 200, 60, "ready after the restore")
    finally:
        worker_process.terminate()
        proxy.close()


ROW_VALUE = "row-value-7d1f2c"
UNIQUE_VALUE = "unique-value-93ac5e"
REQUEST_FIELDS = {"kind", "request_id", "node", "outcome", "code", "version", "duration_ms"}


def key_forms(key: bytes) -> list[str]:
    """How a key could show in a log: hex, base64, url-safe base64, Python's repr."""
    return [
        key.hex(),
        base64.b64encode(key).decode(),
        base64.urlsafe_b64encode(key).decode().rstrip("="),
        repr(key)[2:-1],
    ]


def test_the_worker_logs_one_json_line_per_request_and_no_token_key_or_row_value(
    make_node, worker_process, server_url, namespace, node_ids, wire
):
    # Given a worker logging JSON, a node registered with a token, and another node
    worker_process.start(options=("--log-format", "json"))
    token = commands.enroll(server_url)
    a = make_node("a", register=False)
    node_ids.append(a.register(token))
    b = make_node("b")

    # When rows are pushed and pulled, a push is refused over a row's value, and an
    # undecodable message is dead-lettered
    write(a.engine, City(name=ROW_VALUE), Tag(label=UNIQUE_VALUE))
    a.push()
    b.pull()
    b.close()
    clash = Change("tag", 99, INSERT, 1, {"id": 99, "label": UNIQUE_VALUE})
    wire.publish(forge_of(b).push([clash], base=1))
    [(_properties, body)] = wire._drain(Topology(namespace).node_queue(b.node_id), 1, 20)
    refusal = read_reply(body, server_public_key(server_url), "push")
    assert refusal.code == "constraint-violation"
    if server_url.startswith("postgresql"):
        assert UNIQUE_VALUE in (refusal.reason or "")  # the node is told the value
    wire.publish(envelope_message(UNDECODABLE, "push", header=a.node_id))
    wait_until(lambda: wire.depth(Topology(namespace).dead_letter_queue) == 1, 20, "dead letter")
    worker_process.terminate()

    # Then every line is a JSON object, one per request with its fields
    records = [json.loads(line) for line in worker_process.output.splitlines()]
    served = [
        (r["kind"], r["outcome"], r["code"]) for r in records if r["logger"] == "worker.requests"
    ]
    assert served == [
        ("register", "ack", None),
        ("register", "ack", None),
        ("push", "ack", None),
        ("pull", "ack", None),
        ("push", "ack", "constraint-violation"),
        ("push", "dead-letter", None),
    ]
    for record in records:
        if record["logger"] == "worker.requests":
            assert set(record) >= REQUEST_FIELDS, record
    # And no token, key or row value appears anywhere
    secrets = [token, ROW_VALUE, UNIQUE_VALUE, *key_forms(server_seed(server_url))]
    secrets += key_forms(forge_of(a).seed) + key_forms(forge_of(b).seed)
    leaked = [secret for secret in secrets if secret in worker_process.output]
    assert leaked == []


def server_seed(server_url: str) -> bytes:
    engine = sa.create_engine(server_url)
    try:
        with engine.connect() as connection:
            return bytes(
                connection.execute(sa.select(schema.server_keys.c.private_key)).scalar_one()
            )
    finally:
        engine.dispose()


def server_public_key(server_url: str) -> bytes:
    return signing.public_key_bytes(signing.private_key_from_seed(server_seed(server_url)))
