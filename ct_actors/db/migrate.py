"""Schema migrations: apply each `sql/NNN_*.sql` once, in order.

Runs on the asyncio side (it takes an asyncpg connection); from trio use `Database.migrate()` or
wrap it with `trio_asyncio.aio_as_trio`.

* Every file runs in its own transaction, after `pg_advisory_xact_lock(MIGRATION_LOCK)`, and is
  recorded in `ct_actors.schema_migrations` in that same transaction: two daemons starting at
  once serialise on the lock, and the second finds the file already recorded and skips it.
* The sha256 of every applied file is recorded; if a file that was applied has changed since,
  nothing is applied and `SchemaError` says which file. Fix forward with a new file instead.
* A lock_timeout bounds how long DDL waits behind production traffic: an ALTER TABLE that queues
  behind a long query would otherwise block every other query on that table while it waits.
* After migrating, `verify_schema` checks the tables can take our writes (an existing production
  table may carry NOT NULL columns we know nothing about).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from ct_actors.db.errors import SchemaError

SQL_DIR = Path(__file__).resolve().parent.parent / "sql"

# Arbitrary constant shared by every ct-actors process ("ct_migra" in ASCII).
MIGRATION_LOCK = 0x63745F6D69677261

_FILE_RE = re.compile(r"^(?P<num>\d{3})_[A-Za-z0-9_]+\.sql$")

_BOOTSTRAP = """
CREATE SCHEMA IF NOT EXISTS ct_actors;
CREATE TABLE IF NOT EXISTS ct_actors.schema_migrations (
    version    text PRIMARY KEY,
    checksum   text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
);
"""


@dataclass(frozen=True, slots=True)
class Migration:
    version: str  # file stem, e.g. "001_outreach"
    path: Path
    sql: str
    checksum: str  # sha256 hex of the file with line endings normalised


def load_migrations(directory: Path | None = None) -> list[Migration]:
    directory = SQL_DIR if directory is None else directory
    if not directory.is_dir():
        raise SchemaError(f"migration directory {directory} does not exist")
    found: list[Migration] = []
    numbers: dict[str, str] = {}
    for path in sorted(directory.iterdir()):
        if path.suffix != ".sql":
            continue
        m = _FILE_RE.match(path.name)
        if m is None:
            raise SchemaError(f"migration file {path.name} is not named NNN_name.sql")
        num = m.group("num")
        if num in numbers:
            raise SchemaError(f"migrations {numbers[num]} and {path.name} share number {num}")
        numbers[num] = path.name
        raw = path.read_bytes()
        # A checkout with CRLF line endings is the same migration, not a tampered one.
        normalised = raw.replace(b"\r\n", b"\n")
        found.append(
            Migration(
                version=path.stem,
                path=path,
                sql=normalised.decode("utf-8"),
                checksum=hashlib.sha256(normalised).hexdigest(),
            )
        )
    if not found:
        raise SchemaError(f"no migrations found in {directory}")
    return found


async def _lock(conn: Any, lock_timeout: float) -> None:
    # The advisory lock wait is deliberately not bounded by lock_timeout (set after it): waiting
    # for another daemon's migration is fine, waiting behind production DDL locks is not.
    await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
    await conn.execute(f"SET LOCAL lock_timeout = '{int(lock_timeout * 1000)}ms'")


def _check_applied(applied: dict[str, str], migrations: list[Migration]) -> None:
    for mig in migrations:
        recorded = applied.get(mig.version)
        if recorded is not None and recorded != mig.checksum:
            raise SchemaError(
                f"migration {mig.version} was applied with checksum {recorded[:12]}… but "
                f"{mig.path.name} now has checksum {mig.checksum[:12]}…; applied migrations "
                "must never change. Restore the file and add a new migration instead."
            )


async def migrate(
    conn: Any, *, directory: Path | None = None, lock_timeout: float = 30.0
) -> list[str]:
    """Apply pending migrations; return the versions applied by this call (empty = no-op)."""
    migrations = load_migrations(directory)

    async with conn.transaction():
        await _lock(conn, lock_timeout)
        await conn.execute(_BOOTSTRAP)
        rows = await conn.fetch("SELECT version, checksum FROM ct_actors.schema_migrations")
    # Refuse before applying anything new if any applied file was altered.
    _check_applied({r["version"]: r["checksum"] for r in rows}, migrations)

    applied_now: list[str] = []
    for mig in migrations:
        async with conn.transaction():
            await _lock(conn, lock_timeout)
            recorded = await conn.fetchval(
                "SELECT checksum FROM ct_actors.schema_migrations WHERE version = $1",
                mig.version,
            )
            if recorded is not None:
                # Applied earlier, or by a concurrent migrator while we waited for the lock.
                _check_applied({mig.version: recorded}, [mig])
                continue
            try:
                # No arguments: simple query protocol, so a file may hold many statements.
                await conn.execute(mig.sql)
            except asyncpg.PostgresError as exc:
                raise SchemaError(
                    f"migration {mig.version} failed ({exc.sqlstate}): {exc}",
                    sqlstate=exc.sqlstate,
                    cause=type(exc).__name__,
                ) from exc
            await conn.execute(
                "INSERT INTO ct_actors.schema_migrations (version, checksum) VALUES ($1, $2)",
                mig.version,
                mig.checksum,
            )
            applied_now.append(mig.version)

    await verify_schema(conn)
    return applied_now


# Columns the daemon INSERTs, per table: any other NOT NULL column must have a default.
WRITTEN_COLUMNS: dict[str, frozenset[str]] = {
    "outreach.company_target": frozenset(
        {
            "outreach_id",
            "execution_status",
            "email_method",
            "method_type",
            "confidence_score",
            "is_catchall",
            "imo_completed_at",
            "domain_normalised",
            "mx_host",
            "evidence",
            "updated_at",
        }
    ),
    "outreach.company_target_errors": frozenset(
        {
            "outreach_id",
            "pipeline_stage",
            "failure_code",
            "blocking_reason",
            "severity",
            "imo_stage",
            "retry_allowed",
            "evidence",
        }
    ),
    "ct_actors.lease": frozenset(
        {
            "outreach_id",
            "owner",
            "claimed_at",
            "expires_at",
            "attempts",
            "not_before",
            "last_reason",
        }
    ),
    "ct_actors.tool_usage": frozenset({"tool_id", "scope", "window_start", "used", "updated_at"}),
    "ct_actors.outcome_log": frozenset({"outreach_id", "owner", "committed_at", "duration"}),
}

# Columns the daemon (or the runbook's queries) read or write, per table: they must exist.
REQUIRED_COLUMNS: dict[str, frozenset[str]] = {
    "outreach.outreach": frozenset({"outreach_id", "domain"}),
    "outreach.company_target": WRITTEN_COLUMNS["outreach.company_target"],
    "outreach.company_target_errors": WRITTEN_COLUMNS["outreach.company_target_errors"]
    | {"resolved_at", "created_at"},
    "ct_actors.lease": WRITTEN_COLUMNS["ct_actors.lease"],
    "ct_actors.tool_usage": WRITTEN_COLUMNS["ct_actors.tool_usage"],
    "ct_actors.outcome_log": WRITTEN_COLUMNS["ct_actors.outcome_log"],
}

_COLUMNS_SQL = """
SELECT a.attname AS name,
       format_type(a.atttypid, a.atttypmod) AS type,
       a.attnotnull AS not_null,
       (a.atthasdef OR a.attidentity <> '' OR a.attgenerated <> '') AS has_default
FROM pg_attribute a
WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped
"""

_UNIQUE_ON_OUTREACH_ID_SQL = """
SELECT EXISTS (
    SELECT 1
    FROM pg_index i
    JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = i.indkey[0]
    WHERE i.indrelid = to_regclass($1)
      AND i.indisunique AND i.indnkeyatts = 1 AND a.attname = 'outreach_id'
      AND (i.indpred IS NULL) = $2
)
"""


async def verify_schema(conn: Any) -> None:
    """Raise SchemaError if the tables cannot take the daemon's reads and writes."""
    problems: list[str] = []
    for table, required in REQUIRED_COLUMNS.items():
        cols = await conn.fetch(_COLUMNS_SQL, table)
        if not cols:
            problems.append(f"{table} does not exist")
            continue
        names = {c["name"] for c in cols}
        missing = sorted(required - names)
        if missing:
            problems.append(f"{table} lacks columns {', '.join(missing)}")
        # Every statement binds outreach_id as uuid; a text/varchar column would make each of
        # them fail with "operator does not exist: text = uuid".
        key_type = next((c["type"] for c in cols if c["name"] == "outreach_id"), "uuid")
        if key_type != "uuid":
            problems.append(f"{table}.outreach_id is {key_type}, not uuid")
        written = WRITTEN_COLUMNS.get(table)
        if written is not None:
            blocking = sorted(
                c["name"]
                for c in cols
                if c["not_null"] and not c["has_default"] and c["name"] not in written
            )
            if blocking:
                problems.append(
                    f"{table} has NOT NULL columns without a default that ct-actors does not "
                    f"write: {', '.join(blocking)}"
                )
    if not await conn.fetchval(_UNIQUE_ON_OUTREACH_ID_SQL, "outreach.company_target", True):
        problems.append("outreach.company_target has no unique index on (outreach_id)")
    if not await conn.fetchval(_UNIQUE_ON_OUTREACH_ID_SQL, "outreach.company_target_errors", False):
        problems.append(
            "outreach.company_target_errors has no partial unique index on (outreach_id) "
            "(one open FAIL per record)"
        )
    if problems:
        raise SchemaError("schema check failed: " + "; ".join(problems))
