"""The merge rules, one test per conflict kind and policy, on plain data (no database)."""

from __future__ import annotations

import uuid

import pytest

from dbsync_mq.core.merge import ConflictCase, MergeInput, plan_merge
from dbsync_mq.core.model import DELETE, INSERT, UPDATE, Change, Reference, Schema, TableShape
from dbsync_mq.errors import ConfigurationError, MergeError, UniqueConstraintError

SCHEMA = Schema(
    tables={
        "city": TableShape("city", ("id",), unique=(("name",),), integer_key=True),
        "person": TableShape("person", ("id",), unique=(("code",),), integer_key=True),
        "pet": TableShape("pet", ("id",), integer_key=True),
        "badge": TableShape("badge", ("person_id", "label")),
        "note": TableShape("note", ("id",)),
    },
    references=(
        Reference("person", ("city_id",), "city", ("id",)),
        Reference("pet", ("owner_id",), "person", ("id",)),
        Reference("badge", ("person_id",), "person", ("id",)),
    ),
)
POLICIES = ["node-wins", "server-wins", "last-writer-wins"]


def city(key: int, name: str = "x", population: int = 0) -> dict[str, object]:
    return {"id": key, "name": name, "population": population}


def person(key: int, city_id: int | None) -> dict[str, object]:
    return {"id": key, "name": f"p{key}", "city_id": city_id}


def local(table: str, key: object, command: str, hlc: int = 10, **clocks: int) -> Change:
    return Change(table, key, command, hlc, clocks=clocks)  # type: ignore[arg-type]


def remote(
    table: str,
    key: object,
    command: str,
    values: dict[str, object] | None = None,
    hlc: int = 20,
    **clocks: int,
) -> Change:
    return Change(table, key, command, hlc, values, clocks)  # type: ignore[arg-type]


# --- no conflict ---------------------------------------------------------------------


def test_remote_changes_without_local_changes_are_applied_as_they_are():
    plan = plan_merge(
        SCHEMA,
        MergeInput(
            local=[],
            remote=[
                remote("city", 1, INSERT, city(1)),
                remote("city", 2, UPDATE, city(2, "b")),
                remote("city", 3, DELETE),
            ],
            local_rows={("city", 3): city(3)},
            existing={("city", 2)},
        ),
    )
    assert plan.inserts == {("city", 1): city(1)}
    assert plan.updates == {("city", 2): city(2, "b")}
    assert plan.deletes == {("city", 3)}
    assert plan.conflicts == []
    assert plan.log_drop == set()
    assert plan.log_add == []


def test_a_remote_update_of_a_row_missing_locally_inserts_it():
    plan = plan_merge(SCHEMA, MergeInput(local=[], remote=[remote("city", 7, UPDATE, city(7))]))
    assert plan.inserts == {("city", 7): city(7)}


# --- direct: update against update -------------------------------------------------------


def _update_update(policy: object):
    return plan_merge(
        SCHEMA,
        MergeInput(
            local=[local("city", 1, UPDATE, 30, name=30)],
            remote=[remote("city", 1, UPDATE, city(1, "remote", 5), 20, name=20, population=20)],
            local_rows={("city", 1): city(1, "local", 0)},
        ),
        policy,
    )  # type: ignore[arg-type]


def test_direct_update_update_node_wins_keeps_local_values_of_columns_both_sides_changed():
    # local wrote name; remote wrote name and population
    plan = _update_update("node-wins")
    assert plan.updates == {("city", 1): city(1, "local", 5)}
    assert [(e.command, e.columns, e.hlc) for e in plan.log_add] == [
        (UPDATE, frozenset({"name"}), 30)
    ]
    (conflict,) = plan.conflicts
    assert (conflict.kind, conflict.winner) == ("direct", "merged")


def test_direct_update_update_server_wins_takes_remote_values_and_drops_local_log():
    plan = _update_update("server-wins")
    assert plan.updates == {("city", 1): city(1, "remote", 5)}
    assert plan.log_drop == {("city", 1)}
    assert plan.log_add == []
    assert plan.conflicts[0].winner == "remote"


def test_direct_update_update_last_writer_wins_merges_column_by_column():
    # local wrote name at 30 (later than remote's 20); remote wrote population at 20
    plan = _update_update("last-writer-wins")
    assert plan.updates == {("city", 1): city(1, "local", 5)}
    assert [(e.columns, e.hlc) for e in plan.log_add] == [(frozenset({"name"}), 30)]
    assert plan.conflicts[0].winner == "merged"


def test_direct_update_update_last_writer_wins_gives_ties_to_the_server():
    plan = plan_merge(
        SCHEMA,
        MergeInput(
            local=[local("city", 1, UPDATE, 20, name=20)],
            remote=[remote("city", 1, UPDATE, city(1, "remote"), 20, name=20)],
            local_rows={("city", 1): city(1, "local")},
        ),
        "last-writer-wins",
    )
    assert plan.updates == {("city", 1): city(1, "remote")}


def test_direct_update_update_callable_policy_decides_the_row():
    seen: list[ConflictCase] = []

    def resolve(case: ConflictCase) -> dict[str, object]:
        seen.append(case)
        return {**case.remote, "name": f"{case.local['name']}+{case.remote['name']}"}

    plan = _update_update(resolve)
    assert seen == [
        ConflictCase(
            "city",
            1,
            city(1, "local", 0),
            city(1, "remote", 5),
            local_changed=frozenset({"name"}),
            remote_changed=frozenset({"name", "population"}),
        )
    ]
    assert plan.updates == {("city", 1): city(1, "local+remote", 5)}
    assert [e.columns for e in plan.log_add] == [frozenset({"name"})]


@pytest.mark.parametrize("policy", POLICIES)
def test_direct_update_update_keeps_each_sides_columns_whatever_the_policy(policy):
    # Given the node changed the population and the server the name, of the same city
    plan = plan_merge(
        SCHEMA,
        MergeInput(
            local=[local("city", 1, UPDATE, 30, population=30)],
            remote=[remote("city", 1, UPDATE, city(1, "remote", 0), 20, name=20)],
            local_rows={("city", 1): city(1, "x", 7)},
        ),
        policy,
    )
    # Then the row takes both changes, and the node pushes its own column only
    assert plan.updates == {("city", 1): city(1, "remote", 7)}
    assert [(e.columns, e.hlc) for e in plan.log_add] == [(frozenset({"population"}), 30)]
    assert plan.log_drop == {("city", 1)}
    assert [(c.kind, c.winner, c.lost) for c in plan.conflicts] == [("direct", "merged", None)]


@pytest.mark.parametrize(("policy", "name"), [("node-wins", "local"), ("server-wins", "remote")])
def test_a_remote_update_without_clocks_changed_every_column(policy, name):
    # Given a remote update whose columns are unknown (no clocks)
    plan = plan_merge(
        SCHEMA,
        MergeInput(
            local=[local("city", 1, UPDATE, 30, name=30)],
            remote=[remote("city", 1, UPDATE, city(1, "remote", 5), 20)],
            local_rows={("city", 1): city(1, "local", 0)},
        ),
        policy,
    )
    # Then the name is a column both sides changed, and the population the server's
    assert plan.updates == {("city", 1): city(1, name, 5)}


def test_a_local_update_without_clocks_changed_every_column():
    # Given a local update whose columns are unknown (a row the node inserted again)
    plan = plan_merge(
        SCHEMA,
        MergeInput(
            local=[local("city", 1, UPDATE, 30)],
            remote=[remote("city", 1, UPDATE, city(1, "remote", 5), 20, name=20)],
            local_rows={("city", 1): city(1, "local", 7)},
        ),
        "server-wins",
    )
    # Then only the server's own column goes to the server; the node keeps the rest
    assert plan.updates == {("city", 1): city(1, "remote", 7)}
    assert [(e.columns, e.hlc) for e in plan.log_add] == [(frozenset({"population"}), 30)]


def test_a_callable_policy_can_merge_by_the_columns_each_side_changed():
    def mine_where_only_mine(case: ConflictCase) -> dict[str, object]:
        assert case.local is not None
        assert case.remote is not None
        only_mine = case.local_changed - case.remote_changed
        return {**case.remote, **{column: case.local[column] for column in only_mine}}

    plan = plan_merge(
        SCHEMA,
        MergeInput(
            local=[local("city", 1, UPDATE, 30, population=30, name=30)],
            remote=[remote("city", 1, UPDATE, city(1, "remote", 5), 20, name=20)],
            local_rows={("city", 1): city(1, "local", 7)},
        ),
        mine_where_only_mine,
    )
    assert plan.updates == {("city", 1): city(1, "remote", 7)}


# --- direct: delete against update -------------------------------------------------------


def _remote_delete_local_update(policy: str, local_hlc: int = 30):
    return plan_merge(
        SCHEMA,
        MergeInput(
            local=[local("city", 1, UPDATE, local_hlc, name=local_hlc)],
            remote=[remote("city", 1, DELETE, hlc=20)],
            local_rows={("city", 1): city(1, "local")},
        ),
        policy,
    )


def test_direct_remote_delete_local_update_node_wins_undoes_the_delete():
    plan = _remote_delete_local_update("node-wins")
    assert plan.deletes == set()
    assert [(e.command, e.key) for e in plan.log_add] == [(INSERT, 1)]
    assert plan.conflicts[0].winner == "local"


def test_direct_remote_delete_local_update_server_wins_deletes_the_row():
    plan = _remote_delete_local_update("server-wins")
    assert plan.deletes == {("city", 1)}
    assert plan.log_drop == {("city", 1)}
    assert plan.log_add == []
    assert plan.conflicts[0].lost == city(1, "local")


@pytest.mark.parametrize(("local_hlc", "deleted"), [(30, False), (10, True)])
def test_direct_remote_delete_local_update_last_writer_wins_by_clock(local_hlc, deleted):
    plan = _remote_delete_local_update("last-writer-wins", local_hlc)
    assert (("city", 1) in plan.deletes) is deleted


def _remote_update_local_delete(policy: str, local_hlc: int = 10):
    return plan_merge(
        SCHEMA,
        MergeInput(
            local=[local("city", 1, DELETE, local_hlc)],
            remote=[remote("city", 1, UPDATE, city(1, "remote"), 20, name=20)],
        ),
        policy,
    )


@pytest.mark.parametrize("policy", ["node-wins", "server-wins"])
def test_direct_remote_update_local_delete_reinserts_the_remote_row(policy):
    plan = _remote_update_local_delete(policy)
    assert plan.inserts == {("city", 1): city(1, "remote")}
    assert plan.log_drop == {("city", 1)}
    assert plan.log_add == []
    assert plan.conflicts[0].winner == "remote"


@pytest.mark.parametrize(("local_hlc", "deleted"), [(30, True), (10, False)])
def test_direct_remote_update_local_delete_last_writer_wins_by_clock(local_hlc, deleted):
    plan = _remote_update_local_delete("last-writer-wins", local_hlc)
    assert (("city", 1) in plan.inserts) is not deleted
    assert [e.command for e in plan.log_add] == ([DELETE] if deleted else [])


def test_direct_callable_returning_none_deletes_and_pushes_the_delete():
    plan = plan_merge(
        SCHEMA,
        MergeInput(
            local=[local("city", 1, UPDATE, name=10)],
            remote=[remote("city", 1, UPDATE, city(1, "remote"), name=20)],
            local_rows={("city", 1): city(1, "local")},
        ),
        lambda case: None,
    )
    assert plan.deletes == {("city", 1)}
    assert [e.command for e in plan.log_add] == [DELETE]


@pytest.mark.parametrize("policy", POLICIES)
def test_direct_delete_delete_is_a_no_op(policy):
    plan = plan_merge(
        SCHEMA,
        MergeInput(
            local=[local("city", 1, DELETE)],
            remote=[remote("city", 1, DELETE)],
        ),
        policy,
    )
    assert plan.deletes == set()
    assert plan.inserts == {}
    assert plan.conflicts == []
    assert plan.log_drop == {("city", 1)}


# --- dependency ------------------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
def test_dependency_remote_delete_of_a_referenced_row_is_undone(policy):
    # Given a local person (unpushed) in a city the server deleted
    plan = plan_merge(
        SCHEMA,
        MergeInput(
            local=[local("person", 9, INSERT)],
            remote=[remote("city", 1, DELETE)],
            local_rows={("person", 9): person(9, 1), ("city", 1): city(1)},
        ),
        policy,
    )
    # Then the city stays and is pushed back to the server
    assert plan.deletes == set()
    assert [(e.table, e.key, e.command) for e in plan.log_add] == [("city", 1, INSERT)]
    assert [(c.kind, c.table, c.key) for c in plan.conflicts] == [("dependency", "city", 1)]


@pytest.mark.parametrize("policy", POLICIES)
def test_reversed_dependency_local_delete_of_a_referenced_row_is_undone(policy):
    # Given a city deleted locally and a remote person who lives there
    plan = plan_merge(
        SCHEMA,
        MergeInput(
            local=[local("city", 1, DELETE)],
            remote=[remote("person", 9, INSERT, person(9, 1))],
            server_rows={("city", 1): city(1, "server")},
        ),
        policy,
    )
    # Then the city comes back with the server's values and the local delete is dropped
    assert plan.inserts == {("person", 9): person(9, 1), ("city", 1): city(1, "server")}
    assert ("city", 1) in plan.log_drop
    assert [(c.kind, c.key) for c in plan.conflicts] == [("reversed-dependency", 1)]


def test_reversed_dependency_without_the_server_row_is_a_merge_error():
    with pytest.raises(MergeError, match="repair"):
        plan_merge(
            SCHEMA,
            MergeInput(
                local=[local("city", 1, DELETE)],
                remote=[remote("person", 9, INSERT, person(9, 1))],
            ),
        )


# --- insert collisions -----------------------------------------------------------------------


@pytest.mark.parametrize("policy", POLICIES)
def test_insert_collision_moves_the_local_row_and_its_references(policy):
    # Given both sides inserted city 1, and a local person in the local city 1
    plan = plan_merge(
        SCHEMA,
        MergeInput(
            local=[local("city", 1, INSERT), local("person", 5, INSERT)],
            remote=[
                remote("city", 1, INSERT, city(1, "server")),
                remote("city", 2, INSERT, city(2, "server2")),
            ],
            local_rows={("city", 1): city(1, "mine"), ("person", 5): person(5, 1)},
            next_keys={"city": 2},
        ),
        policy,
    )
    # Then the local city moves past every known key, the server's keeps its key
    (rekey,) = plan.rekeys
    assert (rekey.table, rekey.old, rekey.new) == ("city", 1, 3)
    assert plan.inserts[("city", 1)] == city(1, "server")
    assert plan.updates[("person", 5)] == person(5, 3)
    assert plan.log_add == []  # the person is an insert: its own log entry pushes it
    (conflict,) = plan.conflicts
    assert (conflict.kind, conflict.new_key) == ("insert", 3)


@pytest.mark.parametrize("policy", POLICIES)
def test_a_local_insert_under_a_key_the_server_deleted_moves_like_a_collision(policy):
    # Given a local city 1 and a person in it, and the server's delete of its own city 1
    # (inserted and deleted by others while this node was away)
    plan = plan_merge(
        SCHEMA,
        MergeInput(
            local=[local("city", 1, INSERT), local("person", 5, INSERT)],
            remote=[remote("city", 1, DELETE)],
            local_rows={("city", 1): city(1, "mine"), ("person", 5): person(5, 1)},
            next_keys={"city": 2},
        ),
        policy,
    )
    # Then the local city moves to a fresh key with its person: key 1 named another row,
    # which children elsewhere may still reference
    (rekey,) = plan.rekeys
    assert (rekey.table, rekey.old, rekey.new) == ("city", 1, 2)
    assert plan.updates[("person", 5)] == person(5, 2)
    assert ("city", 1) not in plan.inserts


@pytest.mark.parametrize("command", [INSERT, DELETE])
def test_a_row_the_merge_put_back_keeps_its_key_whatever_the_server_did_under_it(command):
    # Given a local city 1 the merge put back (RESTORE), and the server's insert or delete
    # under key 1: the same row, put back elsewhere too or deleted again
    server_row = city(1, "server") if command == INSERT else None
    plan = plan_merge(
        SCHEMA,
        MergeInput(
            local=[local("city", 1, INSERT)],
            remote=[remote("city", 1, command, server_row)],
            local_rows={("city", 1): city(1, "mine")},
            next_keys={"city": 2},
            restored={("city", 1)},
        ),
        "node-wins",
    )
    # Then it does not move: moving it would make a second copy of the row
    assert plan.rekeys == []


def _family(name: str) -> dict[tuple[str, object], dict[str, object]]:
    """A city 1, a person 1 living there with a unique code, and the person's pet 1."""
    return {
        ("city", 1): city(1, f"city-{name}"),
        ("person", 1): {"id": 1, "name": name, "code": f"code-{name}", "city_id": 1},
        ("pet", 1): {"id": 1, "owner_id": 1},
    }


@pytest.mark.parametrize("remote_order", [["city", "person", "pet"], ["pet", "person", "city"]])
@pytest.mark.parametrize("local_order", [["city", "person", "pet"], ["pet", "person", "city"]])
def test_insert_collision_of_three_levels_moves_every_local_row_in_any_order(
    local_order, remote_order
):
    # Given both sides inserted a city, a person in it and the person's pet, same keys
    mine, theirs = _family("mine"), _family("theirs")
    plan = plan_merge(
        SCHEMA,
        MergeInput(
            local=[local(table, 1, INSERT) for table in local_order],
            remote=[remote(table, 1, INSERT, theirs[table, 1]) for table in remote_order],
            local_rows=mine,
            next_keys={"city": 2, "person": 2, "pet": 2},
        ),
    )
    # Then every local row moves to key 2 and points at its moved parent
    assert {(r.table, r.old, r.new) for r in plan.rekeys} == {
        ("city", 1, 2),
        ("person", 1, 2),
        ("pet", 1, 2),
    }
    assert plan.updates == {
        ("person", 2): {**mine["person", 1], "id": 2, "city_id": 2},
        ("pet", 2): {"id": 2, "owner_id": 2},
    }
    # And the server's rows take the old keys, untouched
    assert plan.inserts == theirs
    assert plan.deleted_first == set()
    assert plan.log_add == []  # the moved rows' own log entries move with them
    assert sorted((c.kind, c.table, c.new_key) for c in plan.conflicts) == [
        ("insert", "city", 2),
        ("insert", "person", 2),
        ("insert", "pet", 2),
    ]


def test_a_composite_key_holding_a_moved_parents_key_moves_with_it():
    # Given both sides inserted person 1 with a badge keyed by (person, label)
    mine = {"person_id": 1, "label": "gold", "note": "mine"}
    plan = plan_merge(
        SCHEMA,
        MergeInput(
            local=[local("person", 1, INSERT), local("badge", (1, "gold"), INSERT)],
            remote=[
                remote("badge", (1, "gold"), INSERT, {**mine, "note": "theirs"}),
                remote("person", 1, INSERT, person(1, None)),
            ],
            local_rows={("person", 1): person(1, None), ("badge", (1, "gold")): mine},
            next_keys={"person": 4},
        ),
    )
    # Then the local badge moves with its person: two rows, no conflict between badges
    assert {(r.table, r.old, r.new) for r in plan.rekeys} == {
        ("person", 1, 4),
        ("badge", (1, "gold"), (4, "gold")),
    }
    assert plan.inserts[("badge", (1, "gold"))] == {**mine, "note": "theirs"}
    assert ("badge", (4, "gold")) not in plan.updates  # its key moved; nothing else did
    assert [c.table for c in plan.conflicts] == ["person", "badge"]


def test_a_local_update_pointing_at_a_moved_parent_follows_it():
    # Given a person the server knows, moved locally into a city inserted locally
    plan = plan_merge(
        SCHEMA,
        MergeInput(
            local=[local("city", 1, INSERT), local("person", 8, UPDATE, city_id=10)],
            remote=[remote("city", 1, INSERT, city(1, "server"))],
            local_rows={("city", 1): city(1, "mine"), ("person", 8): person(8, 1)},
            next_keys={"city": 2},
        ),
    )
    # Then the person follows the city; the log entry it has already pushes city_id
    assert plan.updates == {("person", 8): person(8, 2)}
    assert plan.log_add == []


def test_a_moved_row_keeps_its_unique_values_while_the_servers_row_takes_its_key():
    # Given both sides inserted person 1, each with its own unique code
    plan = plan_merge(
        SCHEMA,
        MergeInput(
            local=[local("person", 1, INSERT)],
            remote=[remote("person", 1, INSERT, {**person(1, None), "code": "theirs"})],
            local_rows={("person", 1): {**person(1, None), "code": "mine"}},
            next_keys={"person": 2},
        ),
    )
    # Then nothing clashes and no row is deleted first
    assert [(r.old, r.new) for r in plan.rekeys] == [(1, 2)]
    assert plan.deleted_first == set()


@pytest.mark.parametrize(
    ("policy", "note", "winner"),
    [("node-wins", "mine", "local"), ("server-wins", "theirs", "remote")],
)
def test_the_same_composite_key_inserted_on_both_sides_is_one_row(policy, note, winner):
    # Given both sides inserted the badge (5, "gold"), with different notes
    mine = {"person_id": 5, "label": "gold", "note": "mine"}
    plan = plan_merge(
        SCHEMA,
        MergeInput(
            local=[local("badge", (5, "gold"), INSERT, 30)],
            remote=[remote("badge", (5, "gold"), INSERT, {**mine, "note": "theirs"}, 20)],
            local_rows={("badge", (5, "gold")): mine},
        ),
        policy,
    )
    # Then no key moves: the policy decides the columns, and the local insert becomes
    # an update of the columns that differ from the server's row
    assert plan.rekeys == []
    assert plan.log_drop == {("badge", (5, "gold"))}
    pushed = [(e.command, e.columns, e.hlc) for e in plan.log_add]
    assert pushed == ([(UPDATE, frozenset({"note"}), 30)] if note == "mine" else [])
    assert plan.updates == (
        {} if note == "mine" else {("badge", (5, "gold")): {**mine, "note": note}}
    )
    assert [(c.kind, c.winner) for c in plan.conflicts] == [("insert", winner)]


def test_the_same_uuid_inserted_on_both_sides_is_one_row():
    key = uuid.uuid4()
    plan = plan_merge(
        SCHEMA,
        MergeInput(
            local=[local("note", key, INSERT, 10)],
            remote=[remote("note", key, INSERT, {"id": key, "text": "theirs"}, 20)],
            local_rows={("note", key): {"id": key, "text": "mine"}},
        ),
        "last-writer-wins",
    )
    assert plan.rekeys == []
    assert plan.updates == {("note", key): {"id": key, "text": "theirs"}}
    assert [(c.kind, c.winner) for c in plan.conflicts] == [("insert", "remote")]


def test_uuid_keys_never_collide():
    mine, theirs = uuid.uuid4(), uuid.uuid4()
    plan = plan_merge(
        SCHEMA,
        MergeInput(
            local=[local("note", mine, INSERT)],
            remote=[remote("note", theirs, INSERT, {"id": theirs})],
            local_rows={("note", mine): {"id": mine}},
        ),
    )
    assert plan.rekeys == []
    assert plan.conflicts == []
    assert plan.inserts == {("note", theirs): {"id": theirs}}


# --- unique constraints --------------------------------------------------------------------


def test_unique_values_swapped_remotely_are_written_by_delete_and_insert():
    # Given the server swapped the names of cities 1 and 2
    plan = plan_merge(
        SCHEMA,
        MergeInput(
            local=[],
            remote=[
                remote("city", 1, UPDATE, city(1, "b")),
                remote("city", 2, UPDATE, city(2, "a")),
            ],
            existing={("city", 1), ("city", 2)},
            unique_holders={("city", ("name",), ("b",)): 2, ("city", ("name",), ("a",)): 1},
        ),
    )
    assert plan.deleted_first == {("city", 1), ("city", 2)}


def test_a_local_row_holding_a_remote_unique_value_is_a_clash():
    with pytest.raises(UniqueConstraintError) as raised:
        plan_merge(
            SCHEMA,
            MergeInput(
                local=[local("city", 7, INSERT)],
                remote=[remote("city", 1, INSERT, city(1, "Lima"))],
                local_rows={("city", 7): city(7, "Lima")},
                unique_holders={("city", ("name",), ("Lima",)): 7},
            ),
        )
    assert raised.value.entries == [("city", 7, ("name",))]


def test_an_unknown_policy_is_refused():
    with pytest.raises(ConfigurationError):
        plan_merge(SCHEMA, MergeInput(local=[], remote=[]), "coin-toss")
