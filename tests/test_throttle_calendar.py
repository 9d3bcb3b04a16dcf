"""UtcClock and the UTC calendar windows: day and month rollovers, leap years, refusals."""

from __future__ import annotations

import datetime as dt
import time

import pytest
import trio
import trio.testing

from ct_actors.throttle.calendar import UtcClock, UtcClockStatistics, window_end, window_start

UTC = dt.UTC


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> dt.datetime:
    return dt.datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


ORIGIN = utc(2026, 12, 31, 23, 59, 59)


def test_clock_maps_both_ways() -> None:
    clock = UtcClock(ORIGIN, 1000.0)
    assert clock.utc_at(1000.0) == ORIGIN
    assert clock.utc_at(1001.0) == utc(2027, 1, 1)
    assert clock.utc_at(999.5) == utc(2026, 12, 31, 23, 59, 58, 500_000)
    assert clock.trio_at(utc(2027, 1, 1)) == 1001.0
    assert clock.trio_at(ORIGIN - dt.timedelta(days=1)) == 1000.0 - 86_400.0
    assert clock.utc_at(1000.0).tzinfo is not None


def test_clock_normalises_other_zones_to_utc() -> None:
    plus_two = dt.timezone(dt.timedelta(hours=2))
    clock = UtcClock(dt.datetime(2027, 1, 1, 1, 59, 59, tzinfo=plus_two), 0.0)
    assert clock.origin_utc == ORIGIN
    assert clock.utc_at(0.0).utcoffset() == dt.timedelta(0)
    assert clock.trio_at(dt.datetime(2027, 1, 1, 2, tzinfo=plus_two)) == 1.0


def test_clock_refuses_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="origin_utc must be timezone-aware"):
        UtcClock(dt.datetime(2026, 1, 1), 0.0)
    clock = UtcClock(ORIGIN, 0.0)
    with pytest.raises(ValueError, match="utc must be timezone-aware"):
        clock.trio_at(dt.datetime(2026, 1, 1))


def test_clock_statistics() -> None:
    assert UtcClock(ORIGIN, 5.0).statistics() == UtcClockStatistics(
        origin_utc=ORIGIN,
        origin_trio=5.0,
    )


async def test_from_wall_anchors_trio_time(autojump_clock: trio.testing.MockClock) -> None:
    await trio.sleep(123.0)
    before = time.time()
    clock = UtcClock.from_wall()
    after = time.time()
    assert clock.origin_trio == trio.current_time() == 123.0
    assert before - 1e-3 <= clock.origin_utc.timestamp() <= after + 1e-3
    assert clock.origin_utc.tzinfo is UTC


@pytest.mark.parametrize(
    ("moment", "start", "end"),
    [
        (utc(2026, 12, 31, 23, 59, 59), utc(2026, 12, 31), utc(2027, 1, 1)),
        (utc(2027, 1, 1), utc(2027, 1, 1), utc(2027, 1, 2)),
        (utc(2028, 2, 28, 12), utc(2028, 2, 28), utc(2028, 2, 29)),
        (utc(2028, 2, 29, 23, 59, 59, 999_999), utc(2028, 2, 29), utc(2028, 3, 1)),
        (utc(2027, 2, 28, 23), utc(2027, 2, 28), utc(2027, 3, 1)),
    ],
)
def test_day_windows(moment: dt.datetime, start: dt.datetime, end: dt.datetime) -> None:
    assert window_start("per_day", moment) == start
    assert window_end("per_day", moment) == end


@pytest.mark.parametrize(
    ("moment", "start", "end"),
    [
        (utc(2026, 12, 31, 23, 59, 59), utc(2026, 12, 1), utc(2027, 1, 1)),
        (utc(2027, 1, 1), utc(2027, 1, 1), utc(2027, 2, 1)),
        (utc(2028, 2, 28, 12), utc(2028, 2, 1), utc(2028, 3, 1)),
        (utc(2028, 2, 29, 23, 59, 59), utc(2028, 2, 1), utc(2028, 3, 1)),
        (utc(2027, 2, 15), utc(2027, 2, 1), utc(2027, 3, 1)),
        (utc(2026, 4, 30, 23, 59), utc(2026, 4, 1), utc(2026, 5, 1)),
    ],
)
def test_month_windows(moment: dt.datetime, start: dt.datetime, end: dt.datetime) -> None:
    assert window_start("per_month", moment) == start
    assert window_end("per_month", moment) == end


def test_month_lengths_over_a_leap_cycle() -> None:
    # Walking window_end from January 2025 must step through every month of four years with
    # the right number of days, February 2028 included.
    start = utc(2025, 1, 1)
    lengths = []
    for _ in range(48):
        end = window_end("per_month", start)
        lengths.append((end - start).days)
        start = end
    assert start == utc(2029, 1, 1)
    common = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]
    leap = [31, 29, *common[2:]]
    assert lengths == common * 3 + leap


def test_windows_are_utc_for_other_zones() -> None:
    # 00:30 on 1 January in UTC+2 is still 31 December in UTC.
    moment = dt.datetime(2027, 1, 1, 0, 30, tzinfo=dt.timezone(dt.timedelta(hours=2)))
    assert window_start("per_day", moment) == utc(2026, 12, 31)
    assert window_end("per_month", moment) == utc(2027, 1, 1)
    assert window_start("per_day", moment).utcoffset() == dt.timedelta(0)


def test_window_through_the_clock() -> None:
    clock = UtcClock(ORIGIN, 0.0)
    assert clock.trio_at(window_end("per_day", clock.utc_at(0.0))) == 1.0
    assert clock.trio_at(window_end("per_month", clock.utc_at(1.0))) == 1.0 + 31 * 86_400.0


@pytest.mark.parametrize("scope", ["per_second", "per_domain", "per_week", ""])
def test_refuses_other_scopes(scope: str) -> None:
    with pytest.raises(ValueError, match="unknown calendar scope"):
        window_start(scope, ORIGIN)
    with pytest.raises(ValueError, match="unknown calendar scope"):
        window_end(scope, ORIGIN)


def test_refuses_naive_moment() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        window_start("per_day", dt.datetime(2026, 1, 1))
