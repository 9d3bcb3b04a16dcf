"""The database driver's lifecycle: closing, cancellation, losing the server, statistics."""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from typing import Any

import pytest
import trio
import trio_asyncio
from conftest_db import Db, insert_spine, passed

from ct_actors.db import Database, DatabaseUnavailable, NamesQuery, WorkQueue, open_database
from ct_actors.db.driver import _loop_exception_handler

pytestmark = pytest.mark.db

SLEEPY = "SELECT 'a', 'b' FROM pg_sleep(30) WHERE $1::uuid IS NOT NULL"


async def test_close_is_idempotent_and_final(aio_loop: Any, migrated_db: str) -> None:
    database = await open_database(migrated_db)
    queue = WorkQueue(database)
    assert "ct_test_" in database.url and "closed" not in repr(database)
    async with database:
        assert await queue.pending_count() == 0
    await database.aclose()
    assert "closed" in repr(database)
    with pytest.raises(RuntimeError, match="closed"):
        await queue.pending_count()


async def test_cancelled_query_leaves_the_pool_usable(
    queue: WorkQueue, names_query: NamesQuery, db: Db
) -> None:
    ids = await insert_spine(db, 3)
    with trio.move_on_after(0.3) as scope:
        await names_query.fetch_names(SLEEPY, ids[0], statement_timeout=30)
    assert scope.cancelled_caught
    # The server-side query was cancelled too, and the pool still works.
    with trio.fail_after(10):
        assert len(await queue.claim("a", 10, 60)) == 3
        for _poll in range(200):
            if not await db.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE query LIKE '%pg_sleep(30)%' "
                "AND pid <> pg_backend_pid() AND state = 'active'"
            ):
                break
            await trio.sleep(0.05)
        else:
            pytest.fail("the cancelled query is still running on the server")


async def test_aclose_completes_while_cancelled(aio_loop: Any, migrated_db: str) -> None:
    database = await open_database(migrated_db)
    with trio.CancelScope() as scope:
        scope.cancel()
        await database.aclose(grace=1.0)  # shielded: still closes
    assert "closed" in repr(database)


async def test_aclose_terminates_busy_connections_after_grace(
    aio_loop: Any, migrated_db: str
) -> None:
    database = await open_database(migrated_db)
    async with trio.open_nursery() as nursery:

        async def busy() -> None:
            with contextlib.suppress(DatabaseUnavailable, RuntimeError):
                await NamesQuery(database).fetch_names(
                    SLEEPY, uuid.uuid4(), statement_timeout=30
                )

        nursery.start_soon(busy)
        await trio.sleep(0.2)
        with trio.fail_after(5):
            await database.aclose(grace=0.3)
        nursery.cancel_scope.cancel()


async def _terminate_pool_backends(db: Db, active_only: bool = False) -> int:
    return int(
        await db.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'ct-actors' AND datname = current_database() "
            "AND (NOT $1 OR state = 'active')",
            active_only,
        )
    )


async def test_connection_killed_mid_query_is_database_unavailable(
    queue: WorkQueue, names_query: NamesQuery, db: Db
) -> None:
    ids = await insert_spine(db, 2)
    errors: list[BaseException] = []

    async def victim() -> None:
        try:
            await names_query.fetch_names(SLEEPY, ids[0], statement_timeout=30)
        except DatabaseUnavailable as exc:
            errors.append(exc)

    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(victim)
            for _poll in range(200):
                if await _terminate_pool_backends(db, active_only=True):
                    break
                await trio.sleep(0.05)
    assert len(errors) == 1 and errors[0].__cause__ is None
    # The caller's retry gets a fresh connection.
    assert len(await queue.claim("a", 10, 60)) == 2


async def test_server_dropping_idle_connections_is_survivable(
    database: Database, queue: WorkQueue, db: Db
) -> None:
    """A restart/failover drops the pool's idle connections. asyncpg may notice before or only
    during the next query; either way that query fails with DatabaseUnavailable at worst (never
    anything else), a retry succeeds, and the background noise asyncpg reports to the loop does
    not crash the trio_asyncio loop (the test would error at teardown)."""
    ids = await insert_spine(db, 4)
    assert len(await queue.claim("a", 2, 60)) == 2
    assert await _terminate_pool_backends(db) >= 1
    failures = 0
    for _attempt in range(3):
        try:
            report = await queue.write_outcomes("a", [passed(ids[0])])
            break
        except DatabaseUnavailable:
            failures += 1
            # Nothing was written by the failed attempt.
            assert await db.fetchval("SELECT count(*) FROM outreach.company_target") == 0
    else:
        pytest.fail("write never succeeded after the connections were dropped")
    assert report.written == [ids[0]] and failures <= 1
    await trio.sleep(0.2)  # give any background error a chance to reach the loop
    assert len(await queue.claim("b", 10, 60)) == 2
    assert database.statistics().errors == failures


async def test_statistics_count_round_trips(
    database: Database, queue: WorkQueue, db: Db
) -> None:
    ids = await insert_spine(db, 5)
    before = database.statistics()
    await queue.claim("a", 5, 60)  # from the start: one statement
    await queue.renew_leases("a", ids, 60)
    await queue.write_outcomes("a", [passed(i) for i in ids])
    after = database.statistics()
    assert after.round_trips - before.round_trips == 3
    assert after.crossings - before.crossings == 3
    work = queue.statistics()
    assert (work.claims, work.rows_claimed, work.writes, work.rows_written) == (1, 5, 1, 5)
    assert work.claim_seconds > 0 and work.write_seconds > 0
    # The snapshots are values: frozen, and taken apart from the running counts.
    with pytest.raises(dataclasses.FrozenInstanceError):
        after.round_trips = -1  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        work.claims = -1  # type: ignore[misc]
    await queue.claim("a", 5, 60)
    assert (after.round_trips, work.claims) != (
        database.statistics().round_trips,
        queue.statistics().claims,
    )


async def test_background_connection_noise_does_not_crash_the_loop(queue: WorkQueue) -> None:
    """What asyncpg does when a connection dies under an operation: report an unretrieved
    future through the loop's exception handler. trio_asyncio's default handler would re-raise
    it into the loop's nursery (taking the daemon down); open_database installed one that logs."""
    import asyncio

    async def report() -> None:
        loop = asyncio.get_running_loop()
        assert loop.get_exception_handler() is _loop_exception_handler
        loop.call_exception_handler(
            {
                "message": "Future exception was never retrieved",
                "exception": ConnectionError("unexpected connection_lost() call"),
            }
        )

    await trio_asyncio.aio_as_trio(report)()
    await trio.sleep(0.1)  # a re-raise would surface here or at loop teardown
    assert await queue.pending_count() == 0


def test_loop_exception_handler_only_swallows_connection_noise() -> None:
    seen: list[dict[str, Any]] = []

    class FakeLoop:
        def default_exception_handler(self, context: dict[str, Any]) -> None:
            seen.append(context)

    loop = FakeLoop()
    _loop_exception_handler(loop, {"message": "x", "exception": ConnectionResetError()})
    _loop_exception_handler(
        loop, {"message": "Resetting connection with an active transaction <conn>"}
    )
    assert seen == []
    bug = {"message": "Task exception was never retrieved", "exception": KeyError("bug")}
    _loop_exception_handler(loop, bug)
    assert seen == [bug]
