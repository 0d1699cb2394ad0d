#!/usr/bin/env python3
"""RabbitMQ users for dbsync-mq: the worker, enrollment, and one user per node.

Each role gets the narrowest permissions it works with (the patterns come from
``dbsync_mq.transport.topology``, the same code that names the queues):

- ``worker``: declare the topology, consume the request queues, publish replies
  and events;
- ``enroll``: publish requests (devices not yet registered: registration only);
- ``node ID``: publish requests, declare and consume its own reply queue
  ``<namespace>.node.<ID>``, nothing else.

Apply them through the management HTTP API::

    python deploy/rabbitmq/users.py --vhost / worker dbsync-worker 'secret'
    python deploy/rabbitmq/users.py --vhost / node 42 dbsync-node-42 'secret'

or print the equivalent ``rabbitmqctl`` commands with ``--print``; or write the
definitions file (topology, service users, their permissions) with
``definitions``; or import such a file with ``import FILE`` (as
``deploy/compose.yaml`` does). Needs the ``dbsync_mq`` package importable,
nothing else.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from typing import Any

from dbsync_mq.core.messages import REQUEST_KINDS
from dbsync_mq.errors import SyncError
from dbsync_mq.transport.management import ManagementApi
from dbsync_mq.transport.topology import DEFAULT_NAMESPACE, Permissions, Topology

DEFAULT_API = "http://127.0.0.1:15672/api"
SERVICE_USERS = {"worker": "dbsync-worker", "enroll": "dbsync-enroll"}
"""User names in the definitions file; node users are created one by one."""


def permissions_for(topology: Topology, role: str, node_id: int | None = None) -> Permissions:
    """The permissions of ``role`` (``worker``, ``enroll`` or ``node``)."""
    if role == "worker":
        return topology.worker_permissions()
    if role == "enroll":
        return topology.enrollment_permissions()
    if role == "node" and node_id is not None and node_id > 0:
        return topology.node_permissions(node_id)
    raise ValueError(f"unknown role {role!r} (a node needs its id)")


def management_api(url: str = DEFAULT_API, admin: str = "guest:guest") -> ManagementApi:
    """The management API at ``url`` as the administrator ``admin`` (``user:password``)."""
    return ManagementApi("amqp://localhost/", url, credentials=admin)


def rabbitmqctl(vhost: str, name: str, permissions: Permissions) -> list[str]:
    """The ``rabbitmqctl`` commands that create the user (password read from stdin)."""
    return [
        f"rabbitmqctl add_user {shlex.quote(name)}  # prompts for the password",
        " ".join(
            [
                "rabbitmqctl set_permissions -p",
                shlex.quote(vhost),
                shlex.quote(name),
                shlex.quote(permissions.configure),
                shlex.quote(permissions.write),
                shlex.quote(permissions.read),
            ]
        ),
    ]


def definitions(topology: Topology, vhost: str = "/") -> dict[str, Any]:
    """A definitions file: the topology, the service users (no password: set one with
    ``rabbitmqctl change_password``) and their permissions."""
    queue_arguments = dict(topology.request_queue_arguments)
    queues = [
        _queue(vhost, topology.request_queue(kind), queue_arguments) for kind in REQUEST_KINDS
    ]
    queues.append(_queue(vhost, topology.dead_letter_queue, {"x-queue-type": "quorum"}))
    exchanges = [
        _exchange(vhost, topology.requests_exchange, "direct"),
        _exchange(vhost, topology.events_exchange, "fanout"),
        _exchange(vhost, topology.dead_letter_exchange, "fanout"),
    ]
    bindings = [
        _binding(vhost, topology.requests_exchange, topology.request_queue(kind), kind)
        for kind in REQUEST_KINDS
    ]
    bindings.append(_binding(vhost, topology.dead_letter_exchange, topology.dead_letter_queue, ""))
    users = [{"name": name, "password_hash": "", "tags": []} for name in SERVICE_USERS.values()]
    permissions = [
        {"user": name, "vhost": vhost, **vars(permissions_for(topology, role))}
        for role, name in SERVICE_USERS.items()
    ]
    return {
        "vhosts": [{"name": vhost}],
        "users": users,
        "permissions": permissions,
        "exchanges": exchanges,
        "queues": queues,
        "bindings": bindings,
    }


def _queue(vhost: str, name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        "name": name,
        "vhost": vhost,
        "durable": True,
        "auto_delete": False,
        "arguments": arguments,
    }


def _exchange(vhost: str, name: str, kind: str) -> dict[str, Any]:
    return {
        "name": name,
        "vhost": vhost,
        "type": kind,
        "durable": True,
        "auto_delete": False,
        "internal": False,
        "arguments": {},
    }


def _binding(vhost: str, source: str, queue: str, routing_key: str) -> dict[str, Any]:
    return {
        "source": source,
        "vhost": vhost,
        "destination": queue,
        "destination_type": "queue",
        "routing_key": routing_key,
        "arguments": {},
    }


def import_definitions(api: ManagementApi, path: str) -> int:
    """Import a definitions file (vhosts, users, permissions, topology) into the broker."""
    with open(path, encoding="utf-8") as file:
        body = json.load(file)
    try:
        api.call("POST", "/definitions", body)
    except SyncError as exc:
        print(f"management API: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--namespace", default=DEFAULT_NAMESPACE)
    parser.add_argument("--vhost", default="/")
    parser.add_argument("--api", default=DEFAULT_API, help="management API URL")
    parser.add_argument("--admin", default="guest:guest", help="management user:password")
    parser.add_argument("--print", action="store_true", help="print rabbitmqctl commands")
    parser.add_argument("role", choices=["worker", "enroll", "node", "definitions", "import"])
    parser.add_argument("args", nargs="*", help="[NODE_ID] USER PASSWORD, or import's FILE")
    options = parser.parse_args(argv)
    topology = Topology(options.namespace)
    if options.role == "definitions":
        print(json.dumps(definitions(topology, options.vhost), indent=2))
        return 0
    if options.role == "import":
        if len(options.args) != 1:
            parser.error("import takes the definitions file")
        return import_definitions(management_api(options.api, options.admin), options.args[0])
    args = list(options.args)
    node_id = int(args.pop(0)) if options.role == "node" else None
    if len(args) != (1 if options.print else 2):
        parser.error("give USER and PASSWORD (USER alone with --print)")
    permissions = permissions_for(topology, options.role, node_id)
    if options.print:
        print("\n".join(rabbitmqctl(options.vhost, args[0], permissions)))
        return 0
    api = management_api(options.api, options.admin)
    try:
        api.put_user(args[0], args[1])
        api.put_permissions(options.vhost, args[0], permissions)
    except SyncError as exc:
        print(f"management API: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
