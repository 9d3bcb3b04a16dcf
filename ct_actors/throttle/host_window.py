"""Adaptive per-MX-host concurrency, after Postfix's queue manager (SCHEDULER_README).

A host starts at a small window of concurrent sessions and earns more slowly: each success adds
1/limit, so the window grows by one after a full window's worth of successes. A throttling
answer (421, 4.7.x, "too many connections") halves it at once, because the host has told us
we are over its limit. A failed connection means the host is unreachable or refusing us: the
window drops to one and the host is "dead" for a while, so every domain on it skips it instead
of paying the connect timeout again. The dead time doubles while the host keeps failing, so a
host that is down for hours costs a handful of attempts, not one every few minutes.

The window also remembers a per-session error limit learnt from the host ("421 4.7.0 Error: too
many errors" earlier than our own budget expected), so a pool retired for idleness does not have
to learn it again, and it holds the host's rejected-RCPT budget: gateways (Mimecast, Proofpoint,
Barracuda, Cisco, Forcepoint: "N invalid recipients per IP per interval") and RBL operators read
many unknown-recipient rejections from one client in a short window as a directory-harvest
attack. At most `max_rejected` RCPTs may be *rejected* by the host in any `rejected_window`
seconds; a RCPT is only sent with a reservation, given back when the answer was not a rejection,
so concurrent sessions can never overshoot.

Slow hosts. A host whose greeting or reply kept us waiting past `slow_reply_seconds` (the pool
measures it) is *slow* for `slow_for` seconds after its last slow reply: a tarpit (Exim's
`delay` ACL modifier, qmail's tarpitdelay, Postfix past `smtpd_soft_error_limit`) or an
overloaded server. While slow, the host gets at most `slow_sessions` concurrent sessions (one):
each extra session is one more connection held for minutes, and an overloaded server only gets
slower with more. The window learnt before is kept and applies again once the marking lapses.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass

from ct_actors.config import SmtpConfig

# Defaults are the config's (ct_actors/config/sections.py): defaults live in one place.
_SMTP = SmtpConfig()


@dataclass(frozen=True)
class HostWindowSettings:
    initial: int = _SMTP.initial_connections_per_host
    maximum: int = _SMTP.max_connections_per_host
    dead_backoff: float = _SMTP.dead_host_backoff
    dead_backoff_max: float = _SMTP.dead_host_backoff_max
    # Rejected RCPTs per host in any `rejected_window` seconds.
    max_rejected: int = _SMTP.max_rejected_rcpts_per_host
    rejected_window: float = _SMTP.rejected_rcpts_window
    # A host stays slow this long after its last slow reply.
    slow_for: float = _SMTP.slow_host_seconds
    slow_sessions: int = 1  # concurrent sessions while slow

    def __post_init__(self) -> None:
        if self.initial < 1:
            raise ValueError(f"initial concurrency must be at least 1, got {self.initial}")
        if self.maximum < self.initial:
            raise ValueError(
                f"maximum concurrency ({self.maximum}) is below initial ({self.initial})"
            )
        if self.dead_backoff < 0 or self.dead_backoff_max < 0:
            raise ValueError("dead-host backoffs must be >= 0")
        if self.max_rejected < 1 or self.rejected_window <= 0:
            raise ValueError("the rejected-RCPT budget needs max_rejected >= 1, window > 0")
        if self.slow_for < 0 or self.slow_sessions < 1:
            raise ValueError("slow hosts need slow_for >= 0 and slow_sessions >= 1")


@dataclass(frozen=True, slots=True)
class HostWindowStatistics:
    limit: int  # concurrent sessions allowed now
    maximum: int
    credit: int  # successes earned at the current limit
    dead_until: float | None  # trio time; None when not marked dead
    dead_streak: int
    slow_until: float | None  # trio time; None when never marked slow
    error_limit: int | None  # learnt from the host
    rejected_in_window: int
    rejected_peak: int
    rejected_total: int
    successes: int
    throttled: int
    connect_failures: int
    dead_marked: int
    slow_marked: int
    slow_replies: int
    last_success: float | None  # trio times
    last_throttled: float | None
    last_failure: float | None


class HostWindow:
    def __init__(self, settings: HostWindowSettings) -> None:
        self.settings = settings
        self._limit = settings.initial
        # Successes earned at the current limit; `limit` of them buy one more slot.
        self._credit = 0
        self._dead_until = -math.inf
        # Dead markings since the last success: the exponent of the next dead backoff.
        self._streak = 0
        self._counts = {
            "successes": 0,
            "throttled": 0,
            "connect_failures": 0,
            "dead_marked": 0,
            "slow_marked": 0,
            "slow_replies": 0,
        }
        self._slow_until = -math.inf
        # Learnt from the host: it tolerates fewer rejected commands per session than this.
        self.error_limit: int | None = None
        # Times of rejected RCPTs (and of RCPTs in flight holding a reservation), oldest first.
        # An accepted RCPT frees its place lazily (`_freed`: times freed but still in the
        # deque, and how many at each time), so settling costs O(1), not a search of the
        # window (thousands of places on a big provider's host).
        self._rejections: deque[float] = deque()
        self._freed: dict[float, int] = {}
        self._freed_count = 0
        self._rejected: deque[float] = deque()  # settled rejections only, for the peak
        self._rejected_peak = 0  # most rejections seen in one window
        self._rejected_total = 0
        # STARTTLS failed here: sessions skip it until then (trio time).
        self.plaintext_until = -math.inf
        self._last: dict[str, float | None] = {"success": None, "throttled": None, "failure": None}

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def dead_until(self) -> float:
        return self._dead_until

    def limit_at(self, now: float) -> int:
        """Concurrent sessions allowed now: the learnt window, or fewer while the host is slow."""
        if self.is_slow(now):
            return min(self._limit, self.settings.slow_sessions)
        return self._limit

    def is_slow(self, now: float) -> bool:
        return now < self._slow_until

    @property
    def slow_until(self) -> float:
        return self._slow_until

    def on_slow_reply(self, now: float) -> bool:
        """A greeting or reply kept us waiting past the threshold: the host is slow for
        `slow_for` from now. True if it was not slow before (a new marking)."""
        self._counts["slow_replies"] += 1
        new = not self.is_slow(now)
        self._counts["slow_marked"] += new
        self._slow_until = max(self._slow_until, now + self.settings.slow_for)
        return new

    def is_dead(self, now: float) -> bool:
        return now < self._dead_until

    def on_success(self, now: float) -> None:
        self._counts["successes"] += 1
        self._last["success"] = now
        self._streak = 0
        # dead_until stays: a success may come from a session opened before the host was marked
        # dead, and the marking is about new connections.
        if self._limit >= self.settings.maximum:
            self._credit = 0
            return
        self._credit += 1
        if self._credit >= self._limit:
            self._credit = 0
            self._limit += 1

    def on_throttled(self, now: float) -> None:
        self._counts["throttled"] += 1
        self._last["throttled"] = now
        self._limit = max(1, self._limit // 2)
        self._credit = 0

    def on_connect_failure(self, now: float) -> bool:
        """Shrink to one session and mark the host dead; True if this is a new marking.

        Failures of connections opened before the host was marked dead belong to the same
        outage, so they neither extend the dead time nor double the next backoff.
        """
        self._counts["connect_failures"] += 1
        self._last["failure"] = now
        self._limit = 1
        self._credit = 0
        if self.is_dead(now):
            return False
        self._dead_until = now + self._next_backoff()
        self._streak += 1
        self._counts["dead_marked"] += 1
        return True

    def _next_backoff(self) -> float:
        settings = self.settings
        # The exponent is clamped so a host that fails for weeks cannot overflow the float;
        # 2**60 times any sane base is far beyond any sane cap.
        doubled = settings.dead_backoff * 2.0 ** min(self._streak, 60)
        return min(doubled, settings.dead_backoff_max)

    def learn_error_limit(self, tolerated: int) -> None:
        """The host ended a session after `tolerated` rejected commands: stay below that."""
        limit = max(1, tolerated - 1)
        self.error_limit = limit if self.error_limit is None else min(self.error_limit, limit)

    @property
    def rejected_peak(self) -> int:
        """The most RCPTs this host rejected within one window."""
        return self._rejected_peak

    def _expire(self, now: float) -> None:
        """Drop places out of the window, and freed places at its start, so that the oldest
        place left (if any) is a rejection or a reservation still in flight."""
        horizon = now - self.settings.rejected_window
        places, freed = self._rejections, self._freed
        while places:
            oldest = places[0]
            if oldest <= horizon or oldest in freed:
                places.popleft()
                self._unfree(oldest)
            else:
                break

    def _unfree(self, place: float) -> None:
        """A place left the deque: if it was a freed one, it is not waiting any more."""
        count = self._freed.get(place)
        if count is None:
            return
        self._freed_count -= 1
        if count == 1:
            del self._freed[place]
        else:
            self._freed[place] = count - 1

    def _in_window(self) -> int:
        return len(self._rejections) - self._freed_count

    def rejection_wait(self, now: float) -> float:
        """Seconds until one more RCPT may be sent (0: now)."""
        self._expire(now)
        if self._in_window() < self.settings.max_rejected:
            return 0.0
        return self._rejections[0] + self.settings.rejected_window - now

    def reserve_rejection(self, now: float) -> bool:
        """Room for one RCPT that may be rejected: reserve it (settle it with the answer)."""
        if self.rejection_wait(now) > 0:
            return False
        self._rejections.append(now)
        return True

    def settle_rejection(self, reserved_at: float, rejected: bool) -> None:
        """The answer came: a rejection keeps its place in the window, anything else frees it."""
        if rejected:
            self._rejected_total += 1
            self._rejected.append(reserved_at)
            horizon = reserved_at - self.settings.rejected_window
            while self._rejected and self._rejected[0] <= horizon:
                self._rejected.popleft()
            self._rejected_peak = max(self._rejected_peak, len(self._rejected))
            return
        # Places are in time order and a time's places leave the deque together when they
        # expire, so a place at `reserved_at` is still there unless it has expired.
        if self._rejections and reserved_at >= self._rejections[0]:
            self._freed[reserved_at] = self._freed.get(reserved_at, 0) + 1
            self._freed_count += 1

    def revive(self) -> None:
        """Forget the dead marking and its streak: the operator says the cause was ours (a
        kill switch was cleared), so what looked like a dead host was not the host's doing."""
        self._dead_until = -math.inf
        self._streak = 0

    def reconfigure(self, settings: HostWindowSettings) -> None:
        """Adopt reloaded settings; the learnt window and any dead marking carry over."""
        self.settings = settings
        clamped = min(max(self._limit, 1), settings.maximum)
        if clamped != self._limit:
            self._limit = clamped
            self._credit = 0

    def statistics(self) -> HostWindowStatistics:
        return HostWindowStatistics(
            limit=self._limit,
            maximum=self.settings.maximum,
            credit=self._credit,
            dead_until=self._dead_until if math.isfinite(self._dead_until) else None,
            dead_streak=self._streak,
            slow_until=self._slow_until if math.isfinite(self._slow_until) else None,
            error_limit=self.error_limit,
            rejected_in_window=self._in_window(),
            rejected_peak=self._rejected_peak,
            rejected_total=self._rejected_total,
            **self._counts,
            last_success=self._last["success"],
            last_throttled=self._last["throttled"],
            last_failure=self._last["failure"],
        )
