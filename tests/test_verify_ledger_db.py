"""The verifier ledger in PostgreSQL (sql/004_verifier.sql, PgVerifierLedger): claims, verdicts,
releases, the guarded monthly spend under concurrency from several pools, and the whole gate —
two daemons (two pools, two EmailVerifiers) against the local fake API over loopback."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import asyncpg
import pytest
import trio
from conftest_db import Db, insert_spine, passed

from ct_actors.db import Database, WorkQueue, open_database
from ct_actors.testing.verifier import (
    Answer,
    FakeMillionVerifier,
    Hang,
    open_fake_api,
    rate_limited,
)
from ct_actors.throttle.calendar import UtcClock
from ct_actors.throttle.killswitch import KillSwitches
from ct_actors.toolbox import ToolSpec, load_toolbox
from ct_actors.verify.answer import VendorVerdict
from ct_actors.verify.client import MillionVerifierClient
from ct_actors.verify.decision import DecisionKind, SkipReason
from ct_actors.verify.gate import BUDGET_CAP_REACHED, EmailVerifier, GateSettings
from ct_actors.verify.ledger import LedgerStatus, SpendRow
from ct_actors.verify.pg_ledger import PgVerifierLedger
from tests.verify_support import with_spec

pytestmark = [pytest.mark.db, pytest.mark.timeout(120)]

SPEC = load_toolbox(Path(__file__).parent.parent / "config" / "SNAP_ON_TOOLBOX.yaml").email_verifier
TOOL = SPEC.tool_id
KEY = "mv-db-test-key-77aa"
NOV = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
AT = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)
PER_CALL = Decimal("0.004")


@pytest.fixture
async def ledgers(aio_loop: Any, migrated_db: str) -> AsyncIterator[list[PgVerifierLedger]]:
    """Three ledgers, each on a pool of its own, on one database: three daemons."""
    opened = [await open_database(migrated_db) for _ in range(3)]
    yield [PgVerifierLedger(database) for database in opened]
    for database in opened:
        await database.aclose()


@pytest.fixture
async def fake() -> AsyncIterator[FakeMillionVerifier]:
    async with open_fake_api(api_key=KEY, credits=1000) as api:
        yield api


def daemon(
    ledger: PgVerifierLedger,
    fake: FakeMillionVerifier,
    owner: str,
    *,
    spec: ToolSpec = SPEC,
    origin: dt.datetime = AT,
    timeout: float = 5.0,
) -> EmailVerifier:
    assert fake.base_url is not None
    return EmailVerifier(
        spec,
        client=MillionVerifierClient(fake.base_url, KEY, timeout=timeout, vendor_timeout=2),
        ledger=ledger,
        switches=KillSwitches({BUDGET_CAP_REACHED: "halt_and_alert"}),
        clock=UtcClock(origin, trio.current_time()),
        owner=owner,
        settings=GateSettings(peer_poll=0.05),
    )


async def test_schema(db: Db) -> None:
    with trio.fail_after(30):
        assert await db.fetchval("SELECT to_regclass('ct_actors.verifier_ledger') IS NOT NULL")
        assert await db.fetchval("SELECT to_regclass('ct_actors.verifier_spend') IS NOT NULL")
        for bad in (
            "INSERT INTO ct_actors.verifier_ledger (address, owner, status, attempted_at) "
            "VALUES ('a@b.c', 'x', 'maybe', now())",
            "INSERT INTO ct_actors.verifier_ledger (address, owner, status, attempted_at) "
            "VALUES ('a@b.c', 'x', 'done', now())",  # done without a verdict
            "INSERT INTO ct_actors.verifier_ledger (address, owner, status, attempted_at, "
            "verdict) VALUES ('a@b.c', 'x', 'done', now(), 'great')",
            "INSERT INTO ct_actors.verifier_ledger (address, owner, status, attempted_at) "
            "VALUES ('nobody', 'x', 'pending', now())",
            "INSERT INTO ct_actors.verifier_spend (tool_id, month_start, spent) "
            "VALUES ('t', now(), -1)",
        ):
            with pytest.raises(asyncpg.CheckViolationError):
                await db.execute(bad)


async def test_claim_finish_release(pg_ledger: PgVerifierLedger) -> None:
    with trio.fail_after(30):
        assert await pg_ledger.verifier_entry("a@acme.com") is None
        assert await pg_ledger.verifier_claim("a@acme.com", "d1", AT, 1) == 1
        assert await pg_ledger.verifier_claim("a@acme.com", "d2", AT, 1) is None
        entry = await pg_ledger.verifier_entry("a@acme.com")
        assert entry is not None
        assert (entry.owner, entry.status, entry.attempts, entry.attempted_at) == (
            "d1", LedgerStatus.PENDING, 1, AT
        )
        # Only the owner closes it, once.
        assert not await pg_ledger.verifier_finish(
            "a@acme.com", "d2", status=LedgerStatus.DONE, at=AT, verdict="valid"
        )
        later = AT + dt.timedelta(seconds=2)
        assert await pg_ledger.verifier_finish(
            "a@acme.com", "d1", status=LedgerStatus.DONE, at=later, verdict="invalid",
            result="invalid", credits_after=4321, cost=PER_CALL, detail="mailbox_not_found",
        )
        assert not await pg_ledger.verifier_finish(
            "a@acme.com", "d1", status=LedgerStatus.UNAVAILABLE, at=later
        )
        entry = await pg_ledger.verifier_entry("a@acme.com")
        assert entry is not None
        assert (entry.status, entry.verdict, entry.result, entry.credits_after) == (
            LedgerStatus.DONE, "invalid", "invalid", 4321
        )
        assert entry.cost == PER_CALL and entry.finished_at == later
        assert entry.detail == "mailbox_not_found"
        # A done row is never released nor re-claimed.
        assert not await pg_ledger.verifier_release("a@acme.com", "d1")
        assert await pg_ledger.verifier_claim("a@acme.com", "d1", AT, 5) is None
        # A pending row is released by its owner only.
        assert await pg_ledger.verifier_claim("b@acme.com", "d1", AT, 1) == 1
        assert not await pg_ledger.verifier_release("b@acme.com", "d2")
        assert await pg_ledger.verifier_release("b@acme.com", "d1")
        assert await pg_ledger.verifier_entry("b@acme.com") is None
        with pytest.raises(ValueError):
            await pg_ledger.verifier_claim("c@acme.com", "d1", dt.datetime(2026, 11, 29), 1)


async def test_unavailable_rows_reopen_only_with_attempts_left(pg_ledger: PgVerifierLedger) -> None:
    with trio.fail_after(30):
        assert await pg_ledger.verifier_claim("a@acme.com", "d1", AT, 1) == 1
        assert await pg_ledger.verifier_finish(
            "a@acme.com", "d1", status=LedgerStatus.UNAVAILABLE, at=AT, cost=PER_CALL,
            detail="timeout",
        )
        assert await pg_ledger.verifier_claim("a@acme.com", "d2", AT, 1) is None
        assert await pg_ledger.verifier_claim("a@acme.com", "d2", AT, 2) == 2
        assert await pg_ledger.verifier_claim("a@acme.com", "d3", AT, 2) is None  # pending now
        assert await pg_ledger.verifier_finish(
            "a@acme.com", "d2", status=LedgerStatus.DONE, at=AT, verdict="valid", result="ok",
            cost=PER_CALL,
        )
        entry = await pg_ledger.verifier_entry("a@acme.com")
        assert entry is not None
        assert (entry.owner, entry.attempts, entry.cost, entry.detail) == (
            "d2", 2, 2 * PER_CALL, None
        )


async def test_spend_is_guarded_by_the_cap(pg_ledger: PgVerifierLedger) -> None:
    cap = Decimal("0.012")
    with trio.fail_after(30):
        grants = [
            await pg_ledger.verifier_reserve_spend(TOOL, NOV, PER_CALL, cap) for _ in range(4)
        ]
        assert grants == [Decimal("0.004"), Decimal("0.008"), Decimal("0.012"), None]
        assert await pg_ledger.verifier_spend(TOOL, NOV) == SpendRow(3, cap)
        await pg_ledger.verifier_refund_spend(TOOL, NOV, PER_CALL)
        assert await pg_ledger.verifier_spend(TOOL, NOV) == SpendRow(2, Decimal("0.008"))
        # No cap: always granted. A first call dearer than the cap: refused, no row.
        assert await pg_ledger.verifier_reserve_spend("other", NOV, PER_CALL, None) == PER_CALL
        dear = await pg_ledger.verifier_reserve_spend("third", NOV, PER_CALL, Decimal("0.001"))
        assert dear is None
        assert await pg_ledger.verifier_spend("third", NOV) == SpendRow(0, Decimal(0))
        # Over-refund never goes negative; refunding a month without a row is a no-op.
        for _ in range(5):
            await pg_ledger.verifier_refund_spend(TOOL, NOV, PER_CALL)
        assert await pg_ledger.verifier_spend(TOOL, NOV) == SpendRow(0, Decimal(0))
        october = dt.datetime(2026, 10, 1, tzinfo=dt.UTC)
        await pg_ledger.verifier_refund_spend(TOOL, october, PER_CALL)
        with pytest.raises(ValueError, match="start of a UTC month"):
            await pg_ledger.verifier_spend(TOOL, AT)


async def test_concurrent_spend_and_claims_across_daemons(
    ledgers: list[PgVerifierLedger],
) -> None:
    """Thirty reservations against a cap of ten calls, and ten claims of one address, from three
    pools at once: exactly ten granted, exactly one claim."""
    cap = Decimal("0.040")
    grants: list[Decimal | None] = []
    claims: list[int | None] = []
    start = trio.Event()

    async def reserve(s: PgVerifierLedger) -> None:
        await start.wait()
        grants.append(await s.verifier_reserve_spend(TOOL, NOV, PER_CALL, cap))

    async def claim(s: PgVerifierLedger, owner: str) -> None:
        await start.wait()
        claims.append(await s.verifier_claim("same@acme.com", owner, AT, 1))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i in range(30):
                nursery.start_soon(reserve, ledgers[i % 3])
            for i in range(10):
                nursery.start_soon(claim, ledgers[i % 3], f"d{i}")
            await trio.sleep(0.05)
            start.set()
        assert sum(g is not None for g in grants) == 10
        assert max(g for g in grants if g is not None) == cap
        assert await ledgers[0].verifier_spend(TOOL, NOV) == SpendRow(10, cap)
    assert sorted(claims, key=lambda c: c or 0) == [None] * 9 + [1]


async def test_two_daemons_one_vendor_call(
    ledgers: list[PgVerifierLedger], fake: FakeMillionVerifier
) -> None:
    fake.script("ann.lee@acme.com", Answer("invalid", delay=0.5, subresult="mailbox_not_found"))
    gates = [daemon(ledgers[0], fake, "d1"), daemon(ledgers[1], fake, "d2")]
    decisions: list[Any] = []

    async def one(g: EmailVerifier) -> None:
        decisions.append(await g.check("ann.lee@acme.com"))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for g in gates:
                nursery.start_soon(one, g)
        entry = await ledgers[2].verifier_entry("ann.lee@acme.com")
        spend = await ledgers[2].verifier_spend(TOOL, NOV)
        # A third daemon, later: the ledger answers.
        third = await daemon(ledgers[2], fake, "d3").check("ann.lee@acme.com")
    assert fake.count("ann.lee@acme.com") == 1
    assert sorted(d.kind.value for d in decisions) == ["cached", "verified"]
    assert {d.verdict for d in decisions} == {VendorVerdict.INVALID}
    assert third.kind is DecisionKind.CACHED and third.verdict is VendorVerdict.INVALID
    assert entry is not None and entry.status is LedgerStatus.DONE
    assert entry.credits_after == 999 and entry.detail == "mailbox_not_found"
    assert spend == SpendRow(1, PER_CALL)


async def test_cache_ttl_across_daemons(
    ledgers: list[PgVerifierLedger], fake: FakeMillionVerifier
) -> None:
    with trio.fail_after(60):
        first = await daemon(ledgers[0], fake, "d1").check("bob@acme.com")
        within = await daemon(
            ledgers[1], fake, "d2", origin=AT + dt.timedelta(days=89, hours=23)
        ).check("bob@acme.com")
        stale = await daemon(
            ledgers[1], fake, "d2", origin=AT + dt.timedelta(days=90, seconds=1)
        ).check("bob@acme.com")
    assert first.kind is DecisionKind.VERIFIED
    assert within.kind is DecisionKind.CACHED and within.verdict is VendorVerdict.VALID
    assert stale.kind is DecisionKind.SKIPPED and stale.reason is SkipReason.STALE
    assert fake.count() == 1


async def test_money_cap_across_daemons(
    ledgers: list[PgVerifierLedger], fake: FakeMillionVerifier
) -> None:
    spec = with_spec(SPEC, monthly_budget_cap=Decimal("0.012"))
    gates = [daemon(s, fake, f"d{i}", spec=spec) for i, s in enumerate(ledgers)]
    decisions: list[Any] = []

    async def run(g: EmailVerifier, index: int) -> None:
        for j in range(4):
            decisions.append(await g.check(f"p{index}-{j}@acme.com"))

    with trio.fail_after(60):
        async with trio.open_nursery() as nursery:
            for i, g in enumerate(gates):
                nursery.start_soon(run, g, i)
        spend = await ledgers[0].verifier_spend(TOOL, NOV)
        rows = await ledgers[0].verifier_entry("p0-0@acme.com")
    assert fake.count() == 3
    assert spend == SpendRow(3, Decimal("0.012"))
    assert sum(d.kind is DecisionKind.VERIFIED for d in decisions) == 3
    assert {d.reason for d in decisions if d.kind is not DecisionKind.VERIFIED} == {
        SkipReason.BUDGET
    }
    assert all(g.statistics().budget_switch for g in gates)  # each daemon stopped calling
    assert rows is None or rows.status is LedgerStatus.DONE


async def test_transport_failures_and_the_ledger_row(
    pg_ledger: PgVerifierLedger, fake: FakeMillionVerifier
) -> None:
    spec = with_spec(SPEC, initial_delay=0.05)
    fake.script("slow@acme.com", Hang(), Hang(), Hang())
    fake.script("busy@acme.com", rate_limited("0"), rate_limited("0"), rate_limited("0"))
    g = daemon(pg_ledger, fake, "d1", spec=spec, timeout=0.3)
    with trio.fail_after(60):
        slow = await g.check("slow@acme.com")
        busy = await g.check("busy@acme.com")
        slow_row = await pg_ledger.verifier_entry("slow@acme.com")
        busy_row = await pg_ledger.verifier_entry("busy@acme.com")
        spend = await pg_ledger.verifier_spend(TOOL, NOV)
        again = [await g.check("slow@acme.com"), await g.check("busy@acme.com")]
    assert slow.kind is DecisionKind.UNAVAILABLE and busy.kind is DecisionKind.UNAVAILABLE
    # Timeouts after sending may have been billed: the attempt is spent, its cost kept.
    assert slow_row is not None and slow_row.status is LedgerStatus.UNAVAILABLE
    assert slow_row.cost == 3 * PER_CALL and "no answer within" in (slow_row.detail or "")
    # 429s were never processed: no row, no money; the address was tried again.
    assert busy_row is None
    assert spend == SpendRow(3, 3 * PER_CALL)
    assert again[0].reason is SkipReason.ATTEMPTED
    assert again[1].kind is DecisionKind.VERIFIED
    assert fake.count("slow@acme.com") == 3 and fake.count("busy@acme.com") == 4


async def test_an_echoed_api_key_is_never_stored(
    database: Database, queue: WorkQueue, pg_ledger: PgVerifierLedger, db: Db
) -> None:
    # Issue 10: a vendor that echoes the API key got it stored in verifier_ledger.detail and
    # in company_target.evidence. The database driver masks the configured secrets in both.
    key = "mv-live-7d1f0c9e55aa"
    database.set_secrets([key])
    with trio.fail_after(30):
        assert await pg_ledger.verifier_claim("k@acme.com", "d1", AT, 1) == 1
        assert await pg_ledger.verifier_finish(
            "k@acme.com", "d1", status=LedgerStatus.UNAVAILABLE, at=AT,
            detail=f"HTTP 500: bad request api={key}\x1b[0m",
        )
        entry = await pg_ledger.verifier_entry("k@acme.com")
        assert entry is not None and entry.detail == "HTTP 500: bad request api=***\\x1b[0m"
        (oid,) = await insert_spine(db, 1)
        outcome = passed(oid, vendor={"request": f"/v3/?api={key}&email=k@acme.com"})
        assert (await queue.write_outcomes("d1", [outcome])).written == [oid]
        stored = await db.fetchval(
            "SELECT evidence::text FROM outreach.company_target WHERE outreach_id = $1", oid
        )
        assert key not in stored and "api=***" in stored
