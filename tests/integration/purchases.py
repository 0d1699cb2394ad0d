"""The purchases workload of the convergence test, and the journal it is checked against.

Writers (the nodes, and an administrator writing on the server) insert
purchases with lines, parcels, deliveries, tags and receipts, update their
columns, move lines between purchases and delete whole subtrees. Nodes start
from the same state, so the integer keys of what they insert offline collide;
receipts sometimes take a UUID another writer took too, and two writers may tag
one purchase with the same label (a composite key): one row written twice.

Every insert carries values no other write uses (markers and tokens), and the
``Journal`` records each write as its writer makes it. Rows are named by their
marker (their keys may move), tags by their purchase's marker and label,
receipts by their UUID; a reference is recorded as the marker of the row it
points at. ``Journal.check`` states the rules the converged rows must follow.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from hypothesis import strategies as st
from sqlalchemy.orm import Session

from tests.models import Delivery, Parcel, Purchase, PurchaseLine, PurchaseTag, Receipt

Identity = tuple[Any, ...]
Markers = Callable[[type, Any], Any]
"""``markers(model, key)``: the marker of the row of ``model`` with primary key ``key``."""

REFERENCES: dict[str, type] = {"purchase_id": Purchase, "line_id": PurchaseLine}
"""Reference columns (named alike in every table) and the model they point at."""


@dataclass(frozen=True)
class Shape:
    """How the journal names a table's rows, and the columns it follows."""

    identity: tuple[str, ...]
    columns: tuple[str, ...]


SHAPES: dict[type, Shape] = {
    Purchase: Shape(("marker",), ("status", "notes")),
    PurchaseLine: Shape(("marker",), ("purchase_id", "quantity")),
    Parcel: Shape(("marker",), ("line_id", "weight")),
    Delivery: Shape(("marker",), ("purchase_id", "carrier")),
    PurchaseTag: Shape(("purchase_id", "label"), ("note",)),
    Receipt: Shape(("id",), ("purchase_id", "marker", "amount")),
}


def describe(model: type, row: Mapping[str, Any], markers: Markers) -> tuple[Identity, dict]:
    """The row's identity and followed values, references replaced by markers."""

    def value(column: str) -> Any:
        if column in REFERENCES and row[column] is not None:
            return markers(REFERENCES[column], row[column])
        return row[column]

    shape = SHAPES[model]
    identity = (model.__tablename__, *(value(c) for c in shape.identity))  # type: ignore[attr-defined]
    return identity, {column: value(column) for column in shape.columns}


@dataclass
class History:
    """Everything writers did to one row."""

    inserters: set[str] = field(default_factory=set)
    updaters: dict[str, set[str]] = field(default_factory=dict)
    last: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Column -> writer -> the last value that writer gave it (by insert or update)."""
    written: dict[str, list[Any]] = field(default_factory=dict)
    deleted: bool = False

    def write(self, writer: str, values: Mapping[str, Any]) -> None:
        for column, value in values.items():
            self.last.setdefault(column, {})[writer] = value
            self.written.setdefault(column, []).append(value)

    def allowed(self, column: str) -> list[Any]:
        """The values ``column`` may hold at the end: any value written, if the row
        was deleted; else the last value of each writer that updated it (of each
        inserter too, when several inserted it), or of its inserter if none did."""
        if self.deleted:
            return self.written[column]
        updaters = self.updaters.get(column, set())
        if len(self.inserters) > 1:
            writers = updaters | self.inserters
        elif len(updaters) > 1:
            writers = updaters
        else:
            writers = updaters or self.inserters
        return [self.last[column][writer] for writer in sorted(writers)]


class Journal:
    """What every writer wrote, to compare the converged rows with."""

    def __init__(self) -> None:
        self.rows: dict[Identity, History] = {}
        self.serial = itertools.count(1)

    def check(self, engine: sa.Engine) -> list[str]:
        """What is wrong with the rows of ``engine``; empty when nothing is.

        The rules: every row there was inserted, and is there once; a row nobody
        deleted is there; a row somebody deleted, if there, holds values writers
        gave it; otherwise each column holds the last value of the only writer
        that changed it, or of one of the writers that did (see ``allowed``, and
        the docstring of ``tests/integration/test_convergence.py``).
        """
        present = _read(engine)
        problems = [
            f"{identity}: {'there twice' if len(rows) > 1 else 'nobody inserted it'}"
            for identity, rows in present.items()
            if len(rows) > 1 or identity not in self.rows
        ]
        for identity, history in self.rows.items():
            if identity not in present:
                if not history.deleted:
                    problems.append(f"{identity}: lost")
                continue
            for column, value in present[identity][0].items():
                allowed = history.allowed(column)
                if value not in allowed:
                    problems.append(f"{identity}.{column} is {value!r}, not one of {allowed!r}")
        return problems


def _read(engine: sa.Engine) -> dict[Identity, list[dict[str, Any]]]:
    with engine.connect() as connection:
        tables = {
            model: connection.execute(sa.select(model.__table__)).mappings().all()  # type: ignore[attr-defined]
            for model in SHAPES
        }
    by_key = {
        model: {row["id"]: row["marker"] for row in tables[model]} for model in REFERENCES.values()
    }

    def markers(model: type, key: Any) -> Any:
        return by_key[model].get(key, f"dangling {key!r}")

    present: dict[Identity, list[dict[str, Any]]] = {}
    for model, rows in tables.items():
        for row in rows:
            identity, values = describe(model, row, markers)
            present.setdefault(identity, []).append(values)
    return present


@dataclass
class Author:
    """A writer (``n0``..., or ``admin``) writing through a session, into the journal."""

    name: str
    journal: Journal
    session: Session

    def token(self, kind: str) -> str:
        return f"{self.name}.{kind}{next(self.journal.serial)}"

    def number(self) -> int:
        return next(self.journal.serial)

    def insert(self, row: Any) -> Any:
        self.session.add(row)
        self.session.flush()
        identity, values = self._describe(row)
        history = self.journal.rows.setdefault(identity, History())
        history.inserters.add(self.name)
        history.write(self.name, values)
        return row

    def update(self, row: Any, column: str, value: Any) -> None:
        setattr(row, column, value)
        self.session.flush()
        identity, values = self._describe(row)
        history = self.journal.rows[identity]
        history.updaters.setdefault(column, set()).add(self.name)
        history.write(self.name, {column: values[column]})

    def delete(self, row: Any) -> None:
        identity, _values = self._describe(row)
        self.session.delete(row)
        self.session.flush()
        self.journal.rows[identity].deleted = True

    def pick(self, data: st.DataObject, model: type) -> Any:
        table: sa.Table = model.__table__  # type: ignore[attr-defined]
        rows = self.session.scalars(sa.select(model).order_by(*table.primary_key.columns)).all()
        return data.draw(st.sampled_from(rows)) if rows else None

    def _describe(self, row: Any) -> tuple[Identity, dict[str, Any]]:
        values = {column.name: getattr(row, column.name) for column in row.__table__.c}
        return describe(type(row), values, lambda model, key: self.session.get(model, key).marker)


# --- the writes -------------------------------------------------------------------------


def add_purchase(author: Author, data: st.DataObject) -> None:
    """A purchase with lines, parcels and a delivery; the purchase touched last, or not."""
    purchase = author.insert(Purchase(marker=author.token("p"), status=author.token("s")))
    for _ in range(data.draw(st.integers(0, 2))):
        line = author.insert(
            PurchaseLine(purchase_id=purchase.id, marker=author.token("l"), quantity=0)
        )
        if data.draw(st.booleans()):
            author.insert(Parcel(line_id=line.id, marker=author.token("c"), weight=0))
    if data.draw(st.booleans()):
        author.insert(Delivery(purchase_id=purchase.id, marker=author.token("d")))
    if data.draw(st.booleans()):
        author.update(purchase, "status", author.token("s"))


def add_child(author: Author, data: st.DataObject) -> None:
    """A line (with a parcel or not), a delivery, a tag or a receipt in any purchase."""
    purchase = author.pick(data, Purchase)
    if purchase is None:
        return
    kind = data.draw(st.sampled_from(["line", "delivery", "tag", "receipt"]))
    if kind == "line":
        line = author.insert(
            PurchaseLine(purchase_id=purchase.id, marker=author.token("l"), quantity=0)
        )
        if data.draw(st.booleans()):
            author.insert(Parcel(line_id=line.id, marker=author.token("c")))
    elif kind == "delivery":
        author.insert(Delivery(purchase_id=purchase.id, marker=author.token("d")))
    elif kind == "tag":
        label = data.draw(st.sampled_from(["gift", "rush"]))
        if author.session.get(PurchaseTag, (purchase.id, label)) is None:
            author.insert(PurchaseTag(purchase_id=purchase.id, label=label, note=author.token("t")))
    else:
        # A UUID another writer may take too, now and then: one row, written twice.
        shared = data.draw(st.booleans())
        key = uuid.UUID(int=data.draw(st.integers(1, 2)) if shared else 1000 + author.number())
        if author.session.get(Receipt, key) is None:
            marker = author.token("r")
            author.insert(Receipt(id=key, purchase_id=purchase.id, marker=marker, amount=0))


CHANGES: dict[type, tuple[str, ...]] = {
    Purchase: ("status", "notes"),
    PurchaseLine: ("quantity",),
    Parcel: ("weight",),
    Delivery: ("carrier",),
    PurchaseTag: ("note",),
    Receipt: ("amount",),
}


def change_purchase(author: Author, data: st.DataObject) -> None:
    """One column of a purchase: concurrent writers change different columns of one row."""
    if (purchase := author.pick(data, Purchase)) is not None:
        column = data.draw(st.sampled_from(CHANGES[Purchase]))
        author.update(purchase, column, author.token(column[0]))


def change_child(author: Author, data: st.DataObject) -> None:
    model = data.draw(st.sampled_from([m for m in CHANGES if m is not Purchase]))
    if (row := author.pick(data, model)) is not None:
        column = CHANGES[model][0]
        value = author.token("v") if column in ("carrier", "note") else author.number()
        author.update(row, column, value)


def move_line(author: Author, data: st.DataObject) -> None:
    line, purchase = author.pick(data, PurchaseLine), author.pick(data, Purchase)
    if line is not None and purchase is not None and line.purchase_id != purchase.id:
        author.update(line, "purchase_id", purchase.id)


def delete_purchase(author: Author, data: st.DataObject) -> None:
    """A purchase and everything in it."""
    if (purchase := author.pick(data, Purchase)) is None:
        return
    for line in _children(author, PurchaseLine, purchase_id=purchase.id):
        _delete_line(author, line)
    for model in (Delivery, PurchaseTag, Receipt):
        for row in _children(author, model, purchase_id=purchase.id):
            author.delete(row)
    author.delete(purchase)


def delete_child(author: Author, data: st.DataObject) -> None:
    model = data.draw(st.sampled_from([PurchaseLine, Parcel, Delivery, PurchaseTag, Receipt]))
    if (row := author.pick(data, model)) is None:
        return
    if model is PurchaseLine:
        _delete_line(author, row)
    else:
        author.delete(row)


def _delete_line(author: Author, line: PurchaseLine) -> None:
    for parcel in _children(author, Parcel, line_id=line.id):
        author.delete(parcel)
    author.delete(line)


def _children(author: Author, model: type, **parent: int) -> list[Any]:
    return list(author.session.scalars(sa.select(model).filter_by(**parent)))


Write = Callable[[Author, st.DataObject], None]

WRITES: list[Write] = [
    *[add_purchase] * 4,
    *[add_child] * 3,
    *[change_purchase] * 4,
    *[change_child] * 2,
    move_line,
    delete_purchase,
    delete_child,
]
"""What writers do to purchases, the likelier ones listed more often."""
