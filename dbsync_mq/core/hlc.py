"""Hybrid logical clock stamps, packed in one integer.

A stamp is ``physical_ms << 16 | counter``. A node's stamps always increase,
even when its wall clock steps back, and a node that has seen a remote stamp
never issues a smaller one: so clock skew between devices cannot reorder one
node's own writes. Ties between nodes are broken by the caller (by node id).
"""

from __future__ import annotations

from dataclasses import dataclass

_COUNTER_BITS = 16
_COUNTER_MASK = (1 << _COUNTER_BITS) - 1


def stamp(physical_ms: int, counter: int = 0) -> int:
    """Pack a wall-clock millisecond and a counter into a stamp."""
    return (physical_ms << _COUNTER_BITS) | counter


def physical_ms(value: int) -> int:
    """The wall-clock part of a stamp, in milliseconds since the epoch."""
    return value >> _COUNTER_BITS


@dataclass
class HybridClock:
    """The clock of one node. ``now_ms`` is passed in: this module reads no clock."""

    last: int = 0

    def tick(self, now_ms: int) -> int:
        """A stamp for a local event, greater than every stamp issued or seen."""
        candidate = stamp(now_ms)
        self.last = candidate if candidate > self.last else self.last + 1
        return self.last

    def observe(self, remote: int) -> None:
        """Take a remote stamp into account, so later local stamps exceed it."""
        if remote > self.last:
            self.last = remote


def counter(value: int) -> int:
    """The logical part of a stamp."""
    return value & _COUNTER_MASK
