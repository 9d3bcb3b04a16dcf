"""The simulated world's vocabulary and data types: the `Behaviour`s a domain or host can have,
the prober's candidate formats and confidences, `Expected` outcomes, and the `SimHost` and
`SimDomain` records (with their JSON dicts). Pure data, no generation."""

from __future__ import annotations

import enum
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal

from ct_actors.sim.behaviours import (
    DhaLimits,
    ErrorLimits,
)


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


@dataclass(frozen=True, slots=True)
class SimHost:
    name: str
    ip: str
    behaviour: Behaviour
    # False: the SMTP service is down. The in-memory connector refuses; the socket simulator,
    # whose one wildcard listener holds the port for every address, accepts and resets.
    listening: bool = True
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
