"""The watchdog's health rule (`ct_actors/service/watchdog.py`), driven by hand, and the ping
task (`SystemdService`) under MockClock: with scripted readings, and on a real `Supervisor`
whose writer wedges, whose spine is empty, or whose SMTP budget runs out until midnight."""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import math
import types
import typing
import uuid
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from ct_actors.actors.dispatcher import DispatchSettings
from ct_actors.actors.loader import LoaderSettings
from ct_actors.actors.supervisor import PipelineSettings, Supervisor
from ct_actors.actors.supervisor_statistics import SupervisorStatistics
from ct_actors.actors.writer import WriterSettings, WriterStatistics
from ct_actors.config import load_config
from ct_actors.outcome import Outcome
from ct_actors.probe.domain_probe import RetryPolicy
from ct_actors.service import (
    HealthMonitor,
    HealthSample,
    HealthVerdict,
    Notifier,
    SystemdService,
    WatchdogPolicy,
)
from ct_actors.service.status import budget_pauses, sample_statistics, status_line
from ct_actors.sim.world import World
from ct_actors.testing import (
    FakeStore,
    MemoryUsageStore,
    Report,
    open_sim_connector,
)
from ct_actors.throttle.calendar import UtcClock
from ct_actors.throttle.killswitch import KillSwitchesStatistics, SwitchStatistics
from ct_actors.throttle.limiter import LimiterStatistics, ThrottlesStatistics, ToolThrottles
from ct_actors.toolbox import SMTP_CHECK, load_toolbox
from tests.pipeline_support import SimPipelines, spine_for

pytestmark = pytest.mark.timeout(60)
T = TypeVar("T")

POLICY = WatchdogPolicy(stall_seconds=600.0, writer_seconds=180.0, record_seconds=3600.0)
REPO = Path(__file__).resolve().parents[1]
REGISTRY = load_toolbox(REPO / "config" / "SNAP_ON_TOOLBOX.yaml")


# ─── the rule, sample by sample ─────────────────────────────────────────────────────────────


class Script:
    """Feeds a monitor one reading every `step` seconds; counters move only when told."""

    def __init__(self, policy: WatchdogPolicy = POLICY, step: float = 30.0, **state: Any):
        self.monitor = HealthMonitor(policy)
        self.step = step
        self.sample = HealthSample(**{"now": 0.0, "credits_free": 10, **state})

    def set(self, **changes: Any) -> None:
        self.sample = dataclasses.replace(self.sample, **changes)

    def bump(self, *counters: str) -> None:
        self.set(**{c: getattr(self.sample, c) + 1 for c in counters})

    def run(self, seconds: float, each: Callable[[Script], None] = lambda s: None) -> Iterator[Any]:
        """Advance `seconds`, yielding (now, verdict) after each reading."""
        end = self.sample.now + seconds
        while self.sample.now < end - 1e-9:
            self.set(now=self.sample.now + self.step)
            each(self)
            yield self.sample.now, self.monitor.assess(self.sample)

    def first_unhealthy(
        self, seconds: float, each: Callable[[Script], None] = lambda s: None
    ) -> tuple[float, HealthVerdict] | None:
        for now, verdict in self.run(seconds, each):
            if not verdict.healthy:
                return now, verdict
        return None


def claims_every(period: float) -> Callable[[Script], None]:
    def each(s: Script) -> None:
        if s.sample.now % period < s.step:
            s.bump("claims")

    return each


def test_idle_daemon_polling_an_empty_spine_stays_healthy_for_days() -> None:
    s = Script()
    verdicts = [v for _, v in s.run(3 * 86400, claims_every(30.0))]
    assert all(v.healthy for v in verdicts)
    assert {v.state for v in verdicts} == {"idle"}


def test_loader_that_stops_claiming_with_free_credits_is_a_stall() -> None:
    s = Script()
    assert s.first_unhealthy(3600, claims_every(30.0)) is None
    now0 = s.sample.now
    found = s.first_unhealthy(3600)  # the loader never comes back
    assert found is not None
    now, verdict = found
    assert verdict.rule == "loader" and verdict.state == "stalled"
    assert 600 < now - now0 <= 600 + s.step
    assert "no claim attempt" in verdict.reason


def test_loader_waiting_for_credits_is_not_stuck() -> None:
    # Every credit is held by records in flight that keep moving: the loader may wait forever.
    s = Script(in_flight=512, credits_free=0)

    def each(s: Script) -> None:
        s.bump("activity")

    assert s.first_unhealthy(7200, each) is None


def test_writer_flush_that_never_returns_stops_the_pings_after_writer_seconds() -> None:
    s = Script(in_flight=100)

    def flowing(s: Script) -> None:
        s.bump("committed", "activity", "claims")

    assert s.first_unhealthy(600, flowing) is None
    s.set(writer_buffered=100)
    wedged_at = s.sample.now

    def wedged(s: Script) -> None:
        s.bump("activity", "claims")  # the rest of the pipeline still moves for a while

    found = s.first_unhealthy(3600, wedged)
    assert found is not None
    now, verdict = found
    assert verdict.rule == "writer"
    assert 180 < now - wedged_at <= 180 + s.step
    assert "flush of 100 rows" in verdict.reason


def test_database_outage_with_the_writer_retrying_is_not_a_wedge() -> None:
    s = Script(in_flight=512, credits_free=0, writer_buffered=500)
    s.set(writer_failing_since=0.0)

    def retrying(s: Script) -> None:
        if s.sample.now % 90 < s.step:  # command timeout + back-off: one failure per ~90 s
            s.bump("write_retries")

    verdicts = [v for _, v in s.run(6 * 3600, retrying)]
    assert all(v.healthy for v in verdicts)
    assert verdicts[-1].state == "database"
    # The database comes back and the batch commits: back to processing, no stale clocks.
    s.set(writer_failing_since=None, writer_buffered=0)
    s.bump("committed")
    assert s.monitor.assess(s.sample).state == "processing"
    assert s.first_unhealthy(300, lambda s: s.bump("committed", "activity")) is None


def test_database_outage_that_hangs_the_write_itself_is_a_wedge() -> None:
    # failing_since is set but no attempt ever returns again: the writer is not alive.
    s = Script(in_flight=512, credits_free=0, writer_buffered=500, writer_failing_since=0.0)
    found = s.first_unhealthy(3600)
    assert found is not None and found[1].rule == "writer"


def test_records_in_flight_with_nothing_moving_is_a_stall() -> None:
    s = Script(in_flight=40, credits_free=0)
    found = s.first_unhealthy(3600)
    assert found is not None
    now, verdict = found
    first_reading = s.step
    assert verdict.rule == "pipeline" and 600 < now - first_reading <= 630
    assert "40 records in flight" in verdict.reason


def test_greylisting_waits_are_activity_not_a_stall() -> None:
    # Everything in flight is greylisted: a retry visit every 120 s, outcomes after the third.
    s = Script(in_flight=40, credits_free=0)

    def greylisted(s: Script) -> None:
        if s.sample.now % 120 < s.step:
            s.bump("activity")
        if s.sample.now % 360 < s.step:
            s.bump("committed")

    assert s.first_unhealthy(4 * 3600, greylisted) is None


def test_budget_exhausted_until_midnight_keeps_pinging_then_the_clock_restarts() -> None:
    s = Script(in_flight=64, credits_free=0, oldest_in_flight=0.0)
    s.set(budget_paused=("TOOL-005 SMTPCheck until 2026-01-02T00:00:00+00:00",))

    def waiting(s: Script) -> None:
        s.set(oldest_in_flight=s.sample.oldest_in_flight + s.step)

    verdicts = [v for _, v in s.run(12 * 3600, waiting)]
    assert all(v.healthy and v.state == "paused" for v in verdicts)
    assert "budget TOOL-005" in verdicts[-1].reason
    # Midnight: the budget opens. Work resumes; records 12 h old are not "stuck records".
    s.set(budget_paused=())

    def resumed(s: Script) -> None:
        waiting(s)
        s.bump("activity", "committed")

    assert s.first_unhealthy(3000, resumed) is None
    # ...but if nothing moves after the pause ends, that is a stall, counted from its end.
    end = s.sample.now
    found = s.first_unhealthy(3600, waiting)
    assert found is not None and found[1].rule == "pipeline"
    assert 600 < found[0] - end <= 630


def test_kill_switch_pause_keeps_pinging_even_with_a_silent_loader() -> None:
    s = Script(in_flight=3, kill_switches=("smtp_port_blocked",))
    verdicts = [v for _, v in s.run(24 * 3600)]
    assert all(v.healthy for v in verdicts)
    assert verdicts[-1].state == "paused"
    assert verdicts[-1].reason == "kill switch smtp_port_blocked"


def test_one_record_stuck_while_the_rest_flows() -> None:
    s = Script(in_flight=100)

    def flowing(s: Script) -> None:
        s.bump("committed", "activity", "claims")
        s.set(oldest_in_flight=s.sample.oldest_in_flight + s.step)

    found = s.first_unhealthy(3 * 3600, flowing)
    assert found is not None
    now, verdict = found
    # An age is only believed as far back as the monitor has been watching (its first reading).
    assert verdict.rule == "record" and 3600 < now - s.step <= 3630


def test_stopping_is_healthy_and_resets_the_clocks() -> None:
    s = Script(in_flight=10, credits_free=0)
    assert s.first_unhealthy(500) is None
    s.set(stopping=True)
    verdicts = [v for _, v in s.run(3600)]
    assert all(v.healthy and v.state == "stopping" for v in verdicts)


def test_recovery_after_a_stall() -> None:
    s = Script(in_flight=10, credits_free=0)
    assert s.first_unhealthy(700) is not None
    s.bump("committed")
    verdict = s.monitor.assess(s.sample)
    assert verdict.healthy


def test_thresholds_follow_the_smtp_timeouts() -> None:
    cfg = load_config(None, overrides={"smtp.command_timeout": 900.0}, probing=False)
    policy = WatchdogPolicy.for_config(cfg)
    assert policy.stall_seconds == 2 * (cfg.smtp.connect_timeout + 900.0)
    assert policy.record_seconds == 6 * policy.stall_seconds
    default = WatchdogPolicy.for_config(load_config(None, probing=False))
    assert default == WatchdogPolicy()
    assert WatchdogPolicy.for_config(cfg, stall_seconds=42.0).stall_seconds == 42.0


# ─── reading the supervisor's statistics, and the status line ───────────────────────────────


def zeroed(cls: type[T]) -> T:
    """A statistics value with every count zero, every optional None, every map empty."""
    hints = typing.get_type_hints(cls)
    return cls(**{f.name: _zero(hints[f.name]) for f in dataclasses.fields(cls)})  # type: ignore[call-arg]


def _zero(kind: Any) -> Any:
    origin = typing.get_origin(kind)
    if origin in (types.UnionType, typing.Union):
        return None
    if dataclasses.is_dataclass(kind):
        return zeroed(kind)  # type: ignore[arg-type]
    if origin is tuple:
        return ()
    if origin is not None:
        return {}  # Mapping[...]
    return {int: 0, float: 0.0, bool: False, str: "", Decimal: Decimal(0)}[kind]


def switches(*tripped: str) -> KillSwitchesStatistics:
    names = ("dns_resolver_failure", "smtp_port_blocked")
    return KillSwitchesStatistics(
        {n: SwitchStatistics("halt", n in tripped, None, None, 0) for n in names}
    )


def stats(**overrides: Any) -> SupervisorStatistics:
    zero, limiter = zeroed(SupervisorStatistics), zeroed(LimiterStatistics)
    replace = dataclasses.replace
    paused = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    base = replace(
        zero,
        records_done=1234,
        in_flight=512,
        writer=replace(zero.writer, batches=7, retries=1, buffered=3),
        loader=replace(zero.loader, claims=5, empty_claims=2, claim_errors=1, renewals=99),
        dispatcher=replace(zero.dispatcher, jobs=10, domains_probed=4, joined=1, cache_hits=2),
        resolver=replace(zero.resolver, lookups=4, cache_hits=1, busy=3),
        smtp=replace(zero.smtp, sessions_opened_total=6, open_sessions=2),
        throttles=ThrottlesStatistics(
            {
                "TOOL-004": replace(limiter, tool="MXLookup", calls=4, throttle_waits=1),
                "TOOL-005": replace(limiter, tool="SMTPCheck", calls=9, paused_until=paused),
            }
        ),
        kill_switches=switches(),
    )
    return replace(base, **overrides)


def read(
    raw: SupervisorStatistics, utc: str = "2026-01-01T12:00:00+00:00", **kw: Any
) -> HealthSample:
    args: dict[str, Any] = {
        "paused_until": {"TOOL-005 SMTPCheck": dt.datetime(2026, 1, 2, tzinfo=dt.UTC)},
        "now": 100.0,
        "credits_free": 0,
        "oldest_in_flight": 12.0,
        "stopping": False,
        "drained": False,
        "utc": dt.datetime.fromisoformat(utc),
    }
    args.update(kw)
    return sample_statistics(raw, **args)


def test_sample_from_statistics() -> None:
    s = read(stats())
    assert (s.committed, s.write_retries, s.writer_buffered) == (7, 1, 3)
    assert s.claims == 8  # renewals are not claim attempts
    assert s.activity == 10 + 4 + 1 + 2 + 4 + 1 + 6 + 4 + 1 + 9
    assert s.budget_paused == ("TOOL-005 SMTPCheck until 2026-01-02T00:00:00+00:00",)
    assert s.kill_switches == () and s.done == 1234 and s.in_flight == 512
    # After midnight the stale `paused_until` no longer excuses anything.
    assert read(stats(), utc="2026-01-02T00:00:01+00:00").budget_paused == ()
    assert read(zeroed(SupervisorStatistics)).activity == 0


def test_budget_pauses_are_read_typed_from_the_limiters() -> None:
    until = dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    throttles = SimpleNamespace(
        by_tool={
            "TOOL-004": SimpleNamespace(spec=SimpleNamespace(name="MXLookup"), paused_until=None),
            "TOOL-005": SimpleNamespace(spec=SimpleNamespace(name="SMTPCheck"), paused_until=until),
        }
    )
    assert budget_pauses(throttles) == {"TOOL-005 SMTPCheck": until}  # type: ignore[arg-type]
    assert budget_pauses(None) == {}


def test_status_lines() -> None:
    s = read(stats(throttles=None), paused_until={})
    assert status_line(s, None, 56.74) == (
        "processing: 1234 done, 56.7/s, 512 in flight, kill switches: none"
    )
    tripped = stats(kill_switches=switches("smtp_port_blocked"))
    assert status_line(read(tripped)) == (
        "paused: kill switch smtp_port_blocked; 1234 done, 512 in flight"
    )
    assert status_line(read(stats())).startswith("paused: budget TOOL-005 SMTPCheck until 2026")
    assert status_line(read(stats(), stopping=True)) == "draining: 1234 done, 512 in flight"
    assert status_line(read(stats(), drained=True)) == "drained: 1234 done, stopping"
    writer = dataclasses.replace(zeroed(WriterStatistics), failing_since=40.0, buffered=9)
    failing = stats(throttles=None, writer=writer)
    line = status_line(read(failing, paused_until={}))
    assert line.startswith("database unavailable for 60 s, writer retrying")
    verdict = HealthMonitor().assess(read(stats()))
    stalled = dataclasses.replace(verdict, healthy=False, reason="writer wedged: …")
    assert status_line(read(stats()), stalled) == "stalled: writer wedged: …"


# ─── the ping task ──────────────────────────────────────────────────────────────────────────


class RecordingNotifier(Notifier):
    """A Notifier that keeps (trio time, message) instead of sending."""

    def __init__(self) -> None:
        super().__init__("\0recording")
        self.messages: list[tuple[float, str]] = []

    def notify(self, *assignments: str, **fields: object) -> bool:
        lines = [*assignments, *(f"{k}={v}" for k, v in fields.items())]
        self.messages.append((trio.current_time(), "\n".join(lines)))
        return True

    def times(self, assignment: str) -> list[float]:
        return [t for t, m in self.messages if assignment in m.split("\n")]

    def statuses(self) -> list[str]:
        return [
            line[len("STATUS=") :]
            for _, m in self.messages
            for line in m.split("\n")
            if line.startswith("STATUS=")
        ]


def fake_supervisor(stats_interval: float = 30.0) -> Any:
    return SimpleNamespace(
        settings=SimpleNamespace(stats_interval=stats_interval),
        stop_requested=False,
        loader=SimpleNamespace(drained=trio.Event()),
        finished=trio.Event(),
    )


async def test_ping_task_follows_the_rule_and_logs_one_unhealthy_episode(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Scripted readings: flowing, then the writer stops committing with work in flight."""
    state = {"committed": 0, "wedged_at": math.inf}

    def sample(supervisor: Any) -> HealthSample:
        now = trio.current_time()
        if now < state["wedged_at"]:
            state["committed"] += 1
        return HealthSample(
            now=now, committed=state["committed"], writer_buffered=50, in_flight=50,
            activity=int(now), claims=int(now), credits_free=0, done=state["committed"],
            stopping=supervisor.stop_requested,
        )  # fmt: skip

    notifier = RecordingNotifier()
    service = SystemdService(notifier, watchdog_usec=2_000_000, policy=POLICY, sample=sample)
    supervisor = fake_supervisor()
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(service.run, supervisor)
            await trio.sleep(100)
            state["wedged_at"] = trio.current_time()
            await trio.sleep(1000)
            supervisor.stop_requested = True
            await trio.sleep(5)
            nursery.cancel_scope.cancel()
    pings = notifier.times("WATCHDOG=1")
    wedged = 100.0
    before = [t for t in pings if t < wedged]
    assert len(before) >= 99  # every second (WATCHDOG_USEC/2) while healthy
    assert all(b - a <= 1.0 + 1e-6 for a, b in itertools_pairwise(before))
    stalled = [t for t in pings if wedged + 181 < t < 1100]
    assert stalled == [], "pings must stop once the writer rule fails"
    assert max(t for t in pings if t < 1100) >= wedged + 179  # ...and not before the threshold
    # Stopping: healthy again (the drain deadline and TimeoutStopSec bound it).
    assert any(t >= 1100 for t in pings)
    unhealthy = [e for e in logs if e["event"] == "watchdog_unhealthy"]
    assert len(unhealthy) == 1 and unhealthy[0]["rule"] == "writer"
    assert unhealthy[0]["pings_withheld"] is True
    assert [e["event"] for e in logs if e["event"] == "watchdog_recovered"] == [
        "watchdog_recovered"
    ]
    assert any(s.startswith("stalled: writer wedged") for s in notifier.statuses())
    assert notifier.times("READY=1") == [0.0]
    [stopping] = notifier.times("STOPPING=1")
    assert 1100 <= stopping <= 1100.5


def itertools_pairwise(xs: list[float]) -> list[tuple[float, float]]:
    return list(itertools.pairwise(xs))


# ─── on a real supervisor ───────────────────────────────────────────────────────────────────


def pipeline_settings(mode: str = "mx-only") -> PipelineSettings:
    return PipelineSettings(
        owner="test:1",
        max_in_flight=64,
        stats_interval=30.0,
        loader=LoaderSettings(claim_batch=20, lease_seconds=600.0, idle_poll=5.0),
        dispatch=DispatchSettings(
            mode=mode,  # type: ignore[arg-type]
            retry=RetryPolicy(greylist_delay=2.5, greylist_retries=2, defer_seconds=600.0),
        ),
        writer=WriterSettings(batch_size=10, flush_interval=0.2),
    )


class WedgingStore(FakeStore):
    """Its `wedge_after`-th write (and every later one) never returns."""

    def __init__(self, spine: dict[uuid.UUID, str | None], wedge_after: int) -> None:
        super().__init__(spine)
        self.wedge_after = wedge_after
        self.wedged_at: float | None = None

    async def write_outcomes(self, owner: str, outcomes: Any, **kw: Any) -> Report:
        if len(self.writes) >= self.wedge_after:
            if self.wedged_at is None:
                self.wedged_at = trio.current_time()
            await trio.sleep_forever()
        return await super().write_outcomes(owner, outcomes, **kw)


async def watch_supervisor(
    supervisor: Supervisor,
    world: World,
    seconds: float,
    *,
    watchdog_usec: int = 60_000_000,
    clock: UtcClock | None = None,
) -> tuple[RecordingNotifier, list[dict[str, Any]]]:
    """Run `supervisor` and the service task for `seconds` of virtual time (`clock`: the UTC
    clock the throttles use, so "budget paused until midnight" reads the same time)."""
    notifier = RecordingNotifier()
    kw: dict[str, Any] = {}
    if clock is not None:
        kw["utc"] = lambda: clock.utc_at(trio.current_time())
    service = SystemdService(notifier, watchdog_usec=watchdog_usec, policy=POLICY, **kw)
    with capture_logs() as logs:
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            await nursery.start(service.run, supervisor)
            await trio.sleep(seconds)
            nursery.cancel_scope.cancel()
    return notifier, logs


async def make_supervisor(
    pipelines: SimPipelines,
    store: FakeStore,
    world: World,
    owner: dict[uuid.UUID, str],
    connector: Any,
    *,
    mode: str = "mx-only",
    drain: bool = False,
    **kw: Any,
) -> Supervisor:
    return pipelines.build(
        world,
        store,
        connector,
        settings=pipeline_settings(mode),
        owner=owner,
        drain=drain,
        **kw,
    )


async def test_supervisor_with_a_wedged_writer_stops_the_pings(
    autojump_clock: trio.testing.MockClock, sim_pipeline: SimPipelines
) -> None:
    world = World.generate(3, 200, latency_ms=20, jitter_ms=5)
    spine, owner = spine_for(world)
    store = WedgingStore(spine, wedge_after=3)
    async with open_sim_connector(world) as connector:
        supervisor = await make_supervisor(sim_pipeline, store, world, owner, connector)
        notifier, logs = await watch_supervisor(supervisor, world, 1800, watchdog_usec=2_000_000)
    assert store.wedged_at is not None
    pings = notifier.times("WATCHDOG=1")
    assert max(pings) >= store.wedged_at + 179  # pinging until the threshold...
    assert max(pings) <= store.wedged_at + 181 + 1  # ...and never after it
    [unhealthy] = [e for e in logs if e["event"] == "watchdog_unhealthy"]
    assert unhealthy["rule"] == "writer"
    assert supervisor.credits.in_flight > 0


async def test_idle_supervisor_keeps_pinging(
    autojump_clock: trio.testing.MockClock, sim_pipeline: SimPipelines
) -> None:
    world = World.generate(3, 5)
    async with open_sim_connector(world) as connector:
        supervisor = await make_supervisor(sim_pipeline, FakeStore({}), world, {}, connector)
        notifier, logs = await watch_supervisor(supervisor, world, 4 * 3600)
    pings = notifier.times("WATCHDOG=1")
    assert len(pings) >= 4 * 3600 / 30 - 1  # every 30 s (WatchdogSec=60)
    assert not [e for e in logs if e["event"].startswith("watchdog_")]
    assert notifier.statuses()[-1] == "processing: 0 done, 0.0/s, 0 in flight, kill switches: none"


async def test_smtp_budget_used_up_until_midnight_keeps_pinging(
    autojump_clock: trio.testing.MockClock, sim_pipeline: SimPipelines
) -> None:
    """SMTPCheck's per_day budget runs out at 20:00 with records in flight: they wait 4 h in
    the throttle (far beyond every threshold), which is no wedge; at midnight they finish and
    the pings never stopped."""
    world = World.generate(5, 60, latency_ms=20, jitter_ms=5)
    spine, owner = spine_for(world)
    origin = dt.datetime(2026, 1, 1, 20, 0, tzinfo=dt.UTC)
    smtp = REGISTRY.smtp_check
    limits = tuple(
        dataclasses.replace(r, limit=20) if r.scope == "per_day" else r for r in smtp.rate_limits
    )
    specs = {**REGISTRY.tools, SMTP_CHECK: dataclasses.replace(smtp, rate_limits=limits)}
    clock = UtcClock(origin, 0.0)  # trio time 0.0 is 20:00
    assert trio.current_time() == 0.0
    throttles = ToolThrottles(specs, clock=clock, usage=MemoryUsageStore())
    store = FakeStore(spine)
    async with open_sim_connector(world) as connector:
        supervisor = await make_supervisor(
            sim_pipeline, store, world, owner, connector, mode="smtp", throttles=throttles
        )
        notifier, logs = await watch_supervisor(supervisor, world, 5 * 3600, clock=clock)
    assert not [e for e in logs if e["event"] == "watchdog_unhealthy"]
    assert [e for e in logs if e["event"] == "budget_exhausted"]
    pings = notifier.times("WATCHDOG=1")
    assert all(b - a <= 30.0 + 1e-6 for a, b in itertools_pairwise(pings))
    assert pings[-1] >= 5 * 3600 - 30
    assert any("paused: budget TOOL-005" in s for s in notifier.statuses())
    # Work that waited for midnight (4 h of virtual time) did finish afterwards.
    late = [t for t, _ in store.writes if t > 4 * 3600]
    assert late, "nothing was written after midnight"
    assert all(isinstance(o, Outcome) for o in store.terminal.values())


async def test_drained_pipeline_says_stopping_once(
    autojump_clock: trio.testing.MockClock, sim_pipeline: SimPipelines
) -> None:
    """`run --drain`: STOPPING=1 as soon as the loader has drained, not only at a signal."""
    world = World.generate(7, 20, latency_ms=20, jitter_ms=5)
    spine, owner = spine_for(world)
    notifier = RecordingNotifier()
    service = SystemdService(notifier, watchdog_usec=2_000_000, policy=POLICY)
    async with open_sim_connector(world) as connector:
        supervisor = await make_supervisor(
            sim_pipeline, FakeStore(spine), world, owner, connector, drain=True
        )
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            await nursery.start(service.run, supervisor)
            await supervisor.loader.drained.wait()
            drained_at = trio.current_time()
            await supervisor.finished.wait()
            nursery.cancel_scope.cancel()
    [ready] = notifier.times("READY=1")
    [stopping] = notifier.times("STOPPING=1")
    assert ready < drained_at <= stopping <= drained_at + 0.25 + 1e-6
    [message] = [m for _, m in notifier.messages if "STOPPING=1" in m]
    assert f"STATUS=drained: {len(spine)} done, stopping" in message.split("\n")
