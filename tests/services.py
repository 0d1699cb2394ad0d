"""Finding the real RabbitMQ and PostgreSQL the tests run against.

URLs come from ``DBSYNC_TEST_BROKER_URL`` and ``DBSYNC_TEST_POSTGRES_URL`` (local
defaults otherwise). When a service cannot be reached and Docker is available,
testcontainers starts one. When neither works, the test is skipped locally and
fails when ``CI=true``: a missing service never passes silently in CI.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator

import pika
import pytest
import sqlalchemy as sa

BROKER_URL = os.environ.get("DBSYNC_TEST_BROKER_URL", "amqp://guest:guest@127.0.0.1:5672/%2F")
POSTGRES_URL = os.environ.get(
    "DBSYNC_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


def unavailable(what: str, reason: str) -> None:
    message = f"{what} is not reachable ({reason})"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{message}; CI needs it", pytrace=False)
    pytest.skip(message)


def broker_reachable(url: str) -> str | None:
    try:
        parameters = pika.URLParameters(url)
        parameters.connection_attempts = 1
        parameters.socket_timeout = 3
        pika.BlockingConnection(parameters).close()
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def postgres_reachable(url: str) -> str | None:
    engine = sa.create_engine(url)
    try:
        with engine.connect():
            return None
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        engine.dispose()


def _docker_available() -> bool:
    return shutil.which("docker") is not None and os.path.exists("/var/run/docker.sock")


@contextlib.contextmanager
def rabbitmq() -> Iterator[str]:
    problem = broker_reachable(BROKER_URL)
    if problem is None:
        yield BROKER_URL
        return
    if _docker_available():
        from testcontainers.rabbitmq import RabbitMqContainer

        with RabbitMqContainer("rabbitmq:3.13") as container:
            host, port = container.get_container_host_ip(), container.get_exposed_port(5672)
            yield f"amqp://guest:guest@{host}:{port}/%2F"
        return
    unavailable("RabbitMQ", problem)


@contextlib.contextmanager
def postgres() -> Iterator[str]:
    problem = postgres_reachable(POSTGRES_URL)
    if problem is None:
        yield POSTGRES_URL
        return
    if _docker_available():
        from testcontainers.postgres import PostgresContainer

        with PostgresContainer("postgres:16", driver="psycopg") as container:
            yield container.get_connection_url()
        return
    unavailable("PostgreSQL", problem)


@contextlib.contextmanager
def fresh_postgres_database(admin_url: str) -> Iterator[str]:
    """A new, empty database for one test, dropped afterwards."""
    name = f"dbsync_test_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
        yield sa.make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
