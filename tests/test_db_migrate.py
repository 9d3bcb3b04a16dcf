"""Migration runner and schema: idempotence, upgrading a production-like database, tampering,
concurrency, and the refusal paths that must explain themselves."""

from __future__ import annotations

import shutil
import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest_db import Db

from ct_actors.db import SchemaError, WorkQueue, open_database, verify_schema
from ct_actors.db.migrate import SQL_DIR, load_migrations, migrate
from ct_actors.outcome import Failed, FailureCode, Outcome, Passed

pytestmark = pytest.mark.db

ALL_VERSIONS = [m.version for m in load_migrations()]


async def _columns(db: Db, table: str) -> dict[str, tuple[str, bool]]:
    schema, name = table.split(".")
    rows = await db.fetch(
        "SELECT column_name, data_type, is_nullable = 'YES' AS nullable "
        "FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2",
        schema,
        name,
    )
    return {r["column_name"]: (r["data_type"], r["nullable"]) for r in rows}


async def test_sql_dir_is_found_through_the_package() -> None:
    assert SQL_DIR.is_dir()
    assert ALL_VERSIONS[:3] == ["001_outreach", "002_ct_actors", "003_tool_usage"]


async def test_migrate_fresh_then_noop(aio_loop: Any, fresh_db: str) -> None:
    db = await Db.connect(fresh_db)
    try:
        assert await db.run(migrate) == ALL_VERSIONS
        assert await db.run(migrate) == []
        recorded = await db.fetch(
            "SELECT version, checksum FROM ct_actors.schema_migrations ORDER BY version"
        )
        assert [r["version"] for r in recorded] == ALL_VERSIONS
        assert all(len(r["checksum"]) == 64 for r in recorded)
        ct = await _columns(db, "outreach.company_target")
        for col in ("domain_normalised", "mx_host", "evidence", "confidence_score", "is_catchall"):
            assert col in ct
        assert ct["company_unique_id"][1] is True  # nullable
        assert (await _columns(db, "outreach.company_target_errors"))["error_id"][0] == "bigint"
        # Applying the files again by hand (as if the bookkeeping were lost) is harmless too.
        for mig in load_migrations():
            await db.execute(mig.sql)
        await db.run(verify_schema)
    finally:
        await db.aclose()


async def test_database_migrate_wrapper(aio_loop: Any, fresh_db: str) -> None:
    database = await open_database(fresh_db)
    try:
        assert await database.migrate() == ALL_VERSIONS
        assert await database.migrate(migrate) == []
    finally:
        await database.aclose()


# gen_random_uuid() is in core since PostgreSQL 13 (release notes: "Add function
# gen_random_uuid() ... previously only available in the external modules uuid-ossp and
# pgcrypto"); no extension needed, and the embedded server's build has no pgcrypto.
PRODUCTION_LIKE = """
CREATE SCHEMA outreach;
CREATE TABLE outreach.outreach (
    outreach_id  uuid PRIMARY KEY,
    sovereign_id uuid NOT NULL,
    company_name text,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE outreach.company_target (
    company_target_id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    outreach_id       uuid NOT NULL REFERENCES outreach.outreach (outreach_id),
    company_unique_id text NOT NULL,
    execution_status  text,
    source_system     text NOT NULL DEFAULT 'cl',
    legacy_notes      text,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE outreach.company_target_errors (
    error_id        uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    outreach_id     uuid NOT NULL,
    failure_code    text,
    blocking_reason text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    hub             text
);
"""


async def _production_like(
    db: Db, *, dup_target: bool = False, dup_errors: bool = False
) -> dict[str, uuid.UUID]:
    await db.execute(PRODUCTION_LIKE)
    ids = {name: uuid.uuid4() for name in ("pending", "legacy_ready", "legacy_error", "fresh")}
    await db.executemany(
        "INSERT INTO outreach.outreach (outreach_id, sovereign_id, company_name) "
        "VALUES ($1, $2, $3)",
        [(oid, uuid.uuid4(), name) for name, oid in ids.items()],
    )
    await db.executemany(
        "INSERT INTO outreach.company_target "
        "(outreach_id, company_unique_id, execution_status, legacy_notes) VALUES ($1, $2, $3, $4)",
        [
            (ids["pending"], "04.04.01.00001", "pending", "keep me"),
            (ids["legacy_ready"], "04.04.01.00002", "ready", None),
        ]
        + ([(ids["pending"], "04.04.01.00003", "pending", "dup")] if dup_target else []),
    )
    await db.executemany(
        "INSERT INTO outreach.company_target_errors (outreach_id, failure_code, blocking_reason, "
        "hub) VALUES ($1, $2, $3, $4)",
        [(ids["legacy_error"], "LEGACY-CODE", "from the old pipeline", "ct")]
        + ([(ids["legacy_error"], "CT-M-NO-MX", "again", "ct")] if dup_errors else []),
    )
    return ids


async def test_migrate_upgrades_production_like_schema(aio_loop: Any, fresh_db: str) -> None:
    db = await Db.connect(fresh_db)
    try:
        ids = await _production_like(db)
        assert await db.run(migrate) == ALL_VERSIONS
        assert await db.run(migrate) == []

        # Nothing lost, extra columns untouched, NOT NULL dropped, new columns present.
        ct = await _columns(db, "outreach.company_target")
        assert ct["company_unique_id"][1] is True
        assert {"legacy_notes", "source_system", "company_target_id", "evidence"} <= set(ct)
        rows = await db.fetch(
            "SELECT outreach_id, company_unique_id, execution_status, legacy_notes, "
            "source_system FROM outreach.company_target ORDER BY company_unique_id"
        )
        assert [
            (r["company_unique_id"], r["execution_status"], r["legacy_notes"]) for r in rows
        ] == [
            ("04.04.01.00001", "pending", "keep me"),
            ("04.04.01.00002", "ready", None),
        ]
        assert "domain" in await _columns(db, "outreach.outreach")
        errors = await db.fetch(
            "SELECT failure_code, retry_allowed, hub FROM outreach.company_target_errors"
        )
        assert [(r["failure_code"], r["retry_allowed"], r["hub"]) for r in errors] == [
            ("LEGACY-CODE", False, "ct")
        ]
        # The legacy code violates the new CHECK, which is therefore kept NOT VALID: old rows
        # stay, new rows are checked.
        validated = await db.fetchval(
            "SELECT convalidated FROM pg_constraint "
            "WHERE conname = 'company_target_errors_failure_code_check'"
        )
        assert validated is False
        with pytest.raises(Exception, match="failure_code_check"):
            await db.execute(
                "INSERT INTO outreach.company_target_errors (outreach_id, failure_code) "
                "VALUES ($1, 'BOGUS')",
                uuid.uuid4(),
            )
        assert (
            await db.fetchval(
                "SELECT convalidated FROM pg_constraint "
                "WHERE conname = 'company_target_execution_status_check'"
            )
            is True
        )
    finally:
        await db.aclose()

    # The upgraded tables take the daemon's writes: the existing 'pending' row is completed in
    # place (keeping company_unique_id and the unknown columns), the legacy 'ready' row and the
    # record with a legacy open error are terminal, a new record gets a new row.
    store = WorkQueue(await open_database(fresh_db))
    try:
        passed = Passed("{first}.{last}@x.example", "first.last", Decimal("0.7"), False)
        report = await store.write_outcomes(
            "owner",
            [
                Outcome(oid, "x.example", passed)
                for oid in (ids["pending"], ids["legacy_ready"], ids["fresh"])
            ]
            + [Outcome(ids["legacy_error"], "x.example", Failed(FailureCode.NO_MX, "no mx"))],
        )
        assert sorted(report.written) == sorted([ids["pending"], ids["fresh"]])
        assert sorted(report.already_terminal) == sorted([ids["legacy_ready"], ids["legacy_error"]])
        claimed = await store.claim("owner", 10, 60)
        assert claimed == []
    finally:
        await store.database.aclose()
    db = await Db.connect(fresh_db)
    try:
        row = await db.fetchrow(
            "SELECT company_unique_id, execution_status, legacy_notes, source_system "
            "FROM outreach.company_target WHERE outreach_id = $1",
            ids["pending"],
        )
        assert tuple(row) == ("04.04.01.00001", "ready", "keep me", "cl")
        row = await db.fetchrow(
            "SELECT company_unique_id, source_system FROM outreach.company_target "
            "WHERE outreach_id = $1",
            ids["fresh"],
        )
        assert tuple(row) == (None, "cl")
    finally:
        await db.aclose()


async def test_duplicate_company_target_rows_are_refused_clearly(
    aio_loop: Any, fresh_db: str
) -> None:
    db = await Db.connect(fresh_db)
    try:
        await _production_like(db, dup_target=True)
        with pytest.raises(SchemaError) as info:
            await db.run(migrate)
        message = str(info.value)
        assert "outreach.company_target has 1 outreach_id values with duplicate rows" in message
        assert "(2 rows in total)" in message
        assert "001_outreach" in message
        # The failed migration rolled back entirely: nothing recorded, no column added.
        assert await db.fetchval("SELECT count(*) FROM ct_actors.schema_migrations") == 0
        assert "evidence" not in await _columns(db, "outreach.company_target")
    finally:
        await db.aclose()


async def test_duplicate_open_errors_are_refused_clearly(aio_loop: Any, fresh_db: str) -> None:
    db = await Db.connect(fresh_db)
    try:
        await _production_like(db, dup_errors=True)
        with pytest.raises(SchemaError, match=r"company_target_errors has 1 outreach_id values"):
            await db.run(migrate)
    finally:
        await db.aclose()


async def test_company_unique_id_in_primary_key_is_refused(aio_loop: Any, fresh_db: str) -> None:
    db = await Db.connect(fresh_db)
    try:
        await db.execute(
            "CREATE SCHEMA outreach; CREATE TABLE outreach.company_target ("
            " company_unique_id text PRIMARY KEY, outreach_id uuid)"
        )
        with pytest.raises(SchemaError, match="company_unique_id is part of the primary key"):
            await db.run(migrate)
    finally:
        await db.aclose()


async def test_checksum_tamper_is_refused(aio_loop: Any, fresh_db: str, tmp_path: Path) -> None:
    sql_dir = tmp_path / "sql"
    shutil.copytree(SQL_DIR, sql_dir)
    db = await Db.connect(fresh_db)
    try:
        assert await db.run(lambda c: migrate(c, directory=sql_dir)) == ALL_VERSIONS
        # CRLF checkouts are the same file, not a tampered one.
        path = sql_dir / "002_ct_actors.sql"
        path.write_bytes(path.read_bytes().replace(b"\n", b"\r\n"))
        assert await db.run(lambda c: migrate(c, directory=sql_dir)) == []
        # A real edit of an applied file is refused, before anything new is applied.
        (sql_dir / "001_outreach.sql").write_text(
            (SQL_DIR / "001_outreach.sql").read_text() + "\n-- sneaky edit\n"
        )
        (sql_dir / "999_new.sql").write_text("CREATE TABLE ct_actors.should_not_exist (x int);")
        with pytest.raises(SchemaError, match="migration 001_outreach was applied with checksum"):
            await db.run(lambda c: migrate(c, directory=sql_dir))
        assert await db.fetchval("SELECT to_regclass('ct_actors.should_not_exist')") is None
    finally:
        await db.aclose()


async def test_recorded_checksum_mismatch_is_refused(aio_loop: Any, migrated_db: str) -> None:
    db = await Db.connect(migrated_db)
    try:
        await db.execute(
            "UPDATE ct_actors.schema_migrations SET checksum = repeat('0', 64) "
            "WHERE version = '002_ct_actors'"
        )
        with pytest.raises(SchemaError, match="002_ct_actors"):
            await db.run(migrate)
    finally:
        await db.aclose()


async def test_bad_migration_file_names_are_refused(tmp_path: Path) -> None:
    (tmp_path / "1_short.sql").write_text("SELECT 1;")
    with pytest.raises(SchemaError, match=r"not named NNN_name\.sql"):
        load_migrations(tmp_path)
    (tmp_path / "1_short.sql").unlink()
    (tmp_path / "001_a.sql").write_text("SELECT 1;")
    (tmp_path / "001_b.sql").write_text("SELECT 1;")
    with pytest.raises(SchemaError, match="share number 001"):
        load_migrations(tmp_path)
    with pytest.raises(SchemaError, match="does not exist"):
        load_migrations(tmp_path / "missing")


async def test_two_concurrent_migrations_both_succeed(aio_loop: Any, fresh_db: str) -> None:
    results: dict[int, list[str]] = {}
    dbs = [await Db.connect(fresh_db) for _ in range(3)]
    try:

        async def one(i: int) -> None:
            results[i] = await dbs[i].run(migrate)

        async with trio.open_nursery() as nursery:
            for i in range(len(dbs)):
                nursery.start_soon(one, i)
        applied = [v for r in results.values() for v in r]
        assert sorted(applied) == sorted(ALL_VERSIONS)  # each file applied exactly once
        assert await dbs[0].fetchval("SELECT count(*) FROM ct_actors.schema_migrations") == len(
            ALL_VERSIONS
        )
    finally:
        for d in dbs:
            await d.aclose()


async def test_verify_schema_reports_unwritable_tables(aio_loop: Any, migrated_db: str) -> None:
    db = await Db.connect(migrated_db)
    try:
        await db.run(verify_schema)
        await db.execute(
            "ALTER TABLE outreach.company_target ADD COLUMN region text NOT NULL DEFAULT 'x';"
            "ALTER TABLE outreach.company_target ALTER COLUMN region DROP DEFAULT;"
            "ALTER TABLE outreach.company_target_errors DROP COLUMN evidence;"
            "ALTER TABLE ct_actors.lease ALTER COLUMN outreach_id TYPE text"
        )
        with pytest.raises(SchemaError) as info:
            await db.run(verify_schema)
        assert "outreach.company_target has NOT NULL columns without a default" in str(info.value)
        assert "region" in str(info.value)
        assert "outreach.company_target_errors lacks columns evidence" in str(info.value)
        assert "ct_actors.lease.outreach_id is text, not uuid" in str(info.value)
    finally:
        await db.aclose()


def test_the_queries_package_hands_on_every_statement() -> None:
    """The scans below and the canary's read the package: a statement left out of its
    re-exports would escape them."""
    import importlib
    import pkgutil

    from ct_actors.db import queries

    modules = [m.name for m in pkgutil.iter_modules(queries.__path__)]
    assert modules, "no query modules found"
    for name in modules:
        module = importlib.import_module(f"{queries.__name__}.{name}")
        for key, value in vars(module).items():
            if key.isupper() and not key.startswith("_") and not isinstance(value, type):
                assert getattr(queries, key, None) is value, f"queries.{name}.{key}"


async def test_sql_never_reads_sovereign_id_or_selects_star() -> None:
    from ct_actors.db import queries

    texts = [v for k, v in vars(queries).items() if k.isupper() and isinstance(v, str)]
    assert len(texts) > 5
    for text in texts:
        assert "sovereign_id" not in text
        assert "SELECT *" not in text.upper().replace("COUNT(*)", "")
