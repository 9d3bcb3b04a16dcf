"""MX resolution on top of a query client: the `MxResolver` used by the prober.

Thousands of domains share a handful of MX hosts (aspmx.l.google.com, *.mail.protection.
outlook.com, ...), so host addresses are cached by host name and concurrent lookups of one host
share a single query. Cache lifetime is our own `address_cache_ttl`, not the record TTL: the
prober needs an address that worked minutes ago, and one fixed TTL keeps the cache a simple
insertion-ordered dict that can be trimmed from the front.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Protocol

import dns.name
import dns.rcode
import dns.rdatatype
import trio

from ct_actors.dns import fastparse, wire
from ct_actors.dns.client import DnsReply
from ct_actors.dns.health import ROOT_NS, HealthAnswer
from ct_actors.dns.types import DnsUnavailable, MxHost, MxLookup, MxStatus


class QueryClient(Protocol):
    async def exchange(
        self, name: str | dns.name.Name, rdtype: dns.rdatatype.RdataType | str
    ) -> DnsReply: ...


@dataclass(eq=False, slots=True)
class _HostFetch:
    done: trio.Event = field(default_factory=trio.Event)
    addresses: tuple[str, ...] | None = None
    error: DnsUnavailable | None = None


@dataclass(frozen=True, slots=True)
class MxResolverStatistics:
    lookups: int
    invalid_names: int  # not a DNS name: concluded without a query
    cache_hits: int  # host addresses, from the cache
    cache_misses: int
    coalesced: int  # joined a fetch already in flight
    address_queries: int
    address_failures: int
    cached_hosts: int


class DnsMxResolver:
    """`MxResolver` over a `UdpDnsClient` (or anything with its `exchange`).

    Only the first `max_mx_hosts` exchanges (by preference) are kept: they are all a prober
    will try, and a domain listing hundreds must not fan out into hundreds of queries. The
    number dropped is reported in `extra["mx_hosts_dropped"]`.
    """

    def __init__(
        self,
        client: QueryClient,
        *,
        address_cache_ttl: float = 300.0,
        negative_cache_ttl: float = 60.0,
        max_cached_hosts: int = 100_000,
        max_mx_hosts: int = 10,
    ) -> None:
        self._client = client
        self._ttl = address_cache_ttl
        self._negative_ttl = negative_cache_ttl
        self._max_cached = max_cached_hosts
        self._max_mx_hosts = max_mx_hosts
        # host -> (expires_at, addresses); insertion order is roughly expiry order.
        self._cache: dict[str, tuple[float, tuple[str, ...]]] = {}
        self._fetching: dict[str, _HostFetch] = {}
        self._stats = dict.fromkeys(
            (
                "lookups",
                "invalid_names",
                "cache_hits",
                "cache_misses",
                "coalesced",
                "address_queries",
                "address_failures",
            ),
            0,
        )

    # The resolver kill switch (switch_resolver) works through these; a client without several
    # nameservers simply has nothing to switch to.
    @property
    def active_nameserver(self) -> str | None:
        return getattr(self._client, "active_nameserver", None)

    def switch_nameserver(self) -> str | None:
        switch = getattr(self._client, "switch_nameserver", None)
        return switch() if switch is not None else None

    def reset_nameserver(self) -> None:
        reset = getattr(self._client, "reset_nameserver", None)
        if reset is not None:
            reset()

    def statistics(self) -> MxResolverStatistics:
        return MxResolverStatistics(**self._stats, cached_hosts=len(self._cache))

    async def check_health(self, name: str) -> tuple[HealthAnswer, ...]:
        """The active nameserver's answers to `name` IN A and `. NS` (dns/health.py says why
        these two). Asked at once, never cached here; an answer from another nameserver (the
        client's next attempt) does not count: it says nothing good about the active one."""
        asked = self.active_nameserver
        answers: dict[str, HealthAnswer] = {}

        async def ask(question: str, qname: str, rdtype: dns.rdatatype.RdataType) -> None:
            answers[question] = await self._health_answer(question, qname, rdtype, asked)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(ask, f"{name} A", name, dns.rdatatype.A)
            nursery.start_soon(ask, ROOT_NS, ".", dns.rdatatype.NS)
        return (answers[f"{name} A"], answers[ROOT_NS])

    async def _health_answer(
        self, question: str, qname: str, rdtype: dns.rdatatype.RdataType, asked: str | None
    ) -> HealthAnswer:
        try:
            reply = await self._client.exchange(qname, rdtype)
        except DnsUnavailable as exc:
            return HealthAnswer(question, False, exc.reason)
        except (ValueError, OSError) as exc:
            return HealthAnswer(question, False, f"{exc.__class__.__name__}: {exc}")
        if asked is not None and reply.nameserver != asked:
            return HealthAnswer(
                question, False, f"{asked} failed, answered by {reply.nameserver} instead"
            )
        rcode = dns.rcode.to_text(dns.rcode.Rcode.make(reply.reply.rcode))
        if rdtype == dns.rdatatype.A:
            try:
                addresses = wire.interpret_a(qname, reply.reply)
            except DnsUnavailable as exc:
                return HealthAnswer(question, False, exc.reason)
            if not addresses:
                return HealthAnswer(question, False, f"{rcode} without an address")
            return HealthAnswer(question, True, f"{rcode}, {', '.join(addresses[:3])}")
        if reply.reply.rcode != dns.rcode.NOERROR or not reply.reply.answer_count:
            return HealthAnswer(question, False, f"{rcode} with {reply.reply.answer_count} records")
        if reply.reply.flags & fastparse.FLAG_TC:
            return HealthAnswer(question, False, "truncated (TC)")
        return HealthAnswer(question, True, f"{rcode}, {reply.reply.answer_count} records")

    async def lookup(self, domain: str) -> MxLookup:
        self._stats["lookups"] += 1
        try:
            wire.name_to_wire(domain)
        except ValueError as exc:
            # A string that cannot be a DNS name cannot exist in the DNS; asking would only
            # fail the same way forever and keep the record pending.
            self._stats["invalid_names"] += 1
            await trio.lowlevel.checkpoint()
            return MxLookup(
                domain=domain,
                status=MxStatus.NXDOMAIN,
                detail=f"invalid domain name, not queried: {exc}",
                extra={"invalid_name": "true"},
            )
        reply = await self._client.exchange(domain, dns.rdatatype.MX)
        try:
            verdict = wire.interpret_mx(domain, reply.reply)
        except DnsUnavailable as exc:
            raise DnsUnavailable(domain, exc.reason, reply.nameserver) from None
        if isinstance(verdict, MxLookup):
            return dataclasses.replace(verdict, nameserver=reply.nameserver)

        kept = verdict[: self._max_mx_hosts]
        extra: dict[str, str] = {}
        if len(verdict) > len(kept):
            extra["mx_hosts_dropped"] = str(len(verdict) - len(kept))
        names = list(dict.fromkeys(host for _, host in kept))
        resolved = await self._resolve_all(names)

        unavailable = {h: r for h, r in resolved.items() if isinstance(r, DnsUnavailable)}
        hosts = tuple(
            MxHost(name=host, preference=pref, addresses=_addresses(resolved[host]))
            for pref, host in kept
        )
        detail = ""
        if unavailable:
            if not any(h.addresses for h in hosts):
                reasons = "; ".join(f"{h}: {e.reason}" for h, e in unavailable.items())
                raise DnsUnavailable(
                    domain, f"no MX host address could be resolved ({reasons})", reply.nameserver
                )
            extra["address_lookup_unavailable"] = ",".join(unavailable)
            detail = f"address lookup unavailable for {len(unavailable)} MX host(s)"
        return MxLookup(
            domain=domain,
            status=MxStatus.FOUND,
            hosts=hosts,
            detail=detail,
            nameserver=reply.nameserver,
            extra=extra,
        )

    async def host_addresses(self, host: str) -> tuple[str, ...]:
        """IPv4 addresses of `host` (() if it does not resolve), cached and coalesced."""
        cached = self._cached(host)
        if cached is not None:
            await trio.lowlevel.checkpoint()
            return cached
        return await self._fetch(host)

    async def _resolve_all(self, names: list[str]) -> dict[str, tuple[str, ...] | DnsUnavailable]:
        results: dict[str, tuple[str, ...] | DnsUnavailable] = {}
        missing = []
        for name in names:
            cached = self._cached(name)
            if cached is None:
                missing.append(name)
            else:
                results[name] = cached
        # The common case (every host cached, or one miss) needs no nursery.
        if len(missing) == 1:
            await self._resolve_into(missing[0], results)
        elif missing:
            async with trio.open_nursery() as nursery:
                for name in missing:
                    nursery.start_soon(self._resolve_into, name, results)
        return results

    async def _resolve_into(
        self, host: str, results: dict[str, tuple[str, ...] | DnsUnavailable]
    ) -> None:
        try:
            results[host] = await self._fetch(host)
        except DnsUnavailable as exc:
            results[host] = exc

    def _cached(self, host: str) -> tuple[str, ...] | None:
        entry = self._cache.get(host)
        if entry is None:
            return None
        expires_at, addresses = entry
        if expires_at <= trio.current_time():
            del self._cache[host]
            return None
        self._stats["cache_hits"] += 1
        return addresses

    async def _fetch(self, host: str) -> tuple[str, ...]:
        while True:
            fetch = self._fetching.get(host)
            if fetch is None:
                break
            self._stats["coalesced"] += 1
            await fetch.done.wait()
            if fetch.addresses is not None:
                return fetch.addresses
            if fetch.error is not None:
                # A fresh exception per waiter: sharing one object would tangle tracebacks.
                err = fetch.error
                raise DnsUnavailable(err.domain, err.reason, err.nameserver)
            # The fetching task was cancelled without a result: try ourselves.
        self._stats["cache_misses"] += 1
        fetch = _HostFetch()
        self._fetching[host] = fetch
        try:
            self._stats["address_queries"] += 1
            try:
                addresses = await self._query_addresses(host)
            except DnsUnavailable as exc:
                self._stats["address_failures"] += 1
                fetch.error = exc
                raise
            fetch.addresses = addresses
            self._store(host, addresses)
            return addresses
        finally:
            del self._fetching[host]
            fetch.done.set()

    async def _query_addresses(self, host: str) -> tuple[str, ...]:
        try:
            reply = await self._client.exchange(host, dns.rdatatype.A)
        except ValueError:
            # An exchange name that cannot be put in a query cannot resolve either.
            await trio.lowlevel.checkpoint()
            return ()
        try:
            return wire.interpret_a(host, reply.reply)
        except DnsUnavailable as exc:
            raise DnsUnavailable(host, exc.reason, reply.nameserver) from None

    def _store(self, host: str, addresses: tuple[str, ...]) -> None:
        now = trio.current_time()
        self._cache.pop(host, None)
        self._cache[host] = (now + (self._ttl if addresses else self._negative_ttl), addresses)
        # Trim expired entries from the front, then the oldest if still over the limit.
        while self._cache:
            oldest = next(iter(self._cache))
            if self._cache[oldest][0] > now and len(self._cache) <= self._max_cached:
                break
            del self._cache[oldest]


def _addresses(result: tuple[str, ...] | DnsUnavailable) -> tuple[str, ...]:
    return () if isinstance(result, DnsUnavailable) else result
