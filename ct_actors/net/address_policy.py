"""May the prober connect to this MX address? Pure policy, no I/O.

An MX record can point anywhere: at loopback, at the operator's own private network, at a
multicast group. Connecting there would probe our own infrastructure (and copy internal
banners into the stored evidence), so production refuses every address that is not globally
reachable unicast, and only an explicit allow-list (`smtp.allow_networks`, CIDR blocks; the
simulated internet of the demo, bench and tests lives on 127.0.0.0/8) lets such addresses
through.

The refused blocks and their reasons follow the IANA IPv4 and IPv6 Special-Purpose Address
Registries (RFC 6890, BCP 153: the "Globally Reachable" column), with the RFCs that assigned
each block:
https://www.iana.org/assignments/iana-ipv4-special-registry/ and
https://www.iana.org/assignments/iana-ipv6-special-registry/ .
Multicast (RFC 5771 / RFC 4291 §2.7) and the reserved 240.0.0.0/4 (RFC 1112 §4) are not in the
special-purpose registries but are never a mail server either. Addresses that embed an IPv4
address (IPv4-mapped ::ffff:0:0/96, RFC 4291 §2.5.5.2; 6to4 2002::/16, RFC 3056; the NAT64
well-known prefix 64:ff9b::/96, RFC 6052) are judged by the IPv4 address they lead to.
Anything else Python's `ipaddress` does not call global (its tables follow the same registries)
is refused too, as a backstop.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# (block, what it is, where it is assigned). Order matters only for readability: the blocks
# of one family do not overlap, except where a narrower entry comes first.
_V4_BLOCKS: tuple[tuple[str, str, str], ...] = (
    ("0.0.0.0/8", "unspecified / \"this network\"", "RFC 791, RFC 1122 §3.2.1.3"),
    ("10.0.0.0/8", "private", "RFC 1918"),
    ("100.64.0.0/10", "shared address space (carrier-grade NAT)", "RFC 6598"),
    ("127.0.0.0/8", "loopback", "RFC 1122 §3.2.1.3"),
    ("169.254.0.0/16", "link-local", "RFC 3927"),
    ("172.16.0.0/12", "private", "RFC 1918"),
    ("192.0.0.0/24", "IETF protocol assignments", "RFC 6890 §2.1"),
    ("192.0.2.0/24", "documentation (TEST-NET-1)", "RFC 5737"),
    ("192.31.196.0/24", "AS112 service", "RFC 7535"),
    ("192.52.193.0/24", "AMT", "RFC 7450"),
    ("192.88.99.0/24", "deprecated 6to4 relay anycast", "RFC 7526"),
    ("192.168.0.0/16", "private", "RFC 1918"),
    ("192.175.48.0/24", "direct delegation AS112 service", "RFC 7534"),
    ("198.18.0.0/15", "benchmarking", "RFC 2544"),
    ("198.51.100.0/24", "documentation (TEST-NET-2)", "RFC 5737"),
    ("203.0.113.0/24", "documentation (TEST-NET-3)", "RFC 5737"),
    ("224.0.0.0/4", "multicast", "RFC 5771"),
    ("255.255.255.255/32", "limited broadcast", "RFC 919, RFC 8190"),
    ("240.0.0.0/4", "reserved", "RFC 1112 §4"),
)
_V6_BLOCKS: tuple[tuple[str, str, str], ...] = (
    ("::/128", "unspecified", "RFC 4291 §2.5.2"),
    ("::1/128", "loopback", "RFC 4291 §2.5.3"),
    ("::/96", "deprecated IPv4-compatible", "RFC 4291 §2.5.5.1"),
    ("64:ff9b:1::/48", "local-use IPv4/IPv6 translation", "RFC 8215"),
    ("100::/64", "discard-only", "RFC 6666"),
    ("2001:db8::/32", "documentation", "RFC 3849"),
    ("2001::/23", "IETF protocol assignments", "RFC 2928"),
    ("3fff::/20", "documentation", "RFC 9637"),
    ("5f00::/16", "segment routing (SRv6) SIDs", "RFC 9602"),
    ("fc00::/7", "unique local", "RFC 4193"),
    ("fe80::/10", "link-local", "RFC 4291 §2.5.6"),
    ("fec0::/10", "deprecated site-local", "RFC 3879"),
    ("ff00::/8", "multicast", "RFC 4291 §2.7"),
)
_EMBEDDING_V4: tuple[tuple[IPNetwork, str], ...] = (
    (ipaddress.ip_network("::ffff:0:0/96"), "IPv4-mapped"),
    (ipaddress.ip_network("64:ff9b::/96"), "NAT64"),
)
_SIX_TO_FOUR = ipaddress.ip_network("2002::/16")


def _table(rows: Iterable[tuple[str, str, str]]) -> tuple[tuple[IPNetwork, str], ...]:
    return tuple(
        (ipaddress.ip_network(block), f"{what} ({block}, {rfc})") for block, what, rfc in rows
    )


_V4: tuple[tuple[IPNetwork, str], ...] = _table(_V4_BLOCKS)
_V6: tuple[tuple[IPNetwork, str], ...] = _table(_V6_BLOCKS)


def parse_networks(values: Sequence[str]) -> tuple[IPNetwork, ...]:
    """CIDR blocks for the allow-list; ValueError naming the bad entry. Host bits must be
    zero (127.0.0.1/8 is a typo for 127.0.0.0/8 or 127.0.0.1/32, we do not guess), and a
    /0 would switch the policy off entirely: list the networks instead."""
    out: list[IPNetwork] = []
    for value in values:
        try:
            network = ipaddress.ip_network(value.strip(), strict=True)
        except ValueError as exc:
            raise ValueError(f"{value!r} is not a CIDR network ({exc})") from None
        if network.prefixlen == 0:
            raise ValueError(f"{value!r} would allow every address; list the networks instead")
        out.append(network)
    return tuple(out)


@dataclass(frozen=True, slots=True)
class AddressPolicy:
    """`refusal(ip)` is None when the prober may connect to `ip`, else why not."""

    allow: tuple[IPNetwork, ...] = ()

    @classmethod
    def allowing(cls, networks: Sequence[str]) -> AddressPolicy:
        """The policy for `smtp.allow_networks` (already validated at load)."""
        return cls(parse_networks(networks))

    def refusal(self, ip: str | IPAddress) -> str | None:
        try:
            address = ipaddress.ip_address(ip) if isinstance(ip, str) else ip
        except ValueError:
            return f"MX address {ip!r} is not an IP address"
        if isinstance(address, ipaddress.IPv6Address):
            embedded = _embedded_v4(address)
            if embedded is not None:
                # Judged (and allowed) as the IPv4 address the connection would reach.
                inner = self.refusal(embedded)
                return None if inner is None else f"{inner}, reached as {address}"
        if any(address in network for network in self.allow):
            return None
        why = special_purpose(address)
        return None if why is None else f"MX address is not public: {address} is {why}"


def _embedded_v4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    for network, _kind in _EMBEDDING_V4:
        if address in network:
            return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    if address in _SIX_TO_FOUR:
        return address.sixtofour
    return None


def special_purpose(address: IPAddress) -> str | None:
    """What a non-public address is (with its block and RFC), or None for a public one."""
    table = _V4 if isinstance(address, ipaddress.IPv4Address) else _V6
    for network, what in table:
        if address in network:
            return what
    if not address.is_global:
        return "not globally reachable (IANA special-purpose address registry)"
    return None
