"""Issue 14 against a real PostgreSQL: the write fence (an outcome commits only while its claim
is still the writer's live lease, checked inside the write statement) and the outcome log
(committed PASS/FAIL outcomes whose canonical line is owed; logged on start if a process died
between commit and log)."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import pytest
import trio
from conftest_db import Db, deferred, failed, insert_spine, passed
from structlog.testing import capture_logs

from ct_actors.actors.credits import WorkCredits
from ct_actors.actors.writer import WriterActor, WriterSettings
from ct_actors.db import WorkQueue, open_database
from ct_actors.db.errors import DatabaseUnavailable
from ct_actors.outcome import Failed, FailureCode, Outcome, Passed

pytestmark = [pytest.mark.db, pytest.mark.timeout(60)]


async def lease(db: Db, oid: uuid.UUID) -> Any:
    return await db.fetchrow(
        "SELECT owner, attempts, expires_at > now() AS live, not_before FROM ct_actors.lease "
        "WHERE outreach_id = $1",
        oid,
    )


async def written(db: Db, oid: uuid.UUID) -> tuple[int, int]:
    ct = await db.fetchval(
        "SELECT count(*) FROM outreach.company_target WHERE outreach_id = $1", oid
    )
    errors = await db.fetchval(
        "SELECT count(*) FROM outreach.company_target_errors WHERE outreach_id = $1", oid
    )
    return int(ct), int(errors)


async def expire(db: Db, oid: uuid.UUID) -> None:
    await db.execute(
        "UPDATE ct_actors.lease SET expires_at = now() - interval '1 second' "
        "WHERE outreach_id = $1",
        oid,
    )


async def test_a_write_after_another_daemon_took_the_lease_over_writes_nothing(
    queue: WorkQueue, db: Db
) -> None:
    [oid, other] = await insert_spine(db, 2)
    [mine, mine2] = await queue.claim("a", 2, 60)
    assert (mine.attempts, mine2.attempts) == (1, 1)
    # Daemon a stalls past its lease; daemon b claims the record and holds it.
    await expire(db, oid)
    [theirs] = await queue.claim("b", 10, 60)
    assert (theirs.outreach_id, theirs.attempts) == (oid, 2)

    report = await queue.write_outcomes(
        "a", [failed(oid), passed(other)], claims={oid: 1, other: 1}
    )
    assert report.fenced == [oid] and report.written == [other]
    assert await written(db, oid) == (0, 0)
    row = await lease(db, oid)
    assert (row["owner"], row["attempts"], row["live"]) == ("b", 2, True)  # left alone
    # A deferral from the late writer cannot release b's lease either.
    report = await queue.write_outcomes("a", [deferred(oid, 600)], claims={oid: 1})
    assert report.fenced == [oid]
    row = await lease(db, oid)
    assert (row["owner"], row["live"], row["not_before"]) == ("b", True, None)
    assert queue.statistics().rows_fenced == 2
    # b's own write, with b's claim, goes through.
    report = await queue.write_outcomes("b", [passed(oid)], claims={oid: 2})
    assert report.written == [oid]
    assert await written(db, oid) == (1, 0)


async def test_an_expired_lease_nobody_took_is_fenced_too(queue: WorkQueue, db: Db) -> None:
    [oid] = await insert_spine(db, 1)
    await queue.claim("a", 1, 60)
    await expire(db, oid)
    report = await queue.write_outcomes("a", [passed(oid)], claims={oid: 1})
    assert report.fenced == [oid]
    assert await written(db, oid) == (0, 0)
    # A write without a claim number (`ct-actors once`) is not fenced.
    report = await queue.write_outcomes("a", [passed(oid)])
    assert report.written == [oid]


async def test_a_restart_under_the_same_owner_fences_the_dead_incarnation(
    queue: WorkQueue, db: Db, migrated_db: str
) -> None:
    [oid] = await insert_spine(db, 1)
    [first] = await queue.claim("prober-1", 1, 300)
    # The process is SIGKILLed; its successor (same daemon.owner) reclaims at once.
    successor = WorkQueue(await open_database(migrated_db))
    try:
        [again] = await successor.claim("prober-1", 1, 300)
        assert (again.outreach_id, again.attempts) == (oid, first.attempts + 1)
        # The dead incarnation's write arrives late: same owner name, but not its claim.
        report = await queue.write_outcomes("prober-1", [failed(oid)], claims={oid: 1})
        assert report.fenced == [oid]
        assert await written(db, oid) == (0, 0)
        report = await successor.write_outcomes("prober-1", [passed(oid)], claims={oid: 2})
        assert report.written == [oid]
    finally:
        await successor.database.aclose()


async def test_a_write_blocked_on_the_lease_lock_commits_nothing_after_a_takeover(
    queue: WorkQueue, db: Db
) -> None:
    """The issue's late write: a's statement waits on a lock while b takes the lease over.
    The fence waits for b's claim to commit, then judges the row as b left it."""
    [oid] = await insert_spine(db, 1)
    await queue.claim("a", 1, 60)
    await db.execute("BEGIN")
    # b's claim of the record, in progress (the claim's ON CONFLICT DO UPDATE of the lease).
    await db.execute(
        "UPDATE ct_actors.lease SET owner = 'b', attempts = attempts + 1, "
        "claimed_at = now(), expires_at = now() + interval '60 seconds' WHERE outreach_id = $1",
        oid,
    )
    result: dict[str, Any] = {}

    async def late_write() -> None:
        result["report"] = await queue.write_outcomes("a", [passed(oid)], claims={oid: 1})

    async with trio.open_nursery() as nursery:
        nursery.start_soon(late_write)
        await trio.sleep(1.0)
        assert "report" not in result, "the write did not wait for the lease row's lock"
        await db.execute("COMMIT")
    assert result["report"].fenced == [oid]
    assert await written(db, oid) == (0, 0)
    row = await lease(db, oid)
    assert (row["owner"], row["attempts"], row["live"]) == ("b", 2, True)


async def test_while_a_write_holds_the_fence_nobody_can_take_the_lease(
    queue: WorkQueue, db: Db
) -> None:
    """The other order: a's statement passed the fence (it holds the lease row's lock) and
    then waits; its lease lapses by the clock meanwhile. b's claim of the record waits for a's
    commit, so b cannot probe before a's outcome is in, and b's write is then a no-op."""
    [oid] = await insert_spine(db, 1)
    await queue.claim("a", 1, 1.0)
    await db.execute("BEGIN")
    await db.execute(
        "SELECT 1 FROM ct_actors.lease WHERE outreach_id = $1 FOR NO KEY UPDATE", oid
    )
    await trio.sleep(1.5)  # a's lease has expired by the clock; its row is still locked
    claimed: dict[str, Any] = {}

    async def claim_b() -> None:
        claimed["b"] = await queue.claim("b", 10, 60)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(claim_b)
        await trio.sleep(1.0)
        assert "b" not in claimed, "the claim did not wait for the lease row's lock"
        # a's write finishes: terminal row written, lease deleted, committed.
        await db.execute(
            "INSERT INTO outreach.company_target (outreach_id, execution_status) "
            "VALUES ($1, 'ready')",
            oid,
        )
        await db.execute("DELETE FROM ct_actors.lease WHERE outreach_id = $1", oid)
        await db.execute("COMMIT")
    # Whatever b's claim returned, its write cannot replace a's outcome.
    for record in claimed["b"]:
        report = await queue.write_outcomes(
            "b", [failed(record.outreach_id)], claims={record.outreach_id: record.attempts}
        )
        assert report.written == []
    assert await written(db, oid) == (1, 0)


# ─── the outcome log ─────────────────────────────────────────────────────────────────────────


async def test_written_outcomes_are_noted_until_logged(queue: WorkQueue, db: Db) -> None:
    ids = await insert_spine(db, 4)
    report = await queue.write_outcomes(
        "a",
        [passed(ids[0]), failed(ids[1]), deferred(ids[2]), failed(ids[3], FailureCode.NOT_FOUND)],
    )
    assert sorted(report.written) == sorted([ids[0], ids[1], ids[3]])
    noted = await db.fetch("SELECT outreach_id, owner FROM ct_actors.outcome_log")
    assert {(r["outreach_id"], r["owner"]) for r in noted} == {
        (ids[0], "a"),
        (ids[1], "a"),
        (ids[3], "a"),
    }
    # Another owner's acknowledgement does not drop a's notes.
    await queue.mark_logged("b", ids)
    assert await db.fetchval("SELECT count(*) FROM ct_actors.outcome_log") == 3
    await queue.mark_logged("a", ids[:2])
    assert await db.fetchval("SELECT outreach_id FROM ct_actors.outcome_log") == ids[3]
    # A re-sent batch (already terminal) notes nothing new.
    await queue.mark_logged("a", ids)
    await queue.write_outcomes("a", [passed(ids[0])])
    assert await db.fetchval("SELECT count(*) FROM ct_actors.outcome_log") == 0


async def test_a_restarted_daemon_logs_what_its_previous_incarnation_never_logged(
    queue: WorkQueue, db: Db, migrated_db: str
) -> None:
    ids = await insert_spine(db, 5)
    visits = [{"host": "mx.x.example", "outcome": "concluded"}]
    oks = [passed(ids[0], visits=visits), failed(ids[1], visits=visits)]
    claimed = await queue.claim("prober-1", 2, 60)
    claims = {c.outreach_id: c.attempts for c in claimed}
    await queue.write_outcomes("prober-1", oks, claims=claims)
    # Another daemon's notes, fresh: its live writer is about to drop them; not ours to log.
    await queue.write_outcomes("prober-2", [passed(ids[2])])
    # ...and an old one, from a daemon that died long ago.
    await queue.write_outcomes("prober-3", [failed(ids[3], FailureCode.NO_DOMAIN)])
    await db.execute(
        "UPDATE ct_actors.outcome_log SET committed_at = now() - interval '1 hour' "
        "WHERE owner = 'prober-3'"
    )
    # prober-1 is SIGKILLed before logging; it starts again under the same name.
    successor = WorkQueue(await open_database(migrated_db))
    try:
        writer = WriterActor(
            trio.open_memory_channel[Outcome](0)[1],
            successor,
            owner="prober-1",
            credits=WorkCredits(8),
            settings=WriterSettings(recover_after=300.0),
            transient_errors=(DatabaseUnavailable,),
        )
        with capture_logs() as logs:
            await writer._recover()
    finally:
        await successor.database.aclose()
    lines = {e["outreach_id"]: e for e in logs if e["event"] == "outcome"}
    assert set(lines) == {str(ids[0]), str(ids[1]), str(ids[3])}
    first = lines[str(ids[0])]
    assert (first["outcome"], first["method_type"], first["confidence"]) == (
        "PASS",
        "first.last",
        0.7,
    )
    assert (first["recovered"], first["committed_by"], first["domain"]) == (
        True,
        "prober-1",
        "x.example",
    )
    assert first["smtp"] == ["mx.x.example:concluded"]
    assert (lines[str(ids[1])]["outcome"], lines[str(ids[1])]["code"]) == ("FAIL", "CT-M-NO-MX")
    assert lines[str(ids[3])]["committed_by"] == "prober-3"
    [summary] = [e for e in logs if e["event"] == "outcome_log_recovered"]
    assert summary["records"] == 3 and summary["gone"] == 0
    # Recovered lines are not this run's outcomes.
    assert writer.statistics().rows == 0 and writer.statistics().recovered_lines == 3
    left = await db.fetch("SELECT outreach_id FROM ct_actors.outcome_log")
    assert [r["outreach_id"] for r in left] == [ids[2]]


async def test_rebuilt_outcomes_match_what_was_committed(queue: WorkQueue, db: Db) -> None:
    ids = await insert_spine(db, 2)
    await queue.write_outcomes("x", [passed(ids[0]), failed(ids[1], FailureCode.NO_PATTERN)])
    [a, b] = sorted(await queue.unlogged("y", stale_after=0.0), key=lambda u: u.outreach_id)
    assert a.outcome is not None and isinstance(a.outcome.result, Passed)
    assert a.outcome.result.confidence == Decimal("0.7000")
    assert a.outcome.result.email_method == "{first}.{last}@x.example"
    assert b.outcome is not None and isinstance(b.outcome.result, Failed)
    assert b.outcome.result.code is FailureCode.NO_PATTERN
    assert b.outcome.result.blocking_reason == "because CT-M-NO-PATTERN"
    await queue.forget_unlogged([a.outreach_id, b.outreach_id])
    assert await queue.unlogged("y", stale_after=0.0) == []
