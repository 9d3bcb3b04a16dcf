"""The simulated internet's facts: domains, their MX hosts, mailboxes, and the ground truth.

Pure and synchronous on purpose: the DNS server, the SMTP server, the in-memory fakes and the
test assertions all read the same tables, and a separate process can serve the very same world
from its JSON form. `expected()` re-implements the prober's contract independently, so a
prober bug shows up as a disagreement instead of being copied into the oracle.
"""

from __future__ import annotations

import enum
import json
import math
import random
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from ct_actors.sim.behaviours import (
    DEFAULT_DHA_LIMITS,
    POSTFIX_ERROR_LIMITS,
    POSTGREY_DELAY,
    STRICT_ERROR_LIMITS,
    DhaLimits,
    ErrorLimits,
)
from ct_actors.sim.reply_zoo import PROFILE_NAMES

JSON_VERSION = 1


class Behaviour(enum.StrEnum):
    VERIFIABLE = "verifiable"
    CATCHALL = "catchall"
    ROLE_ONLY = "role_only"
    NO_PATTERN = "no_pattern"
    NO_MX = "no_mx"
    NULL_MX = "null_mx"
    NXDOMAIN = "nxdomain"
    FIRST_MX_DEAD = "first_mx_dead"
    SHARED_HOST = "shared_host"
    GREYLIST = "greylist"
    TARPIT = "tarpit"
    CONN_LIMIT_421 = "conn_limit_421"
    RCPT_LIMIT_452 = "rcpt_limit_452"
    DROP_MID = "drop_mid"
    BLOCKLIST = "blocklist"
    # Real servers' defences (ct_actors.sim.behaviours) and reply texts (ct_actors.sim.reply_zoo).
    # Not in DEFAULT_MIX: see REAL_SERVER_MIX.
    ERROR_LIMIT = "error_limit"  # Postfix smtpd error limits at their defaults (10/20/1s)
    ERROR_LIMIT_STRICT = "error_limit_strict"  # the same mechanism, stricter (3/5/1s)
    DHA_BLOCK = "dha_block"  # blocks a client after N unknown recipients per minute
    GREET_421 = "greet_421"  # every connection greeted with 421 and closed
    GREYLIST_300 = "greylist_300"  # postgrey at its defaults: 300 s, /24 client network
    TLS_BROKEN = "tls_broken"  # offers STARTTLS, then fails the handshake
    REPLY_ZOO = "reply_zoo"  # answers with a real provider's texts


NO_MAIL_BEHAVIOURS = frozenset({Behaviour.NO_MX, Behaviour.NULL_MX, Behaviour.NXDOMAIN})

DEFAULT_MIX: dict[Behaviour, float] = {
    Behaviour.VERIFIABLE: 0.25,
    Behaviour.SHARED_HOST: 0.31,
    Behaviour.CATCHALL: 0.11,
    Behaviour.ROLE_ONLY: 0.07,
    Behaviour.NO_PATTERN: 0.05,
    Behaviour.NO_MX: 0.03,
    Behaviour.NULL_MX: 0.02,
    Behaviour.NXDOMAIN: 0.03,
    Behaviour.FIRST_MX_DEAD: 0.02,
    Behaviour.GREYLIST: 0.02,
    Behaviour.TARPIT: 0.02,
    Behaviour.CONN_LIMIT_421: 0.02,
    Behaviour.RCPT_LIMIT_452: 0.02,
    Behaviour.DROP_MID: 0.02,
    Behaviour.BLOCKLIST: 0.01,
}

# DEFAULT_MIX plus the real servers' behaviours, ~1-3% each: the mix the pipeline must master
# before those behaviours join DEFAULT_MIX (python -m ct_actors.sim serve --mix real).
REAL_SERVER_MIX: dict[Behaviour, float] = {
    **DEFAULT_MIX,
    Behaviour.ERROR_LIMIT: 0.02,
    Behaviour.ERROR_LIMIT_STRICT: 0.01,
    Behaviour.DHA_BLOCK: 0.02,
    Behaviour.GREET_421: 0.01,
    Behaviour.GREYLIST_300: 0.02,
    Behaviour.TLS_BROKEN: 0.02,
    Behaviour.REPLY_ZOO: 0.03,
}
NAMED_MIXES: dict[str, dict[Behaviour, float]] = {
    "default": DEFAULT_MIX,
    "real": REAL_SERVER_MIX,
}
# Behaviours of the server, not of the mailbox set: their domains draw a mailbox kind of their
# own (`_KIND_BEHAVIOURS`), so a greylister or an error-limiting host also fronts catch-all
# and pattern-less domains, as real ones do.
SERVER_BEHAVIOURS = frozenset(
    {
        Behaviour.ERROR_LIMIT,
        Behaviour.ERROR_LIMIT_STRICT,
        Behaviour.DHA_BLOCK,
        Behaviour.GREET_421,
        Behaviour.GREYLIST_300,
        Behaviour.TLS_BROKEN,
        Behaviour.REPLY_ZOO,
    }
)
_KIND_BEHAVIOURS = (Behaviour.VERIFIABLE, Behaviour.CATCHALL, Behaviour.NO_PATTERN)
_KIND_WEIGHTS = (0.7, 0.15, 0.15)  # pattern / catch-all / no pattern

# The prober's candidate order and confidences (its contract, restated here on purpose).
PERSON_FORMATS: tuple[str, ...] = ("first.last", "firstlast", "f.last", "first.l", "first", "last")
ROLES: tuple[str, ...] = ("info", "contact")
CONFIDENCE: dict[str, Decimal] = {
    "first.last": Decimal("0.95"),
    "firstlast": Decimal("0.90"),
    "f.last": Decimal("0.90"),
    "first.l": Decimal("0.90"),
    "first": Decimal("0.85"),
    "last": Decimal("0.85"),
    "info": Decimal("0.70"),
    "contact": Decimal("0.70"),
}
CATCHALL_CONFIDENCE = Decimal("0.50")
MX_ONLY_CONFIDENCE = Decimal("0.70")
MAX_PEOPLE = 3

NULL_MX_HOST = "."
SHARED_HOSTS: tuple[str, ...] = (
    "aspmx.sim-google.test",
    "mx.sim-outlook.test",
    "mx.sim-zoho.test",
    "mx.sim-proton.test",
)
# Google and Microsoft dominate real MX distributions; mirror that so a few hosts are hot.
_SHARED_WEIGHTS = (0.5, 0.3, 0.1, 0.1)
_HOST_NET = 10  # MX hosts live in 127.10.0.1 upward
_WEB_NET = 30  # domain A records (nothing listens there) live in 127.30.0.1 upward

_FORMAT_WEIGHTS = (0.45, 0.10, 0.20, 0.05, 0.12, 0.08)
_TLDS = (("com", 0.40), ("io", 0.20), ("org", 0.20), ("net", 0.08), ("co.uk", 0.06), ("de", 0.06))
_WORDS_A = (
    "acme", "blue", "bright", "cedar", "delta", "ember", "falcon", "granite", "harbor", "ionic",
    "juniper", "kite", "lumen", "maple", "north", "orbit", "pine", "quartz", "river", "summit",
    "tidal", "umber", "vertex", "willow", "xenon", "yonder", "zephyr", "copper", "silver", "atlas",
)  # fmt: skip
_WORDS_B = (
    "widgets", "labs", "systems", "logistics", "analytics", "foods", "partners", "works",
    "robotics", "media", "health", "energy", "capital", "studio", "tools", "freight", "cloud",
    "supply", "dynamics", "ventures",
)  # fmt: skip
_FIRST_NAMES = (
    "James", "Mary", "John", "Patricia", "Robert", "Jennifer", "Michael", "Linda", "David",
    "Elizabeth", "William", "Susan", "Thomas", "Sarah", "Daniel", "Karen", "Paul", "Nancy",
    "Mark", "Lisa", "Kevin", "Emma", "Oliver", "Sofia", "Lucas", "Mia", "Noah", "Hannah",
)  # fmt: skip
# Only letters whose NFKD form decomposes to ASCII (no ø, ß, æ, ł): the prober folds by NFKD.
_FIRST_NAMES_SPECIAL = (
    "José", "Anne-Marie", "Zoë", "Jean-Luc", "Björn", "François", "Mary Ann", "Chloé", "Renée",
    "Íñigo",
)  # fmt: skip
# Disjoint from the first names once folded: otherwise one person's `first` could match another's
# `last` mailbox and the expected method type would drift from the domain's format.
_LAST_NAMES = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Miller", "Davis", "Wilson", "Anderson",
    "Taylor", "Moore", "Martin", "Jackson", "Thompson", "White", "Harris", "Clark",
    "Lewis", "Walker", "Young", "Allen", "King", "Wright", "Scott", "Green", "Baker", "Adams",
)  # fmt: skip
_LAST_NAMES_SPECIAL = (
    "O'Brien", "Lefèvre", "Müller", "García", "Núñez", "Smith-Jones", "van Dijk", "Çelik",
    "D'Angelo", "Häkkinen",
)  # fmt: skip
_EXTRA_MAILBOXES = ("sales", "support", "hr", "admin", "billing", "jobs", "press", "office")
_ALWAYS_MAILBOXES = ("postmaster", "abuse")


def fold_name(name: str) -> str:
    """Lower-case ASCII letters and digits only: accents folded (NFKD), punctuation dropped."""
    ascii_only = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode("ascii")
    return "".join(ch for ch in ascii_only.lower() if ch.isalnum())


def local_part(fmt: str, first: str, last: str) -> str:
    """The mailbox a prober would try for a person under one of `PERSON_FORMATS`."""
    f, la = fold_name(first), fold_name(last)
    if not f or not la:
        raise ValueError(f"name folds to nothing: {first!r} {last!r}")
    match fmt:
        case "first.last":
            return f"{f}.{la}"
        case "firstlast":
            return f"{f}{la}"
        case "f.last":
            return f"{f[0]}.{la}"
        case "first.l":
            return f"{f}.{la[0]}"
        case "first":
            return f
        case "last":
            return la
    raise ValueError(f"unknown format {fmt!r}")


def candidate_order(people: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """(local part, method type) in the order the prober tries them; first accepted wins."""
    out = [
        (local_part(fmt, first, last), fmt)
        for first, last in list(people)[:MAX_PEOPLE]
        for fmt in PERSON_FORMATS
    ]
    out.extend((role, role) for role in ROLES)
    return out


ExpectedOutcome = Literal["PASS", "FAIL", "DEFERRED"]


@dataclass(frozen=True, slots=True)
class Expected:
    outcome: ExpectedOutcome
    code: str | None = None
    method_type: str | None = None
    is_catchall: bool = False
    confidence: Decimal | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "outcome": self.outcome,
            "code": self.code,
            "method_type": self.method_type,
            "is_catchall": self.is_catchall,
            "confidence": None if self.confidence is None else str(self.confidence),
        }


_FAIL_NO_MX = Expected("FAIL", "CT-M-NO-MX")


@dataclass(frozen=True, slots=True)
class SimHost:
    name: str
    ip: str
    behaviour: Behaviour
    listening: bool = True  # False: nothing is bound on the IP, connections are refused
    conn_limit: int | None = None  # simultaneous sessions before `421 4.7.0`
    greylist_delay: float = 0.0
    tarpit_delay: float = 0.0
    error_limits: ErrorLimits | None = None  # Postfix-style per-connection error limits
    dha: DhaLimits | None = None  # directory-harvest blocker per client IP
    zoo: str | None = None  # a `reply_zoo.PROFILES` name: answer with that provider's texts

    def to_dict(self) -> dict[str, Any]:
        el, dha = self.error_limits, self.dha
        return {
            "name": self.name,
            "ip": self.ip,
            "behaviour": str(self.behaviour),
            "listening": self.listening,
            "conn_limit": self.conn_limit,
            "greylist_delay": self.greylist_delay,
            "tarpit_delay": self.tarpit_delay,
            "error_limits": None if el is None else [el.soft, el.hard, el.sleep, el.junk],
            "dha": None if dha is None else [dha.limit, dha.window, dha.block],
            "zoo": self.zoo,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SimHost:
        # .get: world files written before these fields existed still load.
        el, dha = d.get("error_limits"), d.get("dha")
        return cls(
            name=d["name"],
            ip=d["ip"],
            behaviour=Behaviour(d["behaviour"]),
            listening=d["listening"],
            conn_limit=d["conn_limit"],
            greylist_delay=d["greylist_delay"],
            tarpit_delay=d["tarpit_delay"],
            error_limits=None
            if el is None
            else ErrorLimits(int(el[0]), int(el[1]), float(el[2]), int(el[3])),
            dha=None if dha is None else DhaLimits(int(dha[0]), float(dha[1]), float(dha[2])),
            zoo=d.get("zoo"),
        )


@dataclass(frozen=True, slots=True)
class SimDomain:
    name: str
    behaviour: Behaviour
    mx: tuple[tuple[int, str], ...]  # (preference, host name); null MX is ((0, "."),)
    format: str | None  # the company's convention, None where no person mailbox exists
    people: tuple[tuple[str, str], ...]  # (first, last) as a prober would receive them
    mailboxes: frozenset[str]  # every existing local part, roles included
    roles: tuple[str, ...] = ()  # which of ROLES exist
    a: str | None = None  # the domain's own A record (web server), None for NXDOMAIN
    catchall: bool = False  # a SERVER_BEHAVIOURS domain whose host accepts every local part

    @property
    def has_mx(self) -> bool:
        return any(host != NULL_MX_HOST for _, host in self.mx)

    @property
    def null_mx(self) -> bool:
        return self.mx == ((0, NULL_MX_HOST),)

    @property
    def is_catchall(self) -> bool:
        return self.behaviour is Behaviour.CATCHALL or self.catchall

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "behaviour": str(self.behaviour),
            "mx": [[pref, host] for pref, host in self.mx],
            "format": self.format,
            "people": [[first, last] for first, last in self.people],
            "mailboxes": sorted(self.mailboxes),
            "roles": list(self.roles),
            "a": self.a,
            "catchall": self.catchall,
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> SimDomain:
        return cls(
            name=d["name"],
            behaviour=Behaviour(d["behaviour"]),
            mx=tuple((int(pref), str(host)) for pref, host in d["mx"]),
            format=d["format"],
            people=tuple((str(first), str(last)) for first, last in d["people"]),
            mailboxes=frozenset(d["mailboxes"]),
            roles=tuple(d["roles"]),
            a=d["a"],
            catchall=bool(d.get("catchall", False)),
        )


# Every simulated host and resolver is on loopback: the network the demo, bench and tests
# put in smtp.allow_networks (production refuses it, ct_actors.net.address_policy).
SIM_NETWORK = "127.0.0.0/8"


def _ip(net: int, index: int) -> str:
    """index-th usable address of 127.<net>.0.0/... skipping .0 and .255 final octets."""
    b2, rest = divmod(index, 254 * 256)
    b3, b4 = divmod(rest, 254)
    if net + b2 > 255:
        raise ValueError("address space exhausted")
    return f"127.{net + b2}.{b3}.{b4 + 1}"


def _apportion(n: int, mix: Mapping[Behaviour, float]) -> dict[Behaviour, int]:
    """Exact per-behaviour counts (largest remainder), so every run of a seed has the same mix
    and every weighted behaviour appears once whenever there is room for all of them."""
    weighted = [b for b in Behaviour if mix.get(b, 0.0) > 0.0]
    if not weighted:
        raise ValueError("mix has no positive weight")
    if any(w < 0 for w in mix.values()):
        raise ValueError("mix weights must not be negative")
    total = sum(mix[b] for b in weighted)
    quotas = {b: n * mix[b] / total for b in weighted}
    counts = {b: math.floor(quotas[b]) for b in weighted}
    by_remainder = sorted(weighted, key=lambda b: (math.floor(quotas[b]) - quotas[b], b.value))
    for b in by_remainder[: n - sum(counts.values())]:
        counts[b] += 1
    if n >= len(weighted):
        for b in weighted:
            if counts[b] == 0:
                donor = max(weighted, key=lambda d: (counts[d], d.value))
                counts[donor] -= 1
                counts[b] = 1
    return counts


@dataclass(eq=True)
class World:
    seed: int
    domains: dict[str, SimDomain]
    hosts: dict[str, SimHost]
    latency_ms: float = 50.0
    jitter_ms: float = 25.0
    smtp_port: int = 2525
    dns_address: str = "127.0.53.53"
    dns_port: int = 5353
    greylist_delay: float = 2.0
    tarpit_delay: float = 3.0
    conn_limit: int = 4
    _by_ip: dict[str, SimHost] = field(init=False, repr=False, compare=False)
    _served: dict[str, set[str]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._by_ip = {h.ip: h for h in self.hosts.values()}
        self._served = {name: set() for name in self.hosts}
        for d in self.domains.values():
            for _, host in d.mx:
                if host in self._served:
                    self._served[host].add(d.name)

    # -- generation -------------------------------------------------------------------------

    @classmethod
    def generate(
        cls,
        seed: int,
        n_domains: int,
        *,
        mix: Mapping[Behaviour, float] | None = None,
        latency_ms: float = 50.0,
        jitter_ms: float = 25.0,
        smtp_port: int = 2525,
        dns_address: str = "127.0.53.53",
        dns_port: int = 5353,
        greylist_delay: float = 2.0,
        tarpit_delay: float = 3.0,
        conn_limit: int = 4,
        blocklist_hosts: int = 1,
        error_limits: ErrorLimits = POSTFIX_ERROR_LIMITS,
        strict_error_limits: ErrorLimits = STRICT_ERROR_LIMITS,
        dha_limits: DhaLimits = DEFAULT_DHA_LIMITS,
        greylist_300_delay: float = POSTGREY_DELAY,
    ) -> World:
        """`blocklist_hosts`: how many distinct MX hosts the BLOCKLIST domains spread over.
        One by default — a provider that checks Spamhaus, which is what a prober on a clean IP
        meets; several is what it looks like when our own IP is listed (the kill switch's
        scenario).

        `error_limits`/`strict_error_limits`/`dha_limits`/`greylist_300_delay` parametrise the
        ERROR_LIMIT, ERROR_LIMIT_STRICT, DHA_BLOCK and GREYLIST_300 hosts; they travel in the
        hosts' JSON, so a world served from its file behaves the same."""
        if n_domains < 0:
            raise ValueError("n_domains must not be negative")
        rng = random.Random(seed)
        weights = {Behaviour(k): float(v) for k, v in (mix or DEFAULT_MIX).items()}
        plan = [b for b, count in _apportion(n_domains, weights).items() for _ in range(count)]
        rng.shuffle(plan)

        hosts: dict[str, SimHost] = {}

        grey_delays = {
            Behaviour.GREYLIST: float(greylist_delay),
            Behaviour.GREYLIST_300: float(greylist_300_delay),
        }
        limits = {
            Behaviour.ERROR_LIMIT: error_limits,
            Behaviour.ERROR_LIMIT_STRICT: strict_error_limits,
        }

        def add_host(
            name: str, behaviour: Behaviour, listening: bool = True, zoo: str | None = None
        ) -> str:
            hosts[name] = SimHost(
                name=name,
                ip=_ip(_HOST_NET, len(hosts)),
                behaviour=behaviour,
                listening=listening,
                conn_limit=conn_limit if behaviour is Behaviour.CONN_LIMIT_421 else None,
                greylist_delay=grey_delays.get(behaviour, 0.0),
                tarpit_delay=float(tarpit_delay) if behaviour is Behaviour.TARPIT else 0.0,
                error_limits=limits.get(behaviour),
                dha=dha_limits if behaviour is Behaviour.DHA_BLOCK else None,
                zoo=zoo,
            )
            return name

        for shared in SHARED_HOSTS:
            add_host(shared, Behaviour.SHARED_HOST)

        domains: dict[str, SimDomain] = {}
        for index, behaviour in enumerate(plan):
            name = _domain_name(rng, domains)
            people = _people(rng)
            if behaviour is Behaviour.SHARED_HOST:
                mx: tuple[tuple[int, str], ...] = (
                    (1, rng.choices(SHARED_HOSTS, _SHARED_WEIGHTS)[0]),
                )
            elif behaviour is Behaviour.FIRST_MX_DEAD:
                dead = add_host(f"mx1.{name}", behaviour, listening=False)
                mx = ((10, dead), (20, add_host(f"mx2.{name}", Behaviour.VERIFIABLE)))
            elif behaviour is Behaviour.BLOCKLIST:
                n = sum(1 for h in hosts.values() if h.behaviour is Behaviour.BLOCKLIST)
                if n < max(1, blocklist_hosts):
                    host = add_host(f"mx.sim-blocking-{n + 1}.test", behaviour)
                else:
                    blocking = [h for h in hosts.values() if h.behaviour is Behaviour.BLOCKLIST]
                    host = blocking[index % len(blocking)].name
                mx = ((10, host),)
            elif behaviour is Behaviour.NULL_MX:
                mx = ((0, NULL_MX_HOST),)
            elif behaviour in NO_MAIL_BEHAVIOURS:
                mx = ()
            elif behaviour is Behaviour.GREET_421:
                # Every MX host refuses: trying the backup must not help either.
                mx = ((10, add_host(f"mx1.{name}", behaviour)),
                      (20, add_host(f"mx2.{name}", behaviour)))  # fmt: skip
            elif behaviour is Behaviour.REPLY_ZOO:
                mx = ((10, add_host(f"mx1.{name}", behaviour, zoo=rng.choice(PROFILE_NAMES))),)
            else:
                mx = ((10, add_host(f"mx1.{name}", behaviour)),)
            kind = behaviour
            if behaviour in SERVER_BEHAVIOURS:
                kind = rng.choices(_KIND_BEHAVIOURS, _KIND_WEIGHTS)[0]
            fmt, mailboxes, roles = _mailboxes(rng, kind, people)
            web = None if behaviour is Behaviour.NXDOMAIN else _ip(_WEB_NET, index)
            domains[name] = SimDomain(
                name, behaviour, mx, fmt, people, mailboxes, roles, web,
                catchall=kind is Behaviour.CATCHALL,
            )  # fmt: skip

        # float() so that 50 and 50.0 give the same JSON: the world file is compared byte-wise.
        return cls(
            seed=seed,
            domains=domains,
            hosts=hosts,
            latency_ms=float(latency_ms),
            jitter_ms=float(jitter_ms),
            smtp_port=smtp_port,
            dns_address=dns_address,
            dns_port=dns_port,
            greylist_delay=float(greylist_delay),
            tarpit_delay=float(tarpit_delay),
            conn_limit=conn_limit,
        )

    # -- lookups ----------------------------------------------------------------------------

    def domain(self, name: str) -> SimDomain:
        return self.domains[name.lower().rstrip(".")]

    def people(self, domain: str) -> list[tuple[str, str]]:
        return list(self.domain(domain).people)

    def by_behaviour(self, behaviour: Behaviour) -> list[SimDomain]:
        return [d for d in self.domains.values() if d.behaviour is behaviour]

    def host_by_ip(self, ip: str) -> SimHost | None:
        return self._by_ip.get(ip)

    def mx_hosts(self, domain: str) -> list[SimHost]:
        """The domain's MX hosts in preference order (ties by name)."""
        return [self.hosts[h] for _, h in sorted(self.domain(domain).mx) if h in self.hosts]

    def live_hosts(self) -> list[SimHost]:
        return [h for h in self.hosts.values() if h.listening]

    def served_by(self, host: str) -> frozenset[str]:
        return frozenset(self._served.get(host, ()))

    def serves(self, host: str, domain: str) -> bool:
        return domain in self._served.get(host, ())

    def accepts(self, domain: str, local: str) -> bool:
        """Whether RCPT TO:<local@domain> names an existing mailbox (catch-alls take all)."""
        d = self.domains.get(domain.lower())
        if d is None:
            return False
        return d.is_catchall or local.lower() in d.mailboxes

    # -- ground truth -----------------------------------------------------------------------

    def expected(self, domain: str) -> Expected:
        d = self.domain(domain)
        if d.behaviour in NO_MAIL_BEHAVIOURS:
            return _FAIL_NO_MX
        if d.behaviour is Behaviour.DROP_MID:
            return Expected("FAIL", "CT-M-SMTP-FAIL")
        if d.behaviour is Behaviour.GREET_421:
            # Every MX host refuses every connection: after its bounded retries the prober must
            # conclude that the domain's SMTP service fails (not defer it forever).
            return Expected("FAIL", "CT-M-SMTP-FAIL")
        if d.behaviour is Behaviour.BLOCKLIST:
            return Expected("DEFERRED")
        # The other server behaviours (error limits, DHA, postgrey, broken TLS, reply zoo) hide
        # nothing from a polite prober: the domain's own truth stands.
        if d.is_catchall:
            return Expected("PASS", None, "first.last", True, CATCHALL_CONFIDENCE)
        for local, method in candidate_order(d.people):
            if local in d.mailboxes:
                return Expected("PASS", None, method, False, CONFIDENCE[method])
        return Expected("FAIL", "CT-M-NO-PATTERN")

    def expected_mx_only(self, domain: str) -> Expected:
        if self.domain(domain).has_mx:
            return Expected("PASS", None, "first.last", False, MX_ONLY_CONFIDENCE)
        return _FAIL_NO_MX

    def ground_truth_rows(self, *, mx_only: bool = False) -> list[dict[str, Any]]:
        rows = []
        for d in self.domains.values():
            exp = self.expected_mx_only(d.name) if mx_only else self.expected(d.name)
            rows.append(
                {
                    "domain": d.name,
                    "behaviour": str(d.behaviour),
                    **exp.to_dict(),
                    "format": d.format,
                    "mx": [host for _, host in sorted(d.mx)],
                    "people": [list(p) for p in d.people],
                }
            )
        return rows

    # -- serialisation ----------------------------------------------------------------------

    def to_json(self) -> str:
        doc = {
            "version": JSON_VERSION,
            "seed": self.seed,
            "latency_ms": self.latency_ms,
            "jitter_ms": self.jitter_ms,
            "smtp_port": self.smtp_port,
            "dns_address": self.dns_address,
            "dns_port": self.dns_port,
            "greylist_delay": self.greylist_delay,
            "tarpit_delay": self.tarpit_delay,
            "conn_limit": self.conn_limit,
            "hosts": [h.to_dict() for h in self.hosts.values()],
            "domains": [d.to_dict() for d in self.domains.values()],
        }
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> World:
        doc = json.loads(text)
        if doc.get("version") != JSON_VERSION:
            raise ValueError(f"unsupported world version {doc.get('version')!r}")
        hosts = [SimHost.from_dict(h) for h in doc["hosts"]]
        domains = [SimDomain.from_dict(d) for d in doc["domains"]]
        return cls(
            seed=doc["seed"],
            domains={d.name: d for d in domains},
            hosts={h.name: h for h in hosts},
            latency_ms=doc["latency_ms"],
            jitter_ms=doc["jitter_ms"],
            smtp_port=doc["smtp_port"],
            dns_address=doc["dns_address"],
            dns_port=doc["dns_port"],
            greylist_delay=doc["greylist_delay"],
            tarpit_delay=doc["tarpit_delay"],
            conn_limit=doc["conn_limit"],
        )


# -- generator helpers ----------------------------------------------------------------------


def _domain_name(rng: random.Random, taken: Mapping[str, object]) -> str:
    tlds, tld_weights = zip(*_TLDS, strict=True)
    while True:
        a, b = rng.choice(_WORDS_A), rng.choice(_WORDS_B)
        tld = rng.choices(tlds, tld_weights)[0]
        name = f"{a}-{b}-{rng.randrange(1000, 10000)}.{tld}"
        if name not in taken:
            return name


def _people(rng: random.Random) -> tuple[tuple[str, str], ...]:
    count = rng.choices((1, 2, 3), (0.3, 0.3, 0.4))[0]
    people: list[tuple[str, str]] = []
    while len(people) < count:
        first = rng.choice(_FIRST_NAMES_SPECIAL if rng.random() < 0.12 else _FIRST_NAMES)
        last = rng.choice(_LAST_NAMES_SPECIAL if rng.random() < 0.12 else _LAST_NAMES)
        if (first, last) not in people:
            people.append((first, last))
    return tuple(people)


def _junk(rng: random.Random) -> str:
    # Always contains a digit, so it can never equal a folded name or a role.
    letters = "abcdefghijklmnopqrstuvwxyz"
    body = [rng.choice(letters) for _ in range(4)]
    body.insert(rng.randrange(1, 5), str(rng.randrange(10)))
    return "".join(body)


def _mailboxes(
    rng: random.Random, behaviour: Behaviour, people: tuple[tuple[str, str], ...]
) -> tuple[str | None, frozenset[str], tuple[str, ...]]:
    if behaviour in NO_MAIL_BEHAVIOURS:
        return None, frozenset(), ()
    boxes = set(_ALWAYS_MAILBOXES)
    boxes.update(_junk(rng) for _ in range(rng.randrange(0, 3)))
    if behaviour is Behaviour.NO_PATTERN:
        boxes.add(_junk(rng))
        return None, frozenset(boxes), ()
    boxes.update(rng.sample(_EXTRA_MAILBOXES, rng.randrange(0, 4)))
    if behaviour is Behaviour.ROLE_ONLY:
        roles = rng.choice((("info",), ("contact",), ROLES))
        return None, frozenset(boxes | set(roles)), roles
    roles = tuple(r for r in ROLES if rng.random() < 0.5)
    fmt = rng.choices(PERSON_FORMATS, _FORMAT_WEIGHTS)[0]
    # Sometimes the first-listed person has left: the match then comes from a later person.
    staff = people[1:] if len(people) > 1 and rng.random() < 0.15 else people
    boxes.update(local_part(fmt, first, last) for first, last in staff)
    return fmt, frozenset(boxes | set(roles)), roles
