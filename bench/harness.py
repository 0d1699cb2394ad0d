"""The benchmark harness: measurements, targets, the scenario registry, timing.

A scenario is a function that takes the ``Run`` and returns one ``Measurement``
or several (one per table row)::

    @scenario("merge")
    def merge(run: Run) -> list[Measurement]:
        ours, base = compare(lambda: work(), lambda: baseline(), run.repeat)
        return [Measurement("merge 10k", ours, base, "s", at_most(15))]

Every figure is a median, and every baseline is measured in the same run, on
the same services, interleaved with ours: the machine is noisy, ratios are not.
"""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from bench.services import Services


TIMES = "\N{MULTIPLICATION SIGN}"


@dataclass(frozen=True)
class Target:
    """What "good enough" means for one row: a bound on the ratio or on our value."""

    op: Literal["<=", ">="]
    limit: float
    on: Literal["ratio", "value"] = "ratio"

    def met(self, ours: float | None, baseline: float | None) -> bool | None:
        """Whether ``ours`` meets the target; ``None`` when there is nothing to judge."""
        if ours is None:
            return None
        if self.on == "ratio":
            if not baseline:
                return None
            value = ours / baseline
        else:
            value = ours
        return value <= self.limit if self.op == "<=" else value >= self.limit

    def describe(self, unit: str) -> str:
        sign = "≤" if self.op == "<=" else "≥"
        if self.on == "ratio":
            return f"{sign} {self.limit:g}{TIMES}"
        return f"{sign} {self.limit:g} {unit}"


def at_most(limit: float) -> Target:
    """ours / baseline ≤ ``limit``."""
    return Target("<=", limit)


def at_least(limit: float) -> Target:
    """ours / baseline ≥ ``limit`` (for rates)."""
    return Target(">=", limit)


def value_at_most(limit: float) -> Target:
    """ours ≤ ``limit``, in the row's unit."""
    return Target("<=", limit, "value")


@dataclass(frozen=True)
class Measurement:
    """One row of the table: our median, the baseline's median, and the target."""

    scenario: str
    ours: float | None
    baseline: float | None
    unit: str
    target: Target | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.ours is None or not self.baseline:
            return None
        return self.ours / self.baseline

    @property
    def met(self) -> bool | None:
        return None if self.target is None else self.target.met(self.ours, self.baseline)


def not_yet(scenario: str, why: str) -> Measurement:
    """A row for a feature that does not exist yet."""
    return Measurement(scenario, None, None, "", note=f"not yet: {why}")


@dataclass
class Run:
    """What a scenario gets: the mode, the services it creates things on, a progress log."""

    quick: bool
    services: Services
    log: Callable[[str], None] = print
    nodes: int | None = None
    """Nodes of the fleet scenario (``--nodes``); ``None``: its default."""

    def pick(self, quick: int, full: int) -> int:
        """``quick`` in ``--quick`` mode, ``full`` otherwise."""
        return quick if self.quick else full

    @property
    def repeat(self) -> int:
        """Repetitions of a short measurement (more on a full run)."""
        return self.pick(3, 7)


ScenarioFunction = Callable[[Run], "Measurement | list[Measurement]"]


@dataclass(frozen=True)
class Scenario:
    name: str
    function: ScenarioFunction
    summary: str


SCENARIOS: dict[str, Scenario] = {}
"""Every registered scenario, in registration order (the table's order)."""


def scenario(name: str) -> Callable[[ScenarioFunction], ScenarioFunction]:
    """Register a scenario under ``name`` (what ``--only`` selects)."""

    def register(function: ScenarioFunction) -> ScenarioFunction:
        summary = (function.__doc__ or name).strip().splitlines()[0]
        SCENARIOS[name] = Scenario(name, function, summary)
        return function

    return register


def timed(function: Callable[[], object]) -> float:
    """Seconds ``function`` took, with the garbage collector's debts paid beforehand."""
    gc.collect()
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def median(values: Iterable[float]) -> float:
    return float(statistics.median(list(values)))


def compare(
    ours: Callable[[], object],
    baseline: Callable[[], object],
    repeat: int,
    *,
    before_ours: Callable[[], object] | None = None,
    before_baseline: Callable[[], object] | None = None,
    warmup: int = 1,
) -> tuple[float, float]:
    """Median seconds of ``ours`` and ``baseline``, run alternately ``repeat`` times each.

    Alternating (and swapping which goes first) spreads the machine's noise
    evenly over both. ``before_ours`` and ``before_baseline`` run, untimed,
    before every run of their side; ``warmup`` untimed rounds come first.
    """
    sides = {"ours": (before_ours, ours), "baseline": (before_baseline, baseline)}
    times: dict[str, list[float]] = {"ours": [], "baseline": []}
    for index in range(warmup + repeat):
        order = ["ours", "baseline"] if index % 2 == 0 else ["baseline", "ours"]
        for name in order:
            before, function = sides[name]
            if before is not None:
                before()
            elapsed = timed(function)
            if index >= warmup:
                times[name].append(elapsed)
    return median(times["ours"]), median(times["baseline"])
