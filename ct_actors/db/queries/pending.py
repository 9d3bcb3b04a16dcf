"""What is pending and why: single-record lookups, monitoring counts, and what a `run --drain`
leaves behind (the work queue's read-only statements)."""

from __future__ import annotations

from typing import Final

from ct_actors.db.queries.common import TERMINAL_SQL, not_terminal

# Rows the claim skips or merges (a spine without a primary key): NULL ids, and ids carried by
# more than one row (at most $1 of them listed). Both use the index on outreach_id.
SPINE_NULL_IDS: Final = """
SELECT count(*) FROM outreach.outreach o WHERE o.outreach_id IS NULL
"""

SPINE_DUPLICATED_IDS: Final = """
SELECT o.outreach_id, count(*) AS n
FROM outreach.outreach o
WHERE o.outreach_id IS NOT NULL
GROUP BY o.outreach_id
HAVING count(*) > 1
ORDER BY o.outreach_id
LIMIT $1
"""

FETCH_SPINE: Final = """
SELECT o.outreach_id, o.domain FROM outreach.outreach o WHERE o.outreach_id = $1
ORDER BY o.domain NULLS LAST
LIMIT 1
"""

TERMINAL_STATUS: Final = f"""
SELECT coalesce(
    (SELECT ct.execution_status FROM outreach.company_target ct
     WHERE ct.outreach_id = $1 AND ct.execution_status IN {TERMINAL_SQL}),
    (SELECT 'failed' FROM outreach.company_target_errors e
     WHERE e.outreach_id = $1 AND e.resolved_at IS NULL LIMIT 1)
)
"""

# Distinct ids, NULLs excluded: a spine without a primary key may repeat an id or carry none
# (the claim processes such an id once and never a NULL one).
PENDING_COUNT: Final = f"""
SELECT count(DISTINCT o.outreach_id) FROM outreach.outreach o
WHERE {not_terminal("o.outreach_id")}
"""

# Pending records `$1` does not hold and that are not deferred into the future: leased by another
# daemon, or under another daemon's claim that has not committed yet (SKIP LOCKED hid them from
# our claim and its leases are not visible), or claimable. `run --drain` may only exit when this
# is 0: a crashed daemon's leases and a concurrent claim both mean work is still pending.
PENDING_ELSEWHERE: Final = f"""
SELECT count(*) FROM outreach.outreach o
WHERE o.outreach_id IS NOT NULL
  AND {not_terminal("o.outreach_id")}
  AND NOT EXISTS (SELECT 1 FROM ct_actors.lease l
                  WHERE l.outreach_id = o.outreach_id
                    AND (l.not_before > now() OR (l.owner = $1 AND l.expires_at > now())))
"""

# PENDING_ELSEWHERE restricted to a set of records ($2 uuid[]), for a drain over that set only.
PENDING_ELSEWHERE_AMONG: Final = f"""
SELECT count(*) FROM outreach.outreach o
WHERE o.outreach_id = ANY ($2::uuid[])
  AND {not_terminal("o.outreach_id")}
  AND NOT EXISTS (SELECT 1 FROM ct_actors.lease l
                  WHERE l.outreach_id = o.outreach_id
                    AND (l.not_before > now() OR (l.owner = $1 AND l.expires_at > now())))
"""

COUNTS_BY_OUTCOME: Final = """
SELECT 'PASS' AS outcome, count(*) AS n
FROM outreach.company_target WHERE execution_status = 'ready'
UNION ALL
SELECT failure_code, count(*)
FROM outreach.company_target_errors
WHERE resolved_at IS NULL AND failure_code IS NOT NULL
GROUP BY failure_code
"""


# ---------------------------------------------------------------------------------------------
# What a `run --drain` leaves behind (issue 14)
# ---------------------------------------------------------------------------------------------
# Pending records by why they are not done, $1 the draining owner: deferred into the future
# (with the earliest not_before), under a live lease of another daemon, or claimable (left
# unclaimed because a kill switch held claiming). One row per (class, reason); `reason` is the
# deferral's last_reason, NULL for the other classes.
HELD_BACK: Final = f"""
SELECT CASE
           WHEN l.not_before > now() THEN 'deferred'
           WHEN l.expires_at > now() AND l.owner <> $1 THEN 'leased_elsewhere'
           WHEN l.expires_at > now() THEN 'leased_here'
           ELSE 'claimable'
       END AS class,
       CASE WHEN l.not_before > now() THEN l.last_reason END AS reason,
       count(*) AS n,
       min(l.not_before) FILTER (WHERE l.not_before > now()) AS earliest
FROM outreach.outreach o
LEFT JOIN ct_actors.lease l ON l.outreach_id = o.outreach_id
WHERE {not_terminal("o.outreach_id")}
GROUP BY 1, 2
"""
