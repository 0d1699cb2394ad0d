"""Compression, rule by rule (DESIGN.md section 7.1): at most one change per row."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from itertools import count

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dbsync_mq.core.compression import (
    compress_local,
    compress_pull,
    compress_pull_stream,
    compress_remote,
    last_occurrences,
)
from dbsync_mq.core.model import DELETE, INSERT, UPDATE, Change, Command, Operation

COMPRESSION_LOGGER = "dbsync_mq.core.compression"


def log(*entries: tuple[str, object, Command, int, Sequence[str]]) -> list[Operation]:
    """A node's log, numbered in the order given: (table, key, command, hlc, columns)."""
    return [
        Operation(order, table, key, command, hlc, frozenset(columns))
        for order, (table, key, command, hlc, columns) in enumerate(entries, start=1)
    ]


def updates(n: int, first_hlc: int = 10) -> list[tuple[str, object, Command, int, Sequence[str]]]:
    return [("city", 1, UPDATE, first_hlc + i, ["name"]) for i in range(n)]


# Local rules


commands = st.sampled_from([INSERT, UPDATE, DELETE])
column_sets = st.lists(st.sampled_from(["name", "population"]), max_size=2, unique=True)


@given(st.lists(st.tuples(commands, column_sets), min_size=1, max_size=8))
def test_a_log_with_one_operation_per_row_compresses_as_the_rules_say(
    entries: list[tuple[Command, list[str]]],
) -> None:
    # Given a log where every row appears once, and the same log followed by two
    # operations on another row (so that it goes the general way)
    once = log(*(("city", n, command, n * 10, cols) for n, (command, cols) in enumerate(entries)))
    more = len(once)
    twice = [
        *once,
        Operation(more + 1, "other", 0, INSERT, 1),
        Operation(more + 2, "other", 0, UPDATE, 2),
    ]

    # Then both give the same change for each row of the first log, in its order
    general = {c.row_key: c for c in compress_local(twice) if c.table == "city"}
    assert compress_local(once) == [general[op.row_key] for op in once]


@pytest.mark.parametrize("n_updates", [0, 1, 3])
def test_local_insert_then_updates_compress_to_insert(n_updates: int) -> None:
    operations = log(("city", 1, INSERT, 5, []), *updates(n_updates))

    latest = 10 + n_updates - 1 if n_updates else 5
    assert compress_local(operations) == [Change("city", 1, INSERT, latest)]


@pytest.mark.parametrize("n_updates", [0, 1, 3])
def test_local_insert_updates_then_delete_compress_to_nothing(n_updates: int) -> None:
    operations = log(("city", 1, INSERT, 5, []), *updates(n_updates), ("city", 1, DELETE, 50, []))

    assert compress_local(operations) == []


def test_local_updates_compress_to_one_update_with_merged_column_clocks() -> None:
    # Given updates of overlapping columns
    operations = log(
        ("city", 1, UPDATE, 10, ["name"]),
        ("city", 1, UPDATE, 11, ["population"]),
        ("city", 1, UPDATE, 12, ["name", "mayor"]),
    )

    # Then one update remains, each column stamped by its latest write
    assert compress_local(operations) == [
        Change("city", 1, UPDATE, 12, clocks={"name": 12, "population": 11, "mayor": 12})
    ]


@pytest.mark.parametrize("n_updates", [0, 1, 3])
def test_local_updates_then_delete_compress_to_delete(n_updates: int) -> None:
    operations = log(*updates(n_updates), ("city", 1, DELETE, 50, []))

    assert compress_local(operations) == [Change("city", 1, DELETE, 50)]


def test_local_compression_keeps_rows_of_different_tables_and_keys_apart() -> None:
    operations = log(
        ("city", 1, INSERT, 1, []),
        ("person", 1, DELETE, 2, []),
        ("city", 2, UPDATE, 3, ["name"]),
        ("city", 1, UPDATE, 4, ["name"]),
    )

    assert compress_local(operations) == [
        Change("person", 1, DELETE, 2),
        Change("city", 2, UPDATE, 3, clocks={"name": 3}),
        Change("city", 1, INSERT, 4),
    ]


def test_local_output_is_ordered_by_each_rows_last_operation() -> None:
    # Given row A written first and last, row B in between, row C in between too
    operations = log(
        ("city", "A", INSERT, 1, []),
        ("city", "B", INSERT, 2, []),
        ("city", "A", UPDATE, 3, ["name"]),
        ("city", "C", INSERT, 4, []),
        ("city", "B", UPDATE, 5, ["name"]),
    )

    keys = [change.key for change in compress_local(operations)]

    assert keys == ["A", "C", "B"]


def test_local_output_follows_the_log_order_not_the_order_operations_are_given_in() -> None:
    first, second = log(("city", "A", INSERT, 1, []), ("city", "B", INSERT, 2, []))
    later_a = Operation(3, "city", "A", UPDATE, 3, frozenset({"name"}))

    keys = [change.key for change in compress_local([first, later_a, second])]

    assert keys == ["B", "A"]


def test_a_local_update_after_a_delete_changed_every_column() -> None:
    # Given a row deleted and inserted again (by raw SQL, say), then one column updated
    operations = log(
        ("city", 1, DELETE, 10, []), ("city", 1, INSERT, 11, []), ("city", 1, UPDATE, 12, ["name"])
    )

    # Then the node changed every column of the row: its update names none
    assert compress_local(operations) == [Change("city", 1, UPDATE, 12)]


def test_a_remote_update_after_a_delete_changed_every_column() -> None:
    # Given a remote row updated, deleted, inserted again, and updated once more
    row = {"id": 1, "name": "Quito", "population": 3}
    changes = [
        Change("city", 1, UPDATE, 4, row, {"name": 4}),
        Change("city", 1, DELETE, 5),
        Change("city", 1, INSERT, 6, row),
        Change("city", 1, UPDATE, 8, row, {"name": 8}),
    ]

    # Then every column was changed since the node's version
    (compressed,) = compress_remote(changes)
    assert compressed.command == UPDATE
    assert compressed.clocks == {"id": 6, "name": 8, "population": 6}


# What the pulling node wrote itself


def test_a_pull_names_only_the_columns_others_wrote_last() -> None:
    # Given the node wrote the status, another node the notes and then the status again,
    # and the node wrote the name after the other node had
    row = {"id": 1, "name": "n", "status": "s", "notes": "x"}
    changes = [
        (Change("order", 1, UPDATE, 1, row, {"status": 1, "name": 1}), True),
        (Change("order", 1, UPDATE, 2, row, {"notes": 2, "name": 2}), False),
        (Change("order", 1, UPDATE, 3, row, {"name": 3}), True),
        (Change("order", 1, UPDATE, 4, row, {"notes": 4}), False),
    ]

    # Then the update names the notes only: the status and the name are the node's own
    assert compress_pull(changes) == [Change("order", 1, UPDATE, 4, row, {"notes": 4})]


def test_a_pull_leaves_out_rows_the_node_wrote_last() -> None:
    row = {"id": 1, "name": "n"}
    changes = [
        (Change("order", 1, INSERT, 1, row), False),
        (Change("order", 1, UPDATE, 2, row, {"name": 2}), True),
    ]

    assert compress_pull(changes) == []


def test_a_row_the_node_inserted_and_another_node_deleted_is_a_delete_to_it() -> None:
    # Given the node's own insert in the range, then another node's delete
    changes = [
        (Change("order", 1, INSERT, 1, {"id": 1}), True),
        (Change("order", 1, DELETE, 2), False),
    ]

    # Then the node must delete the row it has (and to others, the key was taken)
    assert compress_pull(changes) == [Change("order", 1, DELETE, 2)]
    assert compress_remote(change for change, _own in changes) == [Change("order", 1, DELETE, 2)]


def test_a_row_the_node_inserted_and_another_node_updated_is_an_update_to_it() -> None:
    row = {"id": 1, "name": "n", "notes": "x"}
    changes = [
        (Change("order", 1, INSERT, 1, row), True),
        (Change("order", 1, UPDATE, 2, row, {"notes": 2}), False),
    ]

    assert compress_pull(changes) == [Change("order", 1, UPDATE, 2, row, {"notes": 2})]


# Irregular local sequences: a warning naming the row, never an exception.

IRREGULAR = [
    pytest.param([UPDATE, DELETE, UPDATE], UPDATE, id="update-after-delete"),
    pytest.param([DELETE, INSERT], UPDATE, id="insert-after-delete"),
    pytest.param([DELETE, DELETE], DELETE, id="delete-after-delete"),
    pytest.param([INSERT, INSERT], INSERT, id="insert-after-insert"),
    pytest.param([UPDATE, INSERT], UPDATE, id="insert-after-update"),
    pytest.param([INSERT, DELETE, INSERT], INSERT, id="insert-after-insert-and-delete"),
    pytest.param([INSERT, DELETE, UPDATE], INSERT, id="update-after-insert-and-delete"),
    pytest.param([INSERT, DELETE, DELETE], None, id="delete-after-insert-and-delete"),
]


@pytest.mark.parametrize(("commands", "expected"), IRREGULAR)
def test_irregular_local_sequences_warn_naming_the_row_and_compress_to_its_state_now(
    commands: list[Command], expected: Command | None, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a log no SQLAlchemy session alone could write (a write outside it, a reused key)
    operations = log(
        *[("person", 41, command, hlc, ["name"]) for hlc, command in enumerate(commands)]
    )

    # When it is compressed
    with caplog.at_level(logging.WARNING, logger=COMPRESSION_LOGGER):
        compressed = compress_local(operations)

    # Then a warning names the table and the key
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings, "no warning was logged"
    assert all(r.name == COMPRESSION_LOGGER for r in warnings)
    assert "person" in warnings[0].getMessage()
    assert "41" in warnings[0].getMessage()
    # And the row compresses to what it is now: on the server before or not, here now or not
    assert [change.command for change in compressed] == ([] if expected is None else [expected])


def test_regular_local_sequences_log_no_warning(caplog: pytest.LogCaptureFixture) -> None:
    operations = log(("city", 1, INSERT, 1, []), *updates(2), ("city", 2, UPDATE, 20, ["name"]))

    with caplog.at_level(logging.DEBUG, logger=COMPRESSION_LOGGER):
        compress_local(operations)

    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


rows = st.sampled_from([("city", 1), ("city", 2), ("person", 1), ("tag", ("a", 1))])
commands = st.sampled_from([INSERT, UPDATE, DELETE])


@given(st.lists(st.tuples(rows, commands, st.sets(st.sampled_from("abc"))), max_size=30))
def test_local_compression_depends_only_on_each_rows_first_and_last_command(
    entries: list[tuple[tuple[str, object], Command, set[str]]],
) -> None:
    # Given any log, regular or not, stamped by an increasing clock
    stamps = count(100)
    operations = [
        Operation(order, table, key, command, next(stamps), frozenset(columns))
        for order, ((table, key), command, columns) in enumerate(entries)
    ]

    # When it is compressed (irregular logs warn, which is beside the point here)
    compressed = compress_local(operations)

    # Then each row is new to the server iff its first command is an insert,
    # and still here iff its last command is not a delete
    expected = {}
    for row in dict.fromkeys(op.row_key for op in operations):
        mine = [op for op in operations if op.row_key == row]
        new, here = mine[0].command == INSERT, mine[-1].command != DELETE
        if new and here:
            expected[row] = INSERT
        elif not new:
            expected[row] = UPDATE if here else DELETE
    assert {change.row_key: change.command for change in compressed} == expected
    assert len(compressed) == len(expected)


# Remote rules, by the first and last command of each row


def test_remote_first_insert_last_delete_compress_to_a_delete_the_key_was_taken() -> None:
    changes = [
        Change("city", 1, INSERT, 1, {"id": 1, "name": "Lima"}),
        Change("city", 1, UPDATE, 2, {"id": 1, "name": "Quito"}, {"name": 2}),
        Change("city", 1, DELETE, 3),
    ]

    # A node with a new row under key 1 must learn that the key was used
    assert compress_remote(changes) == [Change("city", 1, DELETE, 3, clocks={"name": 2})]


def test_remote_first_insert_compresses_to_insert_with_the_last_values() -> None:
    changes = [
        Change("city", 1, INSERT, 1, {"id": 1, "name": "Lima", "population": 1}),
        Change("city", 1, UPDATE, 2, {"id": 1, "name": "Quito", "population": 1}, {"name": 2}),
        Change(
            "city", 1, UPDATE, 3, {"id": 1, "name": "Quito", "population": 9}, {"population": 3}
        ),
    ]

    (compressed,) = compress_remote(changes)

    assert compressed.command == INSERT
    assert compressed.values == {"id": 1, "name": "Quito", "population": 9}
    assert compressed.hlc == 3


@pytest.mark.parametrize("first", [UPDATE, DELETE])
def test_remote_first_update_or_delete_last_delete_compress_to_delete(first: Command) -> None:
    changes = [
        Change("city", 1, first, 1, None if first == DELETE else {"id": 1, "name": "Lima"}),
        Change("city", 1, INSERT, 2, {"id": 1, "name": "Quito"}),
        Change("city", 1, DELETE, 3),
    ]

    assert compress_remote(changes) == [Change("city", 1, DELETE, 3)]


def test_remote_first_update_last_not_delete_compress_to_update() -> None:
    changes = [
        Change("city", 1, UPDATE, 5, {"id": 1, "name": "Lima", "population": 1}, {"name": 5}),
        Change("city", 1, UPDATE, 7, {"id": 1, "name": "Lima", "population": 2}, {"population": 7}),
        Change("city", 1, UPDATE, 6, {"id": 1, "name": "Quito", "population": 2}, {"name": 6}),
    ]

    assert compress_remote(changes) == [
        Change(
            "city",
            1,
            UPDATE,
            7,
            {"id": 1, "name": "Quito", "population": 2},
            {"name": 6, "population": 7},
        )
    ]


def test_remote_first_delete_last_not_delete_compress_to_update_with_all_columns() -> None:
    # Given a row deleted and then inserted again (a key the server reused)
    changes = [
        Change("city", 1, DELETE, 4),
        Change("city", 1, INSERT, 8, {"id": 1, "name": "Quito", "population": 3}),
    ]

    # Then the node gets an update that overwrites every column
    assert compress_remote(changes) == [
        Change(
            "city",
            1,
            UPDATE,
            8,
            {"id": 1, "name": "Quito", "population": 3},
            {"id": 8, "name": 8, "population": 8},
        )
    ]


def test_remote_compression_keeps_rows_apart() -> None:
    changes = [
        Change("city", 1, INSERT, 1, {"id": 1}),
        Change("person", 1, DELETE, 2),
        Change("city", 2, UPDATE, 3, {"id": 2}, {"id": 3}),
    ]

    assert sorted(c.row_key for c in compress_remote(changes)) == [
        ("city", 1),
        ("city", 2),
        ("person", 1),
    ]


@given(
    st.lists(
        st.tuples(rows, commands, st.sets(st.sampled_from("abc")), st.booleans(), st.booleans()),
        max_size=40,
    )
)
def test_a_streamed_pull_compresses_exactly_as_one_held_whole(
    entries: list[tuple[tuple[str, object], Command, set[str], bool, bool]],
) -> None:
    # Given any sequence of the server's changes, some the pulling node's own, some with
    # extension data
    stamps = count(100)
    changes = []
    for (table, key), command, columns, own, extended in entries:
        hlc = next(stamps)
        values = None if command == DELETE else {"id": key, **{c: hlc for c in "abc"}}
        clocks = {c: hlc for c in columns} if command == UPDATE else {}
        extensions = {"photo": hlc} if extended and values else None
        changes.append((Change(table, key, command, hlc, values, clocks, extensions), own))

    # When it is compressed in two passes, holding only the rows not finished yet
    last = last_occurrences(change for change, _own in changes)
    streamed = list(compress_pull_stream(iter(changes), last))

    # Then it gives the same changes as compressing it whole (in last-change order)
    whole = compress_pull(changes)
    assert sorted(streamed, key=repr) == sorted(whole, key=repr)
    assert len({change.row_key for change in streamed}) == len(streamed)
