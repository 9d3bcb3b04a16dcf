"""Is our own sending address on a DNS blocklist? The standard DNSBL query (RFC 5782), cached.

The query (RFC 5782 §2.1, §2.4): an IPv4 address's octets reversed, then the zone
(192.0.2.99 in zen.example -> 99.2.0.192.zen.example); an IPv6 address as 32 reversed nibbles.
An A record answer in 127.0.0.0/8 means listed (the value says which sub-list, 127.0.0.2 by
convention); NXDOMAIN (or no A record) means not listed.

Two kinds of answers look like listings and are not:

* 127.255.255.0/24 is Spamhaus's range of *error* codes, "which should NOT be interpreted as
  any sort of reputation" (Spamhaus, "DNSBL return codes: technical update", 2019): .252 a
  typo in the zone name, .254 the query came through a public/open resolver (which Spamhaus's
  usage terms forbid), .255 too many queries. We treat the whole /24 as "query refused" for
  every zone: no list uses it for listings;
* an answer outside 127.0.0.0/8 is not a DNSBL answer at all (a resolver that rewrites
  NXDOMAIN to an advertising page, a wildcard): "no answer".

Before a zone's "not listed" is believed, the zone must list its RFC 5782 §5 test entry
(127.0.0.2, or ::FFFF:7F00:2 for IPv6): a zone that does not (shut down, renamed, a resolver that
answers NXDOMAIN for everything) would otherwise say "clean" about everyone.

Answers are cached (`cache_ttl`, 15 minutes by default: a listing or delisting is not acted on
faster than that by the lists' own users either) so that a burst of refusals costs one query
per zone. The DNS itself goes through an injected `AddressLookup`; tests use a fake, the daemon
the same UDP client as the MX lookups (`ClientAddressLookup`).
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import dns.rdatatype
import structlog
import trio

from ct_actors.dns import wire
from ct_actors.dns.mx import QueryClient
from ct_actors.dns.types import DnsUnavailable
from ct_actors.throttle.blocklist_evidence import DnsblStatus

log = structlog.get_logger("ct_actors.dnsbl")

_LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
_ERROR_CODES = ipaddress.ip_network("127.255.255.0/24")
_TEST_V4 = ipaddress.ip_address("127.0.0.2")
_TEST_V6 = ipaddress.ip_address("::ffff:7f00:2")


class AddressLookup(Protocol):
    async def addresses(self, name: str) -> tuple[str, ...]:
        """The A records of `name`; () for NXDOMAIN or no A record. Raises DnsUnavailable
        when the resolver gives no verdict (timeout, SERVFAIL, REFUSED)."""
        ...


class ClientAddressLookup:
    """`AddressLookup` over the daemon's UDP client (`UdpDnsClient.exchange`)."""

    def __init__(self, client: QueryClient) -> None:
        self._client = client

    async def addresses(self, name: str) -> tuple[str, ...]:
        try:
            reply = await self._client.exchange(name, dns.rdatatype.A)
        except ValueError as exc:  # a name that cannot be put in a query
            raise DnsUnavailable(name, str(exc)) from None
        return wire.interpret_a(name, reply.reply)


class Answer(enum.StrEnum):
    LISTED = "listed"
    NOT_LISTED = "not-listed"
    REFUSED = "refused"  # a 127.255.255.x error code: the list would not answer us
    BROKEN = "broken"  # the zone does not list its test entry, or answers outside 127/8
    FAILED = "failed"  # no verdict from the resolver


@dataclass(frozen=True, slots=True)
class ZoneAnswer:
    zone: str
    answer: Answer
    codes: tuple[str, ...] = ()  # the A records, for the alert
    detail: str = ""

    def audit(self) -> dict[str, object]:
        out: dict[str, object] = {"zone": self.zone, "answer": str(self.answer)}
        if self.codes:
            out["codes"] = list(self.codes)
        if self.detail:
            out["detail"] = self.detail
        return out


@dataclass(frozen=True, slots=True)
class DnsblResult:
    address: str | None  # the address looked up; None when we do not know ours
    answers: tuple[ZoneAnswer, ...]
    note: str = ""  # why nothing was looked up

    @property
    def status(self) -> DnsblStatus:
        if any(a.answer is Answer.LISTED for a in self.answers):
            return DnsblStatus.LISTED
        if self.answers and all(a.answer is Answer.NOT_LISTED for a in self.answers):
            return DnsblStatus.NOT_LISTED
        if any(a.answer is Answer.NOT_LISTED for a in self.answers):
            # Some lists answered "clean" and the others could not answer: the ones that
            # answered are evidence; the rest is said in the alert.
            return DnsblStatus.NOT_LISTED
        return DnsblStatus.UNKNOWN

    @property
    def listed_on(self) -> tuple[str, ...]:
        return tuple(a.zone for a in self.answers if a.answer is Answer.LISTED)

    def audit(self) -> dict[str, object]:
        out: dict[str, object] = {
            "address": self.address,
            "status": str(self.status),
            "zones": [a.audit() for a in self.answers],
        }
        if self.note:
            out["note"] = self.note
        return out


def query_name(address: str, zone: str) -> str:
    """RFC 5782 §2.1 / §2.4: the name to look up for `address` in `zone`."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv4Address):
        labels = reversed(str(ip).split("."))
    else:
        labels = reversed(ip.exploded.replace(":", ""))
    return ".".join([*labels, zone.strip(".").lower()])


def classify(codes: Sequence[str]) -> Answer:
    """What the A records of a DNSBL query say."""
    if not codes:
        return Answer.NOT_LISTED
    ips = []
    for code in codes:
        try:
            ips.append(ipaddress.ip_address(code))
        except ValueError:
            return Answer.BROKEN
    if any(ip in _ERROR_CODES for ip in ips):
        return Answer.REFUSED
    if all(ip in _LOOPBACK for ip in ips):
        return Answer.LISTED
    return Answer.BROKEN


def usable_address(address: str | None) -> str | None:
    """Our address as a DNSBL would see it, or None: a private, loopback or otherwise
    non-global address is never on a public list (behind NAT, set killswitch.dnsbl_address)."""
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped  # a dual-stack socket's view of an IPv4 connection
    return str(ip) if ip.is_global else None


@dataclass(frozen=True, slots=True)
class DnsblStatistics:
    zones: tuple[str, ...]
    cached: int  # (zone, address) answers in the cache
    checks: int
    queries: int
    cache_hits: int
    failures: int  # queries without a verdict (timeout, SERVFAIL)


class DnsblChecker:
    """Looks our sending address up in the configured zones; answers cached per zone."""

    def __init__(
        self,
        lookup: AddressLookup | None,
        zones: Sequence[str],
        *,
        cache_ttl: float = 900.0,
        timeout: float = 10.0,
    ) -> None:
        self._lookup = lookup
        self.zones = tuple(z.strip(".").lower() for z in zones if z.strip("."))
        self.cache_ttl = cache_ttl
        self.timeout = timeout
        # (zone, address) -> (expires_at, answer); test entries are cached the same way.
        self._cache: dict[tuple[str, str], tuple[float, ZoneAnswer]] = {}
        self._stats = {"checks": 0, "queries": 0, "cache_hits": 0, "failures": 0}

    @property
    def configured(self) -> bool:
        return bool(self.zones) and self._lookup is not None

    async def check(self, address: str | None) -> DnsblResult:
        """Our `address` in every zone (concurrently, each bounded by `timeout`)."""
        self._stats["checks"] += 1
        if not self.configured:
            await trio.lowlevel.checkpoint()
            return DnsblResult(address, (), "no DNSBL zone configured (killswitch.dnsbl_zones)")
        ours = usable_address(address)
        if ours is None:
            await trio.lowlevel.checkpoint()
            why = (
                "our sending address is not known yet"
                if not address
                else f"our address {address} is not a public one (behind NAT? set "
                "killswitch.dnsbl_address)"
            )
            return DnsblResult(address, (), why)
        answers: dict[str, ZoneAnswer] = {}

        async def one(zone: str) -> None:
            answers[zone] = await self._zone(zone, ours)

        async with trio.open_nursery() as nursery:
            for zone in self.zones:
                nursery.start_soon(one, zone)
        return DnsblResult(ours, tuple(answers[z] for z in self.zones))

    async def _zone(self, zone: str, address: str) -> ZoneAnswer:
        answer = await self._cached(zone, address)
        if answer.answer is not Answer.NOT_LISTED:
            return answer
        # "Not listed" is only believed from a zone that lists its test entry (RFC 5782 §5).
        test = str(_TEST_V4 if ipaddress.ip_address(address).version == 4 else _TEST_V6)
        probe = await self._cached(zone, test)
        if probe.answer is Answer.LISTED:
            return answer
        if probe.answer is Answer.NOT_LISTED:
            return ZoneAnswer(
                zone, Answer.BROKEN, (), "the zone does not list its test entry (RFC 5782 §5)"
            )
        return ZoneAnswer(zone, probe.answer, probe.codes, f"test entry: {probe.detail}".strip())

    async def _cached(self, zone: str, address: str) -> ZoneAnswer:
        now = trio.current_time()
        entry = self._cache.get((zone, address))
        if entry is not None and entry[0] > now:
            self._stats["cache_hits"] += 1
            await trio.lowlevel.checkpoint()
            return entry[1]
        answer = await self._query(zone, address)
        # A failed lookup is not cached: the next refusal asks again.
        if answer.answer is not Answer.FAILED:
            self._cache.pop((zone, address), None)
            self._cache[(zone, address)] = (trio.current_time() + self.cache_ttl, answer)
            self._trim(trio.current_time())
        return answer

    async def _query(self, zone: str, address: str) -> ZoneAnswer:
        assert self._lookup is not None
        name = query_name(address, zone)
        self._stats["queries"] += 1
        try:
            with trio.fail_after(self.timeout):
                codes = await self._lookup.addresses(name)
        except (DnsUnavailable, trio.TooSlowError) as exc:
            self._stats["failures"] += 1
            reason = exc.reason if isinstance(exc, DnsUnavailable) else "timeout"
            log.warning("dnsbl_lookup_failed", zone=zone, name=name, reason=reason)
            return ZoneAnswer(zone, Answer.FAILED, (), reason)
        answer = classify(codes)
        detail = {
            Answer.REFUSED: "the list refused the query (127.255.255.x error code)",
            Answer.BROKEN: "answer outside 127.0.0.0/8: not a DNSBL answer",
        }.get(answer, "")
        return ZoneAnswer(zone, answer, tuple(codes), detail)

    def _trim(self, now: float) -> None:
        # Entries are re-inserted on every store, so the front holds the oldest.
        while self._cache:
            key, (expires, _) = next(iter(self._cache.items()))
            if expires > now and len(self._cache) <= 1024:
                return
            del self._cache[key]

    def clear(self) -> None:
        """After the operator's fix (SIGHUP): ask the lists again."""
        self._cache.clear()

    def statistics(self) -> DnsblStatistics:
        return DnsblStatistics(self.zones, len(self._cache), **self._stats)
