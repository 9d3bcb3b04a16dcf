"""Usage: the tool budgets' counters (SNAP_ON_TOOLBOX per_day and per_month limits) in
`ct_actors.tool_usage`, one counter per UTC calendar window, shared by every daemon on the
database and kept across restarts. `UsageBook` is the production `UsageStore`
(ct_actors.throttle.budget); it stands on the database driver (`ct_actors.db.driver`).
"""

from __future__ import annotations

import datetime as dt

import trio

from ct_actors.db import queries as q
from ct_actors.db.driver import Database
from ct_actors.db.errors import QueryError
from ct_actors.throttle.calendar import window_start

__all__ = ["USAGE_SCOPES", "UsageBook", "check_usage_window", "usage_window"]

# The toolbox scopes counted in ct_actors.tool_usage (its CHECK constraint says the same).
USAGE_SCOPES: tuple[str, ...] = ("per_day", "per_month")
# A window row whose creation keeps losing to something deleting it (an operator pruning the
# current window in a loop) is not worth waiting for forever.
_RESERVE_ATTEMPTS = 5


class UsageBook:
    """The day/month counters of every tool (the `UsageStore` of the throttles)."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def reserve_usage(
        self, tool_id: str, scope: str, window_start: dt.datetime, want: int, limit: int
    ) -> int:
        """Add up to `want` calls to the window's counter without ever taking it past `limit`;
        returns how many were granted (0..want). Atomic across connections and daemons.

        `window_start` is the start of the UTC calendar window (see `usage_window`). One round
        trip, or up to three for the first reservation of a window. Raises ValueError for a bad
        argument, DatabaseUnavailable etc. as every call on the driver.
        """
        check_usage_window(scope, window_start)
        if want < 1:
            raise ValueError(f"want must be >= 1, got {want!r}")
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit!r}")

        async def run() -> int:
            async with self._db.connection() as conn:
                for _attempt in range(_RESERVE_ATTEMPTS):
                    # The common case first: the window's row exists (every reservation of a
                    # window but the first).
                    self._db.count_round_trips(1)
                    granted = await conn.fetchval(
                        q.RESERVE_USAGE, tool_id, scope, window_start, want, limit
                    )
                    if granted is not None:
                        return int(granted)
                    self._db.count_round_trips(1)
                    granted = await conn.fetchval(
                        q.RESERVE_USAGE_FIRST, tool_id, scope, window_start, want, limit
                    )
                    if granted is not None:
                        return int(granted)
                    # Another reservation created the row between our two statements.
            raise QueryError(
                f"reserve usage: the row of {tool_id}/{scope}/{window_start.isoformat()} "
                f"vanished {_RESERVE_ATTEMPTS} times in a row (is something deleting it?)"
            )

        return await self._db.call("reserve usage", run)

    async def refund_usage(
        self, tool_id: str, scope: str, window_start: dt.datetime, count: int
    ) -> None:
        """Give back `count` reserved calls that were not used (never below 0). Refunding into
        a window that has no row is a no-op."""
        check_usage_window(scope, window_start)
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count!r}")
        if count == 0:
            await trio.lowlevel.checkpoint()
            return
        await self._db.execute("refund usage", q.REFUND_USAGE, tool_id, scope, window_start, count)

    async def usage(self, tool_id: str, scope: str, window_start: dt.datetime) -> int:
        """Calls counted in the window so far (0 when nothing was reserved in it)."""
        check_usage_window(scope, window_start)
        value = await self._db.fetchval("usage", q.USAGE, tool_id, scope, window_start)
        return 0 if value is None else int(value)


def usage_window(scope: str, at: dt.datetime) -> dt.datetime:
    """Start of the UTC calendar window of `scope` ('per_day' or 'per_month') containing the
    tz-aware instant `at` (the same calendar the budgets use)."""
    if scope not in USAGE_SCOPES:
        raise ValueError(f"scope must be one of {', '.join(USAGE_SCOPES)}, got {scope!r}")
    return window_start(scope, at)


def check_usage_window(scope: str, window_start: dt.datetime) -> None:
    """ValueError unless `window_start` is a UTC window start of `scope`. A naive datetime
    would be read in the database session's TimeZone, and an unaligned one (say, now()) would
    silently give every call a window, and so a budget, of its own."""
    if scope not in USAGE_SCOPES:
        raise ValueError(f"scope must be one of {', '.join(USAGE_SCOPES)}, got {scope!r}")
    if window_start.tzinfo is None or window_start.utcoffset() != dt.timedelta(0):
        raise ValueError(f"window_start must be a UTC datetime, got {window_start!r}")
    if usage_window(scope, window_start) != window_start:
        raise ValueError(
            f"window_start {window_start.isoformat()} is not the start of a UTC "
            f"{'day' if scope == 'per_day' else 'month'}"
        )
