"""Tool usage: the toolbox's day/month budgets (sql/003_tool_usage.sql; `ct_actors.db.usage`)."""

from __future__ import annotations

from typing import Final

# Parameters shared by all of them: $1 tool_id, $2 scope, $3 window_start.
_USAGE_ROW: Final = "u.tool_id = $1 AND u.scope = $2 AND u.window_start = $3"

# Reserve on an existing row: $4 want, $5 limit. One statement, so atomic on its own; it needs
# the counter's value *before* the increment to report the grant, which an UPDATE's RETURNING
# cannot see, hence the locking read in `cur`:
# * FOR NO KEY UPDATE waits for any concurrent reservation of the same row to commit and then,
#   even in READ COMMITTED, returns the latest committed version (not this statement's
#   snapshot), and keeps the row locked until we commit;
# * the UPDATE then modifies exactly that version (its own view of the row is re-fetched to
#   the latest version by PostgreSQL's update recheck), so cur.used is the value incremented:
#   no lost update, and never past the limit;
# * an exhausted window (used >= limit) is only locked, not rewritten.
# No row at all: no result row (the caller then inserts); otherwise one row, granted >= 0.
RESERVE_USAGE: Final = f"""
WITH cur AS (
    SELECT u.used FROM ct_actors.tool_usage u
    WHERE {_USAGE_ROW}
    FOR NO KEY UPDATE
),
bumped AS (
    UPDATE ct_actors.tool_usage AS u
    SET used = cur.used + LEAST($4::bigint, $5::bigint - cur.used),
        updated_at = now()
    FROM cur
    WHERE {_USAGE_ROW} AND cur.used < $5::bigint
    RETURNING u.used
)
SELECT coalesce((SELECT b.used FROM bumped b), cur.used) - cur.used AS granted
FROM cur
"""

# The first reservation of a window: $4 want, $5 limit. DO NOTHING on conflict (another daemon
# created the row meanwhile; it waits for that insert to commit first): no result row, and the
# caller goes back to RESERVE_USAGE.
RESERVE_USAGE_FIRST: Final = """
INSERT INTO ct_actors.tool_usage AS u (tool_id, scope, window_start, used, updated_at)
VALUES ($1, $2, $3, LEAST($4::bigint, $5::bigint), now())
ON CONFLICT (tool_id, scope, window_start) DO NOTHING
RETURNING u.used AS granted
"""

# $4 count. A plain UPDATE is atomic against concurrent reservations (it re-reads the latest
# version of the row before writing); GREATEST keeps an over-refund from going negative.
REFUND_USAGE: Final = f"""
UPDATE ct_actors.tool_usage AS u
SET used = GREATEST(u.used - $4::bigint, 0), updated_at = now()
WHERE {_USAGE_ROW}
"""

USAGE: Final = f"""
SELECT u.used FROM ct_actors.tool_usage u WHERE {_USAGE_ROW}
"""
