"""Result types of an MX lookup, shared by the real resolver and the simulated world's fake."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Protocol


class MxStatus(enum.StrEnum):
    FOUND = "found"
    NXDOMAIN = "nxdomain"  # the domain does not exist
    NO_MX = "no-mx"  # the domain exists but publishes no MX records
    NULL_MX = "null-mx"  # RFC 7505: a single "0 ." MX, the domain accepts no mail


@dataclass(frozen=True, slots=True)
class MxHost:
    name: str  # lower-case, no trailing dot
    preference: int
    addresses: tuple[str, ...] = ()  # IPv4 addresses; empty when the host name does not resolve


@dataclass(frozen=True, slots=True)
class MxLookup:
    domain: str
    status: MxStatus
    hosts: tuple[MxHost, ...] = ()  # ordered by preference, then name (deterministic)
    detail: str = ""
    nameserver: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


class DnsUnavailable(Exception):
    """Our resolver could not answer (timeout, SERVFAIL, REFUSED, malformed reply).

    Not a verdict about the domain: the record must stay pending.
    """

    def __init__(self, domain: str, reason: str, nameserver: str | None = None) -> None:
        where = f" (nameserver {nameserver})" if nameserver else ""
        super().__init__(f"{domain}: {reason}{where}")
        self.domain = domain
        self.reason = reason
        self.nameserver = nameserver


class MxResolver(Protocol):
    async def lookup(self, domain: str) -> MxLookup:
        """Resolve MX records and the hosts' addresses, or raise DnsUnavailable."""
        ...


class DomainDnsFailure(DnsUnavailable):
    """A lookup failed while our resolver was proven healthy (it answered its health check,
    `dns/health.py`): the failure belongs to the domain's own DNS (CNAME loop, lame or broken
    delegation, SERVFAIL for that zone). The dispatcher gives such a domain a bounded number of
    deferrals, then concludes CT-M-NO-MX; a plain DnsUnavailable stays a plain deferral."""

    def __init__(
        self, domain: str, reason: str, nameserver: str | None, health: dict[str, object]
    ) -> None:
        super().__init__(domain, reason, nameserver)
        self.health = health  # HealthReport.evidence() of the check that cleared the resolver
