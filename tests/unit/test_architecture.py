"""The rules of the house that keep the layers apart, checked on the source itself."""

from __future__ import annotations

import ast
import inspect
import re
from collections.abc import Iterator
from pathlib import Path

import pytest

import dbsync_mq
from dbsync_mq import errors

ROOT = Path(dbsync_mq.__file__).resolve().parent.parent
LIBRARY = ROOT / "dbsync_mq"
CORE = LIBRARY / "core"

# The design forbids the edges (database, broker, network) and clocks and randomness of
# its own; secrets is randomness too.
FORBIDDEN_IN_CORE = {"sqlalchemy", "pika", "socket", "time", "random", "os", "secrets"}
ALLOWED_OWN_MODULES_IN_CORE = ("dbsync_mq.core", "dbsync_mq.errors")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, module: str, is_package: bool = False) -> Iterator[str]:
    """Every module ``source`` imports, anywhere in it, with relative imports resolved.

    ``from package import name`` yields ``package.name``: the name may be a submodule.
    """
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            yield from (f"{base}.{alias.name}" for alias in node.names)


def imports_of(path: Path) -> set[str]:
    return set(
        imported_modules(
            path.read_text(encoding="utf-8"), module_name(path), path.name == "__init__.py"
        )
    )


def top(module: str) -> str:
    return module.split(".")[0]


def within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def core_violations(imports: set[str]) -> list[str]:
    return sorted(
        module
        for module in imports
        if top(module) in FORBIDDEN_IN_CORE
        or (
            top(module) == "dbsync_mq"
            and not any(within(module, allowed) for allowed in ALLOWED_OWN_MODULES_IN_CORE)
        )
    )


def python_files(*packages: str) -> list[Path]:
    return sorted(path for package in packages for path in (ROOT / package).rglob("*.py"))


@pytest.mark.parametrize(
    ("source", "module", "is_package", "bad"),
    [
        ("import time", "dbsync_mq.core.x", False, ["time"]),
        ("import os.path", "dbsync_mq.core.x", False, ["os.path"]),
        ("from random import choice", "dbsync_mq.core.x", False, ["random.choice"]),
        ("def f():\n    import socket", "dbsync_mq.core.x", False, ["socket"]),
        ("import sqlalchemy.orm", "dbsync_mq.core.x", False, ["sqlalchemy.orm"]),
        ("from dbsync_mq import client", "dbsync_mq.core.x", False, ["dbsync_mq.client"]),
        (
            "from dbsync_mq.storage import schema",
            "dbsync_mq.core.x",
            False,
            ["dbsync_mq.storage.schema"],
        ),
        ("from ..transport import base", "dbsync_mq.core.x", False, ["dbsync_mq.transport.base"]),
        ("from .. import config", "dbsync_mq.core", True, ["dbsync_mq.config"]),
        ("from . import codec", "dbsync_mq.core.x", False, []),
        ("from .codec import encode", "dbsync_mq.core.x", False, []),
        ("from dbsync_mq import errors", "dbsync_mq.core.x", False, []),
        ("from dbsync_mq.errors import CodecError", "dbsync_mq.core.x", False, []),
        ("import datetime, timeit", "dbsync_mq.core.x", False, []),
    ],
)
def test_the_core_import_check_tells_allowed_from_forbidden_imports(
    source: str, module: str, is_package: bool, bad: list[str]
) -> None:
    assert core_violations(set(imported_modules(source, module, is_package))) == bad


def test_the_core_has_modules_to_check() -> None:
    assert {path.stem for path in CORE.glob("*.py")} >= {"codec", "merge", "compression"}


@pytest.mark.parametrize("path", sorted(CORE.rglob("*.py")), ids=lambda p: p.name)
def test_core_modules_import_no_edge_clock_randomness_or_outer_module(path: Path) -> None:
    assert core_violations(imports_of(path)) == []


@pytest.mark.parametrize(
    "path", python_files("dbsync_mq/transport"), ids=lambda p: str(p.relative_to(ROOT))
)
def test_the_transport_does_not_import_sqlalchemy(path: Path) -> None:
    assert sorted(m for m in imports_of(path) if top(m) == "sqlalchemy") == []


@pytest.mark.parametrize(
    "path", python_files("dbsync_mq/storage"), ids=lambda p: str(p.relative_to(ROOT))
)
def test_storage_does_not_import_pika(path: Path) -> None:
    assert sorted(m for m in imports_of(path) if top(m) == "pika") == []


# Each edge sees only the core, the errors and itself: storage knows nothing of the
# broker or of the layers built on it (client, channel, extensions, server), and the
# transport nothing of the database.
LAYERS_BELOW = {
    "dbsync_mq/storage": ("dbsync_mq.storage", "dbsync_mq.core", "dbsync_mq.errors"),
    "dbsync_mq/transport": ("dbsync_mq.transport", "dbsync_mq.core", "dbsync_mq.errors"),
}


def outer_imports(path: Path, allowed: tuple[str, ...]) -> list[str]:
    return sorted(
        module
        for module in imports_of(path)
        if top(module) == "dbsync_mq" and not any(within(module, ok) for ok in allowed)
    )


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        (path, allowed)
        for package, allowed in LAYERS_BELOW.items()
        for path in python_files(package)
    ],
    ids=lambda value: str(value.relative_to(ROOT)) if isinstance(value, Path) else "",
)
def test_storage_and_transport_import_only_the_core_and_themselves(
    path: Path, allowed: tuple[str, ...]
) -> None:
    assert outer_imports(path, allowed) == []


def test_the_layer_check_sees_an_outer_import() -> None:
    source = "from dbsync_mq.extensions import load_data\nfrom dbsync_mq.storage import schema"
    imports = set(imported_modules(source, "dbsync_mq.storage.local"))

    assert [m for m in imports if not within(m, "dbsync_mq.storage")] == [
        "dbsync_mq.extensions.load_data"
    ]


def test_only_the_rabbitmq_transport_modules_import_pika() -> None:
    importers = {
        str(path.relative_to(ROOT))
        for path in python_files("dbsync_mq", "worker")
        if any(top(module) == "pika" for module in imports_of(path))
    }

    assert importers == {
        "dbsync_mq/transport/rabbitmq.py",
        "dbsync_mq/transport/node.py",
        "dbsync_mq/transport/dead_letters.py",
    }


PUBLIC_NAMES = {
    "BrokerUnavailable",
    "CodecError",
    "ConfigurationError",
    "Conflict",
    "ConflictCase",
    "DatabaseUnavailable",
    "ExtensionError",
    "ExtensionFailure",
    "MergeError",
    "NotRegistered",
    "PendingChange",
    "PendingChanges",
    "PingResult",
    "ProtocolError",
    "PullRequired",
    "PullResult",
    "PushRejected",
    "PushResult",
    "QuarantinedRow",
    "RepairRequired",
    "RepairResult",
    "ReplyRejected",
    "RequestRefused",
    "SignatureError",
    "SyncClient",
    "SyncError",
    "SyncResult",
    "SyncStatus",
    "SyncTimeout",
    "TrackingError",
    "UniqueConstraintError",
    "extend",
    "track",
    "untracked",
}


def test_the_public_api_is_exactly_the_names_meant_to_be_public() -> None:
    assert len(dbsync_mq.__all__) == len(set(dbsync_mq.__all__)), "a name is listed twice"
    assert set(dbsync_mq.__all__) == PUBLIC_NAMES


@pytest.mark.parametrize("name", sorted(PUBLIC_NAMES))
def test_every_public_name_has_a_docstring_of_its_own(name: str) -> None:
    obj = getattr(dbsync_mq, name)
    doc = (obj.__doc__ or "").strip()

    assert doc, f"{name} has no docstring"
    # A dataclass without a docstring gets its signature as one.
    assert not doc.startswith(f"{name}("), f"{name} has only a generated docstring"


ERROR_CLASSES = sorted(
    (
        obj
        for obj in vars(errors).values()
        if inspect.isclass(obj) and obj.__module__ == errors.__name__
    ),
    key=lambda cls: cls.__name__,
)
RETRYABLE = {"BrokerUnavailable", "DatabaseUnavailable", "SyncTimeout", "PullRequired"}


def test_the_errors_module_defines_the_documented_errors() -> None:
    assert {cls.__name__ for cls in ERROR_CLASSES} >= {"SyncError", *RETRYABLE}


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_every_error_derives_from_sync_error(cls: type) -> None:
    assert issubclass(cls, errors.SyncError)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_exactly_the_transient_errors_are_retryable(cls: type[errors.SyncError]) -> None:
    assert cls.retryable is (cls.__name__ in RETRYABLE)


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda cls: cls.__name__)
def test_the_errors_module_docstring_draws_every_error(cls: type) -> None:
    assert re.search(rf"\b{cls.__name__}\b", errors.__doc__ or "")
