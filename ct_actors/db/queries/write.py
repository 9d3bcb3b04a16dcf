"""The work queue's write: one statement, one transaction, one round trip for the whole batch
of outcomes; and the outcome log it keeps (sql/006_outcome_log.sql)."""

from __future__ import annotations

from typing import Final

from ct_actors.db.queries.common import TERMINAL_SQL

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
    WHERE ct.execution_status IN {TERMINAL_SQL}
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
        WHERE ct.execution_status IS NULL OR ct.execution_status NOT IN {TERMINAL_SQL}
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
# Outcomes committed but not yet logged (sql/006_outcome_log.sql)
# ---------------------------------------------------------------------------------------------
# $1 owner, $2 ids whose `outcome` lines have been written.
MARK_LOGGED: Final = """
DELETE FROM ct_actors.outcome_log u
WHERE u.owner = $1 AND u.outreach_id = ANY ($2::uuid[])
"""

# Rows to log on start: those of a previous incarnation with our name ($1 owner, $2 the driver's
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
