"""Generating a simulated world from a seed: the behaviour mixes, the exact per-behaviour counts,
and the random (but seed-determined) domain names, people, mailboxes and host addresses."""

from __future__ import annotations

import math
import random
from collections.abc import Container, Iterator, Mapping
from dataclasses import dataclass

from ct_actors.sim.behaviours import (
    DEFAULT_DHA_LIMITS,
    POSTFIX_ERROR_LIMITS,
    POSTGREY_DELAY,
    STRICT_ERROR_LIMITS,
    DhaLimits,
    ErrorLimits,
)
from ct_actors.sim.reply_zoo import PROFILE_NAMES
from ct_actors.sim.world_types import (
    NO_MAIL_BEHAVIOURS,
    NULL_MX_HOST,
    PERSON_FORMATS,
    ROLES,
    SERVER_BEHAVIOURS,
    SHARED_HOSTS,
    Behaviour,
    SimDomain,
    SimHost,
    local_part,
)

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


_KIND_BEHAVIOURS = (Behaviour.VERIFIABLE, Behaviour.CATCHALL, Behaviour.NO_PATTERN)


_KIND_WEIGHTS = (0.7, 0.15, 0.15)  # pattern / catch-all / no pattern


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


@dataclass(frozen=True, slots=True)
class NetworkParams:
    """`World.generate`'s knobs for the hosts and the mix (its docstring says what they mean)."""

    mix: Mapping[Behaviour, float] | None = None
    greylist_delay: float = 2.0
    tarpit_delay: float = 3.0
    conn_limit: int = 4
    blocklist_hosts: int = 1
    error_limits: ErrorLimits = POSTFIX_ERROR_LIMITS
    strict_error_limits: ErrorLimits = STRICT_ERROR_LIMITS
    dha_limits: DhaLimits = DEFAULT_DHA_LIMITS
    greylist_300_delay: float = POSTGREY_DELAY


def generate_network(
    seed: int, n_domains: int, params: NetworkParams
) -> tuple[dict[str, SimDomain], dict[str, SimHost]]:
    """`iter_network` collected: the domains and the hosts by name."""
    domains: dict[str, SimDomain] = {}
    hosts: dict[str, SimHost] = {}
    for item in iter_network(seed, n_domains, params):
        if isinstance(item, SimHost):
            hosts[item.name] = item
        else:
            domains[item.name] = item
    return domains, hosts


def behaviour_counts(n_domains: int, mix: Mapping[Behaviour, float] | None) -> dict[Behaviour, int]:
    """How many domains of each behaviour a world of `n_domains` has (exact, seed-independent)."""
    if n_domains < 0:
        raise ValueError("n_domains must not be negative")
    weights = {Behaviour(k): float(v) for k, v in (mix or DEFAULT_MIX).items()}
    return _apportion(n_domains, weights)


def iter_network(seed: int, n_domains: int, params: NetworkParams) -> Iterator[SimHost | SimDomain]:
    """The world as a stream: the shared hosts, then each domain preceded by the hosts it
    brings, so a reader always meets a host before the first domain that names it. What stays
    in memory is the set of names taken (names are drawn at random and must be unique) and the
    blocklisting hosts, not the world."""
    rng = random.Random(seed)
    plan = [
        b for b, count in behaviour_counts(n_domains, params.mix).items() for _ in range(count)
    ]
    rng.shuffle(plan)

    n_hosts = 0
    blocking: list[str] = []
    taken: set[str] = set()
    grey_delays = {
        Behaviour.GREYLIST: float(params.greylist_delay),
        Behaviour.GREYLIST_300: float(params.greylist_300_delay),
    }
    limits = {
        Behaviour.ERROR_LIMIT: params.error_limits,
        Behaviour.ERROR_LIMIT_STRICT: params.strict_error_limits,
    }

    def host(
        name: str, behaviour: Behaviour, listening: bool = True, zoo: str | None = None
    ) -> SimHost:
        nonlocal n_hosts
        made = SimHost(
            name=name,
            ip=_ip(_HOST_NET, n_hosts),
            behaviour=behaviour,
            listening=listening,
            conn_limit=params.conn_limit if behaviour is Behaviour.CONN_LIMIT_421 else None,
            greylist_delay=grey_delays.get(behaviour, 0.0),
            tarpit_delay=float(params.tarpit_delay) if behaviour is Behaviour.TARPIT else 0.0,
            error_limits=limits.get(behaviour),
            dha=params.dha_limits if behaviour is Behaviour.DHA_BLOCK else None,
            zoo=zoo,
        )
        n_hosts += 1
        return made

    for shared in SHARED_HOSTS:
        yield host(shared, Behaviour.SHARED_HOST)

    for index, behaviour in enumerate(plan):
        name = _domain_name(rng, taken)
        taken.add(name)
        people = _people(rng)
        new: list[SimHost] = []
        if behaviour is Behaviour.SHARED_HOST:
            mx: tuple[tuple[int, str], ...] = ((1, rng.choices(SHARED_HOSTS, _SHARED_WEIGHTS)[0]),)
        elif behaviour is Behaviour.FIRST_MX_DEAD:
            new = [host(f"mx1.{name}", behaviour, listening=False),
                   host(f"mx2.{name}", Behaviour.VERIFIABLE)]  # fmt: skip
            mx = ((10, new[0].name), (20, new[1].name))
        elif behaviour is Behaviour.BLOCKLIST:
            if len(blocking) < max(1, params.blocklist_hosts):
                new = [host(f"mx.sim-blocking-{len(blocking) + 1}.test", behaviour)]
                blocking.append(new[0].name)
                mx = ((10, new[0].name),)
            else:
                mx = ((10, blocking[index % len(blocking)]),)
        elif behaviour is Behaviour.NULL_MX:
            mx = ((0, NULL_MX_HOST),)
        elif behaviour in NO_MAIL_BEHAVIOURS:
            mx = ()
        elif behaviour is Behaviour.GREET_421:
            # Every MX host refuses: trying the backup must not help either.
            new = [host(f"mx1.{name}", behaviour), host(f"mx2.{name}", behaviour)]
            mx = ((10, new[0].name), (20, new[1].name))
        elif behaviour is Behaviour.REPLY_ZOO:
            new = [host(f"mx1.{name}", behaviour, zoo=rng.choice(PROFILE_NAMES))]
            mx = ((10, new[0].name),)
        else:
            new = [host(f"mx1.{name}", behaviour)]
            mx = ((10, new[0].name),)
        kind = behaviour
        if behaviour in SERVER_BEHAVIOURS:
            kind = rng.choices(_KIND_BEHAVIOURS, _KIND_WEIGHTS)[0]
        fmt, mailboxes, roles = _mailboxes(rng, kind, people)
        web = None if behaviour is Behaviour.NXDOMAIN else _ip(_WEB_NET, index)
        yield from new
        yield SimDomain(
            name, behaviour, mx, fmt, people, mailboxes, roles, web,
            catchall=kind is Behaviour.CATCHALL,
        )  # fmt: skip


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


def _domain_name(rng: random.Random, taken: Container[str]) -> str:
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
