"""Extensions: data that is not a column but travels with a row (a photo file, say).

::

    dbsync_mq.extend(
        Person, "photo",
        load=lambda person: photos.read(person.id),          # None when there is none
        save=lambda person, data: photos.write(person.id, data),
        delete=lambda person: photos.remove(person.id),
    )

Declare it next to ``track``, on nodes and on the server alike. When a row is
pushed, ``load`` is called with the row as an object and its result (anything
msgpack carries) travels in the push; after the server commits the push, and
after a node commits a pull that applied the row, ``save`` is called with the
object and the data (``delete`` when the row was deleted). Nothing is silent:
a ``load`` that fails stops the push before it is sent; ``save`` and ``delete``
run after the commit, so their failures cannot undo it and are reported
instead (``PullResult.extension_failures`` on nodes, ERROR logs on the server).
Repairs carry rows only.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from dbsync_mq.core.model import DELETE, Change, Row
from dbsync_mq.errors import ConfigurationError, ExtensionError
from dbsync_mq.storage.models import ModelSet, TrackedModel, tracked_model

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Extension:
    """Callbacks that load, save and delete one piece of non-column data of a row."""

    name: str
    load: Callable[[Any], Any]
    save: Callable[[Any, Any], None]
    delete: Callable[[Any], None] | None = None


@dataclass(frozen=True)
class ExtensionFailure:
    """A ``save`` or ``delete`` callback that raised after its commit."""

    table: str
    key: Any
    extension: str
    error: str


_registry: dict[type, dict[str, Extension]] = {}


def extend(
    model: type,
    name: str,
    *,
    load: Callable[[Any], Any],
    save: Callable[[Any, Any], None],
    delete: Callable[[Any], None] | None = None,
) -> Extension:
    """Attach the extension ``name`` to the tracked ``model`` (see the module docstring)."""
    tracked_model(model)
    if not name.isidentifier():
        raise ConfigurationError(f"extension name {name!r} must be an identifier")
    extension = Extension(name, load, save, delete)
    _registry.setdefault(model, {})[name] = extension
    return extension


def extensions_of(model: TrackedModel) -> Mapping[str, Extension]:
    """The extensions declared on ``model`` (often none)."""
    return _registry.get(model.cls, {})


def load_data(model: TrackedModel, row: Row) -> dict[str, Any] | None:
    """The extension data of ``row``; ``ExtensionError`` if a ``load`` fails."""
    extensions = extensions_of(model)
    if not extensions:
        return None
    instance = model.instance(row)
    data = {}
    for name, extension in extensions.items():
        try:
            value = extension.load(instance)
        except Exception as exc:
            raise ExtensionError(
                [ExtensionFailure(model.name, model.key_of(row), name, repr(exc))]
            ) from exc
        if value is not None:
            data[name] = value
    return data or None


def run_callbacks(models: ModelSet, changes: Iterable[Change]) -> list[ExtensionFailure]:
    """Save (or delete) the extension data of committed changes; report what failed."""
    failures = []
    for change in changes:
        model = models.by_table.get(change.table)
        extensions = extensions_of(model) if model is not None else {}
        if model is None or not extensions:
            continue
        for name, extension in extensions.items():
            try:
                _run(model, change, name, extension)
            except Exception as exc:
                logger.error(
                    "extension %s of %s %r failed: %r", name, change.table, change.key, exc
                )
                failures.append(ExtensionFailure(change.table, change.key, name, repr(exc)))
    return failures


def _run(model: TrackedModel, change: Change, name: str, extension: Extension) -> None:
    if change.command == DELETE:
        if extension.delete is not None:
            parts = change.key if isinstance(change.key, tuple) else (change.key,)
            extension.delete(model.instance(dict(zip(model.key_columns, parts, strict=True))))
        return
    if change.extensions and name in change.extensions and change.values is not None:
        extension.save(model.instance(change.values), change.extensions[name])
