"""Candidate addresses, their fixed order, templates and the confidence model.

The order is part of the contract: for each sample person (at most three) the six person
patterns, then the two role addresses; the first accepted candidate decides. Confidence says
how much the accepted RCPT tells us about the address format of *other* people at the company:
a full `first.last` hit is the strongest evidence, a role mailbox says nothing about people.
"""

from __future__ import annotations

import re
import secrets
import string
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
    return _local_part_folded(method_type, fold_name(first), fold_name(last))


def _local_part_folded(method_type: str, f: str, la: str) -> str:
    return _TEMPLATES[method_type].format(first=f, last=la, f=f[:1], l=la[:1])


# RFC 5321 §4.5.3.1.1: "The maximum total length of a user name or other local-part is 64
# octets." §4.5.3.1.3 caps the whole forward-path at 256 octets and RFC 3696 erratum 1003
# (Klensin) says addresses beyond those limits "are not normally useful"; a 10 kB local part
# even breaks the 512-octet command line limit (§4.5.3.1.4) and the server refuses the line.
MAX_LOCAL_PART_OCTETS = 64
# RFC 5322 §3.2.3 atext: the characters an unquoted (dot-string) local part may contain. We
# never send quoted strings: a name that needs quoting is not a pattern a company uses.
_ATEXT = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-/=?^_`{|}~")
# The same rule as one pattern, for the common case (every candidate of every domain is
# checked): a valid ASCII dot-string of at most 64 characters needs no closer look.
_ATOM = "[" + "".join(re.escape(c) for c in sorted(_ATEXT)) + "]+"
_VALID_DOT_STRING = re.compile(rf"{_ATOM}(?:\.{_ATOM})*")
# How much of a refused local part the evidence keeps.
_SKIPPED_PREFIX = 64


def local_part_problem(local: str) -> str | None:
    """Why `local` is not a valid RFC 5321 dot-string local part (§4.1.2, §4.5.3.1.1), or None."""
    if len(local) <= MAX_LOCAL_PART_OCTETS and _VALID_DOT_STRING.fullmatch(local):
        return None  # ASCII only, so characters are octets
    if not local:
        return "empty local part"
    octets = len(local.encode("utf-8"))
    if octets > MAX_LOCAL_PART_OCTETS:
        return f"local part longer than {MAX_LOCAL_PART_OCTETS} octets ({octets})"
    bad = next((c for c in local if c != "." and c not in _ATEXT), None)
    if bad is not None:
        return f"character {bad!r} not allowed in a dot-string local part"
    if "" in local.split("."):
        return "empty atom in dot-string"
    return None


@dataclass(frozen=True, slots=True)
class SkippedCandidate:
    """A candidate never sent: its local part is not valid (recorded in the evidence)."""

    method_type: str
    person: int | None
    reason: str
    local_part: str  # at most _SKIPPED_PREFIX characters, then "…"

    def audit(self) -> dict[str, object]:
        return {
            "method_type": self.method_type,
            "person": self.person,
            "reason": self.reason,
            "local_part": self.local_part,
        }


@dataclass(frozen=True, slots=True)
class Candidate:
    method_type: str
    address: str
    person: int | None  # index of the sample person, None for role addresses

    @property
    def confidence(self) -> Decimal:
        return CONFIDENCE[self.method_type]


def candidates(domain: str, people: Sequence[tuple[str, str]]) -> list[Candidate]:
    """All valid candidates in contract order, without duplicate addresses (the first wins)."""
    return candidates_and_skips(domain, people)[0]


def candidates_and_skips(
    domain: str, people: Sequence[tuple[str, str]]
) -> tuple[list[Candidate], list[SkippedCandidate]]:
    """`candidates`, and the person candidates left out because their local part is not a
    valid RFC 5321 local part (never sent; the caller records them)."""
    out: list[Candidate] = []
    skipped: list[SkippedCandidate] = []
    seen: set[str] = set()
    for index, (first, last) in enumerate(people[:MAX_PEOPLE]):
        folded_first, folded_last = fold_name(first), fold_name(last)
        if not folded_first or not folded_last:
            continue  # a name that folds to nothing cannot produce a meaningful pattern
        for method in PERSON_PATTERNS:
            local = _local_part_folded(method, folded_first, folded_last)
            if (problem := local_part_problem(local)) is not None:
                shown = local if len(local) <= _SKIPPED_PREFIX else local[:_SKIPPED_PREFIX] + "…"
                skipped.append(SkippedCandidate(method, index, problem, shown))
                continue
            address = f"{local}@{domain}"
            if address not in seen:
                seen.add(address)
                out.append(Candidate(method, address, index))
    for role in ROLE_PATTERNS:
        address = f"{role}@{domain}"
        if address not in seen:
            seen.add(address)
            out.append(Candidate(role, address, None))
    return out, skipped


def catchall_probe_address(domain: str) -> str:
    """A local part no one has: 20 random hex digits behind a recognisable prefix, so
    postmasters reading their logs can tell what it is."""
    token = secrets.token_hex(10)
    return f"ct-probe-{token}@{domain}"
