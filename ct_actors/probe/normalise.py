"""Deterministic normalisation of spine domains.

The spine's `domain` column is often a website URL typed by a human. We undo exactly the
differences listed in the contract — scheme, `www.`, path/query/fragment, port, case, trailing
dot, IDNA — and record each one we applied, so the outcome row says what was changed. Anything
else (an e-mail address, an IP literal, a single label) is refused rather than guessed at.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

import idna

_SCHEME = re.compile(r"^[a-z][a-z0-9+.\-]*://", re.IGNORECASE)
_LDH_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_MAX_DOMAIN = 253


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
        if not port.isdigit():
            raise UnusableDomain(raw, f"malformed port {port!r}")
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
        labels = labels[1:]
        value = ".".join(labels)

    _validate(raw, value, labels)
    return NormalisedDomain(domain=value, changes=tuple(changes))


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
    if labels[-1].isdigit():
        raise UnusableDomain(raw, "top-level label is numeric")
    if labels[-1] in ("localhost", "local", "invalid"):
        raise UnusableDomain(raw, f"reserved top-level label {labels[-1]!r}")
