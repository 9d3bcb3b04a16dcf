"""The SMTP identity policy: who the prober may introduce itself as.

Every probe introduces us to a stranger's mail server, and an identity we do not control (or a
big provider's name) gets the probing IP blocklisted. So `helo_name` and `mail_from` have no
usable default on purpose: in `smtp` mode the loader refuses to start without them, and refuses
the shipped `example.net` placeholders; a big provider's name is refused in any mode.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from ct_actors.config.coerce import InvalidValue
from ct_actors.config.effective import Config

# Names we must never introduce ourselves as: claiming to be one of these in HELO or MAIL FROM
# fails their SPF/DMARC/FCrDNS checks everywhere and reads as forgery.
BIG_PROVIDER_DOMAINS: tuple[str, ...] = (
    "gmail.com",
    "googlemail.com",
    "google.com",
    "outlook.com",
    "hotmail.com",
    "live.com",
    "msn.com",
    "office365.com",
    "microsoft.com",
    "yahoo.com",
    "aol.com",
    "apple.com",
    "icloud.com",
    "me.com",
)

# The documentation domains (RFC 2606) used as placeholders in the shipped example config. They
# are refused in smtp mode so that an unedited example config cannot go live. `.test` and
# `.invalid` are deliberately allowed: the simulated internet used by the e2e tests lives there.
PLACEHOLDER_DOMAINS: tuple[str, ...] = ("example.com", "example.net", "example.org")

LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL_PART = re.compile(rf"^{_ATEXT}(?:\.{_ATEXT})*$")


def under(name: str, domains: tuple[str, ...]) -> str | None:
    for d in domains:
        if name == d or name.endswith("." + d):
            return d
    return None


def validate_fqdn(name: str, what: str) -> str:
    """Lower-cased FQDN without trailing dot, or InvalidValue. Forbids anything that could smuggle
    extra SMTP commands (CR/LF, spaces) since these values are written onto the wire."""
    if any(c.isspace() for c in name) or not name.isascii():
        raise InvalidValue(
            f"{what} {name!r} must be an ASCII host name without spaces (use the xn-- form "
            "for internationalised names)"
        )
    host = name.lower().rstrip(".")
    labels = host.split(".")
    if (
        len(host) > 253
        or len(labels) < 2
        or not all(LABEL.match(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise InvalidValue(
            f"{what} {name!r} is not a fully-qualified domain name (expected something like "
            "'probe.mail.yourcompany.com')"
        )
    provider = under(host, BIG_PROVIDER_DOMAINS)
    if provider is not None:
        raise InvalidValue(
            f"{what} {name!r} belongs to {provider}: the prober must never present itself as a "
            "big mail provider; use a name under a domain you control"
        )
    return host


def validate_mail_from(value: str | None) -> str | None:
    if value is None:
        return None
    if value == "<>":
        return ""  # the null reverse-path, written explicitly
    addr = value[1:-1].strip() if value.startswith("<") and value.endswith(">") else value
    if addr.count("@") != 1:
        raise InvalidValue(f"{value!r} is not an address like 'postmaster@probe.yourcompany.com'")
    local, domain = addr.split("@")
    if not _LOCAL_PART.match(local) or len(local) > 64 or len(addr) > 254:
        raise InvalidValue(f"{value!r}: local part {local!r} is not a valid dot-atom")
    host = validate_fqdn(domain, "mail_from domain")
    return f"{local}@{host}"


def identity_problems(cfg: Config, where: Callable[[str], str]) -> list[str]:
    """What is wrong with the SMTP identity of a config about to probe in smtp mode; `where`
    names the source of a key (file, environment, override) for the messages."""
    errors: list[str] = []
    alt = 'or run with probe.mode = "mx-only" (CT_PROBE_MODE=mx-only)'
    helo = cfg.smtp.helo_name
    if helo is None:
        errors.append(
            "smtp.helo_name is not set: in smtp mode every probe introduces this host to a "
            "stranger's mail server with EHLO <helo_name>; it must be a fully-qualified "
            "name you control whose A/AAAA record points at the probing IP and whose PTR "
            "record matches, or receivers treat the probes as spam and blocklist the IP. "
            f"Set [smtp] helo_name (CT_SMTP_HELO_NAME), {alt}"
        )
    elif (placeholder := under(helo, PLACEHOLDER_DOMAINS)) is not None:
        errors.append(
            f"{where('smtp.helo_name')}: {helo!r} is the example placeholder "
            f"({placeholder} is a reserved documentation domain): set it to a "
            f"fully-qualified name you control before probing, {alt}"
        )
    mail_from = cfg.smtp.mail_from
    if mail_from is None:
        errors.append(
            "smtp.mail_from is not set: in smtp mode every probe sends MAIL FROM:<mail_from> "
            "before RCPT TO; it must be an address at a domain you control (with SPF "
            'allowing the probing IP) so that receivers can reach you, or "<>" written '
            f"explicitly for the null reverse-path. Set [smtp] mail_from (CT_SMTP_MAIL_FROM), "
            f"{alt}"
        )
    elif (
        mail_from
        and (placeholder := under(mail_from.split("@")[1], PLACEHOLDER_DOMAINS)) is not None
    ):
        errors.append(
            f"{where('smtp.mail_from')}: {mail_from!r} is the example placeholder "
            f"({placeholder} is a "
            "reserved documentation domain): set it to an address at a domain you control "
            f"before probing, {alt}"
        )
    return errors
