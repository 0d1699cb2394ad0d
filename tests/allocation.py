"""How much memory a block allocates at its peak, traced by ``tracemalloc``.

Deterministic, unlike RSS: it counts what Python and C extensions ask for through
Python's allocators (lists, dicts, bytes, msgpack's buffers), even memory the
system has not made resident yet.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Traced:
    peak: int = 0
    """Bytes allocated at the peak of the block, above what was allocated before it."""


@contextmanager
def traced_allocations() -> Iterator[Traced]:
    """``with traced_allocations() as traced: ...`` then read ``traced.peak``."""
    traced = Traced()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        yield traced
        _, peak = tracemalloc.get_traced_memory()
        traced.peak = peak - before
    finally:
        tracemalloc.stop()
