"""Throttling policy: rate windows, calendar budgets, backoff, per-host concurrency, kill switches.

Pure, synchronous logic on trio time passed in as `now`; only `KillSwitches.wait_clear` awaits.
"""

from __future__ import annotations

from ct_actors.throttle.backoff import backoff_delay
from ct_actors.throttle.calendar import UtcClock, window_end, window_start
from ct_actors.throttle.host_window import HostWindow, HostWindowSettings
from ct_actors.throttle.killswitch import (
    DistinctFailures,
    KillSwitches,
    SwitchState,
)
from ct_actors.throttle.window import KeyedWindow, SlidingWindow

__all__ = [
    "DistinctFailures",
    "HostWindow",
    "HostWindowSettings",
    "KeyedWindow",
    "KillSwitches",
    "SlidingWindow",
    "SwitchState",
    "UtcClock",
    "backoff_delay",
    "window_end",
    "window_start",
]
