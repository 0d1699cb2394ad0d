"""Every scenario module; importing this package registers them, in table order."""

from bench.scenarios import apply, roundtrip, throughput, encode, pull, merge, repair, pending  # noqa: I001

__all__ = ["apply", "encode", "merge", "pending", "pull", "repair", "roundtrip", "throughput"]
