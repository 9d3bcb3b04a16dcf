"""Calendar budgets (`per_day`, `per_month` in the registry): counted in PostgreSQL, in UTC.

The count lives in the database, not in the process, so a restart at 23:00 does not hand out a
fresh day and several daemons on one database share one budget. To keep the hot path off the
database, calls are reserved `block` at a time with one atomic statement that never passes the
limit (`reserve_usage`); what a daemon reserved and did not use goes back at shutdown. A crash
forfeits at most one block: the budget can be under-spent, never over-spent.

When the window is used up, `take()` waits until the next window opens (UTC midnight, or the
first of the month) — our own budget is never a reason to fail a record.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Protocol

import structlog
import trio

from ct_actors.throttle.calendar import UtcClock, window_end, window_start

log = structlog.get_logger("ct_actors.throttle")


class UsageStore(Protocol):
    async def reserve_usage(
        self, tool_id: str, scope: str, window_start: dt.datetime, want: int, limit: int
    ) -> int: ...
    async def refund_usage(
        self, tool_id: str, scope: str, window_start: dt.datetime, count: int
    ) -> None: ...
    async def usage(self, tool_id: str, scope: str, window_start: dt.datetime) -> int: ...


@dataclass(frozen=True, slots=True)
class BudgetStatistics:
    scope: str  # per_day, per_month
    limit: int
    window: dt.datetime | None  # start of the current window (UTC); None before the first call
    spent_here: int  # calls this process spent in the window
    left: int | None  # the shared count's remainder at the last refresh; None before one
    reserved_unspent: int
    block: int  # the current reservation size
    exhausted_until: dt.datetime | None  # the window is used up until then (UTC)
    exhausted_waits: int


class CalendarBudget:
    def __init__(
        self,
        tool_id: str,
        scope: str,
        limit: int,
        *,
        clock: UtcClock,
        usage: UsageStore,
        block: int = 20,
        transient_errors: tuple[type[BaseException], ...] = (),
        retry_delay: float = 5.0,
    ) -> None:
        window_start(scope, clock.utc_at(0.0))  # refuse a scope that is not a calendar window
        self.tool_id = tool_id
        self.scope = scope
        self.limit = limit
        self.block = block  # the configured (smallest) reservation
        self._block = block  # the current one: grows while refills come fast, see _reserve
        self._last_refill = float("-inf")
        self._clock = clock
        self._usage = usage
        self._transient = transient_errors
        self._retry_delay = retry_delay
        self._refilling: trio.Event | None = None  # set while a reservation is in flight
        self._recheck_at = float("-inf")  # used up: no reservation before this trio time
        self._window: dt.datetime | None = None
        self._window_ends_at = float("-inf")  # trio time; before any window: take() first
        self._left = 0  # reserved in the database, not yet spent
        self._stale = False  # the limit changed: give back the block before reserving again
        self.spent = 0  # calls spent by this process in the current window
        self.exhausted_until: dt.datetime | None = None
        self._waits = 0
        self.used_in_window: int | None = None  # the shared count, as of the last refresh

    def statistics(self) -> BudgetStatistics:
        used = self.used_in_window
        return BudgetStatistics(
            scope=self.scope,
            limit=self.limit,
            window=self._window,
            spent_here=self.spent,
            left=None if used is None else max(0, self.limit - used),
            reserved_unspent=self._left,
            block=self._block,
            exhausted_until=self.exhausted_until,
            exhausted_waits=self._waits,
        )

    def set_limit(self, limit: int, block: int | None = None) -> None:
        """New limit from a reload; applies from the next call."""
        if limit != self.limit:
            self._stale = True
        self.limit = limit
        if block is not None:
            self.block = self._block = block

    def take_now(self, now_trio: float) -> bool:
        """Spend one call from the local reservation if that needs no database round trip and
        no wait; False if `take()` is needed."""
        # No datetime work on the per-call path: the window's end is kept in trio time.
        if self._left <= 0 or self._stale or now_trio >= self._window_ends_at:
            return False
        self._left -= 1
        self.spent += 1
        return True

    async def take(self) -> bool:
        """Spend one call of the current window, waiting for the next window if it is used up.
        Returns True if it had to wait for a window to open.

        One reservation at a time goes to the database; callers that find the local block
        empty meanwhile wait for it and then all take from it in the same scheduler pass (a
        lock handed from waiter to waiter would cost a pass per caller)."""
        waited = False
        while True:
            t = trio.current_time()
            now = self._clock.utc_at(t)
            start = window_start(self.scope, now)
            if start != self._window:
                # A new day/month: what was left of the old one's block is simply unused.
                self._window, self._left, self.spent = start, 0, 0
                self._window_ends_at = self._clock.trio_at(window_end(self.scope, now))
                self.exhausted_until = None
                self._recheck_at = float("-inf")
            if self._left > 0 and not self._stale:
                self._left -= 1
                self.spent += 1
                return waited
            if self._refilling is not None:
                await self._refilling.wait()
                continue
            if t < self._recheck_at:
                waited = True
                await trio.sleep_until(self._recheck_at)
                continue
            done = self._refilling = trio.Event()
            try:
                if self._stale:
                    if self._left:
                        await self._refund(start, self._left)
                        self._left = 0
                    self._stale = False
                granted = await self._reserve(start)
                if start == self._window:
                    self._left += granted
            finally:
                self._refilling = None
                done.set()
            if not granted:
                self._exhausted(now)

    def give_back(self) -> None:
        """Return one call taken by `take()`/`take_now()` but never made (a kill switch tripped
        meanwhile) to the local reservation."""
        if self.spent > 0:
            self.spent -= 1
            self._left += 1

    async def refresh(self) -> None:
        """Read the shared count of the current window (for the stats line's budget left)."""
        start = window_start(self.scope, self._clock.utc_at(trio.current_time()))
        self.used_in_window = await self._usage.usage(self.tool_id, self.scope, start)

    async def release(self) -> None:
        """Give back the unspent part of the block (at shutdown). The caller bounds it."""
        if not self._left or self._window is None:
            return
        await self._refund(self._window, self._left)
        self._left = 0

    async def _reserve(self, start: dt.datetime) -> int:
        # Every caller waits while a reservation is in flight, so at hundreds of calls per
        # second a small block would serialise the pipeline on database round trips. The block
        # doubles while refills come less than a second apart and halves back otherwise, never
        # above 1% of the limit: a crash still forfeits at most that.
        now = trio.current_time()
        cap = max(self.block, self.limit // 100)
        if now - self._last_refill < 1.0:
            self._block = min(self._block * 2, cap)
        else:
            self._block = max(self.block, self._block // 2)
        self._last_refill = now
        while True:
            try:
                return await self._usage.reserve_usage(
                    self.tool_id, self.scope, start, min(self._block, cap), self.limit
                )
            except self._transient as exc:
                # Our database is down: wait, never spend uncounted calls.
                log.warning(
                    "budget_check_failed",
                    tool=self.tool_id,
                    scope=self.scope,
                    error=str(exc),
                    retry_in=self._retry_delay,
                )
                await trio.sleep(self._retry_delay)

    async def _refund(self, start: dt.datetime, count: int) -> None:
        try:
            await self._usage.refund_usage(self.tool_id, self.scope, start, count)
        except self._transient as exc:
            log.warning("budget_refund_failed", tool=self.tool_id, scope=self.scope,
                        count=count, error=str(exc))

    def _exhausted(self, now: dt.datetime) -> None:
        end = window_end(self.scope, now)
        if self.exhausted_until != end:
            self.exhausted_until = end
            log.warning(
                "budget_exhausted",
                tool=self.tool_id,
                scope=self.scope,
                limit=self.limit,
                resumes_at=end.isoformat(),
            )
        self._waits += 1
        # Re-checked every minute at most: a SIGHUP may raise the limit meanwhile.
        self._recheck_at = min(self._clock.trio_at(end), trio.current_time() + 60.0)
