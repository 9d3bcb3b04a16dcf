"""The work queue's claim and lease statements (`ct_actors.db.work_queue`)."""

from __future__ import annotations

from typing import Final

from ct_actors.db.queries.common import not_terminal

# A lease row does not block a claim when it has expired (owner crashed, released, or deferred)
# or when it belongs to a previous incarnation of the same owner (claimed before the driver was
# opened: the daemon restarted with the same name), and its not_before has passed.
# Parameters shared by both claim variants: $1 owner, $2 limit, $3 lease seconds, $4 the
# driver's incarnation start (DB clock).
_CLAIMABLE: Final = """
    ((l.expires_at <= now() OR (l.owner = $1 AND l.claimed_at < $4))
     AND (l.not_before IS NULL OR l.not_before <= now()))
"""


def _claim(range_on: str) -> str:
    return f"""
WITH candidates AS (
    SELECT o.outreach_id, o.domain
    FROM outreach.outreach o
    WHERE o.outreach_id IS NOT NULL
      AND {range_on.replace("{t}", "o")}
      AND {not_terminal("o.outreach_id", range_on)}
      AND NOT EXISTS (SELECT 1 FROM ct_actors.lease l
                      WHERE l.outreach_id = o.outreach_id AND NOT {_CLAIMABLE}
                        AND {range_on.replace("{t}", "l")})
    ORDER BY o.outreach_id
    LIMIT $2
    -- NO KEY UPDATE rather than UPDATE: it still excludes concurrent claimers (SKIP LOCKED),
    -- but does not conflict with the KEY SHARE locks that FK checks on company_target take.
    FOR NO KEY UPDATE OF o SKIP LOCKED
),
-- The spine is upstream's and may lack a primary key: one lease per id however many rows
-- carry it (two proposed rows with one key would fail the whole upsert), the smallest domain
-- as a deterministic choice, and spine_rows > 1 tells the caller to report the duplicate.
records AS (
    SELECT c.outreach_id, min(c.domain) AS domain, count(*) AS spine_rows
    FROM candidates c
    GROUP BY c.outreach_id
),
leased AS (
    INSERT INTO ct_actors.lease AS l
        (outreach_id, owner, claimed_at, expires_at, attempts, not_before, last_reason)
    SELECT r.outreach_id, $1, now(), now() + make_interval(secs => $3), 1, NULL, NULL
    FROM records r
    ORDER BY r.outreach_id
    ON CONFLICT (outreach_id) DO UPDATE
        SET owner = excluded.owner,
            claimed_at = excluded.claimed_at,
            expires_at = excluded.expires_at,
            attempts = l.attempts + 1,
            not_before = NULL
        -- Re-checked against the latest committed lease row: a claimer whose snapshot predates
        -- another claimer's commit sees the live lease here and leaves the row alone.
        WHERE {_CLAIMABLE}
    RETURNING l.outreach_id, l.attempts
)
SELECT r.outreach_id, r.domain, r.spine_rows, leased.attempts
FROM records r
JOIN leased ON leased.outreach_id = r.outreach_id
ORDER BY r.outreach_id
"""


# Keyset pagination: each claim continues after the last id the work queue claimed, so a claim
# costs O(batch) instead of re-walking every already-finished record at the head of the spine;
# when the range is exhausted the queue wraps around with CLAIM_FROM_START (which also picks up
# deferred and released records left behind the cursor). The range condition is repeated inside
# the anti-join subqueries (redundant logically) so that the merge anti-joins the planner picks
# start their index scans of company_target/errors/lease at the cursor, not at the beginning.
CLAIM_FROM_START: Final = _claim("TRUE")
CLAIM_AFTER: Final = _claim("{t}.outreach_id > $5")
# The same claim restricted to a given set of records ($5 uuid[]), for `ct-actors canary`: the
# pending and lease rules are the ones above, only the candidates are limited to the list.
CLAIM_AMONG: Final = _claim("{t}.outreach_id = ANY ($5::uuid[])")


# Only live leases: the ids are the loader's records in flight, read before this statement runs,
# and a record's outcome may have been committed in between. A deferral leaves its lease expired
# with not_before in the future (claimable again then); renewing it would hide the record from
# the claim and from the drain's count for a whole lease (a `run --drain` ended with greylisted
# records pending this way).
RENEW_LEASES: Final = """
UPDATE ct_actors.lease
SET expires_at = now() + make_interval(secs => $3)
WHERE outreach_id = ANY ($2::uuid[]) AND owner = $1 AND expires_at > now()
RETURNING outreach_id
"""

# Released work is claimable again at once (expired lease); attempts and not_before are kept.
RELEASE: Final = """
UPDATE ct_actors.lease
SET expires_at = now()
WHERE outreach_id = ANY ($2::uuid[]) AND owner = $1 AND expires_at > now()
RETURNING outreach_id
"""

RELEASE_ALL: Final = """
UPDATE ct_actors.lease
SET expires_at = now()
WHERE owner = $1 AND expires_at > now()
RETURNING outreach_id
"""
