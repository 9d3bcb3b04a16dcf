"""Whom the DNS client asks, and how: the reloadable query settings (`QuerySettings`), the
system's nameservers from /etc/resolv.conf, nameserver addresses parsed and checked
(`Nameserver`), and `DnsConfigError` when there is none usable."""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass

import dns.nameserver
import dns.resolver

from ct_actors.config import DnsConfig


class DnsConfigError(ValueError):
    """The client cannot be set up: no usable nameserver."""


@dataclass(frozen=True, slots=True)
class Nameserver:
    host: str  # canonical text form, as recvfrom reports the source address
    port: int
    family: int

    @property
    def sockaddr(self) -> tuple[str, int]:
        return (self.host, self.port)


_DNS = DnsConfig()


@dataclass(frozen=True, slots=True)
class QuerySettings:
    """The reloadable part of the client: dns.timeout (per attempt) and dns.attempts."""

    timeout: float = _DNS.timeout
    attempts: int = _DNS.attempts


def system_nameservers() -> list[str]:
    """Nameserver addresses from the system configuration (/etc/resolv.conf)."""
    try:
        resolver = dns.resolver.Resolver()
    except dns.resolver.NoResolverConfiguration as exc:
        raise DnsConfigError(
            "no nameserver configured in /etc/resolv.conf; pass nameservers explicitly"
        ) from exc
    found: list[str] = []
    for ns in resolver.nameservers:
        if isinstance(ns, str):
            found.append(ns)
        elif isinstance(ns, dns.nameserver.Do53Nameserver):
            found.append(ns.address)
        # DoH/DoT entries are not something a UDP client can use.
    if not found:
        raise DnsConfigError("no plain-DNS nameserver in /etc/resolv.conf")
    return found


def parse_nameserver(text: str, port: int) -> Nameserver:
    try:
        address = ipaddress.ip_address(text)
    except ValueError as exc:
        raise DnsConfigError(f"nameserver must be an IP address, got {text!r}") from exc
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    return Nameserver(host=str(address), port=port, family=family)
