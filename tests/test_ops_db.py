"""`ct_actors.ops` against a real PostgreSQL, in process: the work queue's id-restricted claim, the
canary's selection query, the report's figures (compared with the runbook's own queries and
with independent SQL), and the restricted role of check 8."""

from __future__ import annotations

import datetime as dt
import itertools
import re
import uuid
from decimal import Decimal
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
import trio
import trio_asyncio
from conftest_db import Db, deferred, failed, insert_spine, passed

from ct_actors.db import Database, NamesQuery, QueryError, WorkQueue, open_database
from ct_actors.ops import queries as oq
from ct_actors.ops.canary import ScopedQueue, select
from ct_actors.ops.db import OpsDb
from ct_actors.ops.isolation import (
    ROLE_PREFIX,
    IsolationError,
    create_restricted_role,
    drop_role,
    role_proof,
)
from ct_actors.ops.report import ReportOptions, gather_report
from ct_actors.ops.selection import select_canary
from ct_actors.outcome import FailureCode
from tests.shared_docs import RUNBOOK, skip_unless_ci

pytestmark = pytest.mark.db

# The runbook's pass-rate query, verbatim (compared with the runbook below when it is there).
RUNBOOK_PASS_RATE = """SELECT
  COUNT(*) FILTER (WHERE execution_status = 'ready') as passed,
  COUNT(*) FILTER (WHERE execution_status = 'failed') as failed,
  ROUND(100.0 * COUNT(*) FILTER (WHERE execution_status = 'ready') / COUNT(*), 2) as pass_rate
FROM outreach.company_target
WHERE imo_completed_at > NOW() - INTERVAL '24 hours';"""
RUNBOOK_DISTRIBUTION = """SELECT failure_code, COUNT(*) as count
FROM outreach.company_target_errors
WHERE created_at > NOW() - INTERVAL '7 days'
GROUP BY failure_code
ORDER BY count DESC;"""


@pytest.mark.timeout(10)
def test_runbook_copies_are_verbatim() -> None:
    if not RUNBOOK.exists():
        skip_unless_ci(f"{RUNBOOK} not available")
    blocks = re.findall(r"```sql\n(.*?)\n```", RUNBOOK.read_text(), re.S)
    assert RUNBOOK_PASS_RATE in blocks and RUNBOOK_DISTRIBUTION in blocks


def ids_of(records: Any) -> list[uuid.UUID]:
    return [r.outreach_id for r in records]


# ─── the work queue's claim_among / pending_elsewhere_among ────────────────────────────────


@pytest.mark.timeout(60)
async def test_claim_among_claims_only_the_listed_pending_records(queue: WorkQueue, db: Db) -> None:
    ids = await insert_spine(db, 10)
    await queue.write_outcomes("x", [passed(ids[1]), failed(ids[2])])
    wanted = [ids[0], ids[1], ids[2], ids[3], ids[5], uuid.uuid4()]  # one terminal, one unknown
    # Another owner holds a live lease on ids[3].
    assert ids_of(await queue.claim_among("other", [ids[3]], 10, 600)) == [ids[3]]
    # Pending and not held by "a": ids[0] and ids[5] (claimable), ids[3] (another's lease).
    assert await queue.pending_elsewhere_among("a", wanted) == 3
    assert await queue.pending_elsewhere_among("other", wanted) == 2
    assert await queue.pending_elsewhere_among("a", []) == 0
    # limit applies, in outreach_id order.
    assert ids_of(await queue.claim_among("a", wanted, 1, 60)) == [ids[0]]
    claimed = await queue.claim_among("a", wanted, 10, 60)
    assert ids_of(claimed) == [ids[5]] and claimed[0].domain == "d5.example"
    assert await queue.claim_among("a", wanted, 10, 60) == []
    assert await queue.claim_among("a", [], 10, 60) == []
    assert await queue.claim_among("a", wanted, 0, 60) == []
    with pytest.raises(ValueError):
        await queue.claim_among("a", wanted, 10, 0)
    # Nothing outside the list was touched; the plain claim still sees the rest.
    leased = {r["outreach_id"] for r in await db.fetch("SELECT outreach_id FROM ct_actors.lease")}
    assert leased == {ids[0], ids[3], ids[5]}
    assert ids_of(await queue.claim("b", 100, 60)) == [ids[4], *ids[6:]]


@pytest.mark.timeout(60)
async def test_scoped_queue_is_the_work_queue_with_a_restricted_claim(
    database: Database, db: Db
) -> None:
    ids = await insert_spine(db, 5)
    scoped = ScopedQueue(database, [ids[3], ids[1]])
    assert ids_of(await scoped.claim("a", 10, 60)) == [ids[1], ids[3]]
    assert await scoped.pending_elsewhere("b") == 2
    assert await scoped.pending_count() == 5  # delegated
    report = await scoped.write_outcomes("a", [passed(ids[1]), deferred(ids[3], 3600)])
    assert report.written == [ids[1]] and report.deferred == [ids[3]]
    assert await scoped.claim("a", 10, 60) == []  # ids[3] deferred, ids[1] terminal


# ─── selection ──────────────────────────────────────────────────────────────────────────────


@pytest.mark.timeout(60)
async def test_selection_reads_only_claimable_pending_records(
    queue: WorkQueue, db: Db, migrated_db: str
) -> None:
    domains = [
        "a.com", "https://www.b.com/", "c.io", "d.org", "e.net", None,
        "f.com", "g.io", "h.org", "i.de",
    ]  # fmt: skip
    ids = await insert_spine(db, len(domains), domain=lambda i: domains[i])
    await queue.write_outcomes("x", [passed(ids[0]), failed(ids[2])])  # terminal
    await queue.claim_among("live", [ids[3]], 10, 600)  # live lease
    await queue.claim_among("x", [ids[4]], 10, 600)
    await queue.write_outcomes("x", [deferred(ids[4], 3600)])  # deferred
    await queue.claim_among("gone", [ids[5]], 10, 600)
    await queue.release("gone")  # released: claimable again
    claimable = [i for n, i in enumerate(ids) if n not in (0, 2, 3, 4)]
    ops = await OpsDb.connect(migrated_db)
    try:
        selection = await select(ops, 10, seed=5)
        again = await select(ops, 10, seed=5)
    finally:
        await ops.aclose()
    assert selection == again
    assert set(selection.ids) == set(claimable)
    assert selection.available == {".com": 2, ".io": 1, ".org": 1, "other": 2}
    expected = select_canary([(i, domains[ids.index(i)]) for i in claimable], 10, seed=5)
    assert selection == expected


# ─── report ─────────────────────────────────────────────────────────────────────────────────


async def _seed_outcomes(queue: WorkQueue, db: Db) -> list[uuid.UUID]:
    """10 spine records: 6 PASS, 3 FAIL, 1 deferred (pending), plus a CT-I-NOT-FOUND, written
    through the store; then some history moved back in time."""
    ids = await insert_spine(db, 14)
    ghost = uuid.uuid4()
    await queue.write_outcomes(
        "w",
        [passed(oid) for oid in ids[:6]]
        + [failed(ids[6], FailureCode.NO_MX), failed(ids[7], FailureCode.NO_MX)]
        + [failed(ids[8], FailureCode.SMTP_FAIL), deferred(ids[9])]
        + [failed(ghost, FailureCode.NOT_FOUND)],
    )
    # History: a PASS 2 hours ago, a FAIL 30 hours ago (outside the 24 h window, inside the
    # 7 days), a FAIL 10 days ago (outside both).
    await queue.write_outcomes(
        "w",
        [
            passed(ids[10]),
            failed(ids[11], FailureCode.NO_PATTERN),
            failed(ids[12], FailureCode.NO_DOMAIN),
        ],
    )
    for oid, age in ((ids[10], "2 hours"), (ids[11], "30 hours"), (ids[12], "10 days")):
        await db.execute(
            f"UPDATE outreach.company_target SET imo_completed_at = now() - interval '{age}', "
            f"updated_at = now() - interval '{age}' WHERE outreach_id = $1",
            oid,
        )
        await db.execute(
            f"UPDATE outreach.company_target_errors SET created_at = now() - interval '{age}' "
            "WHERE outreach_id = $1",
            oid,
        )
    return ids


@pytest.mark.timeout(60)
async def test_report_figures_match_the_runbook_and_the_tables(
    queue: WorkQueue, db: Db, migrated_db: str
) -> None:
    ids = await _seed_outcomes(queue, db)
    ops = await OpsDb.connect(migrated_db)
    try:
        report = await gather_report(ops, ReportOptions(recent=3, rate_minutes=60))
        minutes = await gather_report(ops, ReportOptions(bucket="minute", buckets=5))
    finally:
        await ops.aclose()

    # Pass rate: exactly the runbook's figures.
    runbook = await db.fetchrow(RUNBOOK_PASS_RATE)
    assert (report.pass_rate.passed, report.pass_rate.failed) == (
        runbook["passed"],
        runbook["failed"],
    )
    assert report.pass_rate.pass_rate == runbook["pass_rate"] == Decimal("70.00")  # 7 / 10
    assert report.pass_rate.total == 10
    # Failure distribution: the runbook's rows (its ORDER BY leaves ties unordered).
    want = sorted((r["failure_code"], r["count"]) for r in await db.fetch(RUNBOOK_DISTRIBUTION))
    assert sorted(report.failures) == want
    assert report.failures[0] == ("CT-M-NO-MX", 2)
    assert dict(report.failures)["CT-M-NO-PATTERN"] == 1  # 30 h old, inside 7 days
    assert "CT-I-NO-DOMAIN" not in dict(report.failures)  # 10 days old
    # Recent failures: the newest 3 error rows.
    newest = await db.fetch(
        "SELECT outreach_id FROM outreach.company_target_errors "
        "ORDER BY created_at DESC, error_id DESC LIMIT 3"
    )
    assert [f.outreach_id for f in report.recent] == [r["outreach_id"] for r in newest]
    # Throughput per UTC hour: 10 outcomes now (6 PASS, 3 FAIL, 1 NOT-FOUND), 1 PASS 2 h ago.
    assert len(report.throughput) == 24
    assert sum(b.outcomes for b in report.throughput) == 11
    now_bucket, two_hours = report.throughput[-1], report.throughput[-3]
    assert (now_bucket.outcomes, now_bucket.passed, now_bucket.failed) == (10, 6, 4)
    assert (two_hours.outcomes, two_hours.passed) == (1, 1)
    assert all(b.start.minute == 0 and b.start.second == 0 for b in report.throughput)
    starts = [b.start for b in report.throughput]
    assert all(b - a == dt.timedelta(hours=1) for a, b in itertools.pairwise(starts))
    assert [b.outcomes for b in minutes.throughput][-1] == 10
    assert len(minutes.throughput) == 5
    # Pending: as the store counts it (the deferred record and the 4 untouched ones... minus
    # the history rows, which are terminal).
    assert report.pending == await queue.pending_count() == 2
    assert ids[9] and ids[13]
    # Rate: 10 outcomes in the last hour (the 2 h old one is outside).
    assert report.estimate.outcomes_in_window == 10
    assert report.estimate.per_hour == 10.0
    assert report.estimate.hours == pytest.approx(0.2)


@pytest.mark.timeout(60)
async def test_report_on_an_idle_database_says_no_data_instead_of_dividing_by_zero(
    db: Db, migrated_db: str
) -> None:
    await insert_spine(db, 3)
    with pytest.raises(Exception, match="division by zero"):
        await db.fetch(RUNBOOK_PASS_RATE)
    ops = await OpsDb.connect(migrated_db)
    try:
        report = await gather_report(ops, ReportOptions())
    finally:
        await ops.aclose()
    assert (report.pass_rate.total, report.pass_rate.pass_rate) == (0, None)
    assert report.failures == [] and report.recent == []
    assert sum(b.outcomes for b in report.throughput) == 0
    assert report.pending == 3
    assert report.estimate.hours is None and "unknown" in report.estimate.text


@pytest.mark.timeout(60)
async def test_report_on_a_database_without_the_schema_is_a_schema_error(
    aio_loop: Any, fresh_db: str
) -> None:
    from ct_actors.db import SchemaError

    ops = await OpsDb.connect(fresh_db)
    try:
        with pytest.raises(SchemaError):
            await gather_report(ops, ReportOptions())
        with pytest.raises(SchemaError):
            await ops.fetchval("schema check", oq.SCHEMA_PROBE)
    finally:
        await ops.aclose()


# ─── the restricted role ────────────────────────────────────────────────────────────────────


async def _connect_as(url: str) -> Any:
    return await trio_asyncio.aio_as_trio(asyncpg.connect)(url, timeout=5)


async def _role_exists(db: Db, name: str) -> bool:
    return bool(await db.fetchval("SELECT count(*) FROM pg_roles WHERE rolname = $1", name))


@pytest.mark.timeout(60)
async def test_restricted_role_cannot_read_sovereign_id_but_runs_the_store(
    db: Db, migrated_db: str
) -> None:
    ids = await insert_spine(db, 4)
    # A view exposing the column is guarded too; a table in another schema is readable.
    await db.execute(
        "CREATE VIEW outreach.v_context AS SELECT outreach_id, sovereign_id, domain "
        "FROM outreach.outreach"
    )
    await db.execute("CREATE SCHEMA extra; CREATE TABLE extra.notes (outreach_id uuid, n text)")
    ops = await OpsDb.connect(migrated_db)
    role = await create_restricted_role(ops, migrated_db, connections=6, valid_for=600)
    try:
        assert role.name.startswith(ROLE_PREFIX)
        assert "outreach.outreach" in role.guarded_relations
        assert "outreach.v_context" in role.guarded_relations
        password = urlsplit(role.url).password
        assert password and password not in repr(role) and "SCRAM" not in role.url
        conn = await _connect_as(role.url)
        try:
            run = trio_asyncio.aio_as_trio

            assert await run(conn.fetchval)("SELECT current_user") == role.name
            for sql in (
                "SELECT sovereign_id FROM outreach.outreach",
                "SELECT * FROM outreach.outreach",
                "SELECT o.* FROM outreach.outreach o",
                "SELECT sovereign_id FROM outreach.v_context",
                "UPDATE outreach.outreach SET domain = 'x'",
            ):
                with pytest.raises(asyncpg.InsufficientPrivilegeError):
                    await run(conn.fetch)(sql)
            rows = await run(conn.fetch)("SELECT outreach_id, domain FROM outreach.outreach")
            assert len(rows) == 4
            assert len(await run(conn.fetch)("SELECT outreach_id, domain FROM outreach.v_context"))
            assert await run(conn.fetch)("SELECT outreach_id, n FROM extra.notes") == []
            proof = await role_proof(ops, role)
        finally:
            await trio_asyncio.aio_as_trio(conn.close)()
        assert proof.guarded_total == 2 and proof.guarded_readable == 0
        assert proof.reads_spine and not proof.is_superuser and proof.memberships == 0
        assert proof.sessions == 1 and proof.ok

        # The daemon's work queue and names query work as the role: claim, write, release.
        database = await open_database(role.url)
        store = WorkQueue(database)
        try:
            assert ids_of(await store.claim_among("r", ids[:3], 10, 60)) == ids[:3]
            report = await store.write_outcomes(
                "r", [passed(ids[0]), failed(ids[1]), deferred(ids[2])]
            )
            assert len(report.written) == 2
            assert ids_of(await store.claim("r", 10, 60)) == [ids[3]]
            with pytest.raises(QueryError) as info:
                await NamesQuery(database).fetch_names(
                    "SELECT sovereign_id::text, domain FROM outreach.outreach "
                    "WHERE outreach_id = $1",
                    ids[0],
                )
            assert info.value.sqlstate == "42501"
        finally:
            await database.aclose()
    finally:
        await drop_role(ops, role.name)
        await ops.aclose()
    assert not await _role_exists(db, role.name)


@pytest.mark.timeout(60)
async def test_role_setup_is_refused_with_a_clear_message_without_privileges(
    db: Db, migrated_db: str
) -> None:
    weak = f"ct_ops_weak_{uuid.uuid4().hex[:8]}"
    await db.execute(f"CREATE ROLE {weak} LOGIN")
    try:
        url = migrated_db.replace("postgres@", f"{weak}@", 1)
        ops = await OpsDb.connect(url)
        try:
            # Neither owner nor superuser: it can grant nothing on the outreach tables.
            with pytest.raises(IsolationError, match=r"cannot grant SELECT on outreach\.outreach"):
                await create_restricted_role(ops, url, connections=4, valid_for=60)
            # Owning the tables is not enough without CREATEROLE.
            await db.execute(
                f"GRANT SELECT ON ALL TABLES IN SCHEMA outreach, ct_actors TO {weak} "
                "WITH GRANT OPTION"
            )
            await db.execute(
                f"GRANT INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA outreach, "
                f"ct_actors TO {weak} WITH GRANT OPTION"
            )
            await db.execute(
                f"GRANT USAGE ON SCHEMA outreach, ct_actors TO {weak} WITH GRANT OPTION"
            )
            with pytest.raises(IsolationError, match="CREATE ROLE"):
                await create_restricted_role(ops, url, connections=4, valid_for=60)
        finally:
            await ops.aclose()
    finally:
        await db.execute(f"DROP OWNED BY {weak}")
        await db.execute(f"DROP ROLE IF EXISTS {weak}")


@pytest.mark.timeout(30)
async def test_role_is_dropped_even_when_the_canary_is_cancelled(db: Db, migrated_db: str) -> None:
    ops = await OpsDb.connect(migrated_db)
    try:
        role = await create_restricted_role(ops, migrated_db, connections=4, valid_for=60)
        with trio.move_on_after(0.01):
            try:
                await trio.sleep(10)
            finally:
                with trio.CancelScope(shield=True):
                    await drop_role(ops, role.name)
    finally:
        await ops.aclose()
    assert not await _role_exists(db, role.name)
