"""One tool's throttle, built from its registry entry: every `rate_limits` scope it lists.

    per_second / per_minute  -> a sliding window in this process (any 1 s / 60 s interval)
    per_domain (+ window)    -> a sliding window per key (the target domain)
    per_day / per_month      -> a calendar budget in PostgreSQL (see budget.py)

`acquire(key)` returns when one more call is allowed by all of them, and counts it. The order
matters: the per-key wait comes first and holds nothing (a domain waiting for its own 2 s must
not delay other domains); then, in arrival order, the budget and the shared windows.

`reconfigure(spec)` swaps in a new registry entry (SIGHUP): the call history and the budget counts
carry over, so a reload never hands out a fresh second, day or month.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import trio

from ct_actors.config import DaemonConfig, ThrottleConfig
from ct_actors.log import fields_as_log
from ct_actors.throttle.budget import BudgetStatistics, CalendarBudget, UsageStore
from ct_actors.throttle.calendar import UtcClock
from ct_actors.throttle.window import KeyedWindow, SlidingWindow
from ct_actors.toolbox import ToolSpec

_LOCAL_SCOPES = ("per_second", "per_minute")
# Refunds at a stop: half of daemon.stop_timeout, like closing the pool.
RELEASE_SECONDS = DaemonConfig().stop_timeout / 2
_CALENDAR_SCOPES = ("per_day", "per_month")
_BUDGET_BLOCK = ThrottleConfig().budget_block


@dataclass(frozen=True, slots=True)
class LimiterStatistics:
    tool: str  # the registry's name (SMTPCheck); not in the line, where it is part of the key
    calls: int
    throttle_waits: int  # calls that had to wait for a limit
    throttle_wait_seconds: float  # their waits, summed
    limits: tuple[str, ...]  # the registry's rate limits, as text ("50 per_second")
    budgets: Mapping[str, BudgetStatistics]  # by calendar scope
    paused_until: dt.datetime | None  # a calendar budget is spent until then (UTC)

    def as_log(self) -> dict[str, Any]:
        line = fields_as_log(self)
        del line["tool"]
        line["throttle_wait_seconds"] = round(self.throttle_wait_seconds, 3)
        return line


@dataclass(frozen=True, slots=True)
class ThrottlesStatistics:
    tools: Mapping[str, LimiterStatistics]  # by tool_id

    def as_log(self) -> dict[str, Any]:
        """Keyed `"<tool_id> <name>"` (`"TOOL-005 SMTPCheck"`), as the dashboards read it."""
        return {f"{tool_id} {s.tool}": s.as_log() for tool_id, s in self.tools.items()}


@dataclass(frozen=True, slots=True)
class ThrottleSettings:
    """The registry's entries for our tools (by tool_id) and throttle.budget_block."""

    tools: Mapping[str, ToolSpec]
    budget_block: int = _BUDGET_BLOCK


class ToolLimiter:
    def __init__(
        self,
        spec: ToolSpec,
        *,
        clock: UtcClock,
        usage: UsageStore | None,
        budget_block: int = _BUDGET_BLOCK,
        transient_errors: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.spec = spec
        self._clock = clock
        self._usage = usage
        self._block = budget_block
        self._transient = transient_errors
        self._lock = trio.Lock()
        self._windows: dict[str, SlidingWindow] = {}
        self._keyed: KeyedWindow | None = None
        self._budgets: dict[str, CalendarBudget] = {}
        self.calls = 0
        self.waits = 0
        self.wait_seconds = 0.0
        self._apply(spec)

    @property
    def tool_id(self) -> str:
        return self.spec.tool_id

    def reconfigure(self, spec: ToolSpec, /, *, budget_block: int | None = None) -> None:
        """Apply a reloaded registry entry from the next call on, keeping all counts."""
        if budget_block is not None:
            self._block = budget_block
        self.spec = spec
        self._apply(spec)

    def _apply(self, spec: ToolSpec) -> None:
        seen: set[str] = set()
        for limit in spec.rate_limits:
            scope = limit.scope
            if scope in seen:
                continue  # the registry's first entry for a scope wins (ToolSpec.rate_limit)
            seen.add(scope)
            window = limit.window
            assert window is not None
            if scope in _LOCAL_SCOPES:
                if scope in self._windows:
                    self._windows[scope].set_limit(limit.limit, window)
                else:
                    self._windows[scope] = SlidingWindow(limit.limit, window)
            elif scope == "per_domain":
                if self._keyed is None:
                    self._keyed = KeyedWindow(limit.limit, window)
                else:
                    self._keyed.set_limit(limit.limit, window)
            elif scope in _CALENDAR_SCOPES:
                budget = self._budgets.get(scope)
                if budget is not None:
                    budget.set_limit(limit.limit, self._block)
                elif self._usage is not None:
                    self._budgets[scope] = CalendarBudget(
                        spec.tool_id,
                        scope,
                        limit.limit,
                        clock=self._clock,
                        usage=self._usage,
                        block=self._block,
                        transient_errors=self._transient,
                    )
        # A scope removed from the registry stops applying.
        for gone in [s for s in self._windows if s not in seen]:
            del self._windows[gone]
        if "per_domain" not in seen:
            self._keyed = None
        for gone in [s for s in self._budgets if s not in seen]:
            del self._budgets[gone]

    async def acquire(self, key: str | None = None) -> None:
        """Wait until one more call is allowed, then count it."""
        now = trio.current_time()
        if self._take_if_free(key, now):
            # The common case: nothing to wait for, no database round trip. No checkpoint
            # either: the caller is about to do network I/O, which is one.
            self._commit(key, now)
            self.calls += 1
            return
        started = now
        # Waiting in line behind callers held by a rate window is a throttle wait too.
        slept = self._lock.locked() or any(w.next_free(now) > now for w in self._windows.values())
        keyed = self._keyed
        if keyed is not None and key is not None:
            slept |= await _wait_until(lambda: keyed.next_free(key, trio.current_time()))
        for budget in list(self._budgets.values()):
            slept |= await budget.take()
        # Callers that must wait for a rate window queue in arrival order.
        async with self._lock:
            for window in list(self._windows.values()):
                slept |= await _wait_until(lambda w=window: w.next_free(trio.current_time()))
            self._commit(key, trio.current_time())
        self.calls += 1
        waited = trio.current_time() - started
        if slept and waited > 0:  # a budget refill's database round trip is not a wait
            self.waits += 1
            self.wait_seconds += waited

    def _take_if_free(self, key: str | None, now: float) -> bool:
        """True (with the budget already spent) if the call may go now without waiting."""
        if self._keyed is not None and key is not None and self._keyed.next_free(key, now) > now:
            return False
        if any(w.next_free(now) > now for w in self._windows.values()):
            return False
        budgets = list(self._budgets.values())
        if not budgets:
            return True
        if len(budgets) == 1:
            return budgets[0].take_now(now)
        return False  # several calendar scopes: take them together, under the lock

    def _commit(self, key: str | None, now: float) -> None:
        for window in self._windows.values():
            window.record(now)
        if self._keyed is not None and key is not None:
            self._keyed.record(key, now)

    def cancel_call(self) -> None:
        """The call just acquired was not made: its budget goes back (rate windows keep it —
        spacing errs on the polite side)."""
        self.calls -= 1
        for budget in self._budgets.values():
            budget.give_back()

    async def refresh(self, transient: tuple[type[BaseException], ...] = ()) -> None:
        for budget in self._budgets.values():
            try:
                await budget.refresh()
            except transient:
                return

    async def release(self) -> None:
        """Shutdown: give unspent budget reservations back to the shared count."""
        for budget in self._budgets.values():
            await budget.release()

    @property
    def paused_until(self) -> dt.datetime | None:
        """The latest moment until which a calendar budget (day/month) is spent, UTC."""
        return max(
            (b.exhausted_until for b in self._budgets.values() if b.exhausted_until is not None),
            default=None,
        )

    def statistics(self) -> LimiterStatistics:
        return LimiterStatistics(
            tool=self.spec.name,
            calls=self.calls,
            throttle_waits=self.waits,
            throttle_wait_seconds=self.wait_seconds,
            limits=tuple(r.describe() for r in self.spec.rate_limits),
            budgets={scope: b.statistics() for scope, b in self._budgets.items()},
            paused_until=self.paused_until,
        )


async def _wait_until(next_free: Any) -> bool:
    """Sleep until `next_free()` says now; True if it had to sleep at all."""
    slept = False
    # Re-evaluated after each sleep: other callers (or a reload) may have moved the time.
    while True:
        at = next_free()
        if at <= trio.current_time():
            return slept
        slept = True
        await trio.sleep_until(at)


class ToolThrottles:
    """The limiters of our three tools, swapped together on reload."""

    def __init__(
        self,
        specs: dict[str, ToolSpec],
        *,
        clock: UtcClock,
        usage: UsageStore | None,
        budget_block: int = _BUDGET_BLOCK,
        transient_errors: tuple[type[BaseException], ...] = (),
    ) -> None:
        self.by_tool = {
            tool_id: ToolLimiter(
                spec,
                clock=clock,
                usage=usage,
                budget_block=budget_block,
                transient_errors=transient_errors,
            )
            for tool_id, spec in specs.items()
        }

    def __getitem__(self, tool_id: str) -> ToolLimiter:
        return self.by_tool[tool_id]

    def reconfigure(self, settings: ThrottleSettings) -> None:
        for tool_id, limiter in self.by_tool.items():
            limiter.reconfigure(settings.tools[tool_id], budget_block=settings.budget_block)

    async def release(self, within: float = RELEASE_SECONDS) -> None:
        """Shutdown: every tool's unspent reservations back at once, given up after `within`
        seconds in all (a stop during a database outage must not wait for each in turn)."""
        with trio.move_on_after(within, shield=True):
            async with trio.open_nursery() as nursery:
                for limiter in self.by_tool.values():
                    nursery.start_soon(limiter.release)

    async def refresh(self, transient: tuple[type[BaseException], ...] = ()) -> None:
        for limiter in self.by_tool.values():
            await limiter.refresh(transient)

    def statistics(self) -> ThrottlesStatistics:
        return ThrottlesStatistics(
            {tool_id: limiter.statistics() for tool_id, limiter in self.by_tool.items()}
        )
