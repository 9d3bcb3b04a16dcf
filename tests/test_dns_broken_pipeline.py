"""Issue 10 item 2 (DNS) on the whole pipeline, in the simulated world, under MockClock.

Twenty domains whose zones hold a CNAME loop, claimed first and together, must not trip
`dns_resolver_failure` while the resolver answers its health check: the healthy domains get
their ground truth, the broken ones their bounded deferrals (30 min, 1 h, 2 h) and then
CT-M-NO-MX listing every attempt. When the resolver is really dead (its health check fails
too), the switch trips as before, and nothing is charged to any domain.
"""

from __future__ import annotations

import dataclasses
import itertools
import uuid
from typing import Any

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from ct_actors.actors.resolver_stage import RESOLVER_FAILURE
from ct_actors.actors.supervisor import Supervisor
from ct_actors.dns.health import HealthAnswer
from ct_actors.dns.types import DnsUnavailable, MxLookup
from ct_actors.outcome import Deferred, Failed, FailureCode
from ct_actors.sim.world import World
from ct_actors.testing import SimResolver
from tests.pipeline_support import SimPipelines, label
from tests.test_killswitch_pipeline import (
    MIX,
    REGISTRY,
    Records,
    alerts,
    quiet,
    run_scenario,
    wait_until,
)

pytestmark = pytest.mark.timeout(120)

BOUND = 200_000.0  # virtual seconds
NS = "10.0.0.1"
BROKEN = 20
# dns.domain_failure_delay doubling (the shipped defaults): lookups at +0, +1800, +5400, +12600.
WAITS = (1800.0, 3600.0, 7200.0)


class BrokenZones:
    """The world's resolver, plus `broken` domains whose lookups fail as a CNAME loop does, and
    a health check (`check_health`, as DnsMxResolver has). While `dead`, nothing answers:
    lookups and health checks time out after 2 s."""

    def __init__(self, world: World, broken: set[str]) -> None:
        self._sim = SimResolver(world)
        self.broken = broken
        self.dead = False
        self.health_checks: list[float] = []
        self.lookups: list[tuple[float, str]] = []

    @property
    def active_nameserver(self) -> str:
        return NS

    async def lookup(self, domain: str) -> MxLookup:
        self.lookups.append((trio.current_time(), domain))
        if self.dead:
            await trio.sleep(2.0)
            raise DnsUnavailable(domain, "no reply after 2 attempt(s): timeout", NS)
        if domain in self.broken:
            await trio.sleep(0.01)
            raise DnsUnavailable(domain, f"CNAME loop at {domain}", NS)
        # Answered by the active nameserver, as a real reply says.
        return dataclasses.replace(await self._sim.lookup(domain), nameserver=NS)

    async def check_health(self, name: str) -> tuple[HealthAnswer, ...]:
        self.health_checks.append(trio.current_time())
        if self.dead:
            await trio.sleep(2.0)
            return (
                HealthAnswer(f"{name} A", False, "timeout"),
                HealthAnswer(". NS", False, "timeout"),
            )
        await trio.sleep(0.01)
        return (
            HealthAnswer(f"{name} A", True, "NOERROR, 198.41.0.4"),
            HealthAnswer(". NS", True, "NOERROR, 13 records"),
        )


def scenario(seed: int) -> tuple[Records, BrokenZones, set[uuid.UUID]]:
    world = World.generate(seed, 100, mix=MIX, latency_ms=20, jitter_ms=10)
    records = Records.of(world)
    # The first claim batch (claim_batch 20, ids in name order): twenty failures in a row with
    # no success in between, as in the reproduction.
    names = sorted(world.domains)[:BROKEN]
    broken_ids = {oid for oid, name in records.owner.items() if name in names}
    assert len(broken_ids) == BROKEN
    return records, BrokenZones(world, set(names)), broken_ids


def settled_except(records: Records, skip: set[uuid.UUID]) -> bool:
    """Records.settled, for every record not in `skip`."""
    return all(
        oid in records.store.terminal
        or (records.expected(oid) == "PENDING" and oid in records.store.deferred)
        for oid in records.spine
        if oid not in skip
    )


async def test_cname_loops_do_not_trip_and_end_no_mx_after_bounded_deferrals(
    autojump_clock: trio.testing.MockClock, sim_pipeline: SimPipelines
) -> None:
    records, resolver, broken = scenario(59)
    deferrals: dict[uuid.UUID, list[tuple[float, float]]] = {oid: [] for oid in broken}
    seen: dict[str, Any] = {}

    def done() -> bool:
        for oid in broken:
            deferred = records.store.deferred.get(oid)
            if deferred is not None and isinstance(deferred.result, Deferred):
                history = deferrals[oid]
                entry = (deferred.result.retry_after, len(deferred.result.evidence["dns_broken"]))
                if not history or history[-1] != entry:
                    history.append(entry)
        return broken <= set(records.store.terminal) and settled_except(records, broken)

    async def script(supervisor: Supervisor) -> None:
        with trio.fail_after(20_000):
            await wait_until(done, step=1.0)
        seen["tripped"] = supervisor.switches.is_tripped(RESOLVER_FAILURE)
        seen["stats"] = supervisor.statistics()

    with capture_logs() as logs, trio.fail_after(BOUND):
        await run_scenario(
            sim_pipeline, records, script=script, resolver=resolver, failure_domains=20
        )

    # Never tripped, never switched: the resolver answered its health check.
    assert not seen["tripped"]
    assert alerts(logs, RESOLVER_FAILURE) == []
    assert [e for e in logs if e["event"] == "resolver_switched"] == []
    # The twenty fail together in each of their four rounds: each streak forgiven, and said so.
    averted = [e for e in logs if e["event"] == "resolver_failure_not_ours"]
    assert len(averted) == 4
    assert all("the failures belong to the domains" in e["reason"] for e in averted)
    # Every healthy record has its ground truth.
    for oid in records.spine:
        if oid not in broken:
            assert records.got(oid) == records.expected(oid), records.owner[oid]
    # Each broken domain: three deferrals (30 min, 1 h, 2 h), then CT-M-NO-MX with the four
    # attempts, each 1800 s, 3600 s, 7200 s (plus the claim poll) after the one before.
    for oid in broken:
        assert deferrals[oid] == [(1800.0, 1), (3600.0, 2), (7200.0, 3)]
        result = records.store.terminal[oid].result
        assert isinstance(result, Failed)
        assert result.code is FailureCode.NO_MX
        name = records.owner[oid]
        assert result.blocking_reason.startswith(
            f"DNS for the domain is broken: CNAME loop at {name} (every one of 4 lookups failed "
            "while our resolver answered its health check: #1 at +0s: CNAME loop at "
        )
        attempts = result.evidence["dns_broken"]
        assert [a["attempt"] for a in attempts] == [1, 2, 3, 4]
        gaps = [b["after_seconds"] - a["after_seconds"] for a, b in itertools.pairwise(attempts)]
        for gap, wait in zip(gaps, WAITS, strict=True):
            assert wait < gap < wait + 5.0
        assert result.evidence["resolver_health"]["healthy"] is True
    # Four passes of the MXLookup retries (registry backoff) each, none between the passes.
    tries = 1 + REGISTRY.mx_lookup.backoff.max_retries
    for name in resolver.broken:
        assert sum(1 for _, d in resolver.lookups if d == name) == 4 * tries
    # Health checks: one per round, shared by its twenty failures (30 s interval), 80 in all.
    assert len(resolver.health_checks) == 4
    dns_broken = seen["stats"].dispatcher.dns_broken
    assert (dns_broken.deferred, dns_broken.concluded) == (60, 20)


async def test_a_dead_resolver_trips_and_charges_nothing_to_the_domains(
    autojump_clock: trio.testing.MockClock, sim_pipeline: SimPipelines
) -> None:
    records, resolver, broken = scenario(61)
    resolver.dead = True
    seen: dict[str, Any] = {}

    async def script(supervisor: Supervisor) -> None:
        with trio.fail_after(600):
            await wait_until(lambda: supervisor.switches.is_tripped(RESOLVER_FAILURE), step=0.01)
        with trio.fail_after(600):
            await wait_until(lambda: quiet(supervisor))
        seen["deferred"] = dict(records.store.deferred)
        seen["terminal"] = dict(records.store.terminal)
        seen["stats"] = supervisor.statistics()

    with capture_logs() as logs, trio.fail_after(BOUND):
        await run_scenario(
            sim_pipeline, records, script=script, resolver=resolver, failure_domains=20
        )

    [alert] = alerts(logs, RESOLVER_FAILURE)
    assert "the health check failed too" in alert["reason"]
    assert alert["health_check"] == "a.root-servers.net A: FAILED (timeout); . NS: FAILED (timeout)"
    # No terminal row for any record with a domain; every deferral is about our resolver,
    # the broken domains' included: none was counted against its domain.
    assert {records.owner[o] for o in seen["terminal"]} <= {"", "not a domain"}
    assert broken <= set(seen["deferred"])
    for outcome in seen["deferred"].values():
        assert isinstance(outcome.result, Deferred)
        assert outcome.result.reason.startswith("our resolver could not answer")
    assert seen["stats"].dispatcher.dns_broken.counted == 0
    assert seen["stats"].resolver.domain_failures == 0
    assert label(seen["deferred"][min(broken)].result) == "PENDING"
