"""Worker settings: read from the environment by entry points, checked all at once."""

from __future__ import annotations

import pytest

from dbsync_mq.config import DEFAULT_BROKER_URL, WorkerConfig, mask
from dbsync_mq.errors import ConfigurationError

ENV = {
    "DBSYNC_DATABASE_URL": "postgresql+psycopg://app:db-secret@db.example/app",
    "DBSYNC_BROKER_URL": "amqp://worker:mq-secret@mq.example:5672/%2F",
    "DBSYNC_MODELS": "shop.models, billing.models",
    "DBSYNC_NAMESPACE": "shop-prod",
}


def test_settings_are_read_from_the_dbsync_variables() -> None:
    config = WorkerConfig.from_env(ENV)

    assert config.database_url == ENV["DBSYNC_DATABASE_URL"]
    assert config.broker_url == ENV["DBSYNC_BROKER_URL"]
    assert config.models == ("shop.models", "billing.models")
    assert config.namespace == "shop-prod"


def test_given_values_override_the_environment_and_none_does_not() -> None:
    config = WorkerConfig.from_env(
        ENV,
        database_url="sqlite:///server.db",
        models=("other.models",),
        broker_url=None,
        namespace="staging",
        prefetch=16,
    )

    assert config.database_url == "sqlite:///server.db"
    assert config.models == ("other.models",)
    assert config.broker_url == ENV["DBSYNC_BROKER_URL"]
    assert config.namespace == "staging"
    assert config.prefetch == 16


def test_the_broker_and_namespace_have_defaults() -> None:
    config = WorkerConfig.from_env({"DBSYNC_DATABASE_URL": "sqlite://", "DBSYNC_MODELS": "m"})

    assert config.broker_url == DEFAULT_BROKER_URL
    assert config.topology.namespace == config.namespace


def test_every_bad_setting_is_reported_at_once() -> None:
    # Given no database, no models, a namespace with a space and a prefetch of 0
    with pytest.raises(ConfigurationError) as caught:
        WorkerConfig.from_env({"DBSYNC_NAMESPACE": "bad name"}, prefetch=0)

    # Then one error names all four
    message = str(caught.value)
    assert "database URL" in message
    assert "models" in message
    assert "'bad name'" in message
    assert "prefetch" in message


@pytest.mark.parametrize(
    ("given", "named"),
    [
        ({"database_url": ""}, "database URL"),
        ({"models": ()}, "models"),
        ({"namespace": ""}, "namespace"),
        ({"namespace": "a" * 65}, "namespace"),
        ({"prefetch": 0}, "prefetch"),
        ({"prefetch": -3}, "prefetch"),
    ],
)
def test_a_single_bad_setting_is_refused_naming_it(given: dict[str, object], named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        WorkerConfig.from_env(ENV, **given)


def test_the_repr_masks_the_passwords_of_both_urls() -> None:
    shown = repr(WorkerConfig.from_env(ENV))

    assert "db-secret" not in shown
    assert "mq-secret" not in shown
    assert "postgresql+psycopg://app:***@db.example/app" in shown
    assert "amqp://worker:***@mq.example:5672/%2F" in shown


def test_the_settings_themselves_keep_the_passwords() -> None:
    config = WorkerConfig.from_env(ENV)

    assert "db-secret" in config.database_url
    assert "mq-secret" in config.broker_url


@pytest.mark.parametrize(
    ("url", "masked"),
    [
        ("sqlite:///server.db", "sqlite:///server.db"),
        ("postgresql://app@db/app", "postgresql://app@db/app"),
        ("amqp://guest:guest@localhost:5672/%2F", "amqp://guest:***@localhost:5672/%2F"),
        ("postgresql://app:p%40ss/w:rd@db/app", "postgresql://app:***@db/app"),
        ("amqp://:only-password@mq/", "amqp://:***@mq/"),
    ],
)
def test_mask_hides_only_the_password(url: str, masked: str) -> None:
    assert mask(url) == masked


def test_settings_are_frozen() -> None:
    config = WorkerConfig.from_env(ENV)

    with pytest.raises(AttributeError):
        config.prefetch = 99  # type: ignore[misc]
