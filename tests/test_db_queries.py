"""The runbook's queries verbatim, the operator names query, and the daemon's privileges."""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import pytest
from conftest_db import Db, admin, deferred, failed, insert_spine, passed

from ct_actors.db import (
    Database,
    DatabaseUnavailable,
    NamesQuery,
    QueryError,
    WorkQueue,
    open_database,
)
from ct_actors.outcome import FailureCode
from tests.shared_docs import RUNBOOK, skip_unless_ci

pytestmark = pytest.mark.db

# Copied verbatim from operations-runbook.md ("Queries"); test_runbook_copy_is_verbatim checks
# them against the seed when it is available.
RECENT_FAILURES = """SELECT outreach_id, failure_code, blocking_reason, created_at
FROM outreach.company_target_errors
WHERE created_at > NOW() - INTERVAL '24 hours'
ORDER BY created_at DESC
LIMIT 100;"""

FAILURE_DISTRIBUTION = """SELECT failure_code, COUNT(*) as count
FROM outreach.company_target_errors
WHERE created_at > NOW() - INTERVAL '7 days'
GROUP BY failure_code
ORDER BY count DESC;"""

PASS_RATE = """SELECT
  COUNT(*) FILTER (WHERE execution_status = 'ready') as passed,
  COUNT(*) FILTER (WHERE execution_status = 'failed') as failed,
  ROUND(100.0 * COUNT(*) FILTER (WHERE execution_status = 'ready') / COUNT(*), 2) as pass_rate
FROM outreach.company_target
WHERE imo_completed_at > NOW() - INTERVAL '24 hours';"""



def test_runbook_copy_is_verbatim() -> None:
    if not RUNBOOK.exists():
        skip_unless_ci(f"{RUNBOOK} not available")
    blocks = re.findall(r"```sql\n(.*?)\n```", RUNBOOK.read_text(), re.S)
    assert blocks == [RECENT_FAILURES, FAILURE_DISTRIBUTION, PASS_RATE]


async def test_runbook_queries_after_writes(queue: WorkQueue, db: Db) -> None:
    ids = await insert_spine(db, 10)
    ghost = uuid.uuid4()
    await queue.write_outcomes(
        "w",
        [passed(oid) for oid in ids[:6]]
        + [failed(ids[6], FailureCode.NO_MX), failed(ids[7], FailureCode.NO_MX)]
        + [failed(ids[8], FailureCode.SMTP_FAIL), deferred(ids[9])]
        + [failed(ghost, FailureCode.NOT_FOUND)],
    )
    recent = await db.fetch(RECENT_FAILURES)
    assert {r["outreach_id"] for r in recent} == {ids[6], ids[7], ids[8], ghost}
    assert [r["created_at"] for r in recent] == sorted(
        (r["created_at"] for r in recent), reverse=True
    )
    assert all(r["blocking_reason"] for r in recent)
    distribution = [(r["failure_code"], r["count"]) for r in await db.fetch(FAILURE_DISTRIBUTION)]
    assert distribution[0] == ("CT-M-NO-MX", 2)
    assert sorted(distribution[1:]) == [("CT-I-NOT-FOUND", 1), ("CT-M-SMTP-FAIL", 1)]
    rate = await db.fetchrow(PASS_RATE)
    # NOT-FOUND has no company_target row, so the pass rate is over spine records only.
    assert (rate["passed"], rate["failed"], str(rate["pass_rate"])) == (6, 3, "66.67")

    # The three queries stay cheap: index scans, not table scans, once tables are large.
    await db.execute("SET enable_seqscan = off")
    for sql in (RECENT_FAILURES, FAILURE_DISTRIBUTION, PASS_RATE):
        plan = "\n".join(r[0] for r in await db.fetch("EXPLAIN " + sql))
        assert "Index" in plan, plan


async def test_runbook_pass_rate_divides_by_zero_on_an_empty_window(db: Db) -> None:
    """Documented, not fixed: the runbook's own pass-rate query fails with 'division by zero'
    when nothing completed in the last 24 hours (the runbook is frozen; NULLIF(COUNT(*), 0)
    would fix it). Ops should expect this error on an idle day."""
    with pytest.raises(Exception, match="division by zero"):
        await db.fetch(PASS_RATE)


# ---------------------------------------------------------------------------------------------
# Operator-configured names query
# ---------------------------------------------------------------------------------------------
NAMES = "SELECT first_name, last_name FROM public.people WHERE outreach_id = $1 ORDER BY rank"


async def _people(db: Db) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(3)]
    await db.execute(
        "CREATE TABLE public.people (outreach_id uuid, first_name text, last_name text, rank int)"
    )
    await db.executemany(
        "INSERT INTO public.people VALUES ($1, $2, $3, $4)",
        [
            (ids[0], None, "Nobody", 1),
            (ids[0], " Ada ", "Lovelace ", 2),
            (ids[0], "Alan", "Turing", 3),
            (ids[0], "Grace", None, 4),
            (ids[0], "Edsger", "Dijkstra", 5),
            (ids[0], "Barbara", "Liskov", 6),
            (ids[1], "Only", "One", 1),
        ],
    )
    return ids


async def test_fetch_names(names_query: NamesQuery, db: Db) -> None:
    ids = await _people(db)
    assert await names_query.fetch_names(NAMES, ids[0]) == [
        ("Ada", "Lovelace"),
        ("Alan", "Turing"),
        ("Edsger", "Dijkstra"),
    ]
    assert await names_query.fetch_names_batch(NAMES, ids) == {
        ids[0]: [("Ada", "Lovelace"), ("Alan", "Turing"), ("Edsger", "Dijkstra")],
        ids[1]: [("Only", "One")],
        ids[2]: [],
    }
    assert await names_query.fetch_names_batch(NAMES, []) == {}


async def test_names_query_is_read_only_and_bounded(
    database: Database, queue: WorkQueue, names_query: NamesQuery, db: Db
) -> None:
    ids = await _people(db)
    sneaky = (
        "WITH gone AS (DELETE FROM public.people RETURNING first_name, last_name) "
        "SELECT first_name, last_name FROM gone WHERE $1::uuid IS NOT NULL"
    )
    with pytest.raises(QueryError) as info:
        await names_query.fetch_names(sneaky, ids[0])
    assert info.value.sqlstate == "25006"  # read_only_sql_transaction
    assert await db.fetchval("SELECT count(*) FROM public.people") == 7

    slow = "SELECT 'a', 'b' FROM pg_sleep(5) WHERE $1::uuid IS NOT NULL"
    with pytest.raises(DatabaseUnavailable) as timeout_info:
        await names_query.fetch_names(slow, ids[0], statement_timeout=0.2)
    assert timeout_info.value.sqlstate == "57014"  # statement timeout: ours, transient
    with pytest.raises(QueryError):
        await names_query.fetch_names("SELEC oops", ids[0])
    with pytest.raises(QueryError):
        await names_query.fetch_names("SELECT 'no', 'parameter'", ids[0])
    with pytest.raises(QueryError):
        await names_query.fetch_names_batch(sneaky, ids)
    # The pool is healthy afterwards and the timeout did not stick to the session.
    assert await names_query.fetch_names(NAMES, ids[1]) == [("Only", "One")]
    assert await queue.pending_count() == 0
    assert database.statistics().errors == 5


# ---------------------------------------------------------------------------------------------
# Least privilege: the daemon works without ever being able to read sovereign_id
# ---------------------------------------------------------------------------------------------
@pytest.fixture
def restricted_url(migrated_db: str) -> Iterator[str]:
    role = f"ct_daemon_{uuid.uuid4().hex[:12]}"
    grants = f"""
        CREATE ROLE {role} LOGIN;
        GRANT USAGE ON SCHEMA outreach, ct_actors TO {role};
        -- Every spine column except sovereign_id. UPDATE on one column is what PostgreSQL
        -- requires for SELECT ... FOR NO KEY UPDATE (the claim's row lock); never used.
        GRANT SELECT (outreach_id, domain, created_at, updated_at) ON outreach.outreach TO {role};
        GRANT UPDATE (updated_at) ON outreach.outreach TO {role};
        GRANT SELECT, INSERT, UPDATE ON outreach.company_target TO {role};
        GRANT SELECT, INSERT ON outreach.company_target_errors TO {role};
        GRANT SELECT, INSERT, UPDATE, DELETE ON ct_actors.lease TO {role};
        GRANT SELECT, INSERT, UPDATE, DELETE ON ct_actors.outcome_log TO {role};
    """

    async def in_db(sql: str) -> None:
        import asyncpg

        conn = await asyncpg.connect(migrated_db, timeout=5)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    import asyncio

    asyncio.run(in_db(grants))
    parts = urlsplit(migrated_db)
    yield urlunsplit(parts._replace(netloc=f"{role}@{parts.netloc.rpartition('@')[2]}"))
    asyncio.run(in_db(f"DROP OWNED BY {role}"))

    async def drop(conn: Any) -> None:
        await conn.execute(f"DROP ROLE {role}")

    admin(drop)


async def test_daemon_runs_without_access_to_sovereign_id(
    aio_loop: Any, restricted_url: str, migrated_db: str
) -> None:
    setup = await Db.connect(migrated_db)
    try:
        ids = await insert_spine(setup, 6)
    finally:
        await setup.aclose()
    restricted = await Db.connect(restricted_url)
    try:
        with pytest.raises(Exception, match="permission denied"):
            await restricted.fetch("SELECT sovereign_id FROM outreach.outreach")
    finally:
        await restricted.aclose()

    store = WorkQueue(await open_database(restricted_url))
    try:
        claimed = await store.claim("ro", 10, 60)
        assert [c.outreach_id for c in claimed] == ids
        assert await store.renew_leases("ro", ids, 60) == ids
        report = await store.write_outcomes(
            "ro",
            [
                passed(ids[0]),
                failed(ids[1]),
                deferred(ids[2]),
                failed(uuid.uuid4(), FailureCode.NOT_FOUND),
            ],
        )
        assert len(report.written) == 3 and report.deferred == [ids[2]]
        assert sorted(await store.release("ro")) == ids[3:]
        spine = await store.fetch_spine(ids[4])
        assert spine is not None and spine.domain == "d4.example"
        assert await store.terminal_status(ids[0]) == "ready"
        assert await store.pending_count() == 4
        assert (await store.counts_by_outcome())["PASS"] == 1
    finally:
        await store.database.aclose()
