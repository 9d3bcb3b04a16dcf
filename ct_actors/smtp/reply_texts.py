"""The reply-text patterns classification looks for (blocklists, "about us", throttling,
greylisting, unknown users ...): named, lower-case regular expressions searched anywhere in a
reply's text, and the `is_*_text` questions other modules ask of a text. Why each matters, and
which wins over a reply's codes: `ct_actors.smtp.classify`."""

from __future__ import annotations

from typing import Literal

from ct_actors.smtp.text_gate import GatedPattern

# ---------------------------------------------------------------------------------------------
# Text patterns (case-insensitive, searched anywhere in the reply text)

_TEXTS: dict[str, str] = {
    "blocklist": (
        r"spamhaus|spamcop|\bsorbs\b|barracuda\s*(reputation|central)|barracudacentral"
        r"|uceprotect|abuseat|mailspike|\bpsbl\b"
        r"|blocked\s+using|\b(black|block|deny)[\s-]?list(ed|ing)?\b"
        r"|(?<!not\s)\blisted\s+(at|on|by)\b|\b(rbl|dnsbl|rbls|dnsbls)\b"
        r"|\b(poor|bad|low)\s+(ip\s+|sender\s+)?reputation|client\s+host\b.{0,100}\bblocked"
        r"|\bip\s+reputation|\bip\b.{0,40}\bis\s+blocked\b"
    ),
    "about-us": (
        r"client\s+host\s+rejected|sender\s+address\s+rejected|sender\s+verif\w*\s+failed"
        r"|helo\s+command\s+rejected|\byour\s+(ip|ip\s+address|host|server|network|mail\s+server)\b"
        r"|banned\s+sending\s+ip|reverse\s+(dns|lookup|hostname)"
        r"|too\s+many\s+(invalid|unknown|bad|failed)\s+(recipients|addresses)"
        r"|excessive\s+unknown\s+recipients|no\s+ptr\s+record|envelope\s+(sender|blocked)"
        r"|badmailfrom|sender\s+rejected|\bspf\b|sender\s+policy\s+framework|dmarc\s+policy"
        r"|unauthenticated|spoof|policy\s+(restrictions|violations?)|security\s+polic(y|ies)"
    ),
    "relay": (
        r"relay(ing)?\s+(access\s+)?(denied|not\s+permitted|prohibited|not\s+allowed|refused"
        r"|disallowed)"
        r"|unable\s+to\s+relay|(cannot|can't|can\s+not|not\s+permitted\s+to|do\s+not)\s+relay"
        r"|no\s+relaying|rcpthosts|non-accepted\s+domain"
    ),
    "throttle": (
        r"too\s+many\s+(connections|concurrent|sessions|messages|mails|emails|requests"
        r"|commands|errors)|rate[\s-]?limit|unusual\s+rate|connection\s+(limit|rate)"
        r"|throttl|slow\s+down|too\s+fast|unexpected\s+volume|(server\s+(is\s+)?|too\s+)busy"
        r"|resources\s+temporarily\s+(unavailable|not\s+available)|service\s+unavailable"
    ),
    "rate": (
        r"receiving\s+mail\s+(at\s+a\s+rate|too\s+quickly)|mail\s+too\s+quickly"
        r"|rate\s+that\s+prevents|\bper\s+(hour|day|minute)\b|\bthis\s+hour\b|\bhourly\b"
        r"|\bdaily\b|too\s+much\s+(e-?)?mail|in\s+a\s+short\s+period|excessive\s+volume"
        r"|too\s+many\s+recipients\s+from|relay\s+limit"
    ),
    "server-error": (
        r"(temporary|internal)\s+(server|system)\s+(error|problem)|local\s+error"
        r"|lookup\s+failure|routing\s+loop"
    ),
    "greylist": (
        r"gr[ae]y[\s-]?list|\b(try|retry|come\s+back)(\s+again)?\s+(later|in\s+\d)"
        r"|internal\s+resource"
    ),
    "too-many": r"too\s+many\s+recipients",
    "m365-dbeb": r"recipient\s+address\s+rejected:?\s+access\s+denied",
    "rcpt-policy": (
        r"recipient\s+address\s+rejected|recipient\s+not\s+authori[sz]ed|resolver\.rst\."
        r"|not\s+authori[sz]ed\s+to\s+(send|mail)\s+to|only\s+accepts?\s+mail\s+from"
        r"|recipient\s+(is\s+)?restricted|\bgcdp\b|violates\s+[\w.-]+\s+email\s+policy"
    ),
    "no-such-user": (
        r"no\s+such\s+(user|mailbox|recipient)|user\s+unknown|unknown\s+user"
        r"|address\s+is\s+marked\s+as\s+invalid"
    ),
    "transient-452": r"temporar\w*|polic(y|ies)|restrict\w*|failure|error|storage",
    "user-unknown": (
        r"user\s+unknown|unknown\s+(user|recipient|mailbox|address|local)"
        r"|no\s+such\s+(user|mailbox|recipient|address|account|person)"
        r"|(does\s+not|doesn't|did\s+not)\s+exist|mailbox\s+(unavailable|not\s+found|unknown)"
        r"|invalid\s+(recipient|mailbox|address|user)|recipient\s+(not\s+found|unknown|invalid)"
        r"|(address|user|account)\s+not\s+found|unrouteable\s+address|no\s+mailbox"
        r"|(does\s+not|doesn't)\s+have\s+an?\s+[\w.-]+\s+account|not\s+a\s+valid\s+(user|mailbox|recipient)"
        r"|account\s+closed"
    ),
    "disabled": (
        r"(mailbox|account|user)\s+(is\s+|has\s+been\s+)?(disabled|deactivated|suspended|inactive)"
    ),
    "full": (
        r"over\s*quota|quota\s+exceeded|exceeded\s+(\w+\s+)?(storage\s+)?(quota|allocation)"
        r"|(mailbox|inbox)\s+(is\s+)?full|mailbox\b.{0,30}\bfull\b"
        r"|exhausted\s+(allowed\s+)?storage|too\s+many\s+messages\s+on\s+the\s+server"
    ),
}
# Matched against the lower-cased reply text, compiled without re.IGNORECASE: case-insensitive
# matching of these alternations costs two to nine times as much in the `re` engine (measured:
# 113 µs per classified RCPT reply), and classification runs for every reply the daemon reads.
# So the patterns must be written in lower case (an upper-case escape would change meaning).
# Each is searched only when one of the words every match contains is in the text (text_gate).
TEXT_RE: dict[str, GatedPattern] = {}
for _name, _pattern in _TEXTS.items():
    if _pattern != _pattern.lower():
        raise AssertionError(f"reply text pattern {_name!r} must be written in lower case")
    TEXT_RE[_name] = GatedPattern(_pattern)
TextName = Literal[
    "blocklist",
    "about-us",
    "relay",
    "throttle",
    "rate",
    "server-error",
    "greylist",
    "too-many",
    "m365-dbeb",
    "rcpt-policy",
    "no-such-user",
    "transient-452",
    "user-unknown",
    "disabled",
    "full",
]


def is_blocklist_text(text: str) -> bool:
    """Does the text name a DNS blocklist / reputation block (i.e. it is about our IP)?"""
    return TEXT_RE["blocklist"].search(text.lower()) is not None


def is_about_us_text(text: str) -> bool:
    """Blocklist text, or text naming our client host, envelope sender, HELO or IP."""
    return is_blocklist_text(text) or TEXT_RE["about-us"].search(text.lower()) is not None


def is_throttle_text(text: str) -> bool:
    """Does the text name a rate or connection limit (our pace)?"""
    return TEXT_RE["throttle"].search(text.lower()) is not None
