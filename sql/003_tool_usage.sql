-- 003_tool_usage: day and month budgets of the tools in the SNAP_ON_TOOLBOX registry.
--
-- A per_day / per_month limit is a calendar window in UTC (a day starts at 00:00 UTC, a month
-- on the 1st at 00:00 UTC), not a sliding one, and it is counted here rather than in memory:
--   * a daemon restarted at 23:00 must not hand out a fresh day's budget a second time;
--   * several daemons on one database must share one budget, not have one each.
-- The daemon reserves calls in blocks (one round trip per block, see Store.reserve_usage) and
-- refunds what it did not use at shutdown, so a crash forfeits at most one block per window.
--
-- One row per (tool, scope, window), created by the first reservation of the window. Rows are
-- never deleted by the daemon: a few tools times 365 days a year is a few thousand tiny rows,
-- and they double as the usage history. Old windows may be pruned by an operator at will; a
-- current window must not be (its budget would start over).
-- Only the two calendar scopes are stored (the CHECK): a per_second/per_minute rate is not
-- worth a database round trip per call, and forgetting it on a restart costs nothing.

CREATE TABLE IF NOT EXISTS ct_actors.tool_usage (
    tool_id      text NOT NULL,
    scope        text NOT NULL CHECK (scope IN ('per_day', 'per_month')),
    -- Start of the UTC calendar window the row counts (midnight, or midnight on the 1st).
    window_start timestamptz NOT NULL,
    -- Calls reserved in the window, refunds deducted. The store never lets it grow past the
    -- limit; it may sit above a limit that was lowered since (nothing more is granted then).
    used         bigint NOT NULL DEFAULT 0 CHECK (used >= 0),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tool_id, scope, window_start)
);
