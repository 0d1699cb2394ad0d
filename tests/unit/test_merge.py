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
        "person": TableShape("person", ("id",), integer_key=True),
        "note": TableShape("note", ("id",)),
    },
    references=(Reference("person", ("city_id",), "city", ("id",)),),
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


def test_direct_update_update_node_wins_keeps_local_values_and_pushes_them():
    plan = _update_update("node-wins")
    assert ("city", 1) not in plan.updates  # the local row stays as it is
    assert {(e.command, e.columns) for e in plan.log_add} == {
        (UPDATE, frozenset({"name"})),
        (UPDATE, frozenset({"population"})),
    }
    (conflict,) = plan.conflicts
    assert (conflict.kind, conflict.winner, conflict.lost) == (
        "direct",
        "local",
        city(1, "remote", 5),
    )


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
    assert seen == [ConflictCase("city", 1, city(1, "local", 0), city(1, "remote", 5))]
    assert plan.updates == {("city", 1): city(1, "local+remote", 5)}
    assert [e.columns for e in plan.log_add] == [frozenset({"name"})]


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
    assert any(e.table == "person" and e.columns == {"city_id"} for e in plan.log_add)
    (conflict,) = plan.conflicts
    assert (conflict.kind, conflict.new_key) == ("insert", 3)


def test_insert_collision_on_a_non_integer_key_is_a_merge_error():
    key = "same"
    with pytest.raises(MergeError, match="integer"):
        plan_merge(
            SCHEMA,
            MergeInput(
                local=[local("note", key, INSERT)],
                remote=[remote("note", key, INSERT, {"id": key})],
            ),
        )


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
