"""HostWindow: Postfix-style growth, halving on throttling, dead hosts with doubling backoff."""

from __future__ import annotations

import dataclasses

import pytest

from ct_actors.throttle.host_window import HostWindow, HostWindowSettings, HostWindowStatistics

DEFAULT = HostWindowSettings()


def grown(window: HostWindow, successes: int, now: float = 0.0) -> HostWindow:
    for _ in range(successes):
        window.on_success(now)
    return window


def test_defaults() -> None:
    # initial, maximum, dead backoff and its cap, rejected RCPTs per 60 s (DHA safety), how
    # long a slow host stays slow and the sessions it gets meanwhile
    assert dataclasses.astuple(DEFAULT) == (1, 4, 300.0, 3600.0, 8, 60.0, 3600.0, 1)
    window = HostWindow(DEFAULT)
    assert window.limit == 1
    assert not window.is_dead(0.0)
    assert window.dead_until == float("-inf")


def test_grows_by_one_per_full_window_of_successes() -> None:
    window = HostWindow(HostWindowSettings(initial=1, maximum=5))
    limits = []
    for _ in range(1 + 2 + 3 + 4 + 3):
        window.on_success(0.0)
        limits.append(window.limit)
    # 1 success at 1, 2 at 2, 3 at 3, 4 at 4, then capped at 5.
    assert limits == [2, 2, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5]
    assert window.statistics().credit == 0


def test_initial_above_one() -> None:
    window = HostWindow(HostWindowSettings(initial=3, maximum=4))
    assert grown(window, 2).limit == 3
    assert grown(window, 1).limit == 4


def test_throttled_halves_and_resets_credit() -> None:
    window = grown(HostWindow(HostWindowSettings(maximum=8)), 1 + 2 + 3 + 4 + 5 + 6)
    assert window.limit == 7
    window.on_success(1.0)  # one credit towards 8
    window.on_throttled(2.0)
    assert window.limit == 3
    assert window.statistics().credit == 0
    assert grown(window, 2).limit == 3  # the credit earned at 7 is gone
    assert grown(window, 1).limit == 4
    for expected in (2, 1, 1):
        window.on_throttled(3.0)
        assert window.limit == expected
    assert not window.is_dead(3.0)  # throttling slows us down, it does not kill the host


def test_connect_failure_marks_dead_and_drops_to_one() -> None:
    window = grown(HostWindow(DEFAULT), 1 + 2 + 3)
    assert window.limit == 4
    assert window.on_connect_failure(100.0) is True
    assert window.limit == 1
    assert window.dead_until == 400.0
    assert window.is_dead(100.0)
    assert window.is_dead(399.9)
    assert not window.is_dead(400.0)


def test_dead_backoff_doubles_up_to_the_cap_until_a_success() -> None:
    window = HostWindow(DEFAULT)
    now = 0.0
    backoffs = []
    for _ in range(7):
        assert window.on_connect_failure(now)
        backoffs.append(window.dead_until - now)
        now = window.dead_until  # try again as soon as the host is alive again
    assert backoffs == [300.0, 600.0, 1200.0, 2400.0, 3600.0, 3600.0, 3600.0]
    window.on_success(now)
    window.on_connect_failure(now + 10.0)
    assert window.dead_until == now + 10.0 + 300.0


def test_failures_of_one_outage_do_not_escalate() -> None:
    # Four sessions opened before the first failure all fail: one marking, not four doublings.
    window = HostWindow(HostWindowSettings(maximum=4))
    assert window.on_connect_failure(10.0) is True
    assert window.on_connect_failure(11.0) is False
    assert window.on_connect_failure(12.0) is False
    assert window.dead_until == 310.0
    assert window.on_connect_failure(310.0) is True
    assert window.dead_until == 910.0
    stats = window.statistics()
    assert stats.connect_failures == 3 + 1
    assert stats.dead_marked == 2
    assert stats.dead_streak == 2


def test_success_keeps_an_existing_dead_marking() -> None:
    window = HostWindow(DEFAULT)
    window.on_connect_failure(0.0)
    window.on_success(1.0)  # a session opened before the marking
    assert window.is_dead(1.0)
    assert window.limit == 2  # one success at limit 1 grows the window


def test_a_long_outage_cannot_overflow() -> None:
    window = HostWindow(HostWindowSettings(dead_backoff=1.0, dead_backoff_max=float("inf")))
    now = 0.0
    for _ in range(2000):
        window.on_connect_failure(now)
        now = window.dead_until
    assert window.dead_until < float("inf")


def test_zero_backoff_never_dead() -> None:
    window = HostWindow(HostWindowSettings(dead_backoff=0.0, dead_backoff_max=0.0))
    for t in range(3):
        assert window.on_connect_failure(float(t)) is True
        assert not window.is_dead(float(t))
    assert window.limit == 1


def test_cap_below_base_backoff_wins() -> None:
    window = HostWindow(HostWindowSettings(dead_backoff=600.0, dead_backoff_max=60.0))
    window.on_connect_failure(0.0)
    assert window.dead_until == 60.0


def test_update_clamps_and_keeps_state() -> None:
    window = grown(HostWindow(HostWindowSettings(maximum=8)), 1 + 2 + 3 + 4)
    assert window.limit == 5
    window.on_connect_failure(0.0)
    grown(window, 1 + 2 + 3 + 4)
    window.on_success(0.0)
    window.reconfigure(HostWindowSettings(maximum=3))
    assert window.limit == 3
    assert window.statistics().credit == 0
    assert window.dead_until == 300.0
    window.reconfigure(HostWindowSettings(maximum=6, dead_backoff=10.0))
    assert window.limit == 3
    assert grown(window, 3).limit == 4
    window.on_connect_failure(1000.0)
    assert window.dead_until == 1010.0


def test_update_keeps_credit_when_limit_unchanged() -> None:
    window = HostWindow(HostWindowSettings(maximum=8))
    grown(window, 1 + 1)  # limit 2, one credit
    window.reconfigure(HostWindowSettings(maximum=4))
    assert grown(window, 1).limit == 3


@pytest.mark.parametrize(
    "changes",
    [
        {"initial": 0},
        {"initial": 5, "maximum": 4},
        {"maximum": 0},
        {"dead_backoff": -1.0},
        {"dead_backoff_max": -1.0},
        {"slow_for": -1.0},
        {"slow_sessions": 0},
    ],
)
def test_refuses_bad_settings(changes: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        dataclasses.replace(DEFAULT, **changes)  # type: ignore[arg-type]


def test_statistics() -> None:
    window = HostWindow(DEFAULT)
    window.on_success(1.0)
    window.on_throttled(2.0)
    window.on_connect_failure(3.0)
    assert window.statistics() == HostWindowStatistics(
        limit=1,
        maximum=4,
        credit=0,
        dead_until=303.0,
        dead_streak=1,
        slow_until=None,
        error_limit=None,
        rejected_in_window=0,
        rejected_peak=0,
        rejected_total=0,
        successes=1,
        throttled=1,
        connect_failures=1,
        dead_marked=1,
        slow_marked=0,
        slow_replies=0,
        last_success=1.0,
        last_throttled=2.0,
        last_failure=3.0,
    )
    assert HostWindow(DEFAULT).statistics().dead_until is None


def test_rejected_rcpt_budget_reserves_settles_and_slides() -> None:
    window = HostWindow(HostWindowSettings(max_rejected=2, rejected_window=60.0))
    assert window.reserve_rejection(0.0) and window.reserve_rejection(1.0)
    assert not window.reserve_rejection(2.0)  # two RCPTs in flight may both be rejected
    assert window.rejection_wait(2.0) == 58.0
    window.settle_rejection(1.0, rejected=False)  # accepted: the place is given back
    assert window.reserve_rejection(2.0)
    window.settle_rejection(0.0, rejected=True)
    window.settle_rejection(2.0, rejected=True)
    assert window.rejection_wait(30.0) == 30.0  # the oldest rejection leaves at 60.0
    assert window.rejection_wait(60.0) == 0.0
    stats = window.statistics()
    assert (stats.rejected_peak, stats.rejected_total) == (2, 2)


def test_a_slow_host_gets_one_session_until_the_marking_lapses() -> None:
    window = HostWindow(HostWindowSettings(initial=2, maximum=4, slow_for=600.0))
    grown(window, 2)
    assert window.limit_at(10.0) == 3
    assert window.on_slow_reply(10.0)  # a new marking
    assert (window.is_slow(10.0), window.limit_at(10.0), window.limit) == (True, 1, 3)
    assert not window.on_slow_reply(100.0)  # renewed, not new: slow until 700
    assert window.slow_until == 700.0
    assert window.is_slow(699.0) and not window.is_slow(700.0)
    assert window.limit_at(700.0) == 3  # the learnt window applies again
    stats = window.statistics()
    assert (stats.slow_until, stats.slow_marked, stats.slow_replies) == (700.0, 1, 2)
    assert window.on_slow_reply(800.0)  # lapsed, then slow again: a new marking


def test_accepted_rcpts_free_their_places_whatever_their_order_and_time() -> None:
    # Places freed out of order, several at one moment (MockClock time stands still while a
    # pipelined group is reserved): the window counts exactly the rejected and the in-flight.
    window = HostWindow(HostWindowSettings(max_rejected=3, rejected_window=60.0))
    assert all(window.reserve_rejection(0.0) for _ in range(3))
    assert window.rejection_wait(0.0) == 60.0
    window.settle_rejection(0.0, rejected=False)  # one of the three at t=0 was accepted
    assert window.rejection_wait(0.0) == 0.0
    assert window.reserve_rejection(5.0)
    window.settle_rejection(5.0, rejected=False)  # the newest, freed before older ones
    window.settle_rejection(0.0, rejected=True)
    window.settle_rejection(0.0, rejected=False)
    assert window.statistics().rejected_in_window == 1  # only the rejection at t=0
    assert window.reserve_rejection(6.0) and window.reserve_rejection(7.0)
    assert window.rejection_wait(8.0) == 52.0  # full again: until the rejection at 0 expires
    assert window.rejection_wait(60.0) == 0.0  # it has: the two at 6 and 7 remain
    assert window.statistics().rejected_in_window == 2
    window.settle_rejection(6.0, rejected=False)
    window.settle_rejection(7.0, rejected=False)
    window.settle_rejection(0.0, rejected=False)  # long expired: nothing to free
    assert window.statistics().rejected_in_window == 0
    assert window.rejection_wait(61.0) == 0.0
