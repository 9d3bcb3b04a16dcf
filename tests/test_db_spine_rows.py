"""Claims that the spine's contents cannot break (issue 10, item 1).

`outreach.outreach` is upstream's table and the migration accepts a spine without a primary key
(it only adds a plain index on outreach_id), so it can hold a duplicated outreach_id or a NULL
one. Before the fix one such row made every claim fail (`ON CONFLICT DO UPDATE command cannot
affect row a second time`, or a NOT NULL violation on ct_actors.lease) and the daemon exited
without writing anything, also for the healthy rows of the batch.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest
from conftest_db import Db, passed
from structlog.testing import capture_logs

from ct_actors.actors.loader import report_spine_anomalies
from ct_actors.db import (
    DatabaseUnavailable,
    SchemaError,
    WorkQueue,
    open_database,
    verify_schema,
)
from ct_actors.db.migrate import migrate
from ct_actors.ops.db import OpsDb
from ct_actors.ops.report import (
    ReportOptions,
    SpineSkipped,
    format_report,
    gather_report,
    report_dict,
)

pytestmark = [pytest.mark.db, pytest.mark.timeout(60)]

# A spine as upstream may have it: no primary key, no NOT NULL on outreach_id.
_LOOSE_SPINE = """
CREATE SCHEMA outreach;
CREATE TABLE outreach.outreach (
    outreach_id  uuid,
    sovereign_id uuid,
    domain       varchar(255),
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
"""


@pytest.fixture
async def loose(aio_loop: Any, fresh_db: str) -> AsyncIterator[tuple[Db, WorkQueue]]:
    db = await Db.connect(fresh_db)
    await db.execute(_LOOSE_SPINE)
    await db.run(migrate)
    store = WorkQueue(await open_database(fresh_db))
    yield db, store
    await store.database.aclose()
    await db.aclose()


async def _spine(db: Db, rows: list[tuple[uuid.UUID | None, str | None]]) -> None:
    await db.executemany(
        "INSERT INTO outreach.outreach (outreach_id, domain) VALUES ($1, $2)", rows
    )


async def test_duplicated_and_null_ids_do_not_break_the_claim(loose: tuple[Db, WorkQueue]) -> None:
    db, store = loose
    healthy = sorted(uuid.uuid4() for _ in range(4))
    dup = healthy[1]
    await _spine(db, [(i, f"d{n}.example") for n, i in enumerate(healthy)])
    await _spine(db, [(dup, "d1.example"), (dup, "other.example"), (None, "null.example")])

    claimed = await store.claim("a", 100, 60)
    # Every healthy id once, the duplicated one too (one lease, one record), the NULL skipped.
    assert [c.outreach_id for c in claimed] == healthy
    by_id = {c.outreach_id: c for c in claimed}
    assert by_id[dup].spine_rows == 3
    assert {c.spine_rows for c in claimed if c.outreach_id != dup} == {1}
    # Deterministic choice among the duplicates' domains (the smallest).
    assert by_id[dup].domain == "d1.example"
    leases = await db.fetch("SELECT outreach_id FROM ct_actors.lease ORDER BY outreach_id")
    assert [r["outreach_id"] for r in leases] == healthy

    # The healthy rows are written, and once written the duplicated id is terminal.
    report = await store.write_outcomes("a", [passed(i) for i in healthy])
    assert sorted(report.written) == healthy
    assert await store.claim("a", 100, 60) == []
    assert await store.claim("b", 100, 60) == []


async def test_keyset_claims_over_duplicates(loose: tuple[Db, WorkQueue]) -> None:
    db, store = loose
    ids = sorted(uuid.uuid4() for _ in range(6))
    await _spine(db, [(i, "d.example") for i in ids] + [(i, "d.example") for i in ids[:3]])
    got: list[uuid.UUID] = []
    # Duplicates count against the claim's LIMIT, so a claim may return fewer records than
    # asked for while more are pending; claiming on until an empty claim must still get every
    # id exactly once.
    for _ in range(12):
        batch = [c.outreach_id for c in await store.claim("a", 2, 60)]
        if not batch:
            break
        got += batch
    assert sorted(got) == ids and len(got) == len(set(got))


async def test_spine_anomalies_are_counted(loose: tuple[Db, WorkQueue]) -> None:
    db, store = loose
    ids = sorted(uuid.uuid4() for _ in range(3))
    await _spine(db, [(i, "d.example") for i in ids])
    assert (await store.spine_anomalies()).skipped_rows == 0
    await _spine(db, [(ids[0], "d.example"), (ids[0], "e.example"), (ids[2], None)])
    await _spine(db, [(None, "a.example"), (None, None)])
    found = await store.spine_anomalies()
    assert found.null_ids == 2
    assert found.duplicated == {ids[0]: 3, ids[2]: 2}
    # Rows beyond the first of each duplicated id, plus the NULL ones.
    assert found.skipped_rows == 2 + 1 + 2


async def test_drain_and_report_see_past_the_skipped_rows(loose: tuple[Db, WorkQueue]) -> None:
    db, store = loose
    ids = sorted(uuid.uuid4() for _ in range(2))
    await _spine(db, [(ids[0], "d.example"), (ids[0], "d.example"), (ids[1], "e.example")])
    await _spine(db, [(None, "null.example")])
    assert await store.pending_count() == 2
    claimed = await store.claim("a", 100, 60)
    await store.write_outcomes("a", [passed(c.outreach_id) for c in claimed])
    # A NULL row is never pending: `run --drain` must not wait for it forever.
    assert await store.pending_count() == 0
    assert await store.pending_elsewhere("a") == 0

    ops = await OpsDb.connect(store.database.url)
    try:
        report = await gather_report(ops, ReportOptions())
    finally:
        await ops.aclose()
    assert report.pending == 0
    assert report.spine == SpineSkipped(null_ids=1, duplicated_ids=1, duplicate_rows=1)
    assert report_dict(report)["spine_skipped"]["rows"] == 2
    assert "Spine rows skipped: 2 (1 with a NULL outreach_id" in format_report(report)


async def test_start_up_alert_names_the_skipped_rows(loose: tuple[Db, WorkQueue]) -> None:
    db, store = loose
    dup = uuid.uuid4()
    await _spine(db, [(dup, "d.example"), (dup, "d.example"), (None, None)])
    with capture_logs() as logs:
        found = await report_spine_anomalies(store, (DatabaseUnavailable,))
    assert found is not None and found.skipped_rows == 2
    alerts = [e for e in logs if e["event"] == "spine_rows_skipped"]
    assert len(alerts) == 1 and alerts[0]["log_level"] == "error"
    assert alerts[0]["null_ids"] == 1 and alerts[0]["sample"] == [str(dup)]


async def test_a_spine_with_text_ids_is_refused_before_any_claim(
    aio_loop: Any, fresh_db: str
) -> None:
    # The other hostile shape the brief asks about: a non-UUID text outreach_id. The schema
    # check refuses such a spine outright (every statement binds outreach_id as uuid), so no
    # claim ever sees one.
    db = await Db.connect(fresh_db)
    try:
        await db.execute(_LOOSE_SPINE.replace("outreach_id  uuid", "outreach_id  text"))
        await db.execute("INSERT INTO outreach.outreach (outreach_id) VALUES ('not-a-uuid')")
        refused = re.escape("outreach.outreach.outreach_id is text, not uuid")
        with pytest.raises(SchemaError, match=refused):
            await db.run(migrate)  # which ends with verify_schema
        with pytest.raises(SchemaError, match=refused):
            await db.run(verify_schema)
    finally:
        await db.aclose()
