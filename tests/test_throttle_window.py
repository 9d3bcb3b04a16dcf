"""SlidingWindow and KeyedWindow: exact boundaries, simulated greedy callers, reloads, pruning.

The simulations take every slot the moment `next_free` offers it, and then check the sliding
property directly: for every event e, the events in (e - window, e] number at most the limit in
force when e was recorded. Windows are binary fractions, so times add up exactly.
"""

from __future__ import annotations

import bisect
import math
import random

import pytest

from ct_actors.throttle.window import (
    KeyedWindow,
    KeyedWindowStatistics,
    SlidingWindow,
    SlidingWindowStatistics,
)


def greedy(window: SlidingWindow, start: float, end: float) -> list[float]:
    """Callers that take every slot as soon as it frees, from `start` until `end`."""
    events: list[float] = []
    now = start
    while (at := window.next_free(now)) < end:
        window.record(at)
        events.append(at)
        now = at
    return events


def most_in_any_interval(events: list[float], width: float) -> int:
    # The fullest half-open interval [a, a + width) can always start at an event.
    ordered = sorted(events)
    return max(
        (bisect.bisect_left(ordered, e + width) - bisect.bisect_left(ordered, e) for e in ordered),
        default=0,
    )


def trailing_counts(events: list[float], chosen: list[float], width: float) -> list[int]:
    """For each chosen event e: how many of `events` still occupy their window at e.

    An event at x occupies [x, x + width); the test is written as `x + width > e`, the same sum
    the window computes, because `x > e - width` can round the other way.
    """
    ordered = sorted(events)
    counts = []
    for e in chosen:
        first = bisect.bisect_left(ordered, e - 2 * width)
        last = bisect.bisect_right(ordered, e)
        counts.append(sum(1 for x in ordered[first:last] if x + width > e))
    return counts


def per_second(events: list[float], start: int, end: int) -> list[int]:
    return [sum(1 for e in events if s <= e < s + 1) for s in range(start, end)]


def test_fifty_at_zero_admit_the_next_at_exactly_one() -> None:
    window = SlidingWindow(50, 1.0)
    for _ in range(49):
        assert window.next_free(0.0) == 0.0
        window.record(0.0)
    assert window.next_free(0.0) == 0.0
    window.record(0.0)
    assert window.next_free(0.0) == 1.0
    assert window.next_free(0.999) == 1.0
    assert window.next_free(1.0) == 1.0
    assert window.next_free(7.5) == 7.5


def test_spread_events_free_one_at_a_time() -> None:
    window = SlidingWindow(3, 1.0)
    for t in (0.0, 0.25, 0.5):
        window.record(t)
    assert window.next_free(0.5) == 1.0
    window.record(1.0)
    assert window.next_free(1.0) == 1.25
    window.record(1.25)
    assert window.next_free(1.25) == 1.5


def test_greedy_ten_seconds_is_exactly_fifty_per_second() -> None:
    window = SlidingWindow(50, 1.0)
    events = greedy(window, 0.0, 10.0)
    assert len(events) == 500
    assert per_second(events, 0, 10) == [50] * 10
    assert most_in_any_interval(events, 1.0) == 50
    assert max(trailing_counts(events, events, 1.0)) == 50
    assert window.statistics().early == 0


def test_no_double_burst_across_a_boundary() -> None:
    # A token bucket would let 50 through at 0.99 and 50 more at 1.0.
    window = SlidingWindow(50, 1.0)
    for _ in range(50):
        window.record(0.99)
    assert window.next_free(1.0) == 1.99


def test_greedy_after_reload_down() -> None:
    window = SlidingWindow(50, 1.0)
    before = greedy(window, 0.0, 5.5)  # the last burst of 50 is at 5.0
    window.set_limit(20, 1.0)
    # The 20 latest of the kept events are at 5.0: the new limit counts them.
    assert window.next_free(5.5) == 6.0
    after = greedy(window, 5.5, 10.0)
    assert per_second(before + after, 0, 10) == [50] * 6 + [20] * 4
    assert max(trailing_counts(before + after, after, 1.0)) == 20
    assert window.statistics().history == 20


def test_greedy_after_reload_up() -> None:
    window = SlidingWindow(20, 1.0)
    before = greedy(window, 0.0, 5.5)
    window.set_limit(50, 1.0)
    # Events older than the kept 20 are gone, so the extra capacity waits for them to age out:
    # one window late at worst, never early.
    assert window.next_free(5.5) == 6.0
    after = greedy(window, 5.5, 10.0)
    assert per_second(before + after, 0, 10) == [20] * 6 + [50] * 4
    assert max(trailing_counts(before + after, after, 1.0)) == 50
    assert most_in_any_interval(after, 1.0) == 50


def test_reload_up_with_a_wider_window_never_overshoots() -> None:
    # 20/s for 10 s, then 100 per 10 s: 200 events already sit in the last 10 s, of which only
    # 20 are remembered. The padding keeps the new limit anyway.
    window = SlidingWindow(20, 1.0)
    before = greedy(window, 0.0, 10.0)
    window.set_limit(100, 10.0)
    after = greedy(window, 10.0, 40.0)
    assert after
    assert max(trailing_counts(before + after, after, 10.0)) <= 100
    assert most_in_any_interval(after, 10.0) == 100


def test_reload_widening_the_window_keeps_history() -> None:
    window = SlidingWindow(2, 1.0)
    window.record(0.0)
    window.record(0.5)
    window.set_limit(2, 4.0)
    assert window.next_free(1.0) == 4.0


@pytest.mark.parametrize("seed", range(6))
def test_random_arrivals_and_reloads_never_exceed_the_limit(seed: int) -> None:
    rng = random.Random(seed)
    settings = [(50, 1.0), (7, 0.25), (120, 2.0), (1, 0.5), (30, 1.0)]
    window = SlidingWindow(*settings[0])
    events: list[float] = []
    checks: list[tuple[float, int, float]] = []
    now = 0.0
    for limit, width in settings:
        window.set_limit(limit, width)
        stop = now + 3.0
        while now < stop:
            now += rng.expovariate(limit / width * 2)  # callers arrive twice as fast as allowed
            at = window.next_free(now)
            assert at >= now
            window.record(at)
            events.append(at)
            checks.append((at, limit, width))
            now = at
    for at, limit, width in checks:
        assert trailing_counts(events, [at], width)[0] <= limit
    assert window.statistics().early == 0


def test_memory_is_bounded_by_the_limit() -> None:
    window = SlidingWindow(5, 1.0)
    for i in range(1000):
        window.record(i * 0.001)
    assert window.statistics().history == 5


def test_late_record_is_kept_in_order() -> None:
    window = SlidingWindow(2, 1.0)
    window.record(1.0)
    window.record(0.5)  # a caller that read the clock before a checkpoint
    assert window.next_free(1.0) == 1.5
    window.record(2.0)
    assert window.next_free(2.0) == 2.0


def test_early_records_are_counted() -> None:
    window = SlidingWindow(1, 1.0)
    window.record(0.0)
    window.record(0.5)
    stats = window.statistics()
    assert stats == SlidingWindowStatistics(
        limit=1, window=1.0, recorded=2, early=1, history=1, last_event=0.5
    )


@pytest.mark.parametrize(
    ("limit", "width"),
    [(0, 1.0), (-1, 1.0), (1, 0.0), (1, -1.0), (1, math.inf), (1, math.nan)],
)
def test_refuses_bad_settings(limit: int, width: float) -> None:
    with pytest.raises(ValueError):
        SlidingWindow(limit, width)
    with pytest.raises(ValueError):
        SlidingWindow(1, 1.0).set_limit(limit, width)
    with pytest.raises(ValueError):
        KeyedWindow(limit, width)


def test_keyed_windows_are_independent() -> None:
    domains = KeyedWindow(1, 2.0)
    assert domains.next_free("a.example", 0.0) == 0.0
    domains.record("a.example", 0.0)
    assert domains.next_free("a.example", 0.5) == 2.0
    assert domains.next_free("b.example", 0.5) == 0.5
    domains.record("b.example", 0.5)
    assert domains.next_free("b.example", 1.0) == 2.5
    assert domains.next_free("a.example", 2.0) == 2.0
    assert len(domains) == 2


def test_keyed_greedy_per_key() -> None:
    domains = KeyedWindow(2, 1.0)
    got: dict[str, list[float]] = {"a": [], "b": []}
    now = 0.0
    while now < 5.0:
        key = min(got, key=lambda k: domains.next_free(k, now))
        at = domains.next_free(key, now)
        if at >= 5.0:
            break
        domains.record(key, at)
        got[key].append(at)
        now = at
    for events in got.values():
        assert per_second(events, 0, 5) == [2] * 5
        assert most_in_any_interval(events, 1.0) == 2


def test_keyed_reload_keeps_history() -> None:
    domains = KeyedWindow(2, 2.0)
    domains.record("a", 0.0)
    domains.record("a", 1.0)
    domains.set_limit(1, 2.0)
    assert domains.next_free("a", 1.0) == 3.0
    domains.set_limit(3, 2.0)
    # "a" held a single event at the old limit 1: it may have forgotten older ones.
    assert domains.next_free("a", 1.5) == 3.0
    domains.record("b", 1.5)
    domains.set_limit(3, 2.0)
    assert domains.next_free("b", 1.5) == 1.5


def test_prune_drops_only_idle_keys() -> None:
    domains = KeyedWindow(1, 2.0)
    domains.record("old", 0.0)
    domains.record("new", 1.0)
    assert domains.prune(1.999) == 0
    assert domains.prune(2.0) == 1
    assert len(domains) == 1
    assert domains.next_free("new", 2.0) == 3.0
    assert domains.next_free("old", 2.0) == 2.0
    assert domains.statistics() == KeyedWindowStatistics(
        limit=1,
        window=2.0,
        keys=1,
        recorded=2,
        early=0,
        pruned=1,
    )


def test_record_prunes_so_memory_stays_bounded() -> None:
    domains = KeyedWindow(1, 2.0)
    largest = 0
    for i in range(20_000):
        # 100 new domains a second, each seen once: 200 are within the window at any time.
        domains.record(f"d{i}.example", i * 0.01)
        largest = max(largest, len(domains))
    assert largest <= 1024 + 200
    stats = domains.statistics()
    assert stats.recorded == 20_000
    assert stats.pruned == 20_000 - len(domains)
