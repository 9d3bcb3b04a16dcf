"""UTC calendar windows for daily and monthly budgets, mapped onto trio's clock.

Budgets such as "N calls per month" follow the provider's billing calendar, which is UTC, not a
rolling 30 days. Everything else in the throttle package runs on trio time (so MockClock tests
control it), hence `UtcClock`: one fixed correspondence between the two, taken once at start-up,
so a wall-clock step (NTP, DST on a misconfigured host) cannot move a window under a running
counter.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass

import trio

UTC = dt.UTC

CALENDAR_SCOPES: tuple[str, ...] = ("per_day", "per_month")


def _require_aware(value: dt.datetime, what: str) -> dt.datetime:
    # A naive datetime would silently be read in the host's local zone by astimezone().
    if value.tzinfo is None or value.utcoffset() is None:
        raise ValueError(f"{what} must be timezone-aware, got naive {value.isoformat()}")
    return value.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class UtcClockStatistics:
    origin_utc: dt.datetime  # the wall-clock moment taken as `origin_trio`
    origin_trio: float


class UtcClock:
    """Converts between trio time (seconds, float) and aware UTC datetimes.

    Conversions go through `timedelta`, so they are exact to the microsecond, not beyond.
    """

    def __init__(self, origin_utc: dt.datetime, origin_trio: float) -> None:
        self.origin_utc = _require_aware(origin_utc, "origin_utc")
        self.origin_trio = float(origin_trio)

    @classmethod
    def from_wall(cls) -> UtcClock:
        """Anchor trio's clock to the wall clock now; must run inside trio."""
        origin_trio = trio.current_time()
        return cls(dt.datetime.fromtimestamp(time.time(), tz=UTC), origin_trio)

    def utc_at(self, t: float) -> dt.datetime:
        return self.origin_utc + dt.timedelta(seconds=t - self.origin_trio)

    def trio_at(self, utc: dt.datetime) -> float:
        delta = _require_aware(utc, "utc") - self.origin_utc
        return self.origin_trio + delta.total_seconds()

    def statistics(self) -> UtcClockStatistics:
        return UtcClockStatistics(self.origin_utc, self.origin_trio)


def window_start(scope: str, utc: dt.datetime) -> dt.datetime:
    """Start of the calendar window (UTC) that contains `utc`."""
    moment = _require_aware(utc, "utc")
    midnight = moment.replace(hour=0, minute=0, second=0, microsecond=0)
    if scope == "per_day":
        return midnight
    if scope == "per_month":
        return midnight.replace(day=1)
    raise ValueError(f"unknown calendar scope {scope!r} (expected one of {CALENDAR_SCOPES})")


def window_end(scope: str, utc: dt.datetime) -> dt.datetime:
    """Start of the window after the one containing `utc` (exclusive end)."""
    start = window_start(scope, utc)
    if scope == "per_day":
        # Adding a timedelta to a UTC datetime has no DST gaps, so one day is always 24 h.
        return start + dt.timedelta(days=1)
    if start.month == 12:
        return start.replace(year=start.year + 1, month=1)
    return start.replace(month=start.month + 1)
