"""Every scenario module; importing this package registers them, in table order."""

# The import order is the table's row order.
from bench.scenarios import apply, roundtrip, bulkpush, throughput, fleet  # noqa: I001
from bench.scenarios import encode, pull, large, merge, repair, propagation

__all__ = [
    "apply",
    "bulkpush",
    "encode",
    "fleet",
    "large",
    "merge",
    "propagation",
    "pull",
    "repair",
    "roundtrip",
    "throughput",
]
