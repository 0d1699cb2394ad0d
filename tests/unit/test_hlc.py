"""Hybrid logical clocks: a node's stamps only grow, whatever its wall clock and its peers do."""

from __future__ import annotations

from itertools import pairwise

from hypothesis import given
from hypothesis import strategies as st

from dbsync_mq.core import hlc
from dbsync_mq.core.hlc import HybridClock

wall_clock_ms = st.integers(min_value=0, max_value=2**47)
counters = st.integers(min_value=0, max_value=2**16 - 1)


@given(st.lists(wall_clock_ms, min_size=1, max_size=50))
def test_ticks_strictly_increase_even_when_the_wall_clock_goes_backwards(
    readings: list[int],
) -> None:
    clock = HybridClock()

    stamps = [clock.tick(now) for now in readings]

    assert all(earlier < later for earlier, later in pairwise(stamps))


def test_a_tick_after_the_wall_clock_steps_back_keeps_the_later_time_and_counts() -> None:
    clock = HybridClock()
    clock.tick(5_000)

    stamp = clock.tick(1_000)

    assert (hlc.physical_ms(stamp), hlc.counter(stamp)) == (5_000, 1)


def test_ticks_within_one_millisecond_count_up_from_zero() -> None:
    clock = HybridClock()

    stamps = [clock.tick(7_000) for _ in range(3)]

    assert [(hlc.physical_ms(s), hlc.counter(s)) for s in stamps] == [
        (7_000, 0),
        (7_000, 1),
        (7_000, 2),
    ]


def test_a_tick_follows_the_wall_clock_once_it_moves_ahead_again() -> None:
    clock = HybridClock()
    clock.tick(5_000)
    clock.tick(1_000)

    stamp = clock.tick(9_000)

    assert (hlc.physical_ms(stamp), hlc.counter(stamp)) == (9_000, 0)


@given(
    local=st.lists(wall_clock_ms, max_size=5),
    remote=st.builds(hlc.stamp, wall_clock_ms, counters),
    now=wall_clock_ms,
)
def test_after_observing_a_remote_stamp_every_tick_exceeds_it(
    local: list[int], remote: int, now: int
) -> None:
    # Given a clock that has issued some stamps of its own
    clock = HybridClock()
    for reading in local:
        clock.tick(reading)

    # When it observes a remote stamp, possibly far ahead of its own wall clock
    clock.observe(remote)

    # Then its next stamp is later than the remote one
    assert clock.tick(now) > remote


@given(st.lists(wall_clock_ms, min_size=1, max_size=5), wall_clock_ms)
def test_observing_an_older_remote_stamp_never_moves_the_clock_back(
    readings: list[int], now: int
) -> None:
    clock = HybridClock()
    issued = [clock.tick(reading) for reading in readings]

    clock.observe(0)

    assert clock.tick(now) > max(issued)


@given(wall_clock_ms, counters)
def test_a_stamp_splits_back_into_its_milliseconds_and_counter(ms: int, count: int) -> None:
    stamp = hlc.stamp(ms, count)

    assert (hlc.physical_ms(stamp), hlc.counter(stamp)) == (ms, count)


@given(wall_clock_ms, counters, wall_clock_ms, counters)
def test_stamps_order_by_milliseconds_then_counter(
    ms_a: int, count_a: int, ms_b: int, count_b: int
) -> None:
    a, b = hlc.stamp(ms_a, count_a), hlc.stamp(ms_b, count_b)

    assert (a < b) == ((ms_a, count_a) < (ms_b, count_b))
