"""Is our sending IP blocklisted? The network evidence, counted and weighed (pure, synchronous).

A refusal with a blocklist text or a 5.7.x reputation code (POLICY_BLOCKED) *claims* to be about
our IP, but anyone can write "554 5.7.1 blocked" in a greeting: one hostile operator with many
domains and many MX names on one address must not be able to halt the fleet. So the evidence is
counted by independent network, never by MX name:

* an IPv4 address counts for its /24, the smallest block commonly routed and announced on its
  own (RFC 7454 §6.1.3: operators filter announcements longer than /24), so one operator's
  neighbouring addresses count once;
* an IPv6 address counts for its /48, the longest prefix accepted in the global table (RFC 7454
  §6.1.3) and the assignment size for a site (RFC 6177): one operator can use a whole /48, or
  far more addresses than IPv4 would give them, so anything finer would be cheap to multiply.

Then it is weighed against the sessions that worked in the same window: if our IP were listed,
most hosts would refuse us; a handful of refusals among many working sessions are about those
hosts (or about hostile domains). `decide` says what the evidence amounts to, given what the
DNS blocklists (ct_actors/dns/dnsbl.py) said about our address.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass, field

IPV4_PREFIX = 24
IPV6_PREFIX = 48
# Networks remembered per kind; beyond this the oldest go first (memory stays bounded whatever
# the traffic; the window is usually what expires them).
MAX_NETWORKS = 10_000
# Addresses with a refusal streak remembered at most (see RefusalStreaks).
MAX_STREAKS = 10_000


def network_of(address: str | None) -> str | None:
    """The independent network an MX address belongs to ("192.0.2.0/24", "2001:db8::/48"),
    None when the address is missing or not an IP address (it then counts for nothing)."""
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    prefix = IPV4_PREFIX if ip.version == 4 else IPV6_PREFIX
    return str(ipaddress.ip_network(f"{ip}/{prefix}", strict=False))


@dataclass(frozen=True, slots=True)
class Refusal:
    """The latest refusal seen from one network, for the alert."""

    network: str
    address: str
    host: str
    detail: str
    at: float


@dataclass(frozen=True, slots=True)
class Assessment:
    """The evidence in the window ending now."""

    refusing: tuple[Refusal, ...]  # one per network, latest first
    working_networks: int  # networks with a working session (and no later refusal)
    window: float

    @property
    def refusing_networks(self) -> int:
        return len(self.refusing)

    @property
    def talked_to(self) -> int:
        return self.refusing_networks + self.working_networks

    @property
    def fraction(self) -> float:
        return self.refusing_networks / self.talked_to if self.talked_to else 0.0

    def audit(self, limit: int = 10) -> dict[str, object]:
        return {
            "refusing_networks": self.refusing_networks,
            "working_networks": self.working_networks,
            "refusing_fraction": round(self.fraction, 3),
            "window": self.window,
            "refusals": [
                {"network": r.network, "address": r.address, "host": r.host, "detail": r.detail}
                for r in self.refusing[:limit]
            ],
        }


class _Latest:
    """network -> (time, item), in order of time (re-inserted on update), so expired entries
    are always at the front."""

    def __init__(self) -> None:
        self.items: dict[str, tuple[float, object]] = {}

    def put(self, key: str, now: float, item: object) -> None:
        self.items.pop(key, None)
        self.items[key] = (now, item)
        while len(self.items) > MAX_NETWORKS:
            del self.items[next(iter(self.items))]

    def discard(self, key: str) -> None:
        self.items.pop(key, None)

    def expire(self, before: float) -> None:
        while self.items:
            key, (at, _) = next(iter(self.items.items()))
            if at > before:
                return
            del self.items[key]


@dataclass(frozen=True, slots=True)
class EvidenceStatistics:
    window: float  # seconds
    refusing_networks: int  # in the window now
    working_networks: int
    refusals: int  # since start
    working_sessions: int
    refusals_without_address: int


class BlocklistEvidence:
    """Refusals about our IP and working sessions, by network, over a sliding window.

    A network's latest word counts: one that refused us and later worked (or the other way
    round) is counted once, as what it did last."""

    def __init__(self, window: float) -> None:
        if not window > 0:
            raise ValueError(f"window must be positive, got {window}")
        self.window = float(window)
        self._refused = _Latest()
        self._worked = _Latest()
        self.refusals = 0
        self.working = 0
        self.ignored = 0  # refusals without a usable address: they count for nothing

    def refused(self, address: str | None, host: str, detail: str, now: float) -> bool:
        """Count a refusal; True when it is the first from its network in the window (new
        evidence, worth weighing again)."""
        self.refusals += 1
        network = network_of(address)
        if network is None or address is None:
            self.ignored += 1
            return False
        self._expire(now)
        new = network not in self._refused.items
        self._worked.discard(network)
        self._refused.put(network, now, Refusal(network, address, host, detail[:300], now))
        return new

    def worked(self, address: str | None, now: float) -> None:
        """A session to `address` worked: the host accepted us and answered."""
        self.working += 1
        network = network_of(address)
        if network is None:
            return
        self._refused.discard(network)
        self._worked.put(network, now, None)

    def assess(self, now: float) -> Assessment:
        self._expire(now)
        refusing = tuple(
            item
            for _, item in reversed(self._refused.items.values())
            if isinstance(item, Refusal)
        )
        return Assessment(refusing, len(self._worked.items), self.window)

    def _expire(self, now: float) -> None:
        # Something seen at t counts during [t, t + window), as in the other sliding windows.
        self._refused.expire(now - self.window)
        self._worked.expire(now - self.window)

    def reset(self) -> None:
        self._refused = _Latest()
        self._worked = _Latest()

    def statistics(self, now: float) -> EvidenceStatistics:
        a = self.assess(now)
        return EvidenceStatistics(
            window=self.window,
            refusing_networks=a.refusing_networks,
            working_networks=a.working_networks,
            refusals=self.refusals,
            working_sessions=self.working,
            refusals_without_address=self.ignored,
        )


# -- the rule ---------------------------------------------------------------------------------


class DnsblStatus(enum.StrEnum):
    LISTED = "listed"  # a configured zone lists our address
    NOT_LISTED = "not-listed"  # every zone answered, none lists it
    UNKNOWN = "unknown"  # no zone configured, our address unknown, or no zone answered


class BlocklistJudgement(enum.StrEnum):
    NONE = "none"  # too little evidence: nothing to say
    TRIP = "trip"  # halt SMTP probing: proven (or overwhelmingly likely) about our side
    NOT_US = "not-us"  # refusals from several networks, but the weighing says they are theirs


@dataclass(frozen=True, slots=True)
class Rule:
    """When refusals amount to "our IP is blocklisted" (defaults and reasons:
    docs/throttles.md, "ip_blacklist_detected")."""

    networks: int = 3  # refusing networks before anything is weighed
    fraction: float = 0.5  # share of the networks talked to that must refuse us
    networks_alone: int = 10  # refusing networks that halt even when the DNSBLs say clean

    def __post_init__(self) -> None:
        if self.networks < 1:
            raise ValueError(f"networks must be at least 1, got {self.networks}")
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: BlocklistJudgement
    basis: str  # one sentence for the alert: which evidence decided
    listed_on: tuple[str, ...] = field(default=())


def decide(
    rule: Rule, a: Assessment, dnsbl: DnsblStatus, listed_on: Sequence[str] = ()
) -> Decision:
    """The rule, in order:

    1. fewer than `networks` refusing networks in the window: nothing (a few hosts' policy, or
       one operator's domains);
    2. a configured DNSBL lists our address: trip, naming the list;
    3. fewer than `fraction` of the networks we talked to refuse us: not us (most of the
       internet takes our sessions; a listing would show everywhere its users are);
    4. the DNSBLs answered and none lists us: trip only with `networks_alone` refusing
       networks (a list we do not query, a big provider's own reputation data), else not us;
    5. no DNSBL answer to be had (none configured, our address unknown, lookups failed):
       trip on the network evidence alone, and say so.
    """
    n, share = a.refusing_networks, a.fraction
    seen = (
        f"{n} networks refused us ({share:.0%} of the {a.talked_to} we talked to) within "
        f"{a.window:g}s"
    )
    if n < rule.networks:
        return Decision(BlocklistJudgement.NONE, f"{seen}; fewer than {rule.networks}")
    if dnsbl is DnsblStatus.LISTED:
        lists = ", ".join(listed_on)
        return Decision(
            BlocklistJudgement.TRIP, f"{seen}; our address is listed on {lists}", tuple(listed_on)
        )
    if share < rule.fraction:
        return Decision(
            BlocklistJudgement.NOT_US,
            f"{seen}; below {rule.fraction:.0%}: the sessions that worked say our address is "
            "accepted, the refusals are about those hosts",
        )
    if dnsbl is DnsblStatus.NOT_LISTED:
        if n >= rule.networks_alone:
            return Decision(
                BlocklistJudgement.TRIP,
                f"{seen}; the configured DNSBLs do not list us, but {rule.networks_alone} or "
                "more refusing networks halt on their own",
            )
        return Decision(
            BlocklistJudgement.NOT_US,
            f"{seen}; the configured DNSBLs say our address is not listed",
        )
    return Decision(
        BlocklistJudgement.TRIP, f"{seen}; decided on the network evidence alone (no DNSBL answer)"
    )


# -- refusals that stay uncorroborated --------------------------------------------------------


@dataclass(slots=True)
class Streak:
    """One address that has refused us, without a working session in between."""

    first: float
    last: float
    refusals: int
    detail: str


@dataclass(frozen=True, slots=True)
class RefusalStreaksStatistics:
    give_up: float  # seconds
    streaks: int  # addresses refusing us now
    given_up: int


class RefusalStreaks:
    """Per MX address: since when it has refused us. A refusal of our IP is deferred, not
    failed, because it might be about us; once an address has refused us for `give_up`
    seconds while the kill switch stayed untripped, the evidence has had its chance and
    says it is about that host: its domains conclude."""

    def __init__(self, give_up: float) -> None:
        self.give_up = float(give_up)
        self._streaks: dict[str, Streak] = {}  # in order of the latest refusal
        self.given_up = 0

    def refused(self, address: str | None, detail: str, now: float) -> Streak | None:
        if not address:
            return None
        streak = self._streaks.pop(address, None)
        if streak is None or streak.last + self.forget_after <= now:
            streak = Streak(now, now, 0, "")
        streak.last = now
        streak.refusals += 1
        streak.detail = detail[:300]
        self._streaks[address] = streak
        self._trim(now)
        return streak

    def worked(self, address: str | None) -> None:
        if address:
            self._streaks.pop(address, None)

    def settled(self, streak: Streak | None) -> bool:
        """Has this streak lasted long enough to be the host's own policy?"""
        return streak is not None and streak.last - streak.first >= self.give_up

    @property
    def forget_after(self) -> float:
        # The streak holds however rarely the address is asked (defer_seconds may exceed
        # give_up); it is forgotten only a day after it could have settled, for memory.
        return self.give_up + 86_400.0

    def _trim(self, now: float) -> None:
        while self._streaks:
            address, streak = next(iter(self._streaks.items()))
            if len(self._streaks) <= MAX_STREAKS and streak.last + self.forget_after > now:
                return
            del self._streaks[address]

    def reset(self) -> None:
        self._streaks.clear()

    def statistics(self) -> RefusalStreaksStatistics:
        return RefusalStreaksStatistics(self.give_up, len(self._streaks), self.given_up)
