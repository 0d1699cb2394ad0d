"""Which models are synchronized: the ``track`` decorator and the ``ModelSet``.

``track`` records a mapped class (and how it may travel) in a registry of
declarations, the same way SQLAlchemy's own registry records mappings. The
clients and the server each build a ``ModelSet`` from it: the tracked tables in
foreign-key order, their keys, their columns.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, Literal

import sqlalchemy as sa
from sqlalchemy.orm import Mapper, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value

from dbsync_mq.core.model import Key, Reference, Schema, TableShape
from dbsync_mq.errors import ConfigurationError

Direction = Literal["both", "push", "pull"]
DIRECTIONS: Final = ("both", "push", "pull")


@dataclass(frozen=True, eq=False)
class TrackedModel:
    """A tracked mapped class and what the sync needs to know of its table."""

    cls: type
    table: sa.Table
    direction: Direction
    key_columns: tuple[str, ...]
    attributes: Mapping[str, str]
    """Column name -> mapped attribute key."""

    @property
    def name(self) -> str:
        return self.table.name

    @property
    def columns(self) -> tuple[str, ...]:
        return tuple(self.table.c.keys())

    @property
    def pushed(self) -> bool:
        """Whether clients log and push this model's writes."""
        return self.direction in ("both", "push")

    @property
    def pulled(self) -> bool:
        """Whether the server sends this model's rows to clients."""
        return self.direction in ("both", "pull")

    @property
    def self_references(self) -> tuple[str, ...]:
        """Columns referencing this same table's key (a tree: parent ids)."""
        return tuple(
            constraint.columns[0].name
            for constraint in self.table.foreign_key_constraints
            if constraint.referred_table is self.table and len(constraint.columns) == 1
        )

    def key_of(self, row: Mapping[str, Any]) -> Key:
        """The primary key of ``row`` (a tuple for composite keys)."""
        if len(self.key_columns) == 1:
            key: Key = row[self.key_columns[0]]
            return key
        return tuple(row[name] for name in self.key_columns)

    def instance(self, row: Mapping[str, Any]) -> Any:
        """An object of the model holding ``row``: detached, in no session, with its identity."""
        instance: Any = sa.inspect(self.cls).class_manager.new_instance()
        for column, value in row.items():
            if column in self.attributes:
                set_committed_value(instance, self.attributes[column], value)
        make_transient_to_detached(instance)
        return instance


_registry: dict[type, TrackedModel] = {}


def _describe(cls: type, direction: Direction) -> TrackedModel:
    if direction not in DIRECTIONS:
        raise ConfigurationError(f"direction must be one of {DIRECTIONS}, not {direction!r}")
    try:
        mapper: Mapper[Any] = sa.inspect(cls)
    except sa.exc.NoInspectionAvailable:
        raise ConfigurationError(f"{cls.__qualname__} is not a mapped class") from None
    table = mapper.local_table
    if not isinstance(table, sa.Table) or mapper.inherits is not None:
        raise ConfigurationError(f"{cls.__qualname__}: only single-table mappings can be tracked")
    if not table.name.isidentifier() or table.name.startswith("sync_"):
        raise ConfigurationError(f"{cls.__qualname__}: table name {table.name!r} is reserved")
    attributes = {}
    for column in table.columns:
        prop = mapper.get_property_by_column(column)
        attributes[column.name] = prop.key
    return TrackedModel(
        cls=cls,
        table=table,
        direction=direction,
        key_columns=tuple(column.name for column in table.primary_key.columns),
        attributes=attributes,
    )


def register(cls: type, direction: Direction) -> TrackedModel:
    """Record ``cls`` as tracked (``dbsync_mq.track`` is the public way)."""
    model = _registry[cls] = _describe(cls, direction)
    return model


def tracked_model(cls: type) -> TrackedModel:
    """The tracking description of ``cls``; ``ConfigurationError`` if it is not tracked."""
    try:
        return _registry[cls]
    except KeyError:
        raise ConfigurationError(
            f"{cls.__qualname__} is not tracked: decorate it with @dbsync_mq.track"
        ) from None


class ModelSet:
    """The tracked models one client or server works with, by table name."""

    def __init__(self, models: Iterable[TrackedModel]) -> None:
        self.by_table: dict[str, TrackedModel] = {}
        for model in models:
            other = self.by_table.setdefault(model.name, model)
            if other is not model:
                raise ConfigurationError(
                    f"tables named {model.name!r} are tracked twice ({other.cls.__qualname__}, "
                    f"{model.cls.__qualname__}): pass models= to choose"
                )
        tables = [model.table for model in self.by_table.values()]
        self.order: tuple[TrackedModel, ...] = tuple(
            self.by_table[table.name] for table in sa.schema.sort_tables(tables)
        )
        self.references: tuple[Reference, ...] = tuple(self._references())
        self.schema = Schema(
            tables={model.name: _shape(model) for model in self.order},
            references=self.references,
        )

    @classmethod
    def of(cls, classes: Iterable[type] | None = None) -> ModelSet:
        """The tracked models among ``classes``, or every tracked model when ``None``."""
        if classes is None:
            return cls(_registry.values())
        return cls(tracked_model(model) for model in classes)

    @classmethod
    def in_modules(cls, module_names: Iterable[str]) -> ModelSet:
        """Every tracked model defined in the named modules (or their submodules)."""
        prefixes = tuple(module_names)
        models = [
            model
            for model in _registry.values()
            if any(
                model.cls.__module__ == p or model.cls.__module__.startswith(p + ".")
                for p in prefixes
            )
        ]
        if not models:
            raise ConfigurationError(f"no tracked models in {', '.join(prefixes)}")
        return cls(models)

    def __iter__(self) -> Any:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)

    def get(self, table: str) -> TrackedModel:
        """The model of ``table``; ``ConfigurationError`` if it is not tracked here."""
        try:
            return self.by_table[table]
        except KeyError:
            raise ConfigurationError(f"table {table!r} is not tracked") from None

    def __contains__(self, table: object) -> bool:
        return table in self.by_table

    def _references(self) -> Iterable[Reference]:
        """Foreign keys between tracked tables that point at a primary key."""
        for model in self.order:
            for constraint in model.table.foreign_key_constraints:
                referred = self.by_table.get(constraint.referred_table.name)
                columns = tuple(e.column.name for e in constraint.elements)
                if referred is None or columns != referred.key_columns:
                    continue
                yield Reference(
                    table=model.name,
                    columns=tuple(c.name for c in constraint.columns),
                    referred_table=referred.name,
                    referred_columns=columns,
                )


def _unique_sets(table: sa.Table) -> tuple[tuple[str, ...], ...]:
    sets: list[tuple[str, ...]] = []
    for constraint in table.constraints:
        if isinstance(constraint, sa.UniqueConstraint):
            sets.append(tuple(column.name for column in constraint.columns))
    for index in table.indexes:
        if index.unique:
            sets.append(tuple(column.name for column in index.columns))
    keys = tuple(column.name for column in table.primary_key.columns)
    return tuple(dict.fromkeys(s for s in sets if s and s != keys))


def _integer_key(table: sa.Table) -> bool:
    columns = list(table.primary_key.columns)
    if len(columns) != 1:
        return False
    try:
        return columns[0].type.python_type is int
    except NotImplementedError:
        return False


def _shape(model: TrackedModel) -> TableShape:
    return TableShape(
        name=model.name,
        key_columns=model.key_columns,
        unique=_unique_sets(model.table),
        integer_key=_integer_key(model.table),
    )
