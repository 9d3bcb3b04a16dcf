"""The resolver stage actor: MX lookups with a bounded number in flight, transient-error
retries (the registry's MXLookup backoff) and a TTL cache (its `cache_ttl_hours`).

Domain tasks ask through `lookup()`, which sends a request over the stage's unbuffered channel;
a fixed set of worker tasks answers. When every worker is busy the senders wait: that is the
stage's back-pressure.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import structlog
import trio

from ct_actors.actors.reply import ReplySlot
from ct_actors.dns.types import DnsUnavailable, MxLookup, MxResolver
from ct_actors.ttl_cache import TtlCache

log = structlog.get_logger("ct_actors.resolver_stage")


@dataclass(frozen=True, slots=True)
class ResolverSettings:
    workers: int = 64
    cache_ttl: float = 24 * 3600.0
    retry_delay: float = 0.1  # MXLookup backoff: linear from 100 ms
    max_retries: int = 2


@dataclass(slots=True)
class _Request:
    domain: str
    reply: ReplySlot[MxLookup | DnsUnavailable] = field(default_factory=ReplySlot)


class ResolverStage:
    def __init__(self, resolver: MxResolver, settings: ResolverSettings) -> None:
        self._resolver = resolver
        self.settings = settings
        self._send, self._recv = trio.open_memory_channel[_Request](0)
        self._cache: TtlCache[str, MxLookup] = TtlCache(settings.cache_ttl)
        self._stats = {"lookups": 0, "cache_hits": 0, "retries": 0, "unavailable": 0}
        self.busy = 0

    def statistics(self) -> dict[str, int]:
        return {**self._stats, "busy": self.busy, "cached": len(self._cache)}

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
            self._stats["lookups"] += 1
            try:
                answer = await self._resolver.lookup(domain)
            except DnsUnavailable as exc:
                if attempt >= self.settings.max_retries:
                    self._stats["unavailable"] += 1
                    return exc
                attempt += 1
                self._stats["retries"] += 1
                await trio.sleep(self.settings.retry_delay * attempt)  # linear backoff
                continue
            self._cache.put(domain, answer)
            return answer
