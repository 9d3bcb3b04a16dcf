"""Kill switches on the whole pipeline, in the simulated world, under MockClock.

Each switch trips on its scenario — outbound port 25 firewalled, our IP on a blocklist, our
resolver(s) failing — and leaves zero terminal rows for the records it affects: they stay
pending (Deferred, or never claimed while the loader is paused). Clearing it (what SIGHUP does)
lets them complete with their ground-truth outcome. The invariant across all of them: a fault on
our side never produces a terminal FAIL row.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from ct_actors.actors.dispatcher import DispatchSettings
from ct_actors.actors.loader import LoaderSettings
from ct_actors.actors.pool_manager import SmtpPoolManager
from ct_actors.actors.resolver_stage import RESOLVER_FAILURE, ResolverSettings
from ct_actors.actors.smtp_gate import IP_BLACKLISTED, PORT_BLOCKED, GuardSettings
from ct_actors.actors.supervisor import PipelineSettings, Supervisor
from ct_actors.actors.writer import WriterSettings
from ct_actors.demo.labels import expected_label
from ct_actors.dns.types import DnsUnavailable, MxLookup, MxResolver
from ct_actors.net.connector import Connector
from ct_actors.outcome import Deferred, Failed, FailureCode
from ct_actors.probe.domain_probe import RetryPolicy
from ct_actors.sim.stats import SimStats
from ct_actors.sim.world import Behaviour, World
from ct_actors.testing import (
    FakeStore,
    MemoryUsageStore,
    SimResolver,
)
from ct_actors.throttle.calendar import UtcClock
from ct_actors.throttle.limiter import ToolThrottles
from ct_actors.toolbox import load_toolbox
from tests.pipeline_support import SIM_POOL, SimPipelines, label

pytestmark = pytest.mark.timeout(60)

BOUND = 100_000  # virtual seconds
REGISTRY = load_toolbox(Path(__file__).parent.parent / "config" / "SNAP_ON_TOOLBOX.yaml")
DEFER = 30.0  # probe.defer_seconds: deferred records come back quickly
PORT = 2525

# Per-host windows that start at one session and may grow to four.
POOL = dataclasses.replace(
    SIM_POOL, port=PORT, initial_connections_per_host=1, max_connections_per_host=4
)

# A world of ordinary domains: the only legitimate terminal FAILs are NO-MX (and NO-PATTERN).
MIX = {
    Behaviour.VERIFIABLE: 0.35,
    Behaviour.SHARED_HOST: 0.2,
    Behaviour.CATCHALL: 0.1,
    Behaviour.ROLE_ONLY: 0.1,
    Behaviour.NO_PATTERN: 0.05,
    Behaviour.NO_MX: 0.1,
    Behaviour.NXDOMAIN: 0.1,
}
NO_MX = {Behaviour.NO_MX, Behaviour.NULL_MX, Behaviour.NXDOMAIN}
UNUSABLE = ("", "not a domain")  # CT-I-NO-DOMAIN, decided without any tool


def settings(*, failure_domains: int = 20, port_blocked_hosts: int = 5) -> PipelineSettings:
    mx = REGISTRY.mx_lookup
    smtp = REGISTRY.smtp_check
    return PipelineSettings(
        owner="test:1",
        max_in_flight=64,
        drain_deadline=60.0,
        stats_interval=1000.0,
        loader=LoaderSettings(claim_batch=20, lease_seconds=600.0, idle_poll=1.0),
        resolver=ResolverSettings(
            workers=64,
            cache_ttl=mx.cache_ttl or 0.0,
            retry_delay=mx.backoff.initial_delay,
            max_retries=mx.backoff.max_retries,
            retry_strategy=mx.backoff.strategy,
            failure_domains=failure_domains,
        ),
        dispatch=DispatchSettings(
            mode="smtp",
            verdict_ttl=smtp.cache_ttl or 0.0,
            retry=RetryPolicy(
                greylist_delay=2.5,
                greylist_retries=2,
                throttle_delay=smtp.backoff.initial_delay,
                throttle_retries=smtp.backoff.max_retries,
                throttle_strategy=smtp.backoff.strategy,
                defer_seconds=DEFER,
            ),
        ),
        writer=WriterSettings(batch_size=50, flush_interval=0.2),
        guard=GuardSettings(
            blocklist_networks=3,
            blocklist_window=3600.0,
            port_blocked_hosts=port_blocked_hosts,
            reachability_window=900.0,
        ),
    )


class Firewall:
    """A connector in front of the simulated internet. While `blocked`, a TCP connect to the
    SMTP port hangs, as when a firewall drops the SYN; the pool's connect_timeout fires."""

    def __init__(self, inner: Connector) -> None:
        self.inner = inner
        self.blocked = False
        self.dropped: list[tuple[float, str]] = []

    async def connect(self, address: str, port: int) -> trio.abc.Stream:
        if self.blocked and port == PORT:
            self.dropped.append((trio.current_time(), address))
            await trio.sleep_forever()
        return await self.inner.connect(address, port)


class TwoNameservers:
    """An MxResolver with two configured nameservers and the optional switching interface
    `ResolverStage` uses. A nameserver in `broken` raises DnsUnavailable (after `delay` virtual
    seconds: a timeout rather than a SERVFAIL); a working one answers from the world, naming
    itself as the nameserver that answered."""

    NAMESERVERS = ("10.0.0.1", "10.0.0.2")

    def __init__(self, world: World, *, delay: float = 0.0) -> None:
        self._sim = SimResolver(world)
        self.primary = 0
        self.broken: set[str] = set()
        self.delay = delay
        self.attempts: list[tuple[float, str, str]] = []  # (time, nameserver, domain)

    @property
    def active_nameserver(self) -> str:
        return self.NAMESERVERS[self.primary]

    def switch_nameserver(self) -> str | None:
        if self.primary + 1 >= len(self.NAMESERVERS):
            return None
        self.primary += 1
        return self.active_nameserver

    def reset_nameserver(self) -> None:
        self.primary = 0

    async def lookup(self, domain: str) -> MxLookup:
        ns = self.active_nameserver
        self.attempts.append((trio.current_time(), ns, domain))
        if ns in self.broken:
            if self.delay:
                await trio.sleep(self.delay)
            else:
                await trio.lowlevel.checkpoint()
            raise DnsUnavailable(domain, "SERVFAIL (simulated)", ns)
        answer = await self._sim.lookup(domain)
        return dataclasses.replace(answer, nameserver=ns)


@dataclasses.dataclass
class Records:
    world: World
    spine: dict[uuid.UUID, str | None]
    owner: dict[uuid.UUID, str]  # domain name, or the raw value for unusable ones
    store: FakeStore

    @classmethod
    def of(cls, world: World) -> Records:
        spine: dict[uuid.UUID, str | None] = {}
        owner: dict[uuid.UUID, str] = {}
        for i, name in enumerate(sorted(world.domains)):
            oid = uuid.UUID(int=(i << 8) + 1)
            spine[oid] = name
            owner[oid] = name
        for j, raw in enumerate(UNUSABLE):
            oid = uuid.UUID(int=(1 << 64) + j)
            spine[oid] = raw
            owner[oid] = raw
        return cls(world, spine, owner, FakeStore(spine))

    def has_domain(self, oid: uuid.UUID) -> bool:
        return self.owner[oid] in self.world.domains

    def expected(self, oid: uuid.UUID) -> str:
        if not self.has_domain(oid):
            return "FAIL CT-I-NO-DOMAIN"
        return expected_label(self.world, self.owner[oid])

    def got(self, oid: uuid.UUID) -> str | None:
        outcome = self.store.terminal.get(oid) or self.store.deferred.get(oid)
        return None if outcome is None else label(outcome.result)

    def mismatches(self) -> dict[str, tuple[str, str | None]]:
        return {
            self.owner[oid]: (self.expected(oid), self.got(oid))
            for oid in self.spine
            if self.got(oid) != self.expected(oid)
        }

    def settled(self) -> bool:
        """Every record has a terminal row, right or wrong, except those whose ground truth is
        to stay pending (and have been deferred): nothing more will happen."""
        return all(
            oid in self.store.terminal
            or (self.expected(oid) == "PENDING" and oid in self.store.deferred)
            for oid in self.spine
        )

    def wrong_terminal(self) -> dict[str, tuple[str, str]]:
        """Terminal rows that are not the ground truth: a fault of ours written as a verdict."""
        return {
            self.owner[oid]: (self.expected(oid), label(o.result))
            for oid, o in self.store.terminal.items()
            if label(o.result) != self.expected(oid)
        }

    async def names(self, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[tuple[str, str]]]:
        """The loader's names query: the world's sample people for each record's domain."""
        await trio.lowlevel.checkpoint()
        return {i: self.world.people(self.owner[i]) for i in ids if self.has_domain(i)}


async def wait_until(predicate: Callable[[], bool], step: float = 0.1) -> None:
    """Poll a condition on the pipeline's state (virtual time: polling costs nothing)."""
    while not predicate():  # noqa: ASYNC110
        await trio.sleep(step)


def quiet(supervisor: Supervisor) -> bool:
    """Nothing in flight and nothing buffered: every claimed record has been written."""
    return supervisor.credits.in_flight == 0


async def run_scenario(
    pipelines: SimPipelines,
    records: Records,
    *,
    script: Callable[[Supervisor], Awaitable[None]],
    resolver: MxResolver | None = None,
    firewall: list[Firewall] | None = None,
    stats: SimStats | None = None,
    **kw: int,
) -> Supervisor:
    """Run the pipeline (not in drain mode: deferred records must come back) while `script`
    drives the scenario; the run ends with request_stop() once the script has run. Its SMTP
    connections pass a `Firewall` (appended to `firewall`)."""

    def pools(sim: Connector) -> SmtpPoolManager:
        wall = Firewall(sim)
        if firewall is not None:
            firewall.append(wall)
        return SmtpPoolManager(POOL, wall, max_connections=32)

    return await pipelines.run(
        records.world,
        records.store,
        script=script,
        settings=settings(**kw),
        stats=stats,
        resolver=resolver,
        pools=pools,
        names=records.names,
        drain=False,
        throttles=ToolThrottles(
            dict(REGISTRY.tools),
            clock=UtcClock(dt.datetime(2026, 3, 2, 12, tzinfo=dt.UTC), trio.current_time()),
            usage=MemoryUsageStore(),
        ),
    )


def claims_between(store: FakeStore, start: float, end: float) -> list[tuple[float, int]]:
    return [(t, n) for t, n in store.claims if start < t < end]


def alerts(logs: list[MutableMapping[str, Any]], switch: str) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == "kill_switch_tripped" and e["switch"] == switch]


# -- smtp_port_blocked -----------------------------------------------------------------------

DEAD_MARKED_UNTIL = 5.0 + POOL.dead_host_backoff  # the hosts tried before the trip: connect
# timeout at t=5, then dead for dead_host_backoff


@dataclasses.dataclass
class Outage:
    world: World
    records: Records
    supervisor: Supervisor
    logs: list[MutableMapping[str, Any]]
    seen: dict[str, Any]


async def port_blocked(pipelines: SimPipelines, outage: float) -> Outage:
    """Port 25 firewalled from the start until `outage` (virtual seconds), then opened and the
    switches cleared; runs until every record has its ground-truth outcome (or an hour)."""
    world = World.generate(41, 120, mix=MIX, latency_ms=20, jitter_ms=10)
    records = Records.of(world)
    walls: list[Firewall] = []
    seen: dict[str, Any] = {}

    async def script(supervisor: Supervisor) -> None:
        (wall,) = walls
        wall.blocked = True  # from the start, as in a fresh canary environment
        with trio.fail_after(600):
            await wait_until(lambda: supervisor.switches.is_tripped(PORT_BLOCKED), step=0.01)
        seen["tripped_at"] = trio.current_time()
        # Everything in flight finishes as Deferred; then the pipeline holds still, although
        # the deferred records are claimable again after DEFER seconds.
        with trio.fail_after(600):
            await wait_until(lambda: quiet(supervisor))
        seen["quiet_at"] = trio.current_time()
        await trio.sleep_until(outage)
        seen["terminal"] = dict(records.store.terminal)
        seen["deferred"] = dict(records.store.deferred)
        seen["dropped"] = list(wall.dropped)
        # The operator opens the firewall and sends SIGHUP.
        wall.blocked = False
        seen["cleared"] = supervisor.clear_kill_switches()
        with trio.move_on_after(3600):
            await wait_until(records.settled, step=1.0)

    with capture_logs() as logs, trio.fail_after(BOUND):
        supervisor = await run_scenario(pipelines, records, script=script, firewall=walls)
    return Outage(world, records, supervisor, logs, seen)


@pytest.mark.parametrize(
    "outage",
    [
        pytest.param(90.0, id="cleared-within-dead-host-backoff"),
        pytest.param(DEAD_MARKED_UNTIL + 100.0, id="cleared-after-dead-host-backoff"),
    ],
)
async def test_port_25_blocked_trips_and_defers_then_clearing_completes(
    autojump_clock: trio.testing.MockClock, sim_pipeline: SimPipelines, outage: float
) -> None:
    run = await port_blocked(sim_pipeline, outage)
    records, seen, world = run.records, run.seen, run.world
    # Tripped at the first connect timeouts, alerted, and SMTP stayed halted: no connection
    # was tried after the trip.
    assert [e["switch"] for e in alerts(run.logs, PORT_BLOCKED)] == [PORT_BLOCKED]
    assert seen["tripped_at"] == pytest.approx(POOL.connect_timeout, abs=0.1)
    assert len({address for _, address in seen["dropped"]}) >= 5
    assert max(t for t, _ in seen["dropped"]) <= seen["tripped_at"]
    assert seen["cleared"] == [PORT_BLOCKED]
    # While tripped: no terminal row for any record with MX hosts (they are deferred, or were
    # never claimed); the no-MX and no-domain records completed, correctly: their answer needs
    # no port 25.
    for oid, outcome in seen["terminal"].items():
        assert label(outcome.result) == records.expected(oid)
        assert not records.has_domain(oid) or not world.domain(records.owner[oid]).has_mx
    assert seen["deferred"], "no record was deferred"
    for outcome in seen["deferred"].values():
        assert isinstance(outcome.result, Deferred)
    # Once the records in flight had finished, the loader claimed nothing while tripped.
    assert claims_between(records.store, seen["quiet_at"], outage) == []
    # After clearing: no fault of ours was written as a verdict, and every record has its
    # ground-truth outcome.
    assert records.wrong_terminal() == {}
    assert records.mismatches() == {}
    assert not run.supervisor.switches.is_tripped(PORT_BLOCKED)


async def test_loader_claims_nothing_once_a_switch_has_tripped(
    autojump_clock: trio.testing.MockClock,
    sim_pipeline: SimPipelines,
) -> None:
    run = await port_blocked(sim_pipeline, 60.0)
    assert claims_between(run.records.store, run.seen["tripped_at"], 60.0) == []


# -- ip_blacklist_detected -------------------------------------------------------------------

BLOCKLIST_MIX = {
    Behaviour.VERIFIABLE: 0.45,
    Behaviour.CATCHALL: 0.1,
    Behaviour.BLOCKLIST: 0.3,
    Behaviour.NO_MX: 0.15,
}


def blocklisted_world(seed: int, n: int, *, blocking: int) -> World:
    """A world where our IP is listed: `blocking` hosts refuse us, each in a network (/24) of
    its own, as the independent receivers that consult a blocklist are. (The generator puts
    every host in 127.10.0.0/24 upward; the evidence counts networks, not names.)"""
    world = World.generate(
        seed, n, mix=BLOCKLIST_MIX, latency_ms=20, jitter_ms=10, blocklist_hosts=blocking
    )
    hosts = dict(world.hosts)
    listed = sorted(h.name for h in hosts.values() if h.behaviour is Behaviour.BLOCKLIST)
    for i, name in enumerate(listed):
        hosts[name] = dataclasses.replace(hosts[name], ip=f"127.250.{i}.25")
    return dataclasses.replace(world, hosts=hosts)


async def test_blocklisted_ip_trips_and_defers_then_delisting_and_clearing_completes(
    autojump_clock: trio.testing.MockClock,
    sim_pipeline: SimPipelines,
) -> None:
    world = blocklisted_world(43, 100, blocking=5)
    blocking = [h for h in world.hosts.values() if h.behaviour is Behaviour.BLOCKLIST]
    assert len(blocking) == 5
    records = Records.of(world)
    listed = {
        o
        for o in records.spine
        if records.has_domain(o) and world.domain(records.owner[o]).behaviour is Behaviour.BLOCKLIST
    }
    assert len(listed) == 30
    outage = 120.0
    seen: dict[str, Any] = {}

    async def script(supervisor: Supervisor) -> None:
        with trio.fail_after(600):
            await wait_until(lambda: supervisor.switches.is_tripped(IP_BLACKLISTED), step=0.01)
        seen["tripped_at"] = trio.current_time()
        with trio.fail_after(600):
            await wait_until(lambda: quiet(supervisor))
        seen["quiet_at"] = trio.current_time()
        await trio.sleep_until(outage)
        seen["terminal"] = dict(records.store.terminal)
        seen["deferred"] = dict(records.store.deferred)
        seen["rcpts"] = len(stats.rcpts)
        # Delisted: the hosts that refused us now answer like any other, which makes their
        # domains' ground truth that of a verifiable domain.
        for host in blocking:
            world.hosts[host.name] = dataclasses.replace(host, behaviour=Behaviour.VERIFIABLE)
        for oid in listed:
            name = records.owner[oid]
            world.domains[name] = dataclasses.replace(
                world.domains[name], behaviour=Behaviour.VERIFIABLE
            )
        seen["cleared"] = supervisor.clear_kill_switches()
        with trio.move_on_after(3600):
            await wait_until(records.settled, step=1.0)

    stats = SimStats()
    with capture_logs() as logs, trio.fail_after(BOUND):
        supervisor = await run_scenario(sim_pipeline, records, script=script, stats=stats)

    [alert] = alerts(logs, IP_BLACKLISTED)
    assert "3 networks refused us" in alert["reason"]
    assert "network evidence alone" in alert["reason"]  # no DNSBL configured here
    assert alert["evidence"]["refusing_networks"] == 3
    assert {r["network"] for r in alert["evidence"]["refusals"]} <= {
        f"127.250.{i}.0/24" for i in range(5)
    }
    assert seen["cleared"] == [IP_BLACKLISTED]
    # While tripped: no terminal row for a blocklisted domain; every terminal row is right.
    assert listed.isdisjoint(seen["terminal"])
    for oid, outcome in seen["terminal"].items():
        assert label(outcome.result) == expected_label_before(records, oid, listed)
    blocked = [o for o in listed if o in seen["deferred"]]
    assert len(blocked) >= 3
    for oid in blocked:
        result = seen["deferred"][oid].result
        assert isinstance(result, Deferred)
        assert "blocked" in result.reason or "halted" in result.reason
    # No SMTP conversation after the trip had finished its in-flight visits, and the loader
    # claimed nothing.
    assert claims_between(records.store, seen["quiet_at"], outage) == []
    assert [e.time for e in stats.rcpts if seen["quiet_at"] < e.time < outage] == []
    # After delisting and clearing, every record completes with its (new) ground truth.
    assert records.wrong_terminal() == {}
    assert records.mismatches() == {}
    assert listed <= set(records.store.terminal)
    assert not supervisor.switches.is_tripped(IP_BLACKLISTED)


def expected_label_before(records: Records, oid: uuid.UUID, listed: set[uuid.UUID]) -> str:
    return "PENDING" if oid in listed else records.expected(oid)


HOSTILE_MIX = {**MIX, Behaviour.BLOCKLIST: 0.03}


async def test_hostile_domains_on_one_ip_neither_halt_the_fleet_nor_come_back_forever(
    autojump_clock: trio.testing.MockClock,
    sim_pipeline: SimPipelines,
) -> None:
    """Issue 10 item 2, the reproduction on the whole pipeline: three hostile domains whose
    MX names all resolve to one IP that answers 554 5.7.1 "blocked using zen.spamhaus.org".
    Before: the switch tripped, every healthy record stayed pending, and the hostile records
    came back after defer_seconds to trip it again after every SIGHUP. Now: no trip, every
    other record gets its ground truth, and the hostile records are deferred (the refusal
    might be about us) until the address has refused us for refusal_give_up seconds, then
    conclude CT-M-SMTP-FAIL: a bounded life."""
    world = World.generate(61, 100, mix=HOSTILE_MIX, latency_ms=20, jitter_ms=10)
    [blocker] = [h for h in world.hosts.values() if h.behaviour is Behaviour.BLOCKLIST]
    hostile = sorted(d.name for d in world.by_behaviour(Behaviour.BLOCKLIST))
    assert len(hostile) == 3
    hosts = {n: h for n, h in world.hosts.items() if n != blocker.name}
    domains = dict(world.domains)
    for i, name in enumerate(hostile):
        mx_name = f"mx.hostile-{i}.test"  # three MX names, one IP
        hosts[mx_name] = dataclasses.replace(blocker, name=mx_name)
        domains[name] = dataclasses.replace(domains[name], mx=((10, mx_name),))
    world = dataclasses.replace(world, hosts=hosts, domains=domains)
    records = Records.of(world)
    ids = {o for o in records.spine if records.owner[o] in hostile}
    give_up = GuardSettings().refusal_give_up
    seen: dict[str, Any] = {}

    async def script(supervisor: Supervisor) -> None:
        with trio.move_on_after(3 * give_up):
            await wait_until(lambda: ids <= set(records.store.terminal), step=1.0)
        seen["stats"] = supervisor.guard.statistics()

    with capture_logs() as logs, trio.fail_after(BOUND):
        supervisor = await run_scenario(sim_pipeline, records, script=script)

    assert alerts(logs, IP_BLACKLISTED) == []
    assert not supervisor.switches.is_tripped(IP_BLACKLISTED)
    # Every other record has its ground truth.
    others = {o for o in records.spine if o not in ids}
    assert {records.owner[o]: records.got(o) for o in others} == {
        records.owner[o]: records.expected(o) for o in others
    }
    # The hostile ones were deferred, then concluded once the address had refused us for the
    # give-up time; nothing about them after that.
    for oid in ids:
        final = records.store.terminal[oid].result
        assert isinstance(final, Failed) and final.code is FailureCode.SMTP_FAIL
        assert "refused-us" in final.blocking_reason
    assert seen["stats"].refusal_streaks.given_up >= 1
    written = [t for t, _ in records.store.writes]
    assert max(written) < give_up + 3 * DEFER + 120.0


# -- dns_resolver_failure --------------------------------------------------------------------


@pytest.mark.parametrize(
    "delay",
    [
        pytest.param(0.0, id="servfail"),
        pytest.param(1.0, id="timeout-1s"),
    ],
)
async def test_failing_resolver_switches_to_the_next_nameserver(
    autojump_clock: trio.testing.MockClock, sim_pipeline: SimPipelines, delay: float
) -> None:
    world = World.generate(47, 100, mix=MIX, latency_ms=20, jitter_ms=10)
    records = Records.of(world)
    resolver = TwoNameservers(world, delay=delay)
    resolver.broken.add("10.0.0.1")
    seen: dict[str, Any] = {}

    async def script(supervisor: Supervisor) -> None:
        with trio.fail_after(600):
            await wait_until(lambda: resolver.primary == 1, step=0.01)
        seen["switched_at"] = trio.current_time()
        with trio.move_on_after(3600):
            await wait_until(records.settled, step=1.0)

    with capture_logs() as logs, trio.fail_after(BOUND):
        supervisor = await run_scenario(
            sim_pipeline, records, script=script, resolver=resolver, failure_domains=5
        )

    # Whatever happened, no fault of ours was written as a verdict.
    assert records.wrong_terminal() == {}
    [switched] = [e for e in logs if e["event"] == "resolver_switched"]
    assert (switched["failed"], switched["now_using"]) == ("10.0.0.1", "10.0.0.2")
    assert alerts(logs, RESOLVER_FAILURE) == []
    assert not supervisor.switches.is_tripped(RESOLVER_FAILURE)
    assert resolver.active_nameserver == "10.0.0.2"
    # No attempt went to the broken nameserver after the switch.
    assert max(t for t, ns, _ in resolver.attempts if ns == "10.0.0.1") <= seen["switched_at"]
    # The domains that failed on the first nameserver were deferred, never failed...
    failed = {
        oid
        for oid, o in records.store.deferred.items()
        if isinstance(o.result, Deferred) and "resolver could not answer" in o.result.reason
    }
    assert len(failed) >= 5
    # ...and came back and completed on the second; so did everything else.
    assert records.wrong_terminal() == {}
    assert records.mismatches() == {}
    assert supervisor.statistics().resolver.resolver_switches == 1


async def all_resolvers_down(pipelines: SimPipelines, delay: float) -> Outage:
    """Both nameservers broken from the start; repaired and cleared 3 * DEFER after the
    pipeline went quiet; runs until every record is settled (or an hour)."""
    world = World.generate(53, 100, mix=MIX, latency_ms=20, jitter_ms=10)
    records = Records.of(world)
    resolver = TwoNameservers(world, delay=delay)
    resolver.broken.update(TwoNameservers.NAMESERVERS)
    seen: dict[str, Any] = {"resolver": resolver}

    async def script(supervisor: Supervisor) -> None:
        with trio.fail_after(600):
            await wait_until(lambda: supervisor.switches.is_tripped(RESOLVER_FAILURE), step=0.01)
        seen["tripped_at"] = trio.current_time()
        with trio.fail_after(600):
            await wait_until(lambda: quiet(supervisor))
        seen["quiet_at"] = trio.current_time()
        seen["outage"] = outage = seen["quiet_at"] + 3 * DEFER
        await trio.sleep_until(outage)
        seen["terminal"] = dict(records.store.terminal)
        seen["deferred"] = dict(records.store.deferred)
        seen["attempts"] = list(resolver.attempts)
        resolver.broken.clear()  # repaired
        seen["cleared"] = supervisor.clear_kill_switches()
        seen["nameserver_after_clear"] = resolver.active_nameserver
        with trio.move_on_after(3600):
            await wait_until(records.settled, step=1.0)

    with capture_logs() as logs, trio.fail_after(BOUND):
        supervisor = await run_scenario(
            pipelines, records, script=script, resolver=resolver, failure_domains=5
        )
    return Outage(world, records, supervisor, logs, seen)


@pytest.mark.parametrize("delay", [0.0, 1.0], ids=["servfail", "timeout-1s"])
async def test_all_resolvers_failing_trips_and_pauses_then_clearing_completes(
    autojump_clock: trio.testing.MockClock, sim_pipeline: SimPipelines, delay: float
) -> None:
    run = await all_resolvers_down(sim_pipeline, delay)
    records, seen, logs = run.records, run.seen, run.logs
    [switched] = [e for e in logs if e["event"] == "resolver_switched"]
    assert (switched["failed"], switched["now_using"]) == ("10.0.0.1", "10.0.0.2")
    [alert] = alerts(logs, RESOLVER_FAILURE)
    assert alert["failed"] == "10.0.0.2"
    assert seen["cleared"] == [RESOLVER_FAILURE]
    assert seen["nameserver_after_clear"] == "10.0.0.1"  # back to the first configured one
    # Paused: once the records in flight were deferred, no lookup reached a resolver and the
    # loader claimed nothing.
    assert max(t for t, _, _ in seen["attempts"]) <= seen["quiet_at"]
    assert claims_between(records.store, seen["quiet_at"], seen["outage"]) == []
    # Zero terminal rows for records with a domain; only the unusable ones were decided.
    assert {records.owner[o] for o in seen["terminal"]} <= set(UNUSABLE)
    assert seen["deferred"]
    for outcome in seen["deferred"].values():
        assert isinstance(outcome.result, Deferred)
        assert "resolver could not answer" in outcome.result.reason
    # After repair and clearing, everything completes.
    assert records.wrong_terminal() == {}
    assert records.mismatches() == {}
    assert not run.supervisor.switches.is_tripped(RESOLVER_FAILURE)


async def test_no_lookup_reaches_a_resolver_once_the_switch_has_tripped(
    autojump_clock: trio.testing.MockClock,
    sim_pipeline: SimPipelines,
) -> None:
    run = await all_resolvers_down(sim_pipeline, 0.0)
    after = [a for a in run.seen["attempts"] if a[0] > run.seen["tripped_at"]]
    assert after == []
