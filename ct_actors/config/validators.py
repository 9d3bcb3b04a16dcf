"""Per-key checks after coercion: the value is well-formed for what it names (an address, a
URL, a SQL query...). The SMTP identity's own checks live in identity.py."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from ct_actors.config.coerce import InvalidValue
from ct_actors.config.identity import LABEL, validate_fqdn, validate_mail_from
from ct_actors.config.sections import EMBEDDED_URL
from ct_actors.net.address_policy import parse_networks
from ct_actors.redact import redact_url

_DOLLAR_ONE = re.compile(r"\$1(?!\d)")
_OTHER_PARAM = re.compile(r"\$(?!1(?!\d))\d+")
_SQL_START = re.compile(r"^\s*(?:select|with)\b", re.IGNORECASE)


def _validate_url(url: str) -> str:
    if url.strip() in ("", EMBEDDED_URL):
        return url.strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        # Not the exception text: urllib quotes the part it choked on, which is often the
        # password ("Port could not be cast to integer value as 'p@ss'").
        raise InvalidValue(
            f"is not a valid URL: {redact_url(url)!r} (%-encode reserved characters such as "
            "@ : / ? # in the user name and password)"
        ) from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise InvalidValue(f'must be a postgresql:// URL or "embedded", got {redact_url(url)!r}')
    return url


def _validate_nameservers(servers: tuple[str, ...]) -> tuple[str, ...]:
    out = []
    for s in servers:
        try:
            out.append(str(ipaddress.ip_address(s)))
        except ValueError:
            raise InvalidValue(f"{s!r} is not an IPv4/IPv6 address") from None
    return tuple(out)


def _validate_health_check_name(name: str) -> str:
    host = name.strip().lower().rstrip(".")
    if not host or not host.isascii() or any(c.isspace() for c in host):
        raise InvalidValue(f"{name!r} must be an ASCII domain name (xn-- form for IDNs)")
    labels = host.split(".")
    if len(host) > 253 or not all(LABEL.match(label) for label in labels):
        raise InvalidValue(f"{name!r} is not a domain name (expected e.g. 'a.root-servers.net')")
    return host


def _validate_source_address(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise InvalidValue(f"{value!r} is not an IPv4/IPv6 address") from None


def _validate_dnsbl_zones(values: tuple[str, ...]) -> tuple[str, ...]:
    zones = []
    for zone in values:
        name = zone.strip().rstrip(".").lower()
        labels = name.split(".")
        if len(name) > 200 or len(labels) < 2 or not all(LABEL.match(lb) for lb in labels):
            raise InvalidValue(f"{zone!r} is not a DNS zone name (e.g. 'bl.spamcop.net')")
        zones.append(name)
    return tuple(dict.fromkeys(zones))


def _validate_public_address(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise InvalidValue(f"{value!r} is not an IPv4/IPv6 address") from None
    if not ip.is_global:
        raise InvalidValue(
            f"{value!r} is not a public address: no DNS blocklist lists it (set the address "
            "the receiving hosts see, or leave it empty)"
        )
    return str(ip)


def _validate_allow_networks(values: tuple[str, ...]) -> tuple[str, ...]:
    try:
        return tuple(str(n) for n in parse_networks(values))
    except ValueError as exc:
        raise InvalidValue(str(exc)) from None


def _validate_names_query(q: str) -> str:
    if not q.strip():
        return ""
    if not _SQL_START.match(q):
        raise InvalidValue("must be a single SELECT or WITH query")
    if not _DOLLAR_ONE.search(q):
        raise InvalidValue("must use the parameter $1 (the outreach_id of the company)")
    if other := _OTHER_PARAM.search(q):
        raise InvalidValue(f"must use no parameter but $1, found {other.group(0)}")
    # Its columns cannot be read from the text (SELECT *, views): the daemon checks them
    # against the database at start (Store.check_names_query).
    return q


def _validate_base_url(url: str) -> str:
    url = url.strip().rstrip("/")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise InvalidValue(f"not a URL: {url!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidValue(f"expected http(s)://host[:port], got {url!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        # The API key comes from the environment and goes in the query; nothing else may.
        raise InvalidValue("must not carry credentials, a query or a fragment")
    return url


def _validate_owner(owner: str) -> str:
    owner = owner.strip()
    if not owner or len(owner) > 200:
        raise InvalidValue("must be a non-empty string of at most 200 characters")
    return owner


VALIDATORS: dict[str, Callable[[Any], Any]] = {
    "database.url": _validate_url,
    "dns.nameservers": _validate_nameservers,
    "dns.health_check_name": _validate_health_check_name,
    "smtp.helo_name": lambda v: None if v is None else validate_fqdn(v, "helo_name"),
    "smtp.mail_from": validate_mail_from,
    "smtp.source_address": _validate_source_address,
    "smtp.allow_networks": _validate_allow_networks,
    "killswitch.dnsbl_zones": _validate_dnsbl_zones,
    "killswitch.dnsbl_address": _validate_public_address,
    "probe.names_query": _validate_names_query,
    "daemon.owner": _validate_owner,
    "verifier.base_url": _validate_base_url,
}
