"""Shared by the operations tests: raw requests as a node would send them, the CLI as a
subprocess, the worker's HTTP endpoint, and a free port."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from dbsync_mq import SyncClient
from dbsync_mq.core.model import INSERT, Change
from dbsync_mq.storage import local
from tests.e2e.test_cli import run as cli
from tests.security.forge import Forge

__all__ = ["city", "cli", "cli_json", "forge_of", "free_port", "http_get", "scrape"]


def forge_of(node: SyncClient) -> Forge:
    """A forge signing with ``node``'s own key: its raw requests are authentic."""
    with node.engine.connect() as connection:
        identity = local.load_identity(connection)
    assert identity is not None
    return Forge(identity.node_id, identity.private_key)


def city(city_id: int, name: str) -> Change:
    return Change("city", city_id, INSERT, 1, {"id": city_id, "name": name, "population": 0})


def cli_json(*args: str) -> Any:
    result = cli(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def http_get(port: int, path: str) -> tuple[int, str]:
    """Status and body of ``GET path`` on the worker's endpoint (0: not listening)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
    except OSError:
        return 0, ""


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of ``/metrics``: (name, sorted labels) -> value."""
    status, text = http_get(port, "/metrics")
    assert status == 200, text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
