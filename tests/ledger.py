"""The counts docs/reliability.md reports, computed by the suite as it runs.

Fault tests record each fault they inject and, once the nodes have converged,
the operations (row writes) they expected against those the server holds, and
the pushes the nodes had accepted against the versions: an operation missing
(or fewer versions than pushes) is *lost*, one present more than once (or more
versions than pushes) is *doubled*. Security tests record every bad input they send. At the end of
the session the totals are written to the pytest cache
(``.pytest_cache/v/dbsync/reliability``) and printed in the summary.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

CACHE_KEY = "dbsync/reliability"


@dataclass
class Ledger:
    faults_injected: int = 0
    bad_inputs_tried: int = 0
    operations_checked: int = 0
    pushes_checked: int = 0
    operations_lost: int = 0
    operations_doubled: int = 0
    by_test: dict[str, dict[str, int]] = field(default_factory=dict)

    def fault(self, test: str, count: int = 1) -> None:
        """``count`` faults were injected by ``test``."""
        self.faults_injected += count
        self._add(test, "faults", count)

    def bad_inputs(self, test: str, count: int = 1) -> None:
        """``count`` bad or hostile messages were sent by ``test``."""
        self.bad_inputs_tried += count
        self._add(test, "bad_inputs", count)

    def operations(self, test: str, expected: Iterable[object], found: Iterable[object]) -> None:
        """Compare the operations a test made (unique labels) with those the server holds."""
        wanted, seen = Counter(expected), Counter(found)
        lost = sum((wanted - seen).values())
        doubled = sum((seen - wanted).values())
        self.operations_checked += sum(wanted.values())
        self.operations_lost += lost
        self.operations_doubled += doubled
        self._add(test, "operations", sum(wanted.values()))
        self._add(test, "lost", lost)
        self._add(test, "doubled", doubled)

    def versions(self, test: str, pushes: int, versions: int) -> None:
        """``pushes`` accepted pushes must have made exactly ``versions`` versions."""
        self.pushes_checked += pushes
        self.operations_lost += max(0, pushes - versions)
        self.operations_doubled += max(0, versions - pushes)
        self._add(test, "pushes", pushes)

    def absorb(self, totals: dict[str, int], by_test: dict[str, dict[str, int]]) -> None:
        """Add the counts another process of the same session made (a pytest-xdist worker)."""
        for name, count in totals.items():
            setattr(self, name, getattr(self, name) + count)
        for test, entry in by_test.items():
            for what, count in entry.items():
                self._add(test, what, count)

    @property
    def touched(self) -> bool:
        return bool(self.by_test)

    def totals(self) -> dict[str, int]:
        totals = asdict(self)
        totals.pop("by_test")
        return totals

    def _add(self, test: str, what: str, count: int) -> None:
        entry = self.by_test.setdefault(test, {})
        entry[what] = entry.get(what, 0) + count
