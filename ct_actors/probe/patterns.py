"""Candidate addresses, their fixed order, templates and the confidence model.

The order is part of the contract: for each sample person (at most three) the six person
patterns, then the two role addresses; the first accepted candidate decides. Confidence says
how much the accepted RCPT tells us about the address format of *other* people at the company:
a full `first.last` hit is the strongest evidence, a role mailbox says nothing about people.
"""

from __future__ import annotations

import secrets
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal

PERSON_PATTERNS: tuple[str, ...] = ("first.last", "firstlast", "f.last", "first.l", "first", "last")
ROLE_PATTERNS: tuple[str, ...] = ("info", "contact")
MAX_PEOPLE = 3

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
DEFAULT_METHOD = "first.last"

_TEMPLATES: dict[str, str] = {
    "first.last": "{first}.{last}",
    "firstlast": "{first}{last}",
    "f.last": "{f}.{last}",
    "first.l": "{first}.{l}",
    "first": "{first}",
    "last": "{last}",
    "info": "info",
    "contact": "contact",
}

# Letters that NFKD does not decompose into ASCII; folded the way mail admins usually do.
_FOLD = str.maketrans(
    {
        "ß": "ss",
        "æ": "ae",
        "œ": "oe",
        "ø": "o",
        "ł": "l",
        "đ": "d",
        "ð": "d",
        "þ": "th",
        "\u0131": "i",
    }
)


def fold_name(name: str) -> str:
    """Lower-case ASCII letters and digits only: accents folded, hyphens/spaces/apostrophes gone."""
    lowered = name.strip().lower().translate(_FOLD)
    decomposed = unicodedata.normalize("NFKD", lowered)
    return "".join(c for c in decomposed if c.isascii() and c.isalnum())


def template(method_type: str, domain: str) -> str:
    """The `email_method` written for a PASS: a template, never a sample person's address."""
    return f"{_TEMPLATES[method_type]}@{domain}"


def local_part(method_type: str, first: str, last: str) -> str:
    f, la = fold_name(first), fold_name(last)
    return _TEMPLATES[method_type].format(first=f, last=la, f=f[:1], l=la[:1])


@dataclass(frozen=True, slots=True)
class Candidate:
    method_type: str
    address: str
    person: int | None  # index of the sample person, None for role addresses

    @property
    def confidence(self) -> Decimal:
        return CONFIDENCE[self.method_type]


def candidates(domain: str, people: Sequence[tuple[str, str]]) -> list[Candidate]:
    """All candidates in contract order, without duplicate addresses (the first wins)."""
    out: list[Candidate] = []
    seen: set[str] = set()
    for index, (first, last) in enumerate(people[:MAX_PEOPLE]):
        if not fold_name(first) or not fold_name(last):
            continue  # a name that folds to nothing cannot produce a meaningful pattern
        for method in PERSON_PATTERNS:
            address = f"{local_part(method, first, last)}@{domain}"
            if address not in seen:
                seen.add(address)
                out.append(Candidate(method, address, index))
    for role in ROLE_PATTERNS:
        address = f"{role}@{domain}"
        if address not in seen:
            seen.add(address)
            out.append(Candidate(role, address, None))
    return out


def catchall_probe_address(domain: str) -> str:
    """A local part no one has: 20 random hex digits behind a recognisable prefix, so
    postmasters reading their logs can tell what it is."""
    token = secrets.token_hex(10)
    return f"ct-probe-{token}@{domain}"
