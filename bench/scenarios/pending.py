"""Rows for features that do not exist yet: they print ``not yet`` until they do."""

from __future__ import annotations

from bench.harness import Measurement, Run, not_yet, scenario


@scenario("propagation")
def propagation(_run: Run) -> Measurement:
    """Propagation A → B with both agents running."""
    return not_yet("propagation A → B with both agents running", "there is no background agent yet")
