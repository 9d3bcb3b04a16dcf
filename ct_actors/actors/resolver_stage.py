"""The resolver stage actor: MX lookups with a bounded number in flight, the registry's
MXLookup throttle (one call = one MX resolution attempt for one domain, address lookups of its
MX hosts included), transient-error retries (its backoff) and a TTL cache (its
`cache_ttl_hours`), plus the `dns_resolver_failure` kill switch (action `switch_resolver`):
when lookups of many distinct domains in a row fail on the active resolver, move on to the next
configured one; when none is left, pause (lookups answer DnsUnavailable at once, records stay
pending) and alert until an operator clears it.

Domain tasks ask through `lookup()`, which sends a request over the stage's unbuffered channel;
a fixed set of worker tasks answers. When every worker is busy the senders wait: that is the
stage's back-pressure.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import structlog
import trio

from ct_actors.actors.reply import ReplySlot
from ct_actors.dns.types import DnsUnavailable, MxLookup, MxResolver
from ct_actors.throttle.backoff import backoff_delay
from ct_actors.throttle.killswitch import DistinctFailures, KillSwitches
from ct_actors.throttle.limiter import ToolLimiter
from ct_actors.ttl_cache import TtlCache

RESOLVER_FAILURE = "dns_resolver_failure"

log = structlog.get_logger("ct_actors.resolver_stage")


@dataclass(frozen=True, slots=True)
class ResolverSettings:
    workers: int = 64
    cache_ttl: float = 24 * 3600.0
    retry_delay: float = 0.1  # MXLookup backoff: linear from 100 ms
    max_retries: int = 2
    retry_strategy: str = "linear"
    failure_domains: int = 20  # killswitch.resolver_failure_domains


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
        self._send, self._recv = trio.open_memory_channel[_Request](0)
        self._cache: TtlCache[str, MxLookup] = TtlCache(settings.cache_ttl)
        self._stats = {
            "lookups": 0,
            "cache_hits": 0,
            "retries": 0,
            "unavailable": 0,
            "resolver_switches": 0,
        }
        self.busy = 0

    def statistics(self) -> dict[str, object]:
        return {
            **self._stats,
            "busy": self.busy,
            "cached": len(self._cache),
            "active_nameserver": getattr(self._resolver, "active_nameserver", None),
        }

    def update(self, settings: ResolverSettings) -> None:
        """Reload: new retry policy and threshold from the next lookup; the cache is kept."""
        if settings.failure_domains != self.settings.failure_domains:
            self._failures = DistinctFailures(settings.failure_domains)
        self._cache.ttl = settings.cache_ttl
        self.settings = dataclasses.replace(settings, workers=self.settings.workers)

    def reconfigure_dns(self, *, timeout: float, attempts: int) -> None:
        """Reload: the DNS client's timeout and attempts (when the resolver has one)."""
        reconfigure = getattr(self._resolver, "reconfigure", None)
        if reconfigure is not None:
            reconfigure(timeout=timeout, attempts=attempts)

    def clear(self) -> None:
        """The operator fixed the resolver (SIGHUP): back to the first configured one."""
        self._failures.reset()
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
                    self._resolver_failed(domain, exc.reason, active)
                    return exc
                self._stats["retries"] += 1
                s = self.settings
                await trio.sleep(backoff_delay(s.retry_strategy, s.retry_delay, attempt))
                attempt += 1
                continue
            if active is not None and answer.nameserver not in (None, active):
                # Answered, but only after the active resolver failed and another one stood in.
                self._resolver_failed(
                    domain, f"{active} failed, {answer.nameserver} answered", active
                )
            else:
                self._failures.success()
            self._cache.put(domain, answer)
            return answer

    def _resolver_failed(self, domain: str, reason: str, asked: str | None) -> None:
        if asked != getattr(self._resolver, "active_nameserver", None):
            return  # asked before a switch: evidence against a resolver no longer in use
        if not self._failures.failure(domain):
            return
        failed = getattr(self._resolver, "active_nameserver", None)
        switch = getattr(self._resolver, "switch_nameserver", None)
        replacement = switch() if switch is not None else None
        self._failures.reset()
        if replacement is not None:
            self._stats["resolver_switches"] += 1
            log.critical(
                "resolver_switched",
                switch=RESOLVER_FAILURE,
                action="switch_resolver",
                failed=failed,
                now_using=replacement,
                reason=f"{self.settings.failure_domains} distinct domains failed in a row "
                f"(last: {domain}: {reason})",
            )
            return
        if self.switches.trip(RESOLVER_FAILURE, reason, trio.current_time()):
            log.critical(
                "kill_switch_tripped",
                switch=RESOLVER_FAILURE,
                action="pause",
                failed=failed,
                reason=f"{self.settings.failure_domains} distinct domains failed in a row and "
                f"no other resolver is configured (last: {domain}: {reason})",
                clear="fix the resolver, then SIGHUP (systemctl reload ct-actors) or restart",
            )
