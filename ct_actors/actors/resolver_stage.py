"""The resolver stage actor: MX lookups with a bounded number in flight, the registry's
MXLookup throttle (one call = one MX resolution attempt for one domain, address lookups of its
MX hosts included), transient-error retries (its backoff) and a TTL cache (its
`cache_ttl_hours`), plus the `dns_resolver_failure` kill switch (action `switch_resolver`):
when lookups of many distinct domains in a row fail on the active resolver, move on to the next
configured one; when none is left, pause (lookups answer DnsUnavailable at once, records stay
pending) and alert until an operator clears it.

A failed lookup alone does not say whose fault it is: twenty domains with CNAME loops or broken
delegations fail in a row as surely as a dead resolver. So every failure is weighed against a
health check of the active resolver (`dns/health.py`: the health-check name and `. NS`, cached
and coalesced): when the resolver answers it, the failure is the domain's (DomainDnsFailure,
which the dispatcher bounds). When the distinct-failure streak reaches the threshold, the check
decides: answered, the streak is forgiven (`resolver_failure_not_ours`); failed, it is asked
once more, and only when that fails too does the switch move on or trip, its alert quoting the
check.

Domain tasks ask through `lookup()`, which sends a request over the stage's unbuffered channel;
a fixed set of worker tasks answers. When every worker is busy the senders wait: that is the
stage's back-pressure.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import structlog
import trio

from ct_actors.config import DnsConfig, KillSwitchConfig
from ct_actors.dns.health import (
    HealthProbe,
    HealthReport,
    HealthStatistics,
    ResolverHealth,
)
from ct_actors.dns.types import DnsUnavailable, DomainDnsFailure, MxLookup, MxResolver
from ct_actors.reply_slot import ReplySlot
from ct_actors.throttle.backoff import backoff_delay
from ct_actors.throttle.killswitch import DistinctFailures, KillSwitches
from ct_actors.throttle.limiter import ToolLimiter
from ct_actors.ttl_cache import TtlCache

RESOLVER_FAILURE = "dns_resolver_failure"

log = structlog.get_logger("ct_actors.resolver_stage")


# Defaults are the config's (ct_actors/config/sections.py): defaults live in one place.
_DNS = DnsConfig()
_KILLSWITCH = KillSwitchConfig()


@dataclass(frozen=True, slots=True)
class ResolverSettings:
    workers: int = _DNS.max_in_flight
    cache_ttl: float = 24 * 3600.0
    retry_delay: float = 0.1  # MXLookup backoff: linear from 100 ms
    max_retries: int = 2
    retry_strategy: str = "linear"
    failure_domains: int = _KILLSWITCH.resolver_failure_domains
    health_check_name: str = _DNS.health_check_name
    health_check_interval: float = _DNS.health_check_interval


@dataclass(frozen=True, slots=True)
class ResolverStatistics:
    lookups: int
    cache_hits: int
    retries: int
    unavailable: int
    resolver_switches: int
    domain_failures: int  # failed while the resolver answered its health check
    switches_averted: int  # streaks forgiven because the health check answered
    busy: int  # lookups in progress
    cached: int
    active_nameserver: str | None
    health: HealthStatistics


@dataclass(slots=True)
class _Request:
    domain: str
    reply: ReplySlot[MxLookup | DnsUnavailable] = field(default_factory=ReplySlot)


class ResolverStage:
    def __init__(
        self,
        resolver: MxResolver,
        settings: ResolverSettings,
        *,
        limiter: ToolLimiter | None = None,
        switches: KillSwitches | None = None,
    ) -> None:
        self._resolver = resolver
        self.settings = settings
        self._limiter = limiter
        self.switches = switches if switches is not None else KillSwitches(
            {RESOLVER_FAILURE: "switch_resolver"}
        )
        self._failures = DistinctFailures(settings.failure_domains)
        self._health = ResolverHealth(settings.health_check_name, settings.health_check_interval)
        self._send, self._recv = trio.open_memory_channel[_Request](0)
        self._cache: TtlCache[str, MxLookup] = TtlCache(settings.cache_ttl)
        self._stats = {
            "lookups": 0,
            "cache_hits": 0,
            "retries": 0,
            "unavailable": 0,
            "resolver_switches": 0,
            "domain_failures": 0,  # failed while the resolver answered its health check
            "switches_averted": 0,  # streaks forgiven because the health check answered
        }
        self.busy = 0

    def statistics(self) -> ResolverStatistics:
        return ResolverStatistics(
            **self._stats,
            busy=self.busy,
            cached=len(self._cache),
            active_nameserver=getattr(self._resolver, "active_nameserver", None),
            health=self._health.statistics(),
        )

    def reconfigure(self, settings: ResolverSettings) -> None:
        """Reload: new retry policy and threshold from the next lookup; the cache is kept (the
        workers are started once: dns.max_in_flight is restart-only)."""
        if settings.failure_domains != self.settings.failure_domains:
            self._failures = DistinctFailures(settings.failure_domains)
        self._cache.ttl = settings.cache_ttl
        self._health.configure(settings.health_check_name, settings.health_check_interval)
        self.settings = dataclasses.replace(settings, workers=self.settings.workers)

    def clear(self) -> None:
        """The operator fixed the resolver (SIGHUP): back to the first configured one."""
        self._failures.reset()
        self._health.forget()
        reset = getattr(self._resolver, "reset_nameserver", None)
        if reset is not None:
            reset()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            for _ in range(self.settings.workers):
                nursery.start_soon(self._worker)
            task_status.started()

    def close(self) -> None:
        """Closing the request channel is the workers' shutdown signal."""
        self._send.close()

    async def lookup(self, domain: str) -> MxLookup:
        """MX answer for `domain`, or raise DnsUnavailable (our resolver's trouble)."""
        cached = self._cache.get(domain)
        if cached is not None:
            self._stats["cache_hits"] += 1
            return cached
        request = _Request(domain)
        await self._send.send(request)
        answer = await request.reply.wait()
        if isinstance(answer, DnsUnavailable):
            raise answer
        return answer

    async def _worker(self) -> None:
        async for request in self._recv:
            self.busy += 1
            try:
                request.reply.set(await self._lookup_with_retries(request.domain))
            finally:
                self.busy -= 1

    async def _lookup_with_retries(self, domain: str) -> MxLookup | DnsUnavailable:
        attempt = 0
        while True:
            if self._limiter is not None:
                await self._limiter.acquire()
            # Checked after the throttle wait, which can be long: the switch may trip meanwhile.
            if self.switches.is_tripped(RESOLVER_FAILURE):
                return DnsUnavailable(domain, f"paused by the {RESOLVER_FAILURE} kill switch")
            self._stats["lookups"] += 1
            active = getattr(self._resolver, "active_nameserver", None)
            try:
                answer = await self._resolver.lookup(domain)
            except DnsUnavailable as exc:
                if attempt >= self.settings.max_retries:
                    self._stats["unavailable"] += 1
                    report = await self._resolver_failed(domain, exc.reason, active)
                    if report is not None and report.healthy:
                        self._stats["domain_failures"] += 1
                        health = report.evidence()
                        return DomainDnsFailure(domain, exc.reason, exc.nameserver, health)
                    return exc
                self._stats["retries"] += 1
                s = self.settings
                await trio.sleep(backoff_delay(s.retry_strategy, s.retry_delay, attempt))
                attempt += 1
                continue
            if active is not None and answer.nameserver not in (None, active):
                # Answered, but only after the active resolver failed and another one stood in.
                await self._resolver_failed(
                    domain, f"{active} failed, {answer.nameserver} answered", active
                )
            else:
                self._failures.success()
            self._cache.put(domain, answer)
            return answer

    def _active(self) -> str | None:
        return getattr(self._resolver, "active_nameserver", None)

    def _probe(self) -> HealthProbe | None:
        return getattr(self._resolver, "check_health", None)

    async def _resolver_failed(
        self, domain: str, reason: str, asked: str | None
    ) -> HealthReport | None:
        """Weigh a failure of `domain` on nameserver `asked`: the health report that judges it,
        or None when it is evidence about nothing (asked before a switch, or paused)."""
        if asked != self._active() or self.switches.is_tripped(RESOLVER_FAILURE):
            return None  # asked before a switch: evidence against a resolver no longer in use
        interval = self.settings.health_check_interval
        report = await self._health.check(self._probe(), asked, max_age=interval)
        if asked != self._active() or self.switches.is_tripped(RESOLVER_FAILURE):
            return None
        if not self._failures.failure(domain):
            return report
        # The streak is long enough to blame the resolver. A healthy answer within the interval
        # clears it; a failed one is asked again before acting on it (switch, pause).
        fresh = (
            report
            if report.healthy
            else await self._health.check(self._probe(), asked, max_age=0.0)
        )
        if asked != self._active() or self.switches.is_tripped(RESOLVER_FAILURE):
            return None
        if not self._failures.tripped:
            return fresh  # a lookup succeeded while we asked: the streak is over already
        if fresh.healthy:
            # Answered: the failures were the domains' own.
            self._failures.reset()
            self._stats["switches_averted"] += 1
            log.warning(
                "resolver_failure_not_ours",
                switch=RESOLVER_FAILURE,
                nameserver=asked,
                reason=f"{self.settings.failure_domains} distinct domains failed in a row "
                f"(last: {domain}: {reason}), but the resolver answered its health check: "
                "the failures belong to the domains, no switch",
                health_check=fresh.summary(),
            )
            return fresh
        self._switch_or_trip(domain, reason, fresh)
        return fresh

    def _switch_or_trip(self, domain: str, reason: str, health: HealthReport) -> None:
        failed = self._active()
        switch = getattr(self._resolver, "switch_nameserver", None)
        replacement = switch() if switch is not None else None
        self._failures.reset()
        self._health.forget()
        evidence = (
            f"{self.settings.failure_domains} distinct domains failed in a row "
            f"(last: {domain}: {reason}) and the health check failed too ({health.summary()})"
        )
        if replacement is not None:
            self._stats["resolver_switches"] += 1
            log.critical(
                "resolver_switched",
                switch=RESOLVER_FAILURE,
                action="switch_resolver",
                failed=failed,
                now_using=replacement,
                reason=evidence,
                health_check=health.summary(),
            )
            return
        if self.switches.trip(RESOLVER_FAILURE, evidence, trio.current_time()):
            log.critical(
                "kill_switch_tripped",
                switch=RESOLVER_FAILURE,
                action="pause",
                failed=failed,
                reason=f"{evidence}; no other resolver is configured",
                health_check=health.summary(),
                clear="fix the resolver, then SIGHUP (systemctl reload ct-actors) or restart",
            )
