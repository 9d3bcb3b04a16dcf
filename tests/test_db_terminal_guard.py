"""sql/005: the database itself refuses a second terminal outcome for a record, whoever writes."""

from __future__ import annotations

import uuid

import asyncpg
import pytest
from conftest_db import Db, insert_spine

pytestmark = pytest.mark.db

READY = (
    "INSERT INTO outreach.company_target (outreach_id, execution_status, email_method, "
    "method_type, confidence_score, is_catchall, imo_completed_at) "
    "VALUES ($1, 'ready', '{first}.{last}@acme.test', 'first.last', 0.95, false, now())"
)
FAILED = (
    "INSERT INTO outreach.company_target (outreach_id, execution_status, imo_completed_at) "
    "VALUES ($1, 'failed', now())"
)
ERROR = (
    "INSERT INTO outreach.company_target_errors (outreach_id, pipeline_stage, failure_code, "
    "blocking_reason, severity, imo_stage, retry_allowed) "
    "VALUES ($1, 'mx', 'CT-M-NO-MX', 'no MX records published', 'blocking', 'M', false)"
)


async def one_record(db: Db) -> uuid.UUID:
    (oid,) = await insert_spine(db, 1)
    return oid


async def test_a_fail_row_for_a_passed_record_is_refused(db: Db) -> None:
    oid = await one_record(db)
    await db.execute(READY, oid)
    with pytest.raises(asyncpg.UniqueViolationError, match="already PASSed"):
        await db.execute(ERROR, oid)


async def test_a_pass_for_a_failed_record_is_refused(db: Db) -> None:
    oid = await one_record(db)
    await db.execute(FAILED, oid)
    await db.execute(ERROR, oid)
    with pytest.raises(asyncpg.UniqueViolationError, match="already has a terminal outcome"):
        await db.execute(
            "UPDATE outreach.company_target SET execution_status = 'ready' WHERE outreach_id = $1",
            oid,
        )


async def test_a_pending_row_with_an_open_error_cannot_become_ready(db: Db) -> None:
    oid = await one_record(db)
    await db.execute(
        "INSERT INTO outreach.company_target (outreach_id, execution_status) "
        "VALUES ($1, 'pending')",
        oid,
    )
    await db.execute(ERROR, oid)
    with pytest.raises(asyncpg.UniqueViolationError, match="already FAILed"):
        await db.execute(
            "UPDATE outreach.company_target SET execution_status = 'ready' WHERE outreach_id = $1",
            oid,
        )


async def test_a_terminal_pass_is_not_rewritten(db: Db) -> None:
    oid = await one_record(db)
    await db.execute(READY, oid)
    with pytest.raises(asyncpg.UniqueViolationError, match="not rewritten"):
        await db.execute(
            "UPDATE outreach.company_target SET method_type = 'info' WHERE outreach_id = $1", oid
        )
    # Bookkeeping columns may change (the daemon's own upsert never touches terminal rows).
    await db.execute(
        "UPDATE outreach.company_target SET updated_at = now() WHERE outreach_id = $1", oid
    )


async def test_resolving_an_error_is_allowed(db: Db) -> None:
    oid = await one_record(db)
    await db.execute(FAILED, oid)
    await db.execute(ERROR, oid)
    await db.execute(
        "UPDATE outreach.company_target_errors SET resolved_at = now() WHERE outreach_id = $1",
        oid,
    )
    # Re-opening it is fine too: the record is still 'failed', not 'ready'.
    await db.execute(
        "UPDATE outreach.company_target_errors SET resolved_at = NULL WHERE outreach_id = $1",
        oid,
    )


async def test_operator_override_in_one_transaction(db: Db) -> None:
    oid = await one_record(db)
    await db.execute(READY, oid)
    await db.execute(
        "BEGIN; SET LOCAL ct_actors.allow_terminal_rewrite = 'on'; "
        f"UPDATE outreach.company_target SET method_type = 'info' WHERE outreach_id = '{oid}'; "
        "COMMIT;"
    )
    rows = await db.fetch(
        "SELECT method_type FROM outreach.company_target WHERE outreach_id = $1", oid
    )
    assert [r["method_type"] for r in rows] == ["info"]
    with pytest.raises(asyncpg.UniqueViolationError):  # the override ended with its transaction
        await db.execute(
            "UPDATE outreach.company_target SET method_type = 'first' WHERE outreach_id = $1",
            oid,
        )
