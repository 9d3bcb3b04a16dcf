"""Tool budgets in PostgreSQL (ct_actors.tool_usage): exact grants at the limit, independent
windows, refunds, persistence across a restart, and no lost update or overshoot when
several connections and stores reserve at once. The in-memory fake must agree with all of it."""

from __future__ import annotations

import datetime as dt
import itertools
from typing import Any

import pytest
import trio
from conftest_db import Db

from ct_actors.db import Database, QueryError, UsageBook, open_database, usage_window
from ct_actors.testing import MemoryUsageStore

pytestmark = pytest.mark.db

UTC = dt.UTC
DAY = dt.datetime(2024, 5, 17, tzinfo=UTC)
NEXT_DAY = dt.datetime(2024, 5, 18, tzinfo=UTC)
MONTH = dt.datetime(2024, 5, 1, tzinfo=UTC)
TOOL = "tool-hunter"


async def _wait_until_blocked(db: Db) -> None:
    """Return once another backend waits on a lock in a tool_usage statement."""
    for _poll in range(500):
        if await db.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
            "AND query LIKE '%tool_usage%' AND pid <> pg_backend_pid() "
            "AND datname = current_database()"
        ):
            return
        await trio.sleep(0.02)
    pytest.fail("the reservation never waited for the other transaction's lock")


async def _burst(stores: list[UsageBook], window: dt.datetime, n: int) -> list[int]:
    """`n` reservations of 7 against a limit of 100, released together, spread over `stores`."""
    grants: list[int] = []
    start = trio.Event()

    async def reserve(s: UsageBook) -> None:
        await start.wait()
        grants.append(await s.reserve_usage(TOOL, "per_day", window, 7, 100))

    async with trio.open_nursery() as nursery:
        for i in range(n):
            nursery.start_soon(reserve, stores[i % len(stores)])
        await trio.sleep(0.05)
        start.set()
    return grants


def test_usage_window() -> None:
    late = dt.datetime(2024, 5, 17, 23, 0, 59, 123, tzinfo=UTC)
    assert usage_window("per_day", late) == DAY
    assert usage_window("per_month", late) == MONTH
    # 01:30 in UTC+02:00 is still the previous UTC day.
    cest = dt.timezone(dt.timedelta(hours=2))
    assert usage_window("per_day", dt.datetime(2024, 5, 18, 1, 30, tzinfo=cest)) == DAY
    assert usage_window("per_day", DAY).tzinfo is UTC
    with pytest.raises(ValueError, match="timezone-aware"):
        usage_window("per_day", dt.datetime(2024, 5, 17))
    with pytest.raises(ValueError, match="scope"):
        usage_window("per_minute", late)


async def test_grants_up_to_the_limit_then_nothing(usage_book: UsageBook) -> None:
    with trio.fail_after(30):
        grants = [await usage_book.reserve_usage(TOOL, "per_day", DAY, 3, 10) for _ in range(5)]
        assert grants == [3, 3, 3, 1, 0]  # the fourth is the partial grant at the edge
        assert await usage_book.usage(TOOL, "per_day", DAY) == 10
        # A first reservation larger than the limit is clamped too (the INSERT path).
        assert await usage_book.reserve_usage(TOOL, "per_month", MONTH, 15, 10) == 10
        assert await usage_book.reserve_usage(TOOL, "per_month", MONTH, 1, 10) == 0
        assert await usage_book.usage(TOOL, "per_month", MONTH) == 10
        # A raised limit hands out the difference; a lowered one grants nothing and leaves the
        # counter where it is.
        assert await usage_book.reserve_usage(TOOL, "per_day", DAY, 5, 12) == 2
        assert await usage_book.reserve_usage(TOOL, "per_day", DAY, 5, 4) == 0
        assert await usage_book.usage(TOOL, "per_day", DAY) == 12


async def test_windows_scopes_and_tools_are_independent(usage_book: UsageBook) -> None:
    with trio.fail_after(30):
        assert await usage_book.reserve_usage(TOOL, "per_day", DAY, 5, 5) == 5
        assert await usage_book.reserve_usage(TOOL, "per_day", DAY, 1, 5) == 0
        assert await usage_book.reserve_usage(TOOL, "per_day", NEXT_DAY, 5, 5) == 5
        assert await usage_book.reserve_usage(TOOL, "per_month", MONTH, 4, 5) == 4
        assert await usage_book.reserve_usage("other-tool", "per_day", DAY, 5, 5) == 5
        assert await usage_book.usage(TOOL, "per_day", DAY) == 5
        assert await usage_book.usage(TOOL, "per_day", NEXT_DAY) == 5
        assert await usage_book.usage(TOOL, "per_month", MONTH) == 4
        assert await usage_book.usage(TOOL, "per_day", dt.datetime(2024, 5, 19, tzinfo=UTC)) == 0
        assert await usage_book.usage("never-used", "per_month", MONTH) == 0


async def test_refund(usage_book: UsageBook, db: Db) -> None:
    with trio.fail_after(30):
        assert await usage_book.reserve_usage(TOOL, "per_day", DAY, 10, 10) == 10
        await usage_book.refund_usage(TOOL, "per_day", DAY, 4)
        assert await usage_book.usage(TOOL, "per_day", DAY) == 6
        assert await usage_book.reserve_usage(TOOL, "per_day", DAY, 10, 10) == 4
        await usage_book.refund_usage(TOOL, "per_day", DAY, 0)
        await usage_book.refund_usage(TOOL, "per_day", DAY, 1000)  # never below zero
        assert await usage_book.usage(TOOL, "per_day", DAY) == 0
        # Refunding into a window nobody reserved in creates nothing.
        await usage_book.refund_usage(TOOL, "per_day", NEXT_DAY, 3)
        assert await db.fetchval("SELECT count(*) FROM ct_actors.tool_usage") == 1
        row = await db.fetchrow(
            "SELECT tool_id, scope, window_start, used FROM ct_actors.tool_usage"
        )
        assert tuple(row) == (TOOL, "per_day", DAY, 0)


async def test_usage_survives_a_restart(aio_loop: Any, migrated_db: str) -> None:
    with trio.fail_after(30):
        async with await open_database(migrated_db) as database:
            first = UsageBook(database)
            assert await first.reserve_usage(TOOL, "per_day", DAY, 80, 100) == 80
        # A daemon restarted late in the day does not get a fresh budget.
        async with await open_database(migrated_db) as database:
            second = UsageBook(database)
            assert await second.usage(TOOL, "per_day", DAY) == 80
            assert await second.reserve_usage(TOOL, "per_day", DAY, 80, 100) == 20
            assert await second.reserve_usage(TOOL, "per_day", NEXT_DAY, 80, 100) == 80


async def test_concurrent_reservations_never_overshoot(aio_loop: Any, migrated_db: str) -> None:
    """20 reservations of 7 against a limit of 100, at once, from 3 stores (3 daemons) with up
    to 4 connections each: exactly 100 granted, and the counter agrees. Repeated so that both
    the first-reservation race (no row yet) and the update race get their chances."""
    with trio.fail_after(60):
        pools = [await open_database(migrated_db, min_size=4, max_size=4) for _ in range(3)]
        stores = [UsageBook(pool) for pool in pools]
        try:
            for day in range(1, 6):
                window = dt.datetime(2024, 6, day, tzinfo=UTC)
                if day % 2 == 0:  # the row exists before the burst
                    assert await stores[0].reserve_usage(TOOL, "per_day", window, 1, 100) == 1
                    await stores[0].refund_usage(TOOL, "per_day", window, 1)
                grants = await _burst(stores, window, 20)
                assert sum(grants) == 100, (day, sorted(grants))
                assert sorted(grants) == [0] * 5 + [2] + [7] * 14
                assert await stores[1].usage(TOOL, "per_day", window) == 100
        finally:
            for pool in pools:
                await pool.aclose()


async def test_reservation_waits_for_a_concurrent_update(usage_book: UsageBook, db: Db) -> None:
    """Another daemon's uncommitted reservation: ours waits for it and then counts on top of
    its committed value, not on the value our statement's snapshot saw."""
    with trio.fail_after(30):
        assert await usage_book.reserve_usage(TOOL, "per_day", DAY, 10, 100) == 10
        await db.execute("BEGIN")
        await db.execute(
            "UPDATE ct_actors.tool_usage SET used = used + 40 "
            "WHERE tool_id = $1 AND scope = 'per_day' AND window_start = $2",
            TOOL,
            DAY,
        )
        granted: list[int] = []
        async with trio.open_nursery() as nursery:

            async def reserve() -> None:
                granted.append(await usage_book.reserve_usage(TOOL, "per_day", DAY, 70, 100))

            nursery.start_soon(reserve)
            await _wait_until_blocked(db)
            await db.execute("COMMIT")
        assert granted == [50]  # 100 - (10 + 40), not 70 (as if the 40 were not there)
        assert await usage_book.usage(TOOL, "per_day", DAY) == 100


async def test_first_reservation_waits_for_a_concurrent_insert(
    usage_book: UsageBook, db: Db
) -> None:
    with trio.fail_after(30):
        await db.execute("BEGIN")
        await db.execute(
            "INSERT INTO ct_actors.tool_usage (tool_id, scope, window_start, used) "
            "VALUES ($1, 'per_day', $2, 30)",
            TOOL,
            DAY,
        )
        granted: list[int] = []
        async with trio.open_nursery() as nursery:

            async def reserve() -> None:
                granted.append(await usage_book.reserve_usage(TOOL, "per_day", DAY, 50, 60))

            nursery.start_soon(reserve)
            await _wait_until_blocked(db)
            await db.execute("COMMIT")
        assert granted == [30]
        assert await usage_book.usage(TOOL, "per_day", DAY) == 60


async def test_round_trips(database: Database, usage_book: UsageBook) -> None:
    with trio.fail_after(30):
        before = database.statistics().round_trips
        await usage_book.reserve_usage(TOOL, "per_day", DAY, 1, 10)  # no row yet: UPDATE, INSERT
        middle = database.statistics().round_trips
        await usage_book.reserve_usage(TOOL, "per_day", DAY, 1, 10)
        after = database.statistics().round_trips
        assert (middle - before, after - middle) == (2, 1)


@pytest.mark.parametrize("fake", [False, True], ids=["postgres", "memory"])
async def test_bad_arguments_are_refused(usage_book: UsageBook, fake: bool) -> None:
    target: UsageBook | MemoryUsageStore = MemoryUsageStore() if fake else usage_book
    cest = dt.timezone(dt.timedelta(hours=2))
    with trio.fail_after(30):
        for window, scope, match in [
            (dt.datetime(2024, 5, 17), "per_day", "UTC datetime"),
            (dt.datetime(2024, 5, 17, tzinfo=cest), "per_day", "UTC datetime"),
            (dt.datetime(2024, 5, 17, 23, tzinfo=UTC), "per_day", "start of a UTC day"),
            (DAY, "per_month", "start of a UTC month"),
            (DAY, "per_minute", "scope must be one of"),
        ]:
            with pytest.raises(ValueError, match=match):
                await target.reserve_usage(TOOL, scope, window, 1, 10)
            with pytest.raises(ValueError, match=match):
                await target.refund_usage(TOOL, scope, window, 1)
            with pytest.raises(ValueError, match=match):
                await target.usage(TOOL, scope, window)
        with pytest.raises(ValueError, match="want"):
            await target.reserve_usage(TOOL, "per_day", DAY, 0, 10)
        with pytest.raises(ValueError, match="limit"):
            await target.reserve_usage(TOOL, "per_day", DAY, 1, 0)
        with pytest.raises(ValueError, match="count"):
            await target.refund_usage(TOOL, "per_day", DAY, -1)
        assert await target.usage(TOOL, "per_day", DAY) == 0
        # Any tzinfo at offset zero is UTC enough; the row is the same.
        zulu = DAY.astimezone(dt.timezone(dt.timedelta(0), "Z"))
        assert await target.reserve_usage(TOOL, "per_day", zulu, 1, 9) == 1
        assert await target.usage(TOOL, "per_day", DAY) == 1


async def test_table_constraints(db: Db) -> None:
    with trio.fail_after(30):
        for scope, used in [("per_minute", 0), ("per_day", -1)]:
            with pytest.raises(Exception, match="check constraint"):
                await db.execute(
                    "INSERT INTO ct_actors.tool_usage (tool_id, scope, window_start, used) "
                    "VALUES ($1, $2, $3, $4)",
                    TOOL,
                    scope,
                    DAY,
                    used,
                )


async def test_vanishing_row_is_reported(usage_book: UsageBook, db: Db) -> None:
    """A trigger that swallows every INSERT stands in for something deleting the current
    window's row as fast as it is created: the usage book gives up with a QueryError instead of
    spinning."""
    with trio.fail_after(30):
        await db.execute(
            "CREATE FUNCTION public.swallow_insert() RETURNS trigger LANGUAGE plpgsql "
            "AS 'BEGIN RETURN NULL; END';"
            "CREATE TRIGGER swallow BEFORE INSERT ON ct_actors.tool_usage "
            "FOR EACH ROW EXECUTE FUNCTION public.swallow_insert()"
        )
        with pytest.raises(QueryError, match="vanished"):
            await usage_book.reserve_usage(TOOL, "per_day", DAY, 1, 10)


async def test_memory_store_agrees_with_postgres(usage_book: UsageBook) -> None:
    """The same script of reservations and refunds against both: every answer equal."""
    fake = MemoryUsageStore()
    windows = [("per_day", DAY), ("per_day", NEXT_DAY), ("per_month", MONTH)]
    steps = list(itertools.product(range(3), windows, ["a", "b"]))
    with trio.fail_after(60):
        for i, (_round, (scope, window), tool) in enumerate(steps):
            want, limit = 1 + (i * 7) % 13, 5 + (i * 5) % 40
            granted = [
                await t.reserve_usage(tool, scope, window, want, limit) for t in (usage_book, fake)
            ]
            assert granted[0] == granted[1], (i, tool, scope, window, want, limit)
            if i % 4 == 3:
                for t in (usage_book, fake):
                    await t.refund_usage(tool, scope, window, 1 + i % 6)
            used = [await t.usage(tool, scope, window) for t in (usage_book, fake)]
            assert used[0] == used[1], (i, tool, scope, window)
    assert sum(1 for c in fake.calls if c[0] == "reserve") == len(steps)


async def test_memory_store_failures_and_checkpoints() -> None:
    from ct_actors.db import DatabaseUnavailable

    fake = MemoryUsageStore()
    fake.fail_calls = 1
    with trio.fail_after(10):
        with pytest.raises(DatabaseUnavailable):
            await fake.reserve_usage(TOOL, "per_day", DAY, 5, 10)
        assert await fake.usage(TOOL, "per_day", DAY) == 0  # the failed call granted nothing
        assert await fake.reserve_usage(TOOL, "per_day", DAY, 5, 10) == 5
        await fake.refund_usage(TOOL, "per_day", DAY, 2)
        assert await fake.usage(TOOL, "per_day", DAY) == 3
    assert [c[0] for c in fake.calls] == ["reserve", "usage", "reserve", "refund", "usage"]
