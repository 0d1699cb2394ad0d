"""The files in deploy/, parsed and checked without Docker: the compose file, the systemd
unit, the RabbitMQ configuration and definitions, the alert rules and the dashboard. Every
series an alert or a panel names must be one a worker exports (read from a real worker's
registry)."""

from __future__ import annotations

import configparser
import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from dbsync_mq import commands
from dbsync_mq.config import WorkerConfig
from dbsync_mq.transport.topology import Topology
from tests.conftest import MODELS
from worker.metrics import exported_series
from worker.process import Worker

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
PROMETHEUS_OWN = {"up"}
"""Series Prometheus itself records for every target."""
RABBITMQ_NODES = ("rabbitmq1", "rabbitmq2", "rabbitmq3")


def load_yaml(name: str) -> Any:
    return yaml.safe_load((DEPLOY / name).read_text(encoding="utf-8"))


# --- the series a worker exports, and those an expression names ------------------------


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The series names of a real worker's registry (built, never started)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('deploy') / 'server.db'}"
    commands.init(url, MODELS)
    worker = Worker(WorkerConfig(database_url=url, models=MODELS))
    try:
        return exported_series(worker.metrics.registry)
    finally:
        worker.engine.dispose()


_KEYWORDS = {
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "inf",
    "nan",
}


def series_in(expression: str) -> set[str]:
    """The series a PromQL expression names: identifiers that are not functions,
    aggregations, keywords, label names, strings or durations."""
    text = re.sub(r'"(?:\\.|[^"\\])*"' + r"|'(?:\\.|[^'\\])*'", '""', expression)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges and subqueries
    text = re.sub(
        r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )  # label lists
    text = re.sub(r"\b\d[\w.]*", " ", text)  # numbers and durations (1m, 0.99)
    names = set()
    for found in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        following = text[found.end() :].lstrip()
        if following.startswith("(") or found.group() in _KEYWORDS:
            continue
        names.add(found.group())
    return names


def test_the_series_of_an_expression_are_found_and_nothing_else() -> None:
    expression = (
        'sum by (queue) (rate(dbsync_a_total{queue=~"x\\\\.dead"}[5m])) > 0 '
        "and on (le) deriv(max(dbsync_b)[5m:30s]) / dbsync_c offset 1m"
    )

    assert series_in(expression) == {"dbsync_a_total", "dbsync_b", "dbsync_c"}


def test_the_worker_exports_every_series_the_issue_names(exported: set[str]) -> None:
    assert {
        "dbsync_pushes_applied_total",
        "dbsync_operations_applied_total",
        "dbsync_rejects_total",
        "dbsync_dead_letters_total",
        "dbsync_reply_bytes_total",
        "dbsync_database_retries_total",
        "dbsync_group_commit_batch_size_bucket",
        "dbsync_head_version",
        "dbsync_nodes_registered",
        "dbsync_nodes_enabled",
        "dbsync_node_lag_versions_bucket",
        "dbsync_queue_messages",
        "dbsync_worker_ready",
    } <= exported


# --- alerts and dashboard --------------------------------------------------------------


def alert_rules() -> list[dict[str, Any]]:
    return [
        rule for group in load_yaml("prometheus/alerts.yml")["groups"] for rule in group["rules"]
    ]


def dashboard_expressions() -> Iterator[tuple[str, str]]:
    dashboard = json.loads((DEPLOY / "grafana/dbsync-mq.json").read_text(encoding="utf-8"))
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            yield panel["title"], target["expr"]


def test_the_alerts_cover_what_an_operator_must_hear_about() -> None:
    rules = {rule["alert"]: rule for rule in alert_rules()}

    assert {
        "DbsyncWorkerDown",
        "DbsyncQueueGrowing",
        "DbsyncDeadLettersRising",
        "DbsyncNodesLagging",
    } <= set(rules)
    assert rules["DbsyncQueueGrowing"]["for"] == "5m"
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"critical", "warning", "info"}, name
        assert rule["annotations"]["summary"], name


@pytest.mark.parametrize("rule", alert_rules(), ids=lambda rule: rule["alert"])
def test_every_alert_names_series_the_worker_exports(
    rule: dict[str, Any], exported: set[str]
) -> None:
    named = series_in(rule["expr"])

    assert named, rule["expr"]
    assert named <= exported | PROMETHEUS_OWN, named - exported


@pytest.mark.parametrize(("title", "expression"), list(dashboard_expressions()))
def test_every_dashboard_panel_names_series_the_worker_exports(
    title: str, expression: str, exported: set[str]
) -> None:
    named = series_in(expression)

    assert named, expression
    assert named <= exported, f"{title}: {named - exported}"


def test_prometheus_loads_the_alerts_and_scrapes_both_compose_workers() -> None:
    config = load_yaml("prometheus/prometheus.yml")
    compose = load_yaml("compose.yaml")

    assert config["rule_files"] == ["alerts.yml"]
    [job] = config["scrape_configs"]
    assert job["job_name"] == "dbsync-worker"  # the job DbsyncWorkerDown watches
    targets = {target for group in job["static_configs"] for target in group["targets"]}
    assert targets == {f"{name}:{metrics_port(compose['services'][name])}" for name in workers()}


# --- compose ---------------------------------------------------------------------------


def workers() -> list[str]:
    services = load_yaml("compose.yaml")["services"]
    return sorted(name for name, service in services.items() if is_worker(service))


def is_worker(service: dict[str, Any]) -> bool:
    command = service.get("command") or []
    return isinstance(command, list) and command[:2] == ["dbsync-mq", "worker"]


def metrics_port(service: dict[str, Any]) -> int:
    command = service["command"]
    return int(command[command.index("--metrics-port") + 1])


def test_compose_runs_a_three_node_rabbitmq_cluster_postgresql_and_two_workers() -> None:
    services = load_yaml("compose.yaml")["services"]
    conf = (DEPLOY / "rabbitmq/rabbitmq.conf").read_text(encoding="utf-8")
    peers = re.findall(
        r"^cluster_formation\.classic_config\.nodes\.\d+ = rabbit@(\S+)$", conf, re.M
    )

    assert set(RABBITMQ_NODES) <= set(services)
    assert sorted(peers) == sorted(RABBITMQ_NODES)
    for name in RABBITMQ_NODES:
        rabbit = services[name]
        assert rabbit["hostname"] == name
        assert "management" in rabbit["image"]
        assert any("rabbitmq.conf" in volume for volume in rabbit["volumes"])
        assert "-setcookie" in rabbit["environment"]["RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS"]
    assert services["postgres"]["image"].startswith("postgres:")
    assert len(workers()) == 2


@pytest.mark.parametrize("name", workers())
def test_each_compose_worker_is_checked_on_readyz_and_stopped_warmly(name: str) -> None:
    services = load_yaml("compose.yaml")["services"]
    worker = services[name]
    command = worker["command"]
    probe = " ".join(worker["healthcheck"]["test"])

    assert f"127.0.0.1:{metrics_port(worker)}/readyz" in probe
    assert command[command.index("--metrics-address") + 1] == "0.0.0.0"
    assert worker["stop_signal"] == "SIGTERM"
    assert int(worker["stop_grace_period"].removesuffix("s")) >= 30
    assert worker["depends_on"]["init"]["condition"] == "service_completed_successfully"
    environment = worker["environment"]
    assert {"DBSYNC_DATABASE_URL", "DBSYNC_BROKER_URL", "DBSYNC_MODELS"} <= set(environment)
    assert environment["DBSYNC_BROKER_URL"].startswith("amqp://dbsync-worker:")


def test_compose_refers_only_to_services_and_files_that_exist() -> None:
    compose = load_yaml("compose.yaml")
    services = compose["services"]
    for name, service in services.items():
        for needed in service.get("depends_on") or {}:
            assert needed in services, f"{name} depends on a missing {needed}"
        for volume in service.get("volumes") or []:
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts a missing {source}"
            else:
                assert source in compose["volumes"], f"{name} mounts an undeclared {source}"
        build = service.get("build")
        if build:
            assert (DEPLOY / build["context"] / build["dockerfile"]).is_file()


def test_compose_sets_the_rabbitmq_passwords_from_the_definitions_users() -> None:
    setup = load_yaml("compose.yaml")["services"]["rabbitmq-setup"]
    script = " ".join(setup["command"])
    definitions = json.loads((DEPLOY / "rabbitmq/definitions.json").read_text(encoding="utf-8"))
    worker_user = {"dbsync-worker"} & {user["name"] for user in definitions["users"]}

    assert "import /deploy/rabbitmq/definitions.json" in script
    assert worker_user
    assert f"worker {worker_user.pop()}" in script


# --- RabbitMQ definitions --------------------------------------------------------------


def test_the_definitions_hold_the_users_and_permissions_the_topology_computes() -> None:
    definitions = json.loads((DEPLOY / "rabbitmq/definitions.json").read_text(encoding="utf-8"))
    topology = Topology("dbsync")
    granted = {
        item["user"]: (item["configure"], item["write"], item["read"])
        for item in definitions["permissions"]
    }
    expected = {
        "dbsync-worker": topology.worker_permissions(),
        "dbsync-enroll": topology.enrollment_permissions(),
    }

    assert {user["name"] for user in definitions["users"]} == set(expected)
    assert granted == {
        user: (permissions.configure, permissions.write, permissions.read)
        for user, permissions in expected.items()
    }
    queues = {queue["name"]: queue["arguments"] for queue in definitions["queues"]}
    for name in topology.request_queues:
        assert queues[name] == dict(topology.request_queue_arguments)
    assert queues[topology.dead_letter_queue]["x-queue-type"] == "quorum"


# --- systemd ---------------------------------------------------------------------------


def test_the_systemd_unit_runs_the_worker_with_its_endpoint_and_a_warm_stop() -> None:
    unit = configparser.ConfigParser(interpolation=None, strict=False)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read_string((DEPLOY / "systemd/dbsync-mq-worker@.service").read_text(encoding="utf-8"))
    service = unit["Service"]

    assert set(unit.sections()) == {"Unit", "Service", "Install"}
    assert " worker " in f"{service['ExecStart']} "
    assert "--metrics-port 946%i" in service["ExecStart"]
    assert service["KillSignal"] == "SIGTERM"
    assert int(service["TimeoutStopSec"]) >= 30
    assert service["RestartPreventExitStatus"] == "2"  # RET_CONFIG: restarting will not help
    assert unit["Install"]["WantedBy"] == "multi-user.target"
