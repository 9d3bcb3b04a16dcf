"""Sliding-log rate limits: at most `limit` events in any interval of `window` seconds.

A token bucket (or a fixed per-second counter) lets `2 * limit` events through across a window
boundary, which a provider that counts in a sliding window answers with 429s or a ban. A log of
event times enforces the limit over every interval. Only the latest `limit` events can decide
whether one more fits (the oldest of them must have left the window), so the log never needs
more than `limit` entries.

An event at time t occupies [t, t + window): with limit 50 and window 1.0, fifty events at t=0
let the 51st through at exactly t=1.0.
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from dataclasses import dataclass

# KeyedWindow sweeps idle keys after at least this many records, or after as many records as
# the sweep left keys if that is more, so the sweep's cost is amortised O(1) per record.
_PRUNE_EVERY = 1024


def _check(limit: int, window: float) -> None:
    if limit < 1:
        raise ValueError(f"limit must be at least 1, got {limit}")
    if not (window > 0 and math.isfinite(window)):
        raise ValueError(f"window must be a positive number of seconds, got {window}")


def _next_free(events: deque[float], limit: int, window: float, now: float) -> float:
    if len(events) < limit:
        return now
    return max(now, events[-limit] + window)


def _record(events: deque[float], limit: int, now: float) -> None:
    if not events or now >= events[-1]:
        events.append(now)
    else:
        # A caller that read the clock before a checkpoint may record late; keep the log sorted
        # so events[-limit] stays the limit-th latest event.
        events.insert(bisect.bisect_right(events, now), now)
    while len(events) > limit:
        events.popleft()


def _resize(events: deque[float], old_limit: int, limit: int) -> None:
    while len(events) > limit:
        events.popleft()
    if limit > old_limit and len(events) == old_limit:
        # A full log may have dropped older events that the larger limit would still count.
        # They cannot be later than the oldest kept one, so assuming they happened then is the
        # safe guess: the extra capacity arrives at most one window late, never too early.
        oldest = events[0]
        events.extendleft([oldest] * (limit - old_limit))


@dataclass(frozen=True, slots=True)
class SlidingWindowStatistics:
    limit: int
    window: float  # seconds
    recorded: int
    early: int  # events recorded before next_free allowed them
    history: int  # events kept in the log
    last_event: float | None  # trio time


@dataclass(frozen=True, slots=True)
class KeyedWindowStatistics:
    limit: int
    window: float  # seconds
    keys: int  # keys with a log now
    recorded: int
    early: int
    pruned: int  # idle keys forgotten


class SlidingWindow:
    def __init__(self, limit: int, window: float) -> None:
        _check(limit, window)
        self.limit = limit
        self.window = float(window)
        self._events: deque[float] = deque()
        self.recorded = 0
        # Events recorded before next_free allowed them: a caller bypassing the limit.
        self.early = 0

    def next_free(self, now: float) -> float:
        """Earliest time >= now at which one more event fits (now itself if it fits now)."""
        return _next_free(self._events, self.limit, self.window, now)

    def record(self, now: float) -> None:
        if self.next_free(now) > now:
            self.early += 1
        _record(self._events, self.limit, now)
        self.recorded += 1

    def set_limit(self, limit: int, window: float) -> None:
        """Apply reloaded settings; the kept history counts against the new limit at once."""
        _check(limit, window)
        _resize(self._events, self.limit, limit)
        self.limit = limit
        self.window = float(window)

    def statistics(self) -> SlidingWindowStatistics:
        return SlidingWindowStatistics(
            limit=self.limit,
            window=self.window,
            recorded=self.recorded,
            early=self.early,
            history=len(self._events),
            last_event=self._events[-1] if self._events else None,
        )


class KeyedWindow:
    """One sliding window per key (e.g. per domain), sharing one limit and window."""

    def __init__(self, limit: int, window: float) -> None:
        _check(limit, window)
        self.limit = limit
        self.window = float(window)
        self._logs: dict[str, deque[float]] = {}
        self._since_prune = 0
        self._prune_after = _PRUNE_EVERY
        self.recorded = 0
        self.early = 0
        self.pruned = 0

    def __len__(self) -> int:
        return len(self._logs)

    def next_free(self, key: str, now: float) -> float:
        events = self._logs.get(key)
        if events is None:
            return now
        return _next_free(events, self.limit, self.window, now)

    def record(self, key: str, now: float) -> None:
        events = self._logs.get(key)
        if events is None:
            events = self._logs[key] = deque()
        elif _next_free(events, self.limit, self.window, now) > now:
            self.early += 1
        _record(events, self.limit, now)
        self.recorded += 1
        self._since_prune += 1
        if self._since_prune >= self._prune_after:
            self.prune(now)

    def set_limit(self, limit: int, window: float) -> None:
        _check(limit, window)
        for events in self._logs.values():
            _resize(events, self.limit, limit)
        self.limit = limit
        self.window = float(window)

    def prune(self, now: float) -> int:
        """Forget keys whose every event has left the window; returns how many were dropped.

        A key forgotten here is treated as fresh even if a later reload widens the window; for
        a per-domain courtesy limit that one-off leniency is worth the bounded memory.
        """
        idle = [key for key, events in self._logs.items() if events[-1] + self.window <= now]
        for key in idle:
            del self._logs[key]
        self.pruned += len(idle)
        self._since_prune = 0
        self._prune_after = max(_PRUNE_EVERY, len(self._logs))
        return len(idle)

    def statistics(self) -> KeyedWindowStatistics:
        return KeyedWindowStatistics(
            limit=self.limit,
            window=self.window,
            keys=len(self._logs),
            recorded=self.recorded,
            early=self.early,
            pruned=self.pruned,
        )
