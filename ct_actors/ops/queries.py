"""Every SQL statement of `ct-actors report` and `ct-actors canary`.

Conventions (as in `ct_actors.db.queries`):
* explicit column lists everywhere; no statement here names the spine's guarded column (the
  role set-up receives it as a bind parameter), and none selects a wildcard (`count(*)` only);
* "terminal" is the store's notion: a company_target row in ('ready', 'failed') or an open
  (resolved_at IS NULL) error row;
* the outcome time of a company_target row is `imo_completed_at` (the daemon sets it, with
  `updated_at`, to the writing transaction's now(); `created_at` keeps the time a row was first
  inserted, possibly by another system as 'pending'); an error row without a company_target row
  (CT-I-NOT-FOUND: no spine row) counts at its `created_at`.
"""

from __future__ import annotations

from typing import Final

from ct_actors.db.queries import TERMINAL_STATUSES

_TERMINAL_SQL: Final = "(" + ", ".join(f"'{s}'" for s in TERMINAL_STATUSES) + ")"


def _not_terminal(id_expr: str) -> str:
    return f"""
    NOT EXISTS (SELECT 1 FROM outreach.company_target ct
                WHERE ct.outreach_id = {id_expr} AND ct.execution_status IN {_TERMINAL_SQL})
    AND NOT EXISTS (SELECT 1 FROM outreach.company_target_errors e
                    WHERE e.outreach_id = {id_expr} AND e.resolved_at IS NULL)
"""


# ---------------------------------------------------------------------------------------------
# Shared
# ---------------------------------------------------------------------------------------------
# Transaction time in a snapshot (now() is fixed for the whole transaction).
NOW: Final = "SELECT now() AS now"

# Wall-clock time of the server, outside any snapshot (the canary's run window).
CLOCK: Final = "SELECT clock_timestamp() AS now"

# Spine records without a terminal outcome, leased and deferred ones included (the same
# definition as `WorkQueue.pending_count`).
PENDING_COUNT: Final = f"""
SELECT count(DISTINCT o.outreach_id) AS pending FROM outreach.outreach o
WHERE {_not_terminal("o.outreach_id")}
"""

# Spine rows the daemon skips (a spine without a primary key): rows with a NULL outreach_id,
# and the extra rows of an id carried by several rows (that id is processed once).
SPINE_SKIPPED: Final = """
SELECT (SELECT count(*) FROM outreach.outreach o WHERE o.outreach_id IS NULL) AS null_ids,
       count(*) AS duplicated_ids,
       coalesce(sum(d.n - 1), 0) AS duplicate_rows
FROM (SELECT count(*) AS n FROM outreach.outreach o
      WHERE o.outreach_id IS NOT NULL
      GROUP BY o.outreach_id HAVING count(*) > 1) d
"""

# Fails with 42P01/42703 (SchemaError) when `ct-actors migrate` has not been run: every
# relation and column the commands read, once.
SCHEMA_PROBE: Final = """
SELECT
    (SELECT count(o.outreach_id) FROM outreach.outreach o WHERE false) AS spine,
    (SELECT count(ct.imo_completed_at) FROM outreach.company_target ct WHERE false) AS targets,
    (SELECT count(e.resolved_at) FROM outreach.company_target_errors e WHERE false) AS errors,
    (SELECT count(l.not_before) FROM ct_actors.lease l WHERE false) AS leases
"""

# ---------------------------------------------------------------------------------------------
# report
# ---------------------------------------------------------------------------------------------
# The runbook's "Pass Rate (Last 24h)" with its window as $1 (seconds) and the division by zero
# of an empty window guarded (NULLIF: the rate is NULL, "no data", instead of an error).
PASS_RATE: Final = """
SELECT
    COUNT(*) FILTER (WHERE execution_status = 'ready') AS passed,
    COUNT(*) FILTER (WHERE execution_status = 'failed') AS failed,
    COUNT(*) AS total,
    ROUND(100.0 * COUNT(*) FILTER (WHERE execution_status = 'ready')
          / NULLIF(COUNT(*), 0), 2) AS pass_rate
FROM outreach.company_target
WHERE imo_completed_at > now() - make_interval(secs => $1)
"""

# The runbook's "Failure Distribution" with its window as $1 (seconds).
FAILURE_DISTRIBUTION: Final = """
SELECT failure_code, COUNT(*) AS count
FROM outreach.company_target_errors
WHERE created_at > now() - make_interval(secs => $1)
GROUP BY failure_code
ORDER BY count DESC, failure_code
"""

# The runbook's "View Recent Failures", the last $1 rows whatever their age.
RECENT_FAILURES: Final = """
SELECT outreach_id, failure_code, blocking_reason, created_at
FROM outreach.company_target_errors
ORDER BY created_at DESC, error_id DESC
LIMIT $1
"""

# Terminal outcomes since $1 (timestamptz), one row each: company_target rows by
# imo_completed_at, error rows that have no company_target row by created_at.
_OUTCOMES_SINCE: Final = f"""
    SELECT ct.imo_completed_at AS at, ct.execution_status = 'ready' AS passed
    FROM outreach.company_target ct
    WHERE ct.execution_status IN {_TERMINAL_SQL} AND ct.imo_completed_at >= $1
    UNION ALL
    SELECT e.created_at AS at, false AS passed
    FROM outreach.company_target_errors e
    WHERE e.resolved_at IS NULL AND e.created_at >= $1
      AND NOT EXISTS (SELECT 1 FROM outreach.company_target ct
                      WHERE ct.outreach_id = e.outreach_id)
"""

# Outcomes in the last $1 seconds: the current rate.
RECENT_OUTCOMES: Final = f"""
WITH outcomes AS ({_OUTCOMES_SINCE.replace("$1", "(now() - make_interval(secs => $1))")})
SELECT count(o.at) AS outcomes, min(o.at) AS first_at, max(o.at) AS last_at
FROM outcomes o
"""

# Outcomes per UTC bucket: $1 the unit ('hour' or 'minute'), $2 the number of buckets ending
# with the current one. Empty buckets are listed with zeros.
THROUGHPUT: Final = f"""
WITH bounds AS (
    SELECT date_trunc($1::text, now(), 'UTC') AS last_start,
           make_interval(hours => CASE WHEN $1::text = 'hour' THEN 1 ELSE 0 END,
                         mins => CASE WHEN $1::text = 'minute' THEN 1 ELSE 0 END) AS step
),
buckets AS (
    SELECT generate_series(b.last_start - ($2::int - 1) * b.step, b.last_start, b.step)
               AS start
    FROM bounds b
),
outcomes AS ({_OUTCOMES_SINCE.replace("$1", "(SELECT min(k.start) FROM buckets k)")})
SELECT k.start,
       count(o.at) AS outcomes,
       count(o.at) FILTER (WHERE o.passed) AS passed,
       count(o.at) FILTER (WHERE NOT o.passed) AS failed
FROM buckets k
LEFT JOIN outcomes o ON date_trunc($1::text, o.at, 'UTC') = k.start
GROUP BY k.start
ORDER BY k.start
"""

# ---------------------------------------------------------------------------------------------
# canary: selection
# ---------------------------------------------------------------------------------------------
# Pending records the canary can claim right now: not terminal, no live lease of anyone, not
# deferred into the future. Streamed through a cursor; the selection is done in Python with the
# daemon's own domain normaliser.
CLAIMABLE_PENDING: Final = f"""
SELECT o.outreach_id, o.domain
FROM outreach.outreach o
WHERE o.outreach_id IS NOT NULL
  AND {_not_terminal("o.outreach_id")}
  AND NOT EXISTS (SELECT 1 FROM ct_actors.lease l
                  WHERE l.outreach_id = o.outreach_id
                    AND (l.expires_at > now() OR coalesce(l.not_before > now(), false)))
"""

# ---------------------------------------------------------------------------------------------
# canary: validation ($1 = the selected ids, uuid[])
# ---------------------------------------------------------------------------------------------
CANARY_TARGETS: Final = """
SELECT ct.outreach_id, ct.execution_status, ct.email_method, ct.method_type,
       ct.confidence_score, ct.is_catchall, ct.imo_completed_at, ct.company_unique_id,
       ct.evidence ->> 'mode' AS probe_mode
FROM outreach.company_target ct
WHERE ct.outreach_id = ANY ($1::uuid[])
"""

CANARY_ERRORS: Final = """
SELECT e.error_id, e.outreach_id, e.failure_code, e.imo_stage, e.pipeline_stage,
       e.blocking_reason, e.retry_allowed, e.created_at, e.resolved_at
FROM outreach.company_target_errors e
WHERE e.outreach_id = ANY ($1::uuid[])
ORDER BY e.error_id
"""

CANARY_LEASES: Final = """
SELECT l.outreach_id, l.owner, l.attempts, l.not_before, l.last_reason,
       l.expires_at > now() AS live
FROM ct_actors.lease l
WHERE l.outreach_id = ANY ($1::uuid[])
"""

# Outcome rows written in the run window [$1, $2] for records outside the selection ($3), or
# for ids that are not in the spine: another daemon at work, or a minted id.
FOREIGN_WRITES: Final = """
SELECT
    (SELECT count(ct.outreach_id) FROM outreach.company_target ct
     WHERE ct.imo_completed_at BETWEEN $1 AND $2
       AND NOT (ct.outreach_id = ANY ($3::uuid[]))) AS other_targets,
    (SELECT count(e.error_id) FROM outreach.company_target_errors e
     WHERE e.created_at BETWEEN $1 AND $2
       AND NOT (e.outreach_id = ANY ($3::uuid[]))) AS other_errors,
    (SELECT count(ct.outreach_id) FROM outreach.company_target ct
     WHERE ct.imo_completed_at BETWEEN $1 AND $2
       AND NOT EXISTS (SELECT 1 FROM outreach.outreach o
                       WHERE o.outreach_id = ct.outreach_id)) AS targets_not_in_spine
"""

# ---------------------------------------------------------------------------------------------
# canary: the restricted role (see ct_actors.ops.isolation). $1 is always the guarded column's
# name, passed as a parameter.
# ---------------------------------------------------------------------------------------------
# Every user relation the connected user may grant SELECT on, with its columns in order and
# whether it has a column named $1.
GRANTABLE_RELATIONS: Final = """
SELECT n.nspname AS schema_name, c.relname AS relation_name, c.relkind::text AS kind,
       array_agg(a.attname::text ORDER BY a.attnum) AS columns,
       bool_or(a.attname = $1::name) AS guarded
FROM pg_class c
JOIN pg_namespace n ON n.oid = c.relnamespace
JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
WHERE c.relkind IN ('r', 'p', 'v', 'm', 'f')
  AND n.nspname NOT IN ('pg_catalog', 'information_schema')
  AND n.nspname NOT LIKE 'pg\\_%'
  AND has_schema_privilege(n.oid, 'USAGE WITH GRANT OPTION')
  AND has_table_privilege(c.oid, 'SELECT WITH GRANT OPTION')
GROUP BY n.nspname, c.relname, c.relkind
ORDER BY n.nspname, c.relname
"""

# Whether the connected user may grant CONNECT on this database (else PUBLIC's CONNECT is used).
CAN_GRANT_CONNECT: Final = """
SELECT current_database() AS database,
       has_database_privilege(current_database(), 'CONNECT WITH GRANT OPTION') AS grantable
"""

# What the role ($2) may do, as PostgreSQL answers it after the grants: the columns named $1 it
# can read anywhere (must be none), whether it can read the spine's outreach_id and domain, and
# its attributes (a superuser or BYPASSRLS role would prove nothing).
ROLE_PRIVILEGES: Final = """
SELECT
    (SELECT count(a.attname)
     FROM pg_attribute a
     JOIN pg_class c ON c.oid = a.attrelid
     WHERE a.attname = $1::name AND a.attnum > 0 AND NOT a.attisdropped
       AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
       AND has_column_privilege($2::name, c.oid, a.attnum, 'SELECT')) AS guarded_readable,
    (SELECT count(a.attname)
     FROM pg_attribute a
     JOIN pg_class c ON c.oid = a.attrelid
     WHERE a.attname = $1::name AND a.attnum > 0 AND NOT a.attisdropped
       AND c.relkind IN ('r', 'p', 'v', 'm', 'f')) AS guarded_total,
    has_column_privilege($2::name, 'outreach.outreach'::text, 'outreach_id'::text, 'SELECT')
        AS reads_outreach_id,
    has_column_privilege($2::name, 'outreach.outreach'::text, 'domain'::text, 'SELECT')
        AS reads_domain,
    (SELECT r.rolsuper FROM pg_roles r WHERE r.rolname = $2::name) AS is_superuser,
    (SELECT r.rolbypassrls FROM pg_roles r WHERE r.rolname = $2::name) AS bypasses_rls,
    (SELECT count(m.roleid) FROM pg_auth_members m
     JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = $2::name) AS memberships
"""

# The role's live sessions (pg_stat_activity): the pipeline connected as it.
ROLE_SESSIONS: Final = """
SELECT count(a.pid) AS sessions FROM pg_stat_activity a WHERE a.usename = $1::name
"""

# DDL cannot take bind parameters: these templates get quoted identifiers (and, for the
# password, a SCRAM verifier computed client-side, never the password itself).
CREATE_ROLE: Final = (
    "CREATE ROLE {role} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION "
    "NOBYPASSRLS CONNECTION LIMIT {connections} PASSWORD {verifier} VALID UNTIL {valid_until}"
)
GRANT_CONNECT: Final = "GRANT CONNECT ON DATABASE {database} TO {role}"
GRANT_SCHEMA_USAGE: Final = "GRANT USAGE ON SCHEMA {schema} TO {role}"
GRANT_SELECT: Final = "GRANT SELECT ON {relation} TO {role}"
GRANT_SELECT_COLUMNS: Final = "GRANT SELECT ({columns}) ON {relation} TO {role}"
# Row locks (the claim's FOR NO KEY UPDATE) need UPDATE on at least one column of the spine.
GRANT_LOCK_COLUMN: Final = "GRANT UPDATE ({column}) ON {relation} TO {role}"
GRANT_WRITE: Final = "GRANT {privileges} ON {relation} TO {role}"
DROP_OWNED: Final = "DROP OWNED BY {role}"
DROP_ROLE: Final = "DROP ROLE IF EXISTS {role}"
