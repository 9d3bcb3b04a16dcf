"""Claiming work: what is pending, leases between owners, deferral, and the keyset cursor."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
import trio
from conftest_db import Db, deferred, failed, insert_spine, passed

from ct_actors.db import WorkQueue, open_database
from ct_actors.outcome import FailureCode

pytestmark = pytest.mark.db


def ids_of(records: Any) -> list[uuid.UUID]:
    return [r.outreach_id for r in records]


async def test_claim_orders_by_id_and_leases(queue: WorkQueue, db: Db) -> None:
    ids = await insert_spine(db, 10, domain=lambda i: None if i == 3 else f"d{i}.example")
    claimed = await queue.claim("a", 4, 60)
    assert ids_of(claimed) == ids[:4]
    # NULL domains are claimed too: the daemon writes CT-I-NO-DOMAIN for them.
    assert claimed[3].domain is None and claimed[0].domain == "d0.example"
    assert all(c.attempts == 1 for c in claimed)
    leases = await db.fetch(
        "SELECT outreach_id, owner, attempts, expires_at - claimed_at AS span "
        "FROM ct_actors.lease ORDER BY outreach_id"
    )
    assert [r["outreach_id"] for r in leases] == ids[:4]
    assert {(r["owner"], r["attempts"], r["span"].total_seconds()) for r in leases} == {
        ("a", 1, 60.0)
    }
    # The same owner does not get its own live leases back: the cursor moves on, and after the
    # wrap-around the first four are still leased.
    assert ids_of(await queue.claim("a", 100, 60)) == ids[4:]
    assert await queue.claim("a", 100, 60) == []
    assert await queue.claim("b", 100, 60) == []
    assert await queue.claim("a", 0, 60) == []


async def test_terminal_records_are_never_claimed(queue: WorkQueue, db: Db) -> None:
    ids = await insert_spine(db, 8)
    report = await queue.write_outcomes(
        "w", [passed(ids[0]), failed(ids[1]), failed(ids[2], FailureCode.NO_DOMAIN)]
    )
    assert len(report.written) == 3
    # Rows written by others: an open error without a company_target row is terminal; a
    # resolved one is not; 'pending' and 'blocked' company_target rows are not terminal.
    await db.execute(
        "INSERT INTO outreach.company_target_errors (outreach_id, failure_code) VALUES ($1, $2)",
        ids[3],
        "CT-M-SMTP-FAIL",
    )
    await db.execute(
        "INSERT INTO outreach.company_target_errors (outreach_id, failure_code, resolved_at) "
        "VALUES ($1, 'CT-M-SMTP-FAIL', now())",
        ids[4],
    )
    await db.execute(
        "INSERT INTO outreach.company_target (outreach_id, execution_status) "
        "VALUES ($1, 'pending'), ($2, 'blocked'), ($3, 'ready')",
        ids[5],
        ids[6],
        ids[7],
    )
    assert ids_of(await queue.claim("a", 100, 60)) == [ids[4], ids[5], ids[6]]
    assert await queue.pending_count() == 3


async def test_concurrent_claimers_never_overlap(migrated_db: str, db: Db) -> None:
    ids = await insert_spine(db, 3000)
    stores = [WorkQueue(await open_database(migrated_db, max_size=2)) for _ in range(4)]
    got: dict[str, list[uuid.UUID]] = {}
    try:

        async def claimer(i: int) -> None:
            owner = f"owner-{i}"
            mine = got.setdefault(owner, [])
            while True:
                batch = await stores[i].claim(owner, 50, 60)
                if not batch:
                    return
                mine.extend(ids_of(batch))

        async with trio.open_nursery() as nursery:
            for i in range(len(stores)):
                nursery.start_soon(claimer, i)
    finally:
        for s in stores:
            await s.database.aclose()
    everything = [oid for owned in got.values() for oid in owned]
    assert len(everything) == len(set(everything)), "a record was claimed twice"
    assert sorted(everything) == ids
    assert sum(1 for owned in got.values() if owned) >= 2, "no concurrency happened"
    owners = await db.fetch("SELECT outreach_id, owner FROM ct_actors.lease")
    assert {r["outreach_id"]: r["owner"] for r in owners} == {
        oid: owner for owner, owned in got.items() for oid in owned
    }


async def test_rows_locked_by_another_transaction_are_skipped(queue: WorkQueue, db: Db) -> None:
    ids = await insert_spine(db, 6)
    # Another claimer's transaction is mid-flight holding spine rows: SKIP LOCKED passes them
    # by instead of waiting.
    await db.execute("BEGIN")
    await db.execute(
        "SELECT outreach_id FROM outreach.outreach WHERE outreach_id = ANY($1) FOR UPDATE",
        ids[:3],
    )
    with trio.fail_after(5):
        assert ids_of(await queue.claim("a", 10, 60)) == ids[3:]
    await db.execute("ROLLBACK")
    assert ids_of(await queue.claim("a", 10, 60)) == ids[:3]


async def test_live_lease_blocks_other_owners_until_it_expires(queue: WorkQueue, db: Db) -> None:
    ids = await insert_spine(db, 3)
    assert ids_of(await queue.claim("a", 10, 60)) == ids
    assert await queue.claim("b", 10, 60) == []
    await db.execute(
        "UPDATE ct_actors.lease SET expires_at = now() - interval '1 second' "
        "WHERE outreach_id = ANY($1)",
        ids[:2],
    )
    reclaimed = await queue.claim("b", 10, 60)
    assert ids_of(reclaimed) == ids[:2]
    assert [r.attempts for r in reclaimed] == [2, 2]
    # "a" lost them: renewing reports only what it still holds.
    assert await queue.renew_leases("a", ids, 60) == [ids[2]]


async def test_a_renewal_after_a_deferral_leaves_the_deferred_record_alone(
    queue: WorkQueue, db: Db
) -> None:
    # The loader renews the records it has in flight, read a moment before the statement runs;
    # the writer may commit one of them as deferred in between. Renewing that lease would hide
    # the record from the claim and from a drain's count for a whole lease (found when a 200,000
    # domain `bench --soak` drained with five greylisted records pending).
    ids = await insert_spine(db, 2)
    assert ids_of(await queue.claim("a", 10, 600)) == ids
    await queue.write_outcomes("a", [deferred(ids[0], retry_after=0.2, reason="greylisted")])
    assert await queue.renew_leases("a", ids, 600) == [ids[1]]  # the live one only
    assert await queue.claim("a", 10, 600) == []  # not before its retry time
    await trio.sleep(0.3)
    assert ids_of(await queue.claim("a", 10, 600)) == [ids[0]]  # back, as the deferral said


async def test_short_lease_expires_by_itself(queue: WorkQueue, db: Db) -> None:
    ids = await insert_spine(db, 2)
    assert ids_of(await queue.claim("a", 10, 0.2)) == ids
    assert await queue.claim("b", 10, 60) == []
    await trio.sleep(0.3)
    assert ids_of(await queue.claim("b", 10, 60)) == ids


async def test_previous_incarnation_of_same_owner_reclaims_at_once(
    migrated_db: str, db: Db
) -> None:
    ids = await insert_spine(db, 3)
    first = WorkQueue(await open_database(migrated_db))
    try:
        assert ids_of(await first.claim("host-1", 10, 600)) == ids
    finally:
        await first.database.aclose()  # "crash": leases left behind, live for 10 more minutes
    second = WorkQueue(await open_database(migrated_db))
    try:
        assert await second.claim("host-2", 10, 600) == []
        again = await second.claim("host-1", 10, 600)
        assert ids_of(again) == ids and all(r.attempts == 2 for r in again)
        assert await second.claim("host-1", 10, 600) == []
    finally:
        await second.database.aclose()


async def test_not_before_defers_claims(queue: WorkQueue, db: Db) -> None:
    ids = await insert_spine(db, 3)
    assert len(await queue.claim("a", 10, 60)) == 3
    report = await queue.write_outcomes(
        "a", [deferred(ids[0], 3600, "resolver down"), deferred(ids[1], 0.3, "blocklisted")]
    )
    assert report.deferred == [ids[0], ids[1]] and report.written == []
    row = await db.fetchrow(
        "SELECT owner, not_before - now() AS wait, expires_at <= now() AS released, last_reason "
        "FROM ct_actors.lease WHERE outreach_id = $1",
        ids[0],
    )
    assert row["owner"] == "a" and row["released"] and row["last_reason"] == "resolver down"
    assert 3590 < row["wait"].total_seconds() <= 3600
    # Deferred records are pending, but nobody may claim them before not_before.
    assert await queue.claim("a", 10, 60) == []
    assert await queue.claim("b", 10, 60) == []
    await trio.sleep(0.4)
    assert ids_of(await queue.claim("b", 10, 60)) == [ids[1]]
    await db.execute(
        "UPDATE ct_actors.lease SET not_before = now() - interval '1 second' "
        "WHERE outreach_id = $1",
        ids[0],
    )
    again = await queue.claim("a", 10, 60)
    assert ids_of(again) == [ids[0]] and again[0].attempts == 2
    row = await db.fetchrow(
        "SELECT not_before, last_reason FROM ct_actors.lease WHERE outreach_id = $1", ids[0]
    )
    assert row["not_before"] is None and row["last_reason"] == "resolver down"
    assert await queue.pending_count() == 3


async def test_release_makes_work_claimable_at_once(queue: WorkQueue, db: Db) -> None:
    ids = await insert_spine(db, 6)
    assert len(await queue.claim("a", 6, 600)) == 6
    assert await queue.release("b", ids) == []  # not b's to release
    assert sorted(await queue.release("a", ids[:2])) == ids[:2]
    assert ids_of(await queue.claim("b", 10, 600)) == ids[:2]
    assert await queue.release("a", []) == []
    assert sorted(await queue.release("a")) == ids[2:]  # shutdown: everything of a's
    assert ids_of(await queue.claim("b", 10, 600)) == ids[2:]


async def test_cursor_wraps_around_to_pick_up_work_behind_it(queue: WorkQueue, db: Db) -> None:
    ids = await insert_spine(db, 10)
    assert ids_of(await queue.claim("a", 4, 600)) == ids[0:4]
    await queue.release("a", [ids[1]])
    assert ids_of(await queue.claim("a", 4, 600)) == ids[4:8]
    # Two left ahead of the cursor, then the wrap finds the released one behind it.
    assert ids_of(await queue.claim("a", 4, 600)) == [ids[1], ids[8], ids[9]]
    await queue.release("a", [ids[0], ids[5]])
    assert ids_of(await queue.claim("a", 4, 600)) == [ids[0], ids[5]]
    stats = queue.statistics()
    assert stats.claims == 4 and stats.rows_claimed == 13


async def test_claim_stays_fast_on_a_large_spine(queue: WorkQueue, db: Db) -> None:
    """~200k spine rows, the first 150k already finished (the worst case for a naive claim,
    which would re-walk them every time). Prints the plan and the latencies."""
    n, done = 200_000, 150_000
    await db.execute(
        "INSERT INTO outreach.outreach (outreach_id, sovereign_id, domain) "
        "SELECT ('00000000-0000-4000-8000-' || lpad(to_hex(g), 12, '0'))::uuid, "
        "gen_random_uuid(), 'd' || g || '.example' FROM generate_series(1, $1) g",
        n,
    )
    await db.execute(
        "INSERT INTO outreach.company_target (outreach_id, execution_status, imo_completed_at) "
        "SELECT outreach_id, 'ready', now() FROM outreach.outreach ORDER BY outreach_id LIMIT $1",
        done - 10_000,
    )
    await db.execute(
        "INSERT INTO outreach.company_target_errors (outreach_id, failure_code) "
        "SELECT outreach_id, 'CT-M-NO-MX' FROM outreach.outreach ORDER BY outreach_id "
        "OFFSET $1 LIMIT 10000",
        done - 10_000,
    )
    # 5000 deferred records scattered over the pending range (leases with a future not_before).
    await db.execute(
        "INSERT INTO ct_actors.lease (outreach_id, owner, expires_at, not_before) "
        "SELECT outreach_id, 'other', now(), now() + interval '1 hour' FROM outreach.outreach "
        "ORDER BY outreach_id OFFSET $1 LIMIT 5000",
        done + 20_000,
    )
    await db.execute("ANALYZE")
    from ct_actors.db import queries

    now = await db.fetchval("SELECT now()")
    cursor = await db.fetchval(
        "SELECT outreach_id FROM outreach.outreach ORDER BY outreach_id OFFSET $1 LIMIT 1",
        done + 10_000,
    )
    plans = {}
    for name, sql, args in (
        ("CLAIM_AFTER (cursor mid-way through the pending range)", queries.CLAIM_AFTER, [cursor]),
        ("CLAIM_FROM_START (150k finished records first)", queries.CLAIM_FROM_START, []),
    ):
        # EXPLAIN ANALYZE really claims (500 rows each, for owner 'explain').
        rows = await db.fetch(
            "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + sql, "explain", 500, 60.0, now, *args
        )
        plans[name] = "\n".join(r[0] for r in rows)
        print(f"\n{name}:\n{plans[name]}")
    timings: list[float] = []
    total = 0
    while True:
        started = time.perf_counter()
        batch = await queue.claim("bench", 1000, 600)
        timings.append(time.perf_counter() - started)
        if not batch:
            break
        total += len(batch)
    assert total == n - done - 1000 - 5000
    print(
        f"claim x1000 over {n} spine rows ({done} finished, 5000 deferred): "
        + ", ".join(f"{t * 1000:.0f}" for t in timings)
        + f" ms; {total / sum(timings):.0f} rows/s claimed"
    )
    for plan in plans.values():
        assert "Seq Scan" not in plan
    assert sorted(timings)[len(timings) // 2] < 0.5
