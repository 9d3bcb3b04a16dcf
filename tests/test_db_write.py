"""Writing outcomes: one statement per batch, idempotent, terminal rows never overwritten."""

from __future__ import annotations

import json
import time
import uuid
from decimal import Decimal
from typing import Any

import pytest
import trio
from conftest_db import Db, deferred, failed, insert_spine, passed

from ct_actors.db import Database, QueryError, WorkQueue, open_database
from ct_actors.outcome import Failed, FailureCode, Outcome, Passed

pytestmark = pytest.mark.db

SNAPSHOT_CT = (
    "SELECT outreach_id, execution_status, email_method, method_type, confidence_score, "
    "is_catchall, imo_completed_at, domain_normalised, mx_host, evidence::text, created_at, "
    "updated_at FROM outreach.company_target ORDER BY outreach_id"
)
SNAPSHOT_ERRORS = (
    "SELECT error_id, outreach_id, pipeline_stage, failure_code, blocking_reason, severity, "
    "imo_stage, retry_allowed, created_at, resolved_at, evidence::text "
    "FROM outreach.company_target_errors ORDER BY error_id"
)


async def snapshot(db: Db) -> list[list[tuple[Any, ...]]]:
    out = []
    for sql in (SNAPSHOT_CT, SNAPSHOT_ERRORS, "SELECT outreach_id FROM ct_actors.lease"):
        out.append([tuple(r) for r in await db.fetch(sql)])
    return out


MIDDLE_CODES = [
    FailureCode.NO_MX,
    FailureCode.NO_PATTERN,
    FailureCode.SMTP_FAIL,
    FailureCode.VERIFY_FAIL,
    FailureCode.NO_DOMAIN,
]


async def test_mixed_batch_of_thousands_in_one_round_trip(
    database: Database, queue: WorkQueue, db: Db
) -> None:
    n = 4000
    ids = await insert_spine(db, n)
    claimed = await queue.claim("w", n, 600)
    assert len(claimed) == n
    outcomes: list[Outcome] = []
    expect: dict[str, set[uuid.UUID]] = {"pass": set(), "fail": set(), "defer": set()}
    for i, oid in enumerate(ids):
        if i % 10 < 6:
            outcomes.append(passed(oid, f"d{i}.example", mx=[f"mx{i}"], replies=["250 ok"]))
            expect["pass"].add(oid)
        elif i % 10 < 9:
            outcomes.append(failed(oid, MIDDLE_CODES[i % len(MIDDLE_CODES)], tried=[f"mx{i}"]))
            expect["fail"].add(oid)
        else:
            outcomes.append(deferred(oid, 600, "resolver down"))
            expect["defer"].add(oid)
    not_found = [uuid.uuid4() for _ in range(200)]
    outcomes += [failed(oid, FailureCode.NOT_FOUND) for oid in not_found]

    before = database.statistics()
    started = time.perf_counter()
    report = await queue.write_outcomes("w", outcomes)
    elapsed = time.perf_counter() - started
    after = database.statistics()
    print(
        f"\nwrite_outcomes: {len(outcomes)} outcomes in {elapsed * 1000:.0f} ms "
        f"= {len(outcomes) / elapsed:.0f} rows/s (one statement)"
    )
    assert after.round_trips - before.round_trips == 1
    assert after.crossings - before.crossings == 1

    assert set(report.written) == expect["pass"] | expect["fail"] | set(not_found)
    assert set(report.deferred) == expect["defer"]
    assert report.already_terminal == [] and report.not_in_spine == []
    # Report lists keep the caller's order.
    assert report.written == [o.outreach_id for o in outcomes if o.outreach_id in report.written]

    counts = {
        r["execution_status"]: r["n"]
        for r in await db.fetch(
            "SELECT execution_status, count(*) AS n FROM outreach.company_target GROUP BY 1"
        )
    }
    assert counts == {"ready": len(expect["pass"]), "failed": len(expect["fail"])}
    errors = await db.fetchval("SELECT count(*) FROM outreach.company_target_errors")
    assert errors == len(expect["fail"]) + len(not_found)
    leases = {r[0] for r in await db.fetch("SELECT outreach_id FROM ct_actors.lease")}
    assert leases == expect["defer"]  # leases of written records are gone
    assert await queue.pending_count() == len(expect["defer"])

    # Idempotent: the same batch again changes nothing and says so.
    state = await snapshot(db)
    again = await queue.write_outcomes("w", outcomes)
    assert again.written == []
    assert set(again.already_terminal) == expect["pass"] | expect["fail"] | set(not_found)
    assert set(again.deferred) == expect["defer"]
    assert (await snapshot(db))[:2] == state[:2]


async def test_write_throughput_batches(queue: WorkQueue, db: Db) -> None:
    """Steady-state shape of the daemon: batches of 500 PASS/FAIL into a table that already
    holds rows. Prints rows/s."""
    ids = await insert_spine(db, 20_000)
    await queue.claim("w", 20_000, 600)
    elapsed = 0.0
    for start in range(0, len(ids), 500):
        chunk = ids[start : start + 500]
        batch = [
            passed(oid, mx=["mx1", "mx2"]) if i % 5 else failed(oid, tried=["mx1"])
            for i, oid in enumerate(chunk)
        ]
        started = time.perf_counter()
        report = await queue.write_outcomes("w", batch)
        elapsed += time.perf_counter() - started
        assert len(report.written) == len(chunk)
    print(f"\nwrite_outcomes x500: {len(ids) / elapsed:.0f} rows/s over {len(ids)} rows")
    stats = queue.statistics()
    assert stats.rows_written == len(ids) and stats.writes == len(ids) // 500


async def test_pass_row_fields(queue: WorkQueue, db: Db) -> None:
    [oid] = await insert_spine(db, 1)
    outcome = Outcome(
        oid,
        "acme.example",
        Passed(
            "{first}.{last}@acme.example",
            "first.last",
            Decimal("0.85"),
            True,
            {"mx": ["mx1.acme.example"], "normalised": ["lowercase"]},
        ),
        mx_host="mx1.acme.example",
    )
    assert (await queue.write_outcomes("w", [outcome])).written == [oid]
    row = await db.fetchrow(
        "SELECT execution_status, email_method, method_type, confidence_score, is_catchall, "
        "imo_completed_at > now() - interval '1 minute' AS completed, domain_normalised, "
        "mx_host, evidence FROM outreach.company_target WHERE outreach_id = $1",
        oid,
    )
    assert row["execution_status"] == "ready"
    assert row["email_method"] == "{first}.{last}@acme.example"
    assert row["method_type"] == "first.last"
    assert row["confidence_score"] == Decimal("0.8500")
    assert row["is_catchall"] is True and row["completed"] is True
    assert (row["domain_normalised"], row["mx_host"]) == ("acme.example", "mx1.acme.example")
    assert json.loads(row["evidence"]) == {"mx": ["mx1.acme.example"], "normalised": ["lowercase"]}
    assert await queue.terminal_status(oid) == "ready"
    assert await db.fetchval("SELECT count(*) FROM outreach.company_target_errors") == 0


async def test_fail_writes_error_row_and_company_target_together(queue: WorkQueue, db: Db) -> None:
    [oid] = await insert_spine(db, 1)
    outcome = Outcome(
        oid,
        "acme.example",
        Failed(FailureCode.NO_PATTERN, "all patterns rejected", "warning", {"tried": ["a", "b"]}),
        mx_host="mx1.acme.example",
    )
    assert (await queue.write_outcomes("w", [outcome])).written == [oid]
    err = await db.fetchrow(
        "SELECT error_id, pipeline_stage, failure_code, blocking_reason, severity, imo_stage, "
        "retry_allowed, resolved_at, evidence FROM outreach.company_target_errors "
        "WHERE outreach_id = $1",
        oid,
    )
    assert isinstance(err["error_id"], int)
    assert (err["pipeline_stage"], err["failure_code"], err["imo_stage"]) == (
        "middle",
        "CT-M-NO-PATTERN",
        "M",
    )
    assert (err["blocking_reason"], err["severity"]) == ("all patterns rejected", "warning")
    assert err["retry_allowed"] is False and err["resolved_at"] is None
    assert json.loads(err["evidence"]) == {"tried": ["a", "b"]}
    ct = await db.fetchrow(
        "SELECT execution_status, imo_completed_at IS NOT NULL AS completed, email_method, "
        "domain_normalised, mx_host FROM outreach.company_target WHERE outreach_id = $1",
        oid,
    )
    assert tuple(ct) == ("failed", True, None, "acme.example", "mx1.acme.example")
    assert await queue.terminal_status(oid) == "failed"
    # An input-stage code gets imo_stage I.
    [oid2] = await insert_spine(db, 1)
    await queue.write_outcomes("w", [failed(oid2, FailureCode.NO_DOMAIN)])
    assert tuple(
        await db.fetchrow(
            "SELECT imo_stage, pipeline_stage FROM outreach.company_target_errors "
            "WHERE outreach_id = $1",
            oid2,
        )
    ) == ("I", "input")


async def test_batch_is_one_transaction(queue: WorkQueue, db: Db) -> None:
    ids = await insert_spine(db, 10)
    await queue.claim("w", 10, 600)
    # Make the error insert of one record blow up, after its company_target row (and the
    # other records' rows) were already written by the same statement.
    await db.execute(
        f"""
        CREATE FUNCTION public.boom() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            IF NEW.outreach_id = '{ids[7]}' THEN RAISE EXCEPTION 'boom'; END IF;
            RETURN NEW;
        END $$;
        CREATE TRIGGER boom BEFORE INSERT ON outreach.company_target_errors
            FOR EACH ROW EXECUTE FUNCTION public.boom();
        """
    )
    state = await snapshot(db)
    batch = [passed(oid) for oid in ids[:5]] + [failed(oid) for oid in ids[5:]]
    with pytest.raises(QueryError, match="boom"):
        await queue.write_outcomes("w", batch)
    assert await snapshot(db) == state  # nothing written, leases intact
    await db.execute("DROP TRIGGER boom ON outreach.company_target_errors")
    assert len((await queue.write_outcomes("w", batch)).written) == 10


async def test_not_found_writes_only_an_error_row(queue: WorkQueue, db: Db) -> None:
    await insert_spine(db, 2)
    ghost = uuid.uuid4()
    report = await queue.write_outcomes("w", [failed(ghost, FailureCode.NOT_FOUND)])
    assert report.written == [ghost]
    assert await db.fetchval("SELECT count(*) FROM outreach.company_target") == 0
    row = await db.fetchrow(
        "SELECT failure_code, imo_stage FROM outreach.company_target_errors WHERE outreach_id = $1",
        ghost,
    )
    assert tuple(row) == ("CT-I-NOT-FOUND", "I")
    assert await queue.terminal_status(ghost) == "failed"
    again = await queue.write_outcomes("w", [failed(ghost, FailureCode.NOT_FOUND)])
    assert again.already_terminal == [ghost]
    assert await db.fetchval("SELECT count(*) FROM outreach.company_target_errors") == 1


async def test_already_processed_writes_nothing(queue: WorkQueue, db: Db) -> None:
    ids = await insert_spine(db, 2)
    await queue.claim("w", 2, 600)
    report = await queue.write_outcomes(
        "w", [failed(oid, FailureCode.ALREADY_PROCESSED) for oid in ids]
    )
    assert report.already_terminal == ids and report.written == []
    assert await db.fetchval("SELECT count(*) FROM outreach.company_target") == 0
    assert await db.fetchval("SELECT count(*) FROM outreach.company_target_errors") == 0
    assert await db.fetchval("SELECT count(*) FROM ct_actors.lease") == 0


async def test_terminal_rows_are_never_overwritten(queue: WorkQueue, db: Db) -> None:
    ids = await insert_spine(db, 6)
    await db.execute(
        "INSERT INTO outreach.company_target (outreach_id, execution_status, email_method) "
        "VALUES ($1, 'ready', 'theirs'), ($2, 'failed', NULL), ($3, 'pending', 'stale'), "
        "($4, 'blocked', NULL)",
        *ids[:4],
    )
    await db.execute(
        "ALTER TABLE outreach.company_target ALTER COLUMN execution_status DROP NOT NULL;"
        f"INSERT INTO outreach.company_target (outreach_id, execution_status) "
        f"VALUES ('{ids[4]}', NULL)"
    )
    report = await queue.write_outcomes(
        "w", [failed(ids[0]), passed(ids[1]), passed(ids[2]), failed(ids[3]), passed(ids[4])]
    )
    assert report.already_terminal == ids[:2]
    assert report.written == ids[2:5]
    rows = {
        r["outreach_id"]: (r["execution_status"], r["email_method"])
        for r in await db.fetch(
            "SELECT outreach_id, execution_status, email_method FROM outreach.company_target"
        )
    }
    assert rows[ids[0]] == ("ready", "theirs")
    assert rows[ids[1]] == ("failed", None)
    assert rows[ids[2]] == ("ready", "{first}.{last}@x.example")
    assert rows[ids[3]] == ("failed", None)
    assert rows[ids[4]][0] == "ready"
    # The FAIL for the PASS record did not leave an error row behind.
    errors = [
        r[0] for r in await db.fetch("SELECT outreach_id FROM outreach.company_target_errors")
    ]
    assert errors == [ids[3]]


async def test_vanished_spine_rows_do_not_fail_the_batch(queue: WorkQueue, db: Db) -> None:
    ids = await insert_spine(db, 3)
    await queue.claim("w", 3, 600)
    await db.execute("DELETE FROM outreach.outreach WHERE outreach_id = $1", ids[1])
    report = await queue.write_outcomes("w", [passed(ids[0]), failed(ids[1]), passed(ids[2])])
    assert report.written == [ids[0], ids[2]] and report.not_in_spine == [ids[1]]
    assert await db.fetchval("SELECT count(*) FROM outreach.company_target_errors") == 0
    assert await db.fetchval("SELECT count(*) FROM ct_actors.lease") == 0


async def test_hostile_text_is_stored_not_fatal(queue: WorkQueue, db: Db) -> None:
    ids = await insert_spine(db, 2)
    nasty = "550 \x00no\udcff such user \u2603"
    outcomes = [
        Outcome(
            ids[0],
            "x.example",
            Failed(
                FailureCode.SMTP_FAIL,
                nasty,
                evidence={
                    "reply": nasty,
                    nasty: float("nan"),
                    "raw": b"\x00\xff",
                    "n": Decimal("1.5"),
                    "nested": {"set": {1}},
                },
            ),
            mx_host="mx\x00.x.example",
        ),
        passed(ids[1], reply=nasty),
    ]
    assert len((await queue.write_outcomes("w", outcomes)).written) == 2
    row = await db.fetchrow(
        "SELECT blocking_reason, evidence FROM outreach.company_target_errors "
        "WHERE outreach_id = $1",
        ids[0],
    )
    assert "no" in row["blocking_reason"] and "\x00" not in row["blocking_reason"]
    evidence = json.loads(row["evidence"])
    assert evidence["n"] == "1.5" and evidence["nested"] == {"set": [1]}


async def test_invalid_batches_are_refused_before_writing(queue: WorkQueue, db: Db) -> None:
    ids = await insert_spine(db, 2)
    with pytest.raises(ValueError, match="more than once"):
        await queue.write_outcomes("w", [passed(ids[0]), failed(ids[0])])
    too_sure = Outcome(ids[1], "x", Passed("m", "first", Decimal("1.5"), False))
    with pytest.raises(ValueError, match=r"outside \[0, 1\]"):
        await queue.write_outcomes("w", [passed(ids[0]), too_sure])
    assert await db.fetchval("SELECT count(*) FROM outreach.company_target") == 0
    assert (await queue.write_outcomes("w", [])).written == []


async def test_deferral_does_not_steal_a_live_lease(queue: WorkQueue, db: Db) -> None:
    ids = await insert_spine(db, 2)
    await queue.claim("b", 2, 600)
    report = await queue.write_outcomes("a", [deferred(ids[0], 60)])
    assert report.deferred == [ids[0]]
    row = await db.fetchrow(
        "SELECT owner, not_before FROM ct_actors.lease WHERE outreach_id = $1", ids[0]
    )
    assert row["owner"] == "b" and row["not_before"] is None
    # A deferral for a record nobody holds creates the lease that carries not_before.
    await queue.release("b")
    await db.execute("DELETE FROM ct_actors.lease")
    await queue.write_outcomes("a", [deferred(ids[1], 60, "blocklisted")])
    row = await db.fetchrow(
        "SELECT owner, attempts, last_reason, not_before > now() AS later FROM ct_actors.lease"
    )
    assert tuple(row) == ("a", 0, "blocklisted", True)


async def test_racing_writers_agree_on_one_outcome(migrated_db: str, db: Db) -> None:
    """Two daemons that both processed the same records (a lease expired mid-probe) write
    different outcomes at the same time: each record ends with exactly one consistent outcome
    and exactly one writer is told it wrote it."""
    ids = await insert_spine(db, 400)
    stores = [WorkQueue(await open_database(migrated_db)) for _ in range(2)]
    reports = []
    try:

        async def write(i: int) -> None:
            make = passed if i == 0 else failed
            # Different batch splits, so the two statements interleave on many rows.
            size = 50 if i == 0 else 70
            for start in range(0, len(ids), size):
                chunk = ids[start : start + size] if i == 0 else ids[::-1][start : start + size]
                reports.append(await stores[i].write_outcomes(f"w{i}", [make(o) for o in chunk]))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(write, 0)
            nursery.start_soon(write, 1)
    finally:
        for s in stores:
            await s.database.aclose()
    written = [oid for r in reports for oid in r.written]
    assert sorted(written) == ids  # each record written by exactly one writer
    rows = {
        r["outreach_id"]: (r["execution_status"], r["errors"])
        for r in await db.fetch(
            "SELECT ct.outreach_id, ct.execution_status, "
            "(SELECT count(*) FROM outreach.company_target_errors e "
            " WHERE e.outreach_id = ct.outreach_id) AS errors "
            "FROM outreach.company_target ct"
        )
    }
    assert set(rows) == set(ids)
    assert set(rows.values()) <= {("ready", 0), ("failed", 1)}


async def test_monitoring_counts(queue: WorkQueue, db: Db) -> None:
    ids = await insert_spine(db, 6)
    await queue.write_outcomes(
        "w",
        [
            passed(ids[0]),
            passed(ids[1]),
            failed(ids[2], FailureCode.NO_MX),
            failed(uuid.uuid4(), FailureCode.NOT_FOUND),
        ],
    )
    assert await queue.counts_by_outcome() == {"PASS": 2, "CT-M-NO-MX": 1, "CT-I-NOT-FOUND": 1}
    assert await queue.pending_count() == 3
    spine = await queue.fetch_spine(ids[3])
    assert spine is not None and (spine.outreach_id, spine.domain) == (ids[3], "d3.example")
    assert await queue.fetch_spine(uuid.uuid4()) is None
    assert await queue.terminal_status(ids[3]) is None
