"""Every SQL statement the store runs, in one place so they can be read (and EXPLAINed) together.

Conventions:
* explicit column lists everywhere (never `SELECT *`): the spine carries `sovereign_id`, which
  this daemon must never read;
* batch statements take parallel arrays and `unnest` them, so a batch is one round trip;
* "terminal" means a company_target row in TERMINAL_STATUSES or an open error row. A resolved
  error row (resolved_at set by an operator, with an ADR) no longer blocks the record.
"""

from __future__ import annotations

from typing import Final

# Statuses after which a record is never touched again by the daemon. 'blocked' and 'pending'
# rows (possibly written by other systems) are overwritten by our outcome.
TERMINAL_STATUSES: Final = ("ready", "failed")
_TERMINAL_SQL: Final = "(" + ", ".join(f"'{s}'" for s in TERMINAL_STATUSES) + ")"


def _not_terminal(id_expr: str, extra: str = "TRUE") -> str:
    """Predicate: the record has no terminal outcome. Two separate NOT EXISTS (not NOT (A OR
    B)) so the planner turns them into anti-joins over the unique indexes; an OR of EXISTS
    becomes a hashed subplan that reads all of company_target on every claim. `extra` is a
    condition on `{t}.outreach_id` repeated inside the subqueries (see CLAIM_AFTER)."""
    return f"""
    NOT EXISTS (SELECT 1 FROM outreach.company_target ct
                WHERE ct.outreach_id = {id_expr} AND ct.execution_status IN {_TERMINAL_SQL}
                  AND {extra.replace("{t}", "ct")})
    AND NOT EXISTS (SELECT 1 FROM outreach.company_target_errors e
                    WHERE e.outreach_id = {id_expr} AND e.resolved_at IS NULL
                      AND {extra.replace("{t}", "e")})
"""


# ---------------------------------------------------------------------------------------------
# Claim
# ---------------------------------------------------------------------------------------------
# A lease row does not block a claim when it has expired (owner crashed, released, or deferred)
# or when it belongs to a previous incarnation of the same owner (claimed before this store was
# opened: the daemon restarted with the same name), and its not_before has passed.
# Parameters shared by both claim variants: $1 owner, $2 limit, $3 lease seconds, $4 the
# store's incarnation start (DB clock).
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
      AND {_not_terminal("o.outreach_id", range_on)}
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


# Keyset pagination: each claim continues after the last id this store claimed, so a claim costs
# O(batch) instead of re-walking every already-finished record at the head of the spine; when
# the range is exhausted the store wraps around with CLAIM_FROM_START (which also picks up
# deferred and released records left behind the cursor). The range condition is repeated inside
# the anti-join subqueries (redundant logically) so that the merge anti-joins the planner picks
# start their index scans of company_target/errors/lease at the cursor, not at the beginning.
CLAIM_FROM_START: Final = _claim("TRUE")
CLAIM_AFTER: Final = _claim("{t}.outreach_id > $5")
# The same claim restricted to a given set of records ($5 uuid[]), for `ct-actors canary`: the
# pending and lease rules are the ones above, only the candidates are limited to the list.
CLAIM_AMONG: Final = _claim("{t}.outreach_id = ANY ($5::uuid[])")

# ---------------------------------------------------------------------------------------------
# Write outcomes: one statement, one transaction, one round trip for the whole batch.
# ---------------------------------------------------------------------------------------------
# Row kinds (computed by the encoder):
#   pass        -> company_target 'ready'
#   fail        -> company_target 'failed' + open error row
#   fail_error  -> open error row only (CT-I-NOT-FOUND: there is no spine row to hang it on)
#   noop        -> nothing (CT-I-ALREADY-PROCESSED); reported as already_terminal
#   defer       -> lease released with not_before
# Parameters: $1 owner, then the parallel arrays listed in WRITE_COLUMNS order.
#
# The fence (issue 14): an outcome with a claim_attempt is written only while its lease is still
# this writer's claim: owner $1, the same `attempts` (a later claim of the same record, even by a
# restarted daemon with the same owner name, increments it) and not expired by the clock
# (clock_timestamp(), not now(): now() is when the statement's transaction began, and a
# statement can wait on locks for a long time). FOR NO KEY UPDATE makes the check wait for a
# claim or renewal of the row in progress and then judge the latest committed version of it
# (READ COMMITTED re-checks a locked row's conditions on its newest version); once it holds the
# lock, nobody can take the lease over until this statement commits. Everything the statement
# writes, lease deletions included, is restricted to `admitted` records, so a statement from a
# dead process that commits late writes nothing for records someone else claimed meanwhile:
# they come back as 'fenced'. Sources: PostgreSQL manual, "Transaction Isolation", Read
# Committed (https://www.postgresql.org/docs/current/transaction-iso.html: SELECT FOR UPDATE
# waits for a concurrent updater, then re-evaluates its WHERE clause on the updated version of
# the row and skips a deleted one); "Current Date/Time"
# (https://www.postgresql.org/docs/current/functions-datetime.html#FUNCTIONS-DATETIME-CURRENT:
# now() is the start of the current transaction, clock_timestamp() changes during a statement).
WRITE_COLUMNS: Final = (
    ("outreach_id", "uuid"),
    ("kind", "text"),
    ("domain_normalised", "text"),
    ("mx_host", "text"),
    ("evidence", "text"),
    ("email_method", "text"),
    ("method_type", "text"),
    ("confidence_score", "numeric"),
    ("is_catchall", "boolean"),
    ("failure_code", "text"),
    ("blocking_reason", "text"),
    ("severity", "text"),
    ("imo_stage", "text"),
    ("pipeline_stage", "text"),
    ("retry_after", "float8"),
    ("reason", "text"),
    # The claim this outcome answers (its lease's `attempts` when claimed; NULL: not written
    # under a lease, as `ct-actors once`): the write's fence, see below.
    ("claim_attempt", "int4"),
    # Claim to commit, seconds: kept in ct_actors.outcome_log for a recovered `outcome` line.
    ("duration", "float4"),
)

_WRITE_NAMES: Final = ", ".join(name for name, _typ in WRITE_COLUMNS)
_UNNEST: Final = (
    "unnest("
    + ", ".join(f"${i + 2}::{typ}[]" for i, (_name, typ) in enumerate(WRITE_COLUMNS))
    + ") AS t("
    + ", ".join(name for name, _typ in WRITE_COLUMNS)
    + ")"
)

WRITE_OUTCOMES: Final = f"""
WITH input AS (
    SELECT {_WRITE_NAMES} FROM {_UNNEST}
),
fence AS (
    SELECT l.outreach_id
    FROM ct_actors.lease l
    JOIN input i ON i.outreach_id = l.outreach_id
    WHERE i.claim_attempt IS NOT NULL
      AND l.owner = $1 AND l.attempts = i.claim_attempt AND l.expires_at > clock_timestamp()
    ORDER BY l.outreach_id
    FOR NO KEY UPDATE OF l
),
admitted AS (
    SELECT {", ".join("i." + name for name, _typ in WRITE_COLUMNS)} FROM input i
    WHERE i.claim_attempt IS NULL
       OR EXISTS (SELECT 1 FROM fence f WHERE f.outreach_id = i.outreach_id)
),
-- Already PASS/FAIL as of this statement's snapshot: nothing of theirs is touched.
terminal AS (
    SELECT i.outreach_id
    FROM admitted i
    JOIN outreach.company_target ct ON ct.outreach_id = i.outreach_id
    WHERE ct.execution_status IN {_TERMINAL_SQL}
    UNION
    SELECT i.outreach_id
    FROM admitted i
    JOIN outreach.company_target_errors e ON e.outreach_id = i.outreach_id
    WHERE e.resolved_at IS NULL
),
fresh AS (
    SELECT {", ".join("i." + name for name, _typ in WRITE_COLUMNS)},
           EXISTS (SELECT 1 FROM outreach.outreach o WHERE o.outreach_id = i.outreach_id)
               AS in_spine
    FROM admitted i
    WHERE NOT EXISTS (SELECT 1 FROM terminal t WHERE t.outreach_id = i.outreach_id)
),
-- company_target first: its unique index serialises two daemons racing on one record (the
-- loser waits for the winner's commit, then the WHERE below sees the terminal row and skips),
-- and the error row of a FAIL is only inserted when its company_target row was written, so the
-- pair is all-or-nothing.
ct_written AS (
    INSERT INTO outreach.company_target AS ct
        (outreach_id, execution_status, email_method, method_type, confidence_score,
         is_catchall, imo_completed_at, domain_normalised, mx_host, evidence, updated_at)
    SELECT f.outreach_id,
           CASE f.kind WHEN 'pass' THEN 'ready' ELSE 'failed' END,
           f.email_method, f.method_type, f.confidence_score, f.is_catchall, now(),
           f.domain_normalised, f.mx_host, f.evidence::jsonb, now()
    FROM fresh f
    -- The spine check keeps a vanished spine row from failing the whole batch on the FK.
    WHERE f.kind IN ('pass', 'fail') AND f.in_spine
    ORDER BY f.outreach_id
    ON CONFLICT (outreach_id) DO UPDATE
        SET execution_status = excluded.execution_status,
            email_method = excluded.email_method,
            method_type = excluded.method_type,
            confidence_score = excluded.confidence_score,
            is_catchall = excluded.is_catchall,
            imo_completed_at = excluded.imo_completed_at,
            domain_normalised = excluded.domain_normalised,
            mx_host = excluded.mx_host,
            evidence = excluded.evidence,
            updated_at = excluded.updated_at
        WHERE ct.execution_status IS NULL OR ct.execution_status NOT IN {_TERMINAL_SQL}
    RETURNING ct.outreach_id
),
err_written AS (
    INSERT INTO outreach.company_target_errors
        (outreach_id, pipeline_stage, failure_code, blocking_reason, severity, imo_stage,
         retry_allowed, evidence)
    SELECT f.outreach_id, f.pipeline_stage, f.failure_code, f.blocking_reason, f.severity,
           f.imo_stage, false, f.evidence::jsonb
    FROM fresh f
    WHERE (f.kind = 'fail' AND f.outreach_id IN (SELECT w.outreach_id FROM ct_written w))
       OR f.kind = 'fail_error'
    ORDER BY f.outreach_id
    ON CONFLICT (outreach_id) WHERE resolved_at IS NULL DO NOTHING
    RETURNING outreach_id
),
deferred AS (
    INSERT INTO ct_actors.lease AS l
        (outreach_id, owner, claimed_at, expires_at, attempts, not_before, last_reason)
    SELECT f.outreach_id, $1, now(), now(), 0,
           now() + make_interval(secs => f.retry_after), f.reason
    FROM fresh f
    WHERE f.kind = 'defer'
    ORDER BY f.outreach_id
    ON CONFLICT (outreach_id) DO UPDATE
        SET owner = excluded.owner,
            expires_at = excluded.expires_at,
            not_before = excluded.not_before,
            last_reason = excluded.last_reason
        -- Never clobber a live lease another daemon took over after ours expired.
        WHERE l.owner = excluded.owner OR l.expires_at <= now()
    RETURNING l.outreach_id
),
-- A record with a terminal outcome (written now or before) has no use for a lease.
dropped AS (
    DELETE FROM ct_actors.lease l
    USING admitted i
    WHERE l.outreach_id = i.outreach_id AND i.kind <> 'defer'
    RETURNING l.outreach_id
),
-- The canonical log line is still owed for every PASS/FAIL written here (sql/006).
unlogged AS (
    INSERT INTO ct_actors.outcome_log AS u (outreach_id, owner, committed_at, duration)
    SELECT f.outreach_id, $1, now(), f.duration
    FROM fresh f
    WHERE (f.kind = 'pass' AND f.outreach_id IN (SELECT w.outreach_id FROM ct_written w))
       OR (f.kind IN ('fail', 'fail_error')
           AND f.outreach_id IN (SELECT w.outreach_id FROM err_written w))
    ORDER BY f.outreach_id
    ON CONFLICT (outreach_id) DO UPDATE
        SET owner = excluded.owner, committed_at = excluded.committed_at,
            duration = excluded.duration
    RETURNING u.outreach_id
)
SELECT i.outreach_id,
       CASE
           WHEN NOT EXISTS (SELECT 1 FROM admitted a WHERE a.outreach_id = i.outreach_id)
               THEN 'fenced'
           WHEN i.kind = 'defer' THEN
               CASE WHEN EXISTS (SELECT 1 FROM terminal t WHERE t.outreach_id = i.outreach_id)
                    THEN 'already_terminal' ELSE 'deferred' END
           WHEN i.kind = 'pass'
                AND EXISTS (SELECT 1 FROM ct_written w WHERE w.outreach_id = i.outreach_id)
               THEN 'written'
           WHEN i.kind IN ('fail', 'fail_error')
                AND EXISTS (SELECT 1 FROM err_written w WHERE w.outreach_id = i.outreach_id)
               THEN 'written'
           WHEN i.kind IN ('pass', 'fail')
                AND EXISTS (SELECT 1 FROM fresh f
                            WHERE f.outreach_id = i.outreach_id AND NOT f.in_spine)
               THEN 'not_in_spine'
           ELSE 'already_terminal'
       END AS status
FROM input i
"""

# ---------------------------------------------------------------------------------------------
# Leases
# ---------------------------------------------------------------------------------------------
RENEW_LEASES: Final = """
UPDATE ct_actors.lease
SET expires_at = now() + make_interval(secs => $3)
WHERE outreach_id = ANY ($2::uuid[]) AND owner = $1
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

# ---------------------------------------------------------------------------------------------
# Single-record and monitoring queries
# ---------------------------------------------------------------------------------------------
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
     WHERE ct.outreach_id = $1 AND ct.execution_status IN {_TERMINAL_SQL}),
    (SELECT 'failed' FROM outreach.company_target_errors e
     WHERE e.outreach_id = $1 AND e.resolved_at IS NULL LIMIT 1)
)
"""

# Distinct ids, NULLs excluded: a spine without a primary key may repeat an id or carry none
# (the claim processes such an id once and never a NULL one).
PENDING_COUNT: Final = f"""
SELECT count(DISTINCT o.outreach_id) FROM outreach.outreach o
WHERE {_not_terminal("o.outreach_id")}
"""

# Pending records `$1` does not hold and that are not deferred into the future: leased by another
# daemon, or under another daemon's claim that has not committed yet (SKIP LOCKED hid them from
# our claim and its leases are not visible), or claimable. `run --drain` may only exit when this
# is 0: a crashed daemon's leases and a concurrent claim both mean work is still pending.
PENDING_ELSEWHERE: Final = f"""
SELECT count(*) FROM outreach.outreach o
WHERE o.outreach_id IS NOT NULL
  AND {_not_terminal("o.outreach_id")}
  AND NOT EXISTS (SELECT 1 FROM ct_actors.lease l
                  WHERE l.outreach_id = o.outreach_id
                    AND (l.not_before > now() OR (l.owner = $1 AND l.expires_at > now())))
"""

# PENDING_ELSEWHERE restricted to a set of records ($2 uuid[]), for a drain over that set only.
PENDING_ELSEWHERE_AMONG: Final = f"""
SELECT count(*) FROM outreach.outreach o
WHERE o.outreach_id = ANY ($2::uuid[])
  AND {_not_terminal("o.outreach_id")}
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

SET_LOCAL_STATEMENT_TIMEOUT: Final = "SELECT set_config('statement_timeout', $1, true)"

INCARNATION_START: Final = "SELECT clock_timestamp()"

# ---------------------------------------------------------------------------------------------
# Tool usage: day/month budgets (sql/003_tool_usage.sql)
# ---------------------------------------------------------------------------------------------
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

# ---------------------------------------------------------------------------------------------
# EmailVerifier (TOOL-019) ledger and monthly spend (sql/004_verifier.sql, ct_actors.verify)
# ---------------------------------------------------------------------------------------------
_VERIFIER_COLUMNS: Final = """
    l.address, l.owner, l.status, l.attempts, l.attempted_at, l.finished_at, l.verdict,
    l.result, l.credits_after, l.cost, l.detail
"""

VERIFIER_ENTRY: Final = f"""
SELECT {_VERIFIER_COLUMNS} FROM ct_actors.verifier_ledger l WHERE l.address = $1
"""

# $1 address, $2 owner, $3 attempted_at, $4 max attempts. A new row is the first attempt; an
# `unavailable` row is re-opened only while attempts are left (never with the registry's 1). A
# concurrent insert of the same address makes us wait for its commit and then do nothing (no
# row returned): exactly one claimer calls the vendor.
VERIFIER_CLAIM: Final = """
INSERT INTO ct_actors.verifier_ledger AS l (address, owner, status, attempts, attempted_at, cost)
VALUES ($1, $2, 'pending', 1, $3, 0)
ON CONFLICT (address) DO UPDATE
    SET owner = excluded.owner,
        status = 'pending',
        attempts = l.attempts + 1,
        attempted_at = excluded.attempted_at,
        finished_at = NULL,
        detail = NULL
    WHERE l.status = 'unavailable' AND l.attempts < $4::integer
RETURNING l.attempts
"""

# $1 address, $2 owner, $3 status, $4 finished_at, $5 verdict, $6 result, $7 credits_after,
# $8 cost (added), $9 detail. Only the owner's pending row: a row re-claimed by someone else
# after we were presumed dead is theirs now.
VERIFIER_FINISH: Final = """
UPDATE ct_actors.verifier_ledger AS l
SET status = $3, finished_at = $4, verdict = $5, result = $6, credits_after = $7,
    cost = l.cost + $8::numeric, detail = $9
WHERE l.address = $1 AND l.owner = $2 AND l.status = 'pending'
RETURNING l.address
"""

VERIFIER_RELEASE: Final = """
DELETE FROM ct_actors.verifier_ledger l
WHERE l.address = $1 AND l.owner = $2 AND l.status = 'pending'
RETURNING l.address
"""

# $1 tool_id, $2 month_start, $3 amount, $4 cap (NULL: none). One statement, atomic across
# daemons: the first call of a month inserts the row; later ones take the conflict path, where
# PostgreSQL locks the row and evaluates the guard against its latest committed version, so two
# daemons can never both pass the cap. No row returned = refused.
VERIFIER_RESERVE_SPEND: Final = """
INSERT INTO ct_actors.verifier_spend AS s (tool_id, month_start, calls, spent, updated_at)
SELECT $1, $2, 1, $3::numeric, now()
WHERE $4::numeric IS NULL OR $3::numeric <= $4::numeric
ON CONFLICT (tool_id, month_start) DO UPDATE
    SET calls = s.calls + 1, spent = s.spent + excluded.spent, updated_at = now()
    WHERE $4::numeric IS NULL OR s.spent + excluded.spent <= $4::numeric
RETURNING s.spent
"""

VERIFIER_REFUND_SPEND: Final = """
UPDATE ct_actors.verifier_spend AS s
SET calls = GREATEST(s.calls - 1, 0), spent = GREATEST(s.spent - $3::numeric, 0),
    updated_at = now()
WHERE s.tool_id = $1 AND s.month_start = $2
"""

VERIFIER_SPEND: Final = """
SELECT s.calls, s.spent FROM ct_actors.verifier_spend s
WHERE s.tool_id = $1 AND s.month_start = $2
"""

# ---------------------------------------------------------------------------------------------
# Outcomes committed but not yet logged (sql/006_outcome_log.sql)
# ---------------------------------------------------------------------------------------------
# $1 owner, $2 ids whose `outcome` lines have been written.
MARK_LOGGED: Final = """
DELETE FROM ct_actors.outcome_log u
WHERE u.owner = $1 AND u.outreach_id = ANY ($2::uuid[])
"""

# Rows to log on start: those of a previous incarnation with our name ($1 owner, $2 this store's
# incarnation start), and those of any name older than $3 seconds (a live writer deletes its rows
# milliseconds after committing them, so such a row's writer died). The line is rebuilt from the
# outcome row: company_target (PASS, and FAIL's status) and the open error row (FAIL's code and
# reason; the only row of CT-I-NOT-FOUND). $4 limit.
UNLOGGED: Final = """
SELECT u.outreach_id, u.owner, u.committed_at, u.duration,
       ct.execution_status, ct.email_method, ct.method_type, ct.confidence_score,
       ct.is_catchall, ct.domain_normalised, ct.mx_host,
       coalesce(ct.evidence, e.evidence) -> 'visits' AS visits,
       e.failure_code, e.blocking_reason, e.severity
FROM ct_actors.outcome_log u
LEFT JOIN outreach.company_target ct ON ct.outreach_id = u.outreach_id
LEFT JOIN LATERAL (
    SELECT e.failure_code, e.blocking_reason, e.severity, e.evidence
    FROM outreach.company_target_errors e
    WHERE e.outreach_id = u.outreach_id AND e.resolved_at IS NULL
    LIMIT 1
) e ON true
WHERE (u.owner = $1 AND u.committed_at < $2)
   OR u.committed_at < clock_timestamp() - make_interval(secs => $3)
ORDER BY u.committed_at, u.outreach_id
LIMIT $4
"""

# $1 ids.
FORGET_UNLOGGED: Final = """
DELETE FROM ct_actors.outcome_log u WHERE u.outreach_id = ANY ($1::uuid[])
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
WHERE {_not_terminal("o.outreach_id")}
GROUP BY 1, 2
"""
