"""Tools for profiling the benchmarks' code paths: cProfile, GC pauses, worker stages.

The targets themselves are in ``bench.profiles``; ``python -m bench.profile`` runs them.
"""

from __future__ import annotations

import cProfile
import gc
import io
import pstats
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from bench.services import Services

TOP = 25
"""Rows of each profile printed."""


def show(profile: cProfile.Profile, title: str, top: int = TOP) -> None:
    """Print the top of a profile, by cumulative and by own time."""
    for order in ("cumulative", "tottime"):
        out = io.StringIO()
        pstats.Stats(profile, stream=out).strip_dirs().sort_stats(order).print_stats(top)
        print(f"\n=== {title}, by {order} ===")
        print(out.getvalue().strip("\n"))


def profiled(function: Callable[[], Any], times: int) -> cProfile.Profile:
    profile = cProfile.Profile()
    for _ in range(times):
        profile.enable()
        function()
        profile.disable()
    return profile


class HandleProfiler:
    """Wraps a server's ``handle`` so that every call is profiled on its own thread."""

    def __init__(self, server: Any, kinds: tuple[str, ...], *, active: bool = True) -> None:
        self.profile = cProfile.Profile()
        self.active = active
        self._lock = threading.Lock()
        original = server.handle

        def handle(message: Any) -> Any:
            if message.kind not in kinds or not self.active:
                return original(message)
            with self._lock:
                self.profile.enable()
                try:
                    return original(message)
                finally:
                    self.profile.disable()

        server.handle = handle


@contextmanager
def gc_pauses() -> Iterator[dict[str, float]]:
    """Time spent in the cyclic garbage collector, per generation, inside the block."""
    spent: dict[str, float] = defaultdict(float)
    started: list[float] = []

    def callback(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started.append(time.perf_counter())
        elif started:
            spent[f"gen{info['generation']} seconds"] += time.perf_counter() - started.pop()
            spent[f"gen{info['generation']} collections"] += 1

    gc.callbacks.append(callback)
    try:
        yield spent
    finally:
        gc.callbacks.remove(callback)


def stage_recorder(timeline: dict[str, dict[str, float]]) -> Callable[[str, str, str], None]:
    """A worker stage hook recording when each request reached each stage."""

    def hook(stage: str, _kind: str, request_id: str) -> None:
        timeline.setdefault(request_id, {})[stage] = time.perf_counter()

    return hook


TARGETS: dict[str, Callable[[Services], None]] = {}


def target(name: str) -> Callable[[Callable[[Services], None]], Callable[[Services], None]]:
    def register(function: Callable[[Services], None]) -> Callable[[Services], None]:
        TARGETS[name] = function
        return function

    return register
