"""Every scenario module; importing this package registers them, in table order."""

from bench.scenarios import (
    apply,
    roundtrip,
    bulkpush,
    throughput,
    encode,
    pull,
    merge,
    repair,
    pending,
)  # noqa: I001,E501

__all__ = [
    "apply",
    "bulkpush",
    "encode",
    "merge",
    "pending",
    "pull",
    "repair",
    "roundtrip",
    "throughput",
]
