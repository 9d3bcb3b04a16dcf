"""ToolLimiter and CalendarBudget under MockClock: the registry's limits as exact timelines."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import trio
import trio.testing
from structlog.testing import capture_logs

from ct_actors.testing import MemoryUsageStore
from ct_actors.throttle.calendar import UtcClock
from ct_actors.throttle.limiter import LimiterStatistics, ToolLimiter, ToolThrottles
from ct_actors.toolbox import MX_LOOKUP, SMTP_CHECK, RateLimit, ToolSpec, load_toolbox

BOUND = 100_000  # virtual seconds: autojump makes every wait instant in wall time
REGISTRY = load_toolbox(Path(__file__).parent.parent / "config" / "SNAP_ON_TOOLBOX.yaml")
MX = REGISTRY.mx_lookup
SMTP = REGISTRY.smtp_check
NOON = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)
BEFORE_MIDNIGHT = dt.datetime(2026, 11, 29, 23, 59, tzinfo=dt.UTC)


def with_limit(spec: ToolSpec, scope: str, limit: int) -> ToolSpec:
    limits = tuple(
        dataclasses.replace(r, limit=limit) if r.scope == scope else r for r in spec.rate_limits
    )
    return dataclasses.replace(spec, rate_limits=limits)


def limiter(
    spec: ToolSpec, usage: MemoryUsageStore, origin: dt.datetime = NOON, block: int = 20
) -> ToolLimiter:
    return ToolLimiter(spec, clock=UtcClock(origin, 0.0), usage=usage, budget_block=block)


async def acquire_all(lim: ToolLimiter, keys: list[str | None]) -> list[float]:
    times: list[float] = []

    async def one(key: str | None) -> None:
        await lim.acquire(key)
        times.append(trio.current_time())

    async with trio.open_nursery() as nursery:
        for key in keys:
            nursery.start_soon(one, key)
            await trio.lowlevel.checkpoint()  # arrival order = start order
    return times


async def test_mx_lookups_never_exceed_50_in_any_second(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lim = limiter(MX, MemoryUsageStore())
    with trio.fail_after(BOUND):
        times = await acquire_all(lim, [None] * 120)
    assert sorted(times) == [0.0] * 50 + [1.0] * 50 + [2.0] * 20
    stats = lim.statistics()
    assert (stats.calls, stats.throttle_waits) == (120, 70)
    assert stats.limits == ("per_second 50/1s", "per_day 50000/1d")


async def test_one_smtp_call_per_domain_per_two_seconds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lim = limiter(SMTP, MemoryUsageStore())
    times: dict[str, list[float]] = {"a.test": [], "b.test": []}

    async def calls(domain: str, n: int) -> None:
        for _ in range(n):
            await lim.acquire(domain)
            times[domain].append(trio.current_time())
            await trio.sleep(0.5)  # the visit itself

    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(calls, "a.test", 3)
            nursery.start_soon(calls, "b.test", 1)
    assert times == {"a.test": [0.0, 2.0, 4.0], "b.test": [0.0]}


async def test_daily_budget_stops_at_its_limit_and_resumes_at_utc_midnight(
    autojump_clock: trio.testing.MockClock,
) -> None:
    usage = MemoryUsageStore()
    lim = limiter(with_limit(SMTP, "per_day", 30), usage, origin=BEFORE_MIDNIGHT, block=7)
    paused: list[LimiterStatistics] = []

    async def watch() -> None:
        await trio.sleep(30.0)
        paused.append(lim.statistics())

    with trio.fail_after(BOUND), capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch)
            times = await acquire_all(lim, [f"d{i}.test" for i in range(35)])
    # 30 calls at once, then nothing until 00:00:00 UTC, 60 s later in trio time.
    assert sorted(times) == [0.0] * 30 + [60.0] * 5
    assert paused[0].paused_until == dt.datetime(2026, 11, 30, tzinfo=dt.UTC)
    exhausted = [e for e in logs if e["event"] == "budget_exhausted"]
    assert [(e["tool"], e["scope"], e["resumes_at"]) for e in exhausted] == [
        (SMTP_CHECK, "per_day", "2026-11-30T00:00:00+00:00")
    ]
    day1 = dt.datetime(2026, 11, 29, tzinfo=dt.UTC)
    day2 = dt.datetime(2026, 11, 30, tzinfo=dt.UTC)
    assert usage.used[(SMTP_CHECK, "per_day", day1)] == 30  # exactly the limit, never more
    assert usage.used[(SMTP_CHECK, "per_day", day2)] == 7  # one block reserved for the new day
    assert lim.statistics().paused_until is None


async def test_the_day_budget_survives_a_restart(autojump_clock: trio.testing.MockClock) -> None:
    usage = MemoryUsageStore()  # the database: outlives the process
    spec = with_limit(SMTP, "per_day", 12)
    with trio.fail_after(BOUND):
        first = limiter(spec, usage, origin=BEFORE_MIDNIGHT, block=5)
        assert await acquire_all(first, [f"a{i}.test" for i in range(10)]) == [0.0] * 10
        await first.release()  # clean shutdown: the unspent part of the block goes back
        await trio.sleep(1.0)
        # A restart at 23:59:01: a new process, the same day, the same count.
        second = limiter(spec, usage, origin=BEFORE_MIDNIGHT, block=5)
        times = await acquire_all(second, [f"b{i}.test" for i in range(4)])
    assert sorted(times) == [1.0, 1.0, 60.0, 60.0]


async def test_a_crash_forfeits_at_most_one_block_never_overspends(
    autojump_clock: trio.testing.MockClock,
) -> None:
    usage = MemoryUsageStore()
    spec = with_limit(SMTP, "per_day", 12)
    with trio.fail_after(BOUND):
        crashed = limiter(spec, usage, origin=NOON, block=5)
        await acquire_all(crashed, ["a.test"])  # reserved 5, spent 1, then killed: no release
        second = limiter(spec, usage, origin=NOON, block=5)
        times = await acquire_all(second, [f"b{i}.test" for i in range(8)])
    # 12 - 5 reserved by the dead process = 7 left today; the 8th waits for tomorrow.
    assert sorted(times) == [0.0] * 7 + [12 * 3600.0]


async def test_two_daemons_on_one_database_share_the_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    usage = MemoryUsageStore()
    spec = with_limit(SMTP, "per_day", 25)
    a, b = limiter(spec, usage, block=4), limiter(spec, usage, block=4)
    done: list[str] = []

    async def run(lim: ToolLimiter, name: str) -> None:
        for i in range(20):
            with trio.move_on_after(10.0):
                await lim.acquire(f"{name}{i}.test")
                done.append(name)

    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run, a, "a")
            nursery.start_soon(run, b, "b")
    assert len(done) == 25  # together, exactly the day's limit
    assert {"a", "b"} <= set(done)


async def test_reload_applies_from_the_next_call_and_keeps_the_history(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lim = limiter(MX, MemoryUsageStore())
    with trio.fail_after(BOUND):
        assert await acquire_all(lim, [None] * 10) == [0.0] * 10
        lim.reconfigure(with_limit(MX, "per_second", 5))
        # The ten calls of this second still count: the new limit of 5 is already used up.
        times = await acquire_all(lim, [None] * 6)
    assert sorted(times) == [1.0] * 5 + [2.0]
    assert lim.statistics().limits == ("per_second 5/1s", "per_day 50000/1d")


async def test_raising_an_exhausted_budget_on_reload_resumes_within_a_minute(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lim = limiter(with_limit(SMTP, "per_day", 3), MemoryUsageStore(), block=10)
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(acquire_all, lim, [f"d{i}.test" for i in range(3)])
            await trio.sleep(1.0)
            granted = trio.Event()

            async def late() -> None:
                await lim.acquire("late.test")
                granted.set()

            nursery.start_soon(late)
            await trio.sleep(100.0)
            assert not granted.is_set()  # still the same day: it waits
            lim.reconfigure(with_limit(SMTP, "per_day", 10))
            await granted.wait()
            resumed = trio.current_time()
    assert resumed == 121.0  # the budget is re-checked once a minute: at 61.0 and 121.0


async def test_budget_waits_out_a_database_outage_and_never_spends_uncounted_calls(
    autojump_clock: trio.testing.MockClock,
) -> None:
    from ct_actors.db.errors import DatabaseUnavailable

    usage = MemoryUsageStore()
    usage.fail_calls = 2
    lim = ToolLimiter(
        SMTP,
        clock=UtcClock(NOON, 0.0),
        usage=usage,
        budget_block=20,
        transient_errors=(DatabaseUnavailable,),
    )
    with trio.fail_after(BOUND), capture_logs() as logs:
        await lim.acquire("a.test")
        at = trio.current_time()
    assert at == 10.0  # two failed reservations, 5 s apart each, then granted
    assert [e["event"] for e in logs].count("budget_check_failed") == 2


async def test_release_gives_the_unspent_block_back(autojump_clock: trio.testing.MockClock) -> None:
    usage = MemoryUsageStore()
    throttles = ToolThrottles(
        dict(REGISTRY.tools), clock=UtcClock(NOON, 0.0), usage=usage, budget_block=20
    )
    with trio.fail_after(BOUND):
        await throttles[SMTP_CHECK].acquire("a.test")
        await throttles[MX_LOOKUP].acquire()
        await throttles.release()
    day = dt.datetime(2026, 11, 29, tzinfo=dt.UTC)
    assert usage.used == {(SMTP_CHECK, "per_day", day): 1, (MX_LOOKUP, "per_day", day): 1}


async def test_a_scope_removed_on_reload_stops_applying(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lim = limiter(MX, MemoryUsageStore())
    only_day = dataclasses.replace(MX, rate_limits=(RateLimit("per_day", 50000, 86_400.0),))
    with trio.fail_after(BOUND):
        await acquire_all(lim, [None] * 50)
        lim.reconfigure(only_day)
        times = await acquire_all(lim, [None] * 60)
    assert times == [0.0] * 60


async def test_a_call_not_made_gives_its_budget_back(
    autojump_clock: trio.testing.MockClock,
) -> None:
    usage = MemoryUsageStore()
    lim = limiter(with_limit(SMTP, "per_day", 2), usage, block=2)
    with trio.fail_after(BOUND):
        await lim.acquire("a.test")
        await lim.acquire("b.test")
        lim.cancel_call()  # a kill switch tripped before b.test's visit: no call was made
        await lim.acquire("c.test")
        at = trio.current_time()
    assert at == 0.0 and lim.statistics().calls == 2
