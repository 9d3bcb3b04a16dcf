"""The registry's throttles on the whole pipeline: with the registry as shipped, against the
simulated world, under MockClock.

- SMTPCheck `per_domain 1/2s`: no domain sees two SMTP calls less than 2 s apart;
- MXLookup `per_second 50`: never more than 50 MX lookups in any one-second window, and the
  limit binds (the pipeline would go faster without it);
- SMTPCheck `per_day`: work stops at exactly the limit and resumes at the next UTC midnight,
  without a record failing for it; the count survives a restart.

One SMTP call is one host visit (one mail transaction for one domain on one MX host), counted
where `SmtpGate.visit` hands it to the pools; one MXLookup call is one resolution attempt for
one domain (cache misses only). Both are recorded by thin wrappers below, with virtual times.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import uuid
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from ct_actors.actors.dispatcher import DispatchSettings
from ct_actors.actors.loader import LoaderSettings
from ct_actors.actors.pool_manager import SmtpPoolManager
from ct_actors.actors.resolver_stage import ResolverSettings
from ct_actors.actors.supervisor import PipelineSettings, Supervisor
from ct_actors.actors.supervisor_statistics import SupervisorStatistics
from ct_actors.actors.visit_request import ProbeRequest
from ct_actors.actors.writer import WriterSettings
from ct_actors.demo.labels import expected_label
from ct_actors.dns.types import MxHost, MxLookup
from ct_actors.net.connector import Connector
from ct_actors.probe.domain_probe import RetryPolicy
from ct_actors.probe.visit import HostVisit
from ct_actors.sim.stats import SimStats
from ct_actors.sim.world import Behaviour, World
from ct_actors.testing import (
    FakeStore,
    MemoryUsageStore,
    SimResolver,
)
from ct_actors.throttle.calendar import UtcClock
from ct_actors.throttle.limiter import LimiterStatistics, ToolThrottles
from ct_actors.toolbox import MX_LOOKUP, SMTP_CHECK, ToolSpec, load_toolbox
from tests.pipeline_support import SIM_POOL, SimPipelines, label, spine_for

pytestmark = pytest.mark.timeout(60)

BOUND = 100_000  # virtual seconds; autojump makes every wait instant in wall time
EPS = 1e-6  # MockClock jumps by `deadline - now`, which can land an ulp off the deadline
REGISTRY = load_toolbox(Path(__file__).parent.parent / "config" / "SNAP_ON_TOOLBOX.yaml")
MX = REGISTRY.mx_lookup
SMTP = REGISTRY.smtp_check

POOL = dataclasses.replace(
    SIM_POOL,
    # Not about directory-harvest pacing (test_actors_probe's rejected-RCPT budget test is):
    # lifted, so the timelines below show the behaviour under test alone.
    max_rejected_rcpts_per_host=1_000_000,
    initial_connections_per_host=1,
    max_connections_per_host=4,
)


def settings(*, drain_deadline: float = 60.0) -> PipelineSettings:
    """smtp mode, with the registry's back-off, cache lifetimes and kill-switch defaults.

    The greylist retry (0.5 s) is deliberately shorter than SMTPCheck's per-domain 2 s, so a
    greylisting domain's second visit is held back by the throttle, not by the retry policy.
    """
    assert MX.cache_ttl is not None and SMTP.cache_ttl is not None
    return PipelineSettings(
        owner="test:1",
        max_in_flight=64,
        drain_deadline=drain_deadline,
        stats_interval=1000.0,
        loader=LoaderSettings(claim_batch=20, lease_seconds=600.0, idle_poll=0.5),
        resolver=ResolverSettings(
            workers=64,
            cache_ttl=MX.cache_ttl,
            retry_delay=MX.backoff.initial_delay,
            max_retries=MX.backoff.max_retries,
            retry_strategy=MX.backoff.strategy,
        ),
        dispatch=DispatchSettings(
            mode="smtp",
            verdict_ttl=SMTP.cache_ttl,
            retry=RetryPolicy(
                greylist_delay=0.5,
                greylist_retries=4,
                throttle_delay=SMTP.backoff.initial_delay,
                throttle_retries=SMTP.backoff.max_retries,
                throttle_strategy=SMTP.backoff.strategy,
                defer_seconds=600.0,
            ),
        ),
        writer=WriterSettings(batch_size=50, flush_interval=0.2),
    )


def with_limit(spec: ToolSpec, scope: str, limit: int) -> ToolSpec:
    limits = tuple(
        dataclasses.replace(r, limit=limit) if r.scope == scope else r for r in spec.rate_limits
    )
    assert limits != spec.rate_limits, f"{spec.name} has no {scope} limit"
    return dataclasses.replace(spec, rate_limits=limits)


def throttles(
    origin: dt.datetime, usage: MemoryUsageStore, smtp: ToolSpec | None = None
) -> ToolThrottles:
    specs = dict(REGISTRY.tools)
    if smtp is not None:
        specs[SMTP_CHECK] = smtp
    # Trio time 0.0 is `origin` (the MockClock starts at 0; asserted in each test).
    return ToolThrottles(specs, clock=UtcClock(origin, 0.0), usage=usage)


# -- recording layers ------------------------------------------------------------------------


class RecordingResolver(SimResolver):
    """Every MX resolution attempt that reaches the resolver: (virtual time, domain)."""

    def __init__(self, world: World) -> None:
        super().__init__(world)
        self.calls: list[tuple[float, str]] = []

    async def lookup(self, domain: str) -> MxLookup:
        self.calls.append((trio.current_time(), domain))
        return await super().lookup(domain)


class RecordingPools(SmtpPoolManager):
    """Every SMTP call, recorded where the gate hands it to the pools (after the throttle):
    (virtual time, domain, host), and each visit's outcome."""

    def __init__(self, connector: Connector) -> None:
        super().__init__(POOL, connector, max_connections=32)
        self.calls: list[tuple[float, str, str]] = []
        self.outcomes: list[tuple[float, str, str, str]] = []

    async def visit(self, host: MxHost, request: ProbeRequest) -> HostVisit:
        self.calls.append((trio.current_time(), request.domain, host.name))
        visit = await super().visit(host, request)
        self.outcomes.append((trio.current_time(), request.domain, host.name, visit.outcome))
        return visit

    def times_by_domain(self) -> dict[str, list[float]]:
        out: dict[str, list[float]] = defaultdict(list)
        for t, domain, _ in self.calls:
            out[domain].append(t)
        return dict(out)


@dataclasses.dataclass
class Run:
    supervisor: Supervisor
    resolver: RecordingResolver
    pools: RecordingPools
    stats: SimStats


async def run_pipeline(
    pipelines: SimPipelines,
    world: World,
    store: FakeStore,
    owner: dict[uuid.UUID, str],
    limits: ToolThrottles,
    *,
    drain_deadline: float = 60.0,
    during: Callable[[Supervisor], Awaitable[None]] | None = None,
) -> Run:
    """The whole pipeline in drain mode; `during` runs alongside it (it may request a stop)."""
    stats = SimStats()
    resolver = RecordingResolver(world)
    async with pipelines.open(
        world,
        store,
        stats=stats,
        settings=settings(drain_deadline=drain_deadline),
        resolver=resolver,
        pools=RecordingPools,
        owner=owner,
        throttles=limits,
    ) as supervisor:
        if during is not None:
            await during(supervisor)
    assert isinstance(supervisor.pools, RecordingPools)
    return Run(supervisor, resolver, supervisor.pools, stats)


def tool_statistics(supervisor: Supervisor, tool_id: str) -> LimiterStatistics:
    throttles = supervisor.statistics().throttles
    assert throttles is not None
    return throttles.tools[tool_id]


def mismatches(
    world: World, store: FakeStore, spine: dict[uuid.UUID, str | None], owner: dict[uuid.UUID, str]
) -> dict[str, tuple[str, str, str | None]]:
    got = {oid: label(o.result) for oid, o in {**store.deferred, **store.terminal}.items()}
    return {
        owner[oid]: (
            str(world.domain(owner[oid]).behaviour),
            expected_label(world, owner[oid]),
            got.get(oid),
        )
        for oid in spine
        if got.get(oid) != expected_label(world, owner[oid])
    }


def max_in_window(times: list[float], window: float) -> int:
    """Max number of events in [t, t + window) over every event time t (sliding)."""
    times = sorted(times)
    best = 0
    j = 0
    for i, t in enumerate(times):
        j = max(j, i)
        while j < len(times) and times[j] < t + window:
            j += 1
        best = max(best, j - i)
    return best


# -- the registry as shipped -----------------------------------------------------------------


async def test_shipped_registry_paces_smtp_per_domain_and_mx_lookups_per_second(
    autojump_clock: trio.testing.MockClock, sim_pipeline: SimPipelines
) -> None:
    assert trio.current_time() == 0.0
    world = World.generate(11, 300, latency_ms=20, jitter_ms=10)
    spine, owner = spine_for(world, copies=2)
    store = FakeStore(spine)
    usage = MemoryUsageStore()
    limits = throttles(dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC), usage)
    with trio.fail_after(BOUND):
        run = await run_pipeline(sim_pipeline, world, store, owner, limits)

    # Every record still ends with the ground-truth outcome.
    assert mismatches(world, store, spine, owner) == {}
    assert store.leases == {}

    # -- SMTPCheck per_domain 1 / 2 s -----------------------------------------------------
    per_domain = SMTP.rate_limit("per_domain")
    assert per_domain is not None and (per_domain.limit, per_domain.window) == (1, 2.0)
    window = per_domain.window
    assert window is not None
    by_domain = run.pools.times_by_domain()
    too_close = {
        domain: times
        for domain, times in by_domain.items()
        for a, b in itertools.pairwise(times)
        if b < a + window
    }
    assert too_close == {}
    # Not vacuous: greylisting and first-MX-dead domains make several calls each, and the
    # first-MX-dead ones (mx1 refuses at once) are held back to exactly 2 s by the throttle.
    repeat = {d for d, times in by_domain.items() if len(times) > 1}
    greylist = {d.name for d in world.by_behaviour(Behaviour.GREYLIST)}
    first_dead = {d.name for d in world.by_behaviour(Behaviour.FIRST_MX_DEAD)}
    assert greylist and first_dead
    assert greylist | first_dead <= repeat
    for domain in first_dead:
        first, second = by_domain[domain][:2]
        assert second == pytest.approx(first + 2.0, abs=EPS), (domain, by_domain[domain])
    for domain in greylist:
        # Retry policy says 0.5 s after the greylisted visit; the throttle says 2 s after its
        # start. The visit itself takes well under 1.5 s at 20 ms latency, so 2 s wins.
        first, second = by_domain[domain][:2]
        assert second == pytest.approx(first + 2.0, abs=EPS), (domain, by_domain[domain])
    # The server side agrees, up to network latency: RCPTs for one domain come in bursts (one
    # per visit). The throttle spaces the visits' *starts* at the gate; on the wire a visit on
    # a fresh session (connect, greeting, EHLO, MAIL: four 20 +- 10 ms round trips plus the
    # server's own pauses) reaches its first RCPT up to ~0.2 s later than one on a reused
    # session (RSET, MAIL), so the server can see the second burst begin up to ~0.2 s less
    # than 2 s after the first.
    for domain, times in by_domain.items():
        rcpts = run.stats.rcpt_times(domain)
        bursts = [t for i, t in enumerate(rcpts) if i == 0 or t - rcpts[i - 1] >= 1.0]
        assert all(b >= a + 1.8 for a, b in itertools.pairwise(bursts)), (
            domain,
            rcpts,
        )
        assert len(bursts) <= len(times)
    limiter_stats = tool_statistics(run.supervisor, SMTP_CHECK)
    assert limiter_stats.calls == len(run.pools.calls)
    assert limiter_stats.throttle_waits >= len(greylist | first_dead)

    # -- MXLookup per_second 50 -----------------------------------------------------------
    lookups = [t for t, _ in run.resolver.calls]
    # One attempt per domain: every answer came at the first try, and the cache (and the
    # dispatcher's de-duplication) absorbed the second record of each domain.
    assert sorted(d for _, d in run.resolver.calls) == sorted(world.domains)
    busiest = max_in_window(lookups, 1.0)
    assert busiest <= 50
    # ...and the limit binds: the window fills up, and lookups were held back to exactly the
    # moment the 50th-latest one left the window.
    assert busiest >= 45
    ordered = sorted(lookups)
    held = [
        t
        for i, t in enumerate(ordered[50:], 50)
        if t == pytest.approx(ordered[i - 50] + 1.0, abs=EPS)
    ]
    # (Exact to EPS, so even a few are no coincidence; how many depends on how fast records
    # leave the pipeline, which the per-session error budget slows for no-pattern domains.)
    assert len(held) >= 3
    mx_stats = tool_statistics(run.supervisor, MX_LOOKUP)
    assert mx_stats.calls == len(lookups)
    assert mx_stats.throttle_waits > 0
    # The day budgets were counted (in blocks) in the shared usage store.
    day = dt.datetime(2026, 3, 2, tzinfo=dt.UTC)
    assert usage.used[(MX_LOOKUP, "per_day", day)] >= len(lookups)
    assert usage.used[(SMTP_CHECK, "per_day", day)] >= len(run.pools.calls)


# -- the daily budget ------------------------------------------------------------------------

BEFORE_MIDNIGHT = dt.datetime(2026, 3, 2, 23, 58, tzinfo=dt.UTC)
MIDNIGHT = dt.datetime(2026, 3, 3, tzinfo=dt.UTC)
DAY_LIMIT = 60  # the worlds below need about 78 SMTP calls: two days, not three


async def test_daily_budget_stops_at_its_limit_and_resumes_at_utc_midnight(
    autojump_clock: trio.testing.MockClock, sim_pipeline: SimPipelines
) -> None:
    assert trio.current_time() == 0.0
    midnight = (MIDNIGHT - BEFORE_MIDNIGHT).total_seconds()  # 120.0 in trio time
    world = World.generate(23, 60, latency_ms=20, jitter_ms=10)
    spine, owner = spine_for(world)
    store = FakeStore(spine)
    usage = MemoryUsageStore()
    limits = throttles(BEFORE_MIDNIGHT, usage, with_limit(SMTP, "per_day", DAY_LIMIT))
    waiting: list[SupervisorStatistics] = []

    async def watch(supervisor: Supervisor) -> None:
        await trio.sleep_until(midnight - 10.0)
        waiting.append(supervisor.statistics())

    with trio.fail_after(BOUND), capture_logs() as logs:
        run = await run_pipeline(sim_pipeline, world, store, owner, limits, during=watch)

    times = sorted(t for t, _, _ in run.pools.calls)
    assert DAY_LIMIT < len(times) <= 2 * DAY_LIMIT  # the world needs the next day, not a third
    before = [t for t in times if t < midnight - EPS]
    after = [t for t in times if t >= midnight - EPS]
    # Exactly the limit before midnight, then nothing until 00:00:00 UTC, then at once.
    assert len(before) == DAY_LIMIT
    assert before[-1] < 10.0  # the day's calls went quickly; the gap to midnight is the budget
    assert after[0] == pytest.approx(midnight, abs=EPS)
    # While waiting, the stats line shows when work resumes.
    assert waiting[0].throttles is not None
    smtp_stats = waiting[0].throttles.tools[SMTP_CHECK]
    assert smtp_stats.paused_until == MIDNIGHT
    assert smtp_stats.budgets["per_day"].exhausted_until == MIDNIGHT
    assert smtp_stats.budgets["per_day"].spent_here == DAY_LIMIT
    assert waiting[0].in_flight > 0  # records were waiting, not failed
    exhausted = [e for e in logs if e["event"] == "budget_exhausted"]
    assert [(e["tool"], e["resumes_at"]) for e in exhausted] == [(SMTP_CHECK, MIDNIGHT.isoformat())]
    assert tool_statistics(run.supervisor, SMTP_CHECK).paused_until is None
    # The shared count never passed the limit.
    assert usage.used[(SMTP_CHECK, "per_day", MIDNIGHT - dt.timedelta(days=1))] == DAY_LIMIT
    # No record failed because of the budget: everything has its ground-truth outcome, and the
    # records that were waiting at midnight completed after it.
    assert mismatches(world, store, spine, owner) == {}
    completed_after = [t for t, n in store.writes if t >= midnight]
    assert completed_after


async def test_daily_budget_survives_a_restart(
    autojump_clock: trio.testing.MockClock, sim_pipeline: SimPipelines
) -> None:
    assert trio.current_time() == 0.0
    origin = dt.datetime(2026, 3, 2, 23, 55, tzinfo=dt.UTC)
    midnight = (MIDNIGHT - origin).total_seconds()  # 300.0
    world = World.generate(29, 60, latency_ms=20, jitter_ms=10)
    spine, owner = spine_for(world)
    store = FakeStore(spine)
    usage = MemoryUsageStore()  # the database: outlives the daemon
    spec = with_limit(SMTP, "per_day", DAY_LIMIT)
    stopped_at: list[float] = []

    async def stop_when_exhausted(supervisor: Supervisor) -> None:
        # Polling the stats line, as an operator would; there is no event to wait on.
        while tool_statistics(supervisor, SMTP_CHECK).paused_until is None:  # noqa: ASYNC110
            await trio.sleep(0.1)
        stopped_at.append(trio.current_time())
        supervisor.request_stop()

    with trio.fail_after(BOUND):
        first = await run_pipeline(
            sim_pipeline,
            world,
            store,
            owner,
            throttles(origin, usage, spec),
            drain_deadline=10.0,
            during=stop_when_exhausted,
        )
    assert stopped_at[0] < 10.0  # the day's calls went quickly
    assert len(first.pools.calls) == DAY_LIMIT
    assert trio.current_time() < midnight - 60.0
    assert store.leases == {}  # the records that were waiting for the budget were released
    assert len(store.terminal) < len(spine)
    day1 = (SMTP_CHECK, "per_day", MIDNIGHT - dt.timedelta(days=1))
    assert usage.used[day1] == DAY_LIMIT

    # A new daemon, new throttles, same database, same UTC day.
    restarted_at = trio.current_time()
    with trio.fail_after(BOUND):
        second = await run_pipeline(
            sim_pipeline, world, store, owner, throttles(origin, usage, spec)
        )
    times = sorted(t for t, _, _ in second.pools.calls)
    assert times, "the restarted daemon never probed"
    assert [t for t in times if t < midnight - EPS] == []
    assert times[0] == pytest.approx(midnight, abs=EPS)
    assert second.resolver.calls[0][0] == pytest.approx(restarted_at, abs=EPS)  # DNS went on
    assert usage.used[day1] == DAY_LIMIT
    assert mismatches(world, store, spine, owner) == {}
