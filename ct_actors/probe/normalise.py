"""Deterministic normalisation of spine domains.

The spine's `domain` column is often a website URL typed by a human. We undo exactly the
differences listed in the contract — scheme, `www.`, path/query/fragment, port, case, trailing
dot, IDNA — and record each one we applied, so the outcome row says what was changed. Anything
else (an e-mail address, an IP literal, a single label) is refused rather than guessed at.

Normalisation is idempotent (normalising a result changes nothing; a property test checks it):
every leading `www.` is removed, not just one. Hostile forms are refused: an `xn--` label
that is not a valid A-label (RFC 5890 §2.3.2.1: it must decode and encode back to itself),
other labels with `--` in the third and fourth positions (reserved, RFC 5891 §4.2.3.1), ports
that are not 1-5 ASCII digits in 1..65535 (RFC 3986 §3.2.3 `port = *DIGIT`, where DIGIT is
ASCII only, RFC 5234 B.1; `str.isdigit` would accept "١٢" or "²"). Labels that mix scripts
in a way UTS #39 §5.2 ("Highly Restrictive") does not allow, the classic look-alike (a
Cyrillic U+0430 standing in for the "a" of "apple"), are accepted (they are real,
registrable names) but listed in `mixed_script`, which the outcome's evidence records.
"""

from __future__ import annotations

import ipaddress
import re
import unicodedata
from dataclasses import dataclass

import idna

_SCHEME = re.compile(r"^[a-z][a-z0-9+.\-]*://", re.IGNORECASE)
_LDH_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_MAX_DOMAIN = 253
_PORT = re.compile(r"[0-9]+")
# UTS #39 §5.2 Highly Restrictive: one script, or Latin + Han + Hiragana + Katakana, or
# Latin + Han + Bopomofo, or Latin + Han + Hangul. (Script approximated by the first word of
# the Unicode character name, which is the script for letters; "CJK" stands for Han.)
# Letters of Script=Common or Inherited whose names start like a script (U+30FC KATAKANA-
# HIRAGANA PROLONGED SOUND MARK is used by both kana scripts).
_COMMON = frozenset({"KATAKANA-HIRAGANA", "UNKNOWN"})
_ALLOWED_MIXES = (
    frozenset({"LATIN", "CJK", "HIRAGANA", "KATAKANA"}),
    frozenset({"LATIN", "CJK", "BOPOMOFO"}),
    frozenset({"LATIN", "CJK", "HANGUL"}),
)


class UnusableDomain(ValueError):
    """The spine value cannot be turned into a domain without guessing."""

    def __init__(self, raw: str | None, reason: str) -> None:
        super().__init__(reason)
        self.raw = raw
        self.reason = reason


@dataclass(frozen=True, slots=True)
class NormalisedDomain:
    domain: str  # ASCII (A-label) form, lower case, no trailing dot
    changes: tuple[str, ...]  # what was normalised, in the order applied; empty if nothing
    # A-labels whose letters mix scripts beyond what UTS #39 allows (look-alike suspects).
    mixed_script: tuple[str, ...] = ()

    @property
    def changed(self) -> bool:
        return bool(self.changes)


def normalise_domain(raw: str | None) -> NormalisedDomain:
    if raw is None:
        raise UnusableDomain(raw, "domain is NULL")
    changes: list[str] = []
    value = raw.strip()
    if value != raw:
        changes.append("whitespace")
    if not value:
        raise UnusableDomain(raw, "domain is empty")

    match = _SCHEME.match(value)
    if match:
        changes.append(f"scheme:{match.group(0)[:-3].lower()}")
        value = value[match.end() :]

    # The authority ends at the first path, query or fragment delimiter.
    cut = min((i for i in (value.find(c) for c in "/?#") if i >= 0), default=-1)
    if cut >= 0:
        if value[cut:] not in ("", "/"):
            changes.append("path")
        else:
            changes.append("trailing-slash")
        value = value[:cut]

    if "@" in value:
        # Either URL userinfo or an e-mail address typed into the domain column: both mean
        # somebody put something else here, and picking the part after '@' would be a guess.
        raise UnusableDomain(raw, "contains '@' (an e-mail address or URL credentials)")

    if value.startswith("["):
        raise UnusableDomain(raw, "is an IP literal, not a domain")
    if ":" in value:
        host, _, port = value.rpartition(":")
        if not _PORT.fullmatch(port):
            raise UnusableDomain(raw, f"malformed port {port[:20]!r}")
        # Length first: int() of thousands of digits is slow (and refused past 4300).
        if len(port) > 5 or not 1 <= int(port) <= 65535:
            raise UnusableDomain(raw, f"port {port[:20]} is out of range")
        changes.append(f"port:{port}")
        value = host

    if value.endswith("."):
        changes.append("trailing-dot")
        value = value.rstrip(".")
    if not value:
        raise UnusableDomain(raw, "no host name left after removing URL parts")

    lowered = value.lower()
    if lowered != value:
        changes.append("case")
    value = lowered

    try:
        ipaddress.ip_address(value)
    except ValueError:
        pass
    else:
        raise UnusableDomain(raw, "is an IP address, not a domain")

    if not value.isascii():
        try:
            ascii_form = idna.encode(value, uts46=True, transitional=False).decode("ascii")
        except idna.IDNAError as exc:
            raise UnusableDomain(raw, f"invalid internationalised name: {exc}") from None
        changes.append("idna")
        value = ascii_form

    labels = value.split(".")
    if labels[0] == "www" and len(labels) > 2:
        changes.append("www")
        while labels[0] == "www" and len(labels) > 2:
            labels = labels[1:]
        value = ".".join(labels)

    _validate(raw, value, labels)
    mixed = tuple(label for label in labels if label.startswith("xn--") and _mixes(label))
    return NormalisedDomain(domain=value, changes=tuple(changes), mixed_script=mixed)


def _mixes(a_label: str) -> bool:
    """Whether the letters of an (already validated) A-label mix scripts beyond UTS #39's
    Highly Restrictive level."""
    scripts = {
        unicodedata.name(c, "UNKNOWN").split(" ")[0]
        for c in idna.decode(a_label)
        if unicodedata.category(c).startswith("L")
    }
    scripts -= _COMMON
    if len(scripts) <= 1:
        return False
    return not any(scripts <= allowed for allowed in _ALLOWED_MIXES)


def _validate(raw: str, value: str, labels: list[str]) -> None:
    if len(value) > _MAX_DOMAIN:
        raise UnusableDomain(raw, f"longer than {_MAX_DOMAIN} characters")
    if len(labels) < 2:
        raise UnusableDomain(raw, "single label, not a registrable domain")
    for label in labels:
        if not label:
            raise UnusableDomain(raw, "empty label (consecutive dots)")
        if not _LDH_LABEL.match(label):
            raise UnusableDomain(raw, f"label {label!r} is not a valid host name label")
        if label[2:4] == "--":
            if not label.startswith("xn--"):
                raise UnusableDomain(
                    raw, f"label {label!r} has hyphens in the third and fourth positions "
                    "(reserved, RFC 5891 §4.2.3.1)"
                )
            if not _valid_a_label(label):
                raise UnusableDomain(raw, f"label {label!r} is not a valid A-label (punycode)")
    if labels[-1].isdigit():
        raise UnusableDomain(raw, "top-level label is numeric")
    if labels[-1] in ("localhost", "local", "invalid"):
        raise UnusableDomain(raw, f"reserved top-level label {labels[-1]!r}")


def _valid_a_label(label: str) -> bool:
    try:
        return idna.encode(idna.decode(label)).decode("ascii") == label
    except (idna.IDNAError, UnicodeError):
        return False
