"""Process-level helpers the sync's hot paths share."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager


@contextmanager
def collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector around work that allocates many objects that
    all stay alive (decoding a pull or a push, merging): full collections would walk
    them over and over for nothing. Collection resumes, and catches up, afterwards."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()
