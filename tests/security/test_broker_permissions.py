"""Broker credentials from deploy/rabbitmq/: each role can do its job and nothing more.

Runs in a virtual host of its own, created (with its users) through RabbitMQ's
management HTTP API on 127.0.0.1:15672. Where the management plugin is not
enabled the test is skipped locally and fails with ``CI=true``, like a missing
service (``.ci/run`` enables the plugin): these are the only tests of per-node
broker isolation.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import urllib.parse
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pika
import pika.exceptions
import pytest
import sqlalchemy as sa

from dbsync_mq import SyncClient, commands
from dbsync_mq.config import WorkerConfig
from dbsync_mq.errors import SyncError
from dbsync_mq.transport.topology import Topology
from tests import services
from tests.conftest import MODELS, ThreadedWorker, write
from tests.models import TRACKED, City
from tests.probe import ServerProbe, table_rows

ROOT = Path(__file__).resolve().parents[2]
NAMESPACE = "dbsync"
"""The definitions file's namespace: the virtual host is the test's own."""


def _load_users_script() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_users", ROOT / "deploy/rabbitmq/users.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


users = _load_users_script()


def test_the_committed_definitions_file_is_the_one_the_script_writes():
    committed = json.loads((ROOT / "deploy/rabbitmq/definitions.json").read_text())
    assert committed == users.definitions(Topology(NAMESPACE))


@pytest.fixture
def vhost(broker_url: str) -> Iterator[tuple[Any, str, Callable[[str, str], str]]]:
    """A virtual host of its own with its users, removed afterwards."""
    api = users.management_api()
    try:
        api.call("GET", "/overview")
    except SyncError as exc:
        services.unavailable("RabbitMQ management API on 127.0.0.1:15672", str(exc))
    name = f"dbsync-test-{uuid.uuid4().hex[:12]}"
    quoted = urllib.parse.quote(name, safe="")
    created: list[str] = []
    api.call("PUT", f"/vhosts/{quoted}", {})
    admin = urllib.parse.urlsplit(broker_url).username or "guest"
    api.put_permissions(name, admin, users.Permissions(".*", ".*", ".*"))
    parts = urllib.parse.urlsplit(broker_url)

    def user(role: str, suffix: str, node_id: int | None = None) -> str:
        """Create a user for ``role``; return its broker URL in the virtual host."""
        username, password = f"{name}-{suffix}", uuid.uuid4().hex
        api.put_user(username, password)
        api.put_permissions(
            name, username, users.permissions_for(Topology(NAMESPACE), role, node_id)
        )
        created.append(username)
        return f"amqp://{username}:{password}@{parts.hostname}:{parts.port or 5672}/{quoted}"

    try:
        yield api, name, user
    finally:
        for username in created:
            api.delete_user(username)
        api.call("DELETE", f"/vhosts/{quoted}")


def _refusal(url: str, action: Callable[[Any], object]) -> int | None:
    """Run ``action(channel)``; the broker's reply code if it refused, None if allowed."""
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        action(channel)
        return None
    except pika.exceptions.ChannelClosedByBroker as exc:
        return int(exc.reply_code)
    finally:
        if connection.is_open:
            connection.close()


def _publish(exchange: str, routing_key: str) -> Callable[[Any], object]:
    return lambda channel: channel.basic_publish(exchange, routing_key, b"forged")


def _consume(queue: str) -> Callable[[Any], object]:
    return lambda channel: channel.basic_consume(queue, lambda *_: None)


@pytest.mark.broker
def test_each_role_can_do_its_job_and_a_node_can_reach_only_its_own_reply_queue(
    vhost, tmp_path, ledger, request
):
    api, name, user = vhost
    topology = Topology(NAMESPACE)
    # Given the topology imported from the definitions file, and the service users
    topology_only = {
        key: value
        for key, value in users.definitions(topology, name).items()
        if key in ("exchanges", "queues", "bindings")
    }
    api.call("POST", f"/definitions/{urllib.parse.quote(name, safe='')}", topology_only)
    worker_url, enroll_url = user("worker", "worker"), user("enroll", "enroll")
    server_url = f"sqlite:///{tmp_path / 'server.db'}"
    commands.init(server_url, MODELS, worker_url, NAMESPACE)  # same arguments: no conflict
    runner = ThreadedWorker(
        WorkerConfig(
            database_url=server_url, models=MODELS, broker_url=worker_url, namespace=NAMESPACE
        )
    )
    runner.start()
    clients: list[SyncClient] = []

    def node(label: str) -> tuple[SyncClient, str]:
        """Register with the enrollment user, then sync with the node's own user."""
        path = tmp_path / f"{label}.db"
        enrolling = SyncClient(
            sa.create_engine(f"sqlite:///{path}"),
            broker_url=enroll_url,
            namespace=NAMESPACE,
            models=TRACKED,
            timeout=10,
        )
        enrolling.install()
        # Registration succeeds; the reply queue waits for the node's own user.
        node_id = enrolling.register(commands.enroll(server_url))
        assert enrolling.node_id == node_id
        enrolling.close()
        enrolling.engine.dispose()
        node_url = user("node", f"node-{node_id}", node_id)
        client = SyncClient(
            sa.create_engine(f"sqlite:///{path}"),
            broker_url=node_url,
            namespace=NAMESPACE,
            models=TRACKED,
            timeout=10,
        )
        clients.append(client)
        return client, node_url

    try:
        (a, a_url), (b, _b_url) = node("a"), node("b")

        # When the nodes sync with their own users, then it all works
        write(a.engine, City(name="restricted"))
        a.sync()
        b.sync()
        assert table_rows(a.engine) == table_rows(b.engine) == ServerProbe(server_url).rows()
        assert [row[1] for row in table_rows(b.engine)["city"]] == ["restricted"]

        # And node a can reach nothing but its own queue and the request exchange
        a_queue, b_queue = topology.node_queue(a.node_id), topology.node_queue(b.node_id)
        attempts = {
            "consume node b's queue": (a_url, _consume(b_queue)),
            "declare node b's queue": (a_url, lambda ch: ch.queue_declare(b_queue, durable=True)),
            "delete node b's queue": (a_url, lambda ch: ch.queue_delete(b_queue)),
            "consume the push queue": (a_url, _consume(topology.request_queue("push"))),
            "purge the push queue": (
                a_url,
                lambda ch: ch.queue_purge(topology.request_queue("push")),
            ),
            "bind its queue to the request exchange": (
                a_url,
                lambda ch: ch.queue_bind(a_queue, topology.requests_exchange, routing_key="push"),
            ),
            "bind its queue to amq.direct with b's queue name": (
                a_url,
                lambda ch: ch.queue_bind(a_queue, "amq.direct", routing_key=b_queue),
            ),
            "bind its queue to the events exchange": (
                a_url,
                lambda ch: ch.queue_bind(a_queue, topology.events_exchange),
            ),
            "forge a reply into node b's queue": (a_url, _publish("", b_queue)),
            "forge an event": (a_url, _publish(topology.events_exchange, "")),
            "declare an exchange": (a_url, lambda ch: ch.exchange_declare(f"{NAMESPACE}.x")),
            "worker: consume a node's queue": (worker_url, _consume(a_queue)),
            "enroll: consume the push queue": (
                enroll_url,
                _consume(topology.request_queue("push")),
            ),
            "enroll: declare a node queue": (
                enroll_url,
                lambda ch: ch.queue_declare(a_queue, durable=True),
            ),
        }
        refusals = {what: _refusal(url, action) for what, (url, action) in attempts.items()}
        ledger.bad_inputs(request.node.name, len(attempts))
        assert refusals == dict.fromkeys(attempts, 403)

        # And what each role needs is allowed
        assert _refusal(a_url, _consume(a_queue)) is None
        assert _refusal(a_url, _publish(topology.requests_exchange, "ping")) is None
        assert _refusal(worker_url, _consume(topology.request_queue("push"))) is None
    finally:
        for client in clients:
            client.close()
            client.engine.dispose()
        runner.stop()


@pytest.mark.broker
def test_the_definitions_file_imports_with_its_users_and_permissions(vhost):
    # Given the committed definitions, moved to this test's virtual host and user names
    api, name, _user = vhost
    definitions = json.loads((ROOT / "deploy/rabbitmq/definitions.json").read_text())
    renamed = {user["name"]: f"{name}-{user['name']}" for user in definitions["users"]}
    for user in definitions["users"]:
        user["name"] = renamed[user["name"]]
    for section in ("permissions", "exchanges", "queues", "bindings"):
        for item in definitions[section]:
            item["vhost"] = name
    for permission in definitions["permissions"]:
        permission["user"] = renamed[permission["user"]]
    definitions["vhosts"] = [{"name": name}]

    # When RabbitMQ imports them
    try:
        api.call("POST", "/definitions", definitions)

        # Then the service users exist, without a password, with the role's permissions
        quoted = urllib.parse.quote(name, safe="")
        for role, user in users.SERVICE_USERS.items():
            stored = api.call("GET", f"/users/{urllib.parse.quote(renamed[user], safe='')}")
            assert stored["password_hash"] == ""
            granted = api.call(
                "GET", f"/permissions/{quoted}/{urllib.parse.quote(renamed[user], safe='')}"
            )
            expected = users.permissions_for(Topology(NAMESPACE), role)
            assert (granted["configure"], granted["write"], granted["read"]) == (
                expected.configure,
                expected.write,
                expected.read,
            )
        queues = {queue["name"] for queue in api.call("GET", f"/queues/{quoted}")}
        assert queues == set(Topology(NAMESPACE).request_queues) | {f"{NAMESPACE}.dead"}
    finally:
        for user in renamed.values():
            with contextlib.suppress(SyncError):
                api.delete_user(user)
