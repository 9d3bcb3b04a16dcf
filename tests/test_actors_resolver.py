"""The resolver stage (bounded workers, linear retry, TTL cache) under the autojump MockClock."""

from __future__ import annotations

from collections import Counter

import pytest
import trio
import trio.testing
from trio import current_time as now

from ct_actors.actors.resolver_stage import ResolverSettings, ResolverStage, ResolverStatistics
from ct_actors.dns.health import HealthStatistics
from ct_actors.dns.types import DnsUnavailable, MxHost, MxLookup, MxStatus

BOUND = 600.0
# FakeResolver offers no health check (check_health): the stage never asks one.
NO_HEALTH_CHECKS = HealthStatistics(
    checks=0,
    healthy=0,
    unhealthy=0,
    shared=0,
    cached=0,
    name="a.root-servers.net",
    last_healthy=None,
    last_checked_at=None,
)


class FakeResolver:
    """Answers every domain with one MX after `latency`; `failures[d]` lookups of d fail first."""

    def __init__(self, latency: float = 0.0, failures: dict[str, int] | None = None) -> None:
        self.latency = latency
        self.failures = Counter(failures or {})
        self.calls: list[tuple[float, str]] = []
        self.active = 0
        self.max_active = 0

    async def lookup(self, domain: str) -> MxLookup:
        self.calls.append((now(), domain))
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.latency:
                await trio.sleep(self.latency)
            else:
                await trio.lowlevel.checkpoint()
            if self.failures[domain] > 0:
                self.failures[domain] -= 1
                raise DnsUnavailable(domain, "SERVFAIL", "192.0.2.53:53")
            host = MxHost(f"mx.{domain}", 10, ("192.0.2.25",))
            return MxLookup(domain, MxStatus.FOUND, (host,), nameserver="192.0.2.53:53")
        finally:
            self.active -= 1


def settings(**kw: float) -> ResolverSettings:
    return ResolverSettings(
        workers=int(kw.pop("workers", 4)),
        cache_ttl=kw.pop("cache_ttl", 3600.0),
        retry_delay=kw.pop("retry_delay", 0.1),
        max_retries=int(kw.pop("max_retries", 2)),
    )


async def test_dns_unavailable_is_retried_linearly_then_surfaced(
    autojump_clock: trio.testing.MockClock,
) -> None:
    resolver = FakeResolver(failures={"down.test": 1_000})
    stage = ResolverStage(resolver, settings())
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            await nursery.start(stage.run)
            with pytest.raises(DnsUnavailable) as caught:
                await stage.lookup("down.test")
            failed_at = now()
            stats = stage.statistics()
            # Failures are never cached: asking again costs three more lookups.
            with pytest.raises(DnsUnavailable):
                await stage.lookup("down.test")
            stage.close()
    assert caught.value.reason == "SERVFAIL"
    # Delays 0.1 s then 0.2 s (linear), then the error is the answer.
    assert [t for t, _ in resolver.calls[:3]] == pytest.approx([0.0, 0.1, 0.3])
    assert failed_at == pytest.approx(0.3)
    assert len(resolver.calls) == 6
    assert stats == ResolverStatistics(
        lookups=3,
        cache_hits=0,
        retries=2,
        unavailable=1,
        resolver_switches=0,
        domain_failures=0,
        switches_averted=0,
        busy=0,
        cached=0,
        active_nameserver=None,
        health=NO_HEALTH_CHECKS,
    )


async def test_transient_failure_then_answer_is_cached(
    autojump_clock: trio.testing.MockClock,
) -> None:
    resolver = FakeResolver(failures={"flaky.test": 2})
    stage = ResolverStage(resolver, settings())
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            await nursery.start(stage.run)
            answer = await stage.lookup("flaky.test")
            assert now() == pytest.approx(0.3)
            again = await stage.lookup("flaky.test")
            stage.close()
    assert answer is again
    assert answer.hosts[0].name == "mx.flaky.test"
    assert len(resolver.calls) == 3
    assert stage.statistics().retries == 2
    assert stage.statistics().cache_hits == 1


async def test_cached_answer_costs_no_lookup_until_the_ttl_expires(
    autojump_clock: trio.testing.MockClock,
) -> None:
    resolver = FakeResolver(latency=1.0)
    stage = ResolverStage(resolver, settings(cache_ttl=100.0))
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            await nursery.start(stage.run)
            first = await stage.lookup("acme.test")
            assert now() == 1.0
            cached = await stage.lookup("acme.test")
            assert now() == 1.0  # no lookup, no wait
            await trio.sleep_until(100.5)
            assert await stage.lookup("acme.test") is first  # still within 1.0 + 100
            await trio.sleep_until(101.0)  # expires at 1.0 + cache_ttl
            fresh = await stage.lookup("acme.test")
            assert now() == 102.0
            stage.close()
    assert cached is first and fresh is not first
    assert resolver.calls == [(0.0, "acme.test"), (101.0, "acme.test")]
    assert stage.statistics() == ResolverStatistics(
        lookups=2,
        cache_hits=2,
        retries=0,
        unavailable=0,
        resolver_switches=0,
        domain_failures=0,
        switches_averted=0,
        busy=0,
        cached=1,
        active_nameserver=None,
        health=NO_HEALTH_CHECKS,
    )


async def test_at_most_workers_lookups_in_flight(autojump_clock: trio.testing.MockClock) -> None:
    resolver = FakeResolver(latency=1.0)
    stage = ResolverStage(resolver, settings(workers=3))
    done: list[float] = []
    busy: list[int] = []

    async def one(domain: str) -> None:
        await stage.lookup(domain)
        done.append(now())

    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            await nursery.start(stage.run)
            async with trio.open_nursery() as callers:
                for i in range(10):
                    callers.start_soon(one, f"d{i}.test")
                await trio.sleep(0.5)
                busy.append(stage.statistics().busy)
            stage.close()
    assert resolver.max_active == 3
    assert busy == [3]
    assert sorted(done) == [1.0] * 3 + [2.0] * 3 + [3.0] * 3 + [4.0]
    assert [t for t, _ in resolver.calls] == [0.0] * 3 + [1.0] * 3 + [2.0] * 3 + [3.0]
