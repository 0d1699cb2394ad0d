"""The pure merge at growing sizes, where every remote change conflicts with a local one.

Two tables, ``item`` and ``line`` (each line references an item), half of the
changes on each. Items: updated locally; remotely updated (4 in 5) or deleted
(1 in 5, a direct update/delete conflict whose deleted item local lines still
reference). Lines: updated (4 in 5) or deleted (1 in 5) locally, updated
remotely. Only ``plan_merge`` is timed; building its input is not.
"""

from __future__ import annotations

from bench.harness import Measurement, Run, at_most, median, scenario, timed
from dbsync_mq.core.merge import MergeInput, plan_merge
from dbsync_mq.core.model import DELETE, UPDATE, Change, Reference, Row, RowKey, Schema, TableShape
from dbsync_mq.runtime import collector_paused

SCHEMA = Schema(
    tables={
        "item": TableShape("item", ("id",), integer_key=True),
        "line": TableShape("line", ("id",), integer_key=True),
    },
    references=(Reference("line", ("item_id",), "item", ("id",)),),
)
LOCAL_HLC, REMOTE_HLC = 1_000, 2_000


def _item(key: int, name: str) -> Row:
    return {"id": key, "name": f"{name}-{key}", "quantity": key % 100}


def _line(key: int, name: str) -> Row:
    return {"id": key, "item_id": key, "label": f"{name}-{key}", "amount": key * 1.5}


def merge_input(size: int) -> MergeInput:
    """``size`` changes per side, every remote one on a row the local side changed too."""
    half = size // 2
    local: list[Change] = []
    remote: list[Change] = []
    rows: dict[RowKey, Row] = {}
    for key in range(1, half + 1):
        rows["item", key] = _item(key, "local")
        local.append(Change("item", key, UPDATE, LOCAL_HLC + key, clocks={"name": LOCAL_HLC}))
        if key % 5 == 0:
            remote.append(Change("item", key, DELETE, REMOTE_HLC + key))
        else:
            values = _item(key, "remote")
            remote.append(Change("item", key, UPDATE, REMOTE_HLC, values, {"quantity": REMOTE_HLC}))
    for key in range(1, half + 1):
        if key % 5 == 1:
            local.append(Change("line", key, DELETE, LOCAL_HLC + key))
        else:
            rows["line", key] = _line(key, "local")
            local.append(Change("line", key, UPDATE, LOCAL_HLC, clocks={"label": LOCAL_HLC}))
        values = _line(key, "remote")
        remote.append(Change("line", key, UPDATE, REMOTE_HLC, values, {"amount": REMOTE_HLC}))
    return MergeInput(local=local, remote=remote, local_rows=rows)


def time_merge(size: int, repeat: int) -> tuple[float, int]:
    """Median seconds of ``plan_merge`` on ``merge_input(size)``, and its conflict count.

    Run as the client runs it: with the cyclic garbage collector paused.
    """
    data = merge_input(size)
    conflicts = len(plan_merge(SCHEMA, data).conflicts)

    def merge_once() -> None:
        with collector_paused():
            plan_merge(SCHEMA, data)

    return median(timed(merge_once) for _ in range(repeat)), conflicts


@scenario("merge")
def merge(run: Run) -> list[Measurement]:
    """Merge of 1k/10k/100k conflicting operations per side: growth of plan_merge's time."""
    sizes = (1_000, 10_000, 100_000)
    repeats = (run.pick(5, 15), run.pick(3, 7), run.pick(3, 5))
    results = [time_merge(size, repeat) for size, repeat in zip(sizes, repeats, strict=True)]
    rows = []
    for index, (size, (seconds, conflicts)) in enumerate(zip(sizes, results, strict=True)):
        previous = results[index - 1][0] if index else None
        rows.append(
            Measurement(
                f"merge, {size:,} conflicting operations per side (plan_merge)"
                + (f": time vs {sizes[index - 1]:,}" if index else ""),
                seconds * 1000,
                None if previous is None else previous * 1000,
                "ms",
                at_most(15) if size == 100_000 else None,
                note=f"median of {repeats[index]}; {conflicts:,} conflicts resolved",
            )
        )
    return rows
