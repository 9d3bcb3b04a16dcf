"""A zoo of real servers' reply texts, so the prober meets what the internet actually says.

Each `ZooProfile` plays one provider or MTA: its banner, its MAIL FROM acknowledgement, and its
RCPT answers for an existing mailbox (`accept`) and an unknown one (`unknown`). Only texts whose
documented meaning is unambiguous are here: an accept is an accept, and every `unknown` text says
that the mailbox does not exist (no "mailbox unavailable, maybe policy" style texts that a
provider also uses for blocks, except where the provider documents it as the unknown-user answer).
Each text names its source: the MTA's source code, the provider's postmaster/NDR page, or the
ActiveCampaign "SMTP Field Manual" corpus of observed replies
(https://github.com/ActiveCampaign/smtp-field-manual, data/codes/*.json), which itself links the
provider's documentation.

Placeholders filled in by `render`: {address} (the RCPT address as sent), {host} (the MX host's
name), {qid} (a per-reply token, like the queue/session ids real servers append). A text with
"\\n" is a multi-line reply (every line carries the code, RFC 5321 §4.2.1).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Literal

Meaning = Literal["greeting", "mail_ok", "accept", "unknown"]


@dataclass(frozen=True, slots=True)
class ZooText:
    code: int
    text: str  # without the code; may contain placeholders and "\n" between lines
    meaning: Meaning
    source: str

    def render(self, *, address: str = "", host: str = "", qid: str = "") -> tuple[str, ...]:
        """The reply as lines `"CODE text"`, ready for a multi-line-aware sender."""
        body = self.text.format(address=address, host=host, qid=qid)
        return tuple(f"{self.code} {line}" for line in body.split("\n"))


@dataclass(frozen=True, slots=True)
class ZooProfile:
    name: str
    greeting: ZooText
    mail_ok: ZooText
    accept: ZooText
    unknown: tuple[ZooText, ...]  # one is picked per recipient, deterministically

    def unknown_for(self, address: str) -> ZooText:
        """Same address, same text (a server does not change its mind between retries)."""
        digest = hashlib.blake2s(address.lower().encode(), digest_size=4).digest()
        return self.unknown[int.from_bytes(digest, "big") % len(self.unknown)]

    def texts(self) -> tuple[ZooText, ...]:
        return (self.greeting, self.mail_ok, self.accept, *self.unknown)


_FM = "https://github.com/ActiveCampaign/smtp-field-manual/blob/master/data/codes/"
_POSTFIX_SMTPD = (
    "Postfix src/smtpd/smtpd.c (mail_cmd/rcpt_cmd replies; banner '$myhostname ESMTP $mail_name')"
)
_POSTFIX_CHECK = (
    "Postfix src/smtpd/smtpd_check.c check_rcpt_maps(): '<%s>: %s rejected: User unknown%s'"
)
_EXIM_IN = "Exim src/src/smtp_in.c: MAIL '250 OK', RCPT '250 Accepted'; globals.c smtp_banner"
_EXIM_ROUTE = "Exim src/src/route.c: route_address() fails with 'Unrouteable address'"
_QMAIL = "qmail-1.03 qmail-smtpd.c: banner '220 <greeting> ESMTP', MAIL/RCPT '250 ok'"
_RFC5321 = "RFC 5321 §4.2 (stock reply texts); provider publishes no RCPT accept text"


def _t(code: int, text: str, meaning: Meaning, source: str) -> ZooText:
    return ZooText(code, text, meaning, source)


PROFILES: dict[str, ZooProfile] = {
    p.name: p
    for p in (
        ZooProfile(
            "postfix",
            _t(220, "{host} ESMTP Postfix", "greeting", _POSTFIX_SMTPD),
            _t(250, "2.1.0 Ok", "mail_ok", _POSTFIX_SMTPD),
            _t(250, "2.1.5 Ok", "accept", _POSTFIX_SMTPD),
            (
                _t(
                    550,
                    "5.1.1 <{address}>: Recipient address rejected: User unknown in local "
                    "recipient table",
                    "unknown",
                    _POSTFIX_CHECK,
                ),
                _t(
                    550,
                    "5.1.1 <{address}>: Recipient address rejected: User unknown in virtual "
                    "mailbox table",
                    "unknown",
                    _POSTFIX_CHECK,
                ),
            ),
        ),
        ZooProfile(
            "exim",
            _t(220, "{host} ESMTP Exim 4.97 Mon, 07 Dec 2026 14:00:00 +0000", "greeting", _EXIM_IN),
            _t(250, "OK", "mail_ok", _EXIM_IN),
            _t(250, "Accepted", "accept", _EXIM_IN),
            (
                _t(
                    550,
                    "Unrouteable address",
                    "unknown",
                    _EXIM_ROUTE + "; seen in the wild: https://pastebin.com/A1AssNjw",
                ),
            ),
        ),
        ZooProfile(
            "qmail",
            _t(220, "{host} ESMTP", "greeting", _QMAIL),
            _t(250, "ok", "mail_ok", _QMAIL),
            _t(250, "ok", "accept", _QMAIL),
            (
                _t(
                    553,
                    "unknown mailbox (#5.1.1)",
                    "unknown",
                    "qmail addrcheck patch, qmail-smtpd.c err_badaddr(): https://www.chiark.greenend"
                    ".org.uk/ucgi/~mdw/git/qmail/ (commit ca51b51d)",
                ),
            ),
        ),
        ZooProfile(
            "gmail",
            _t(
                220,
                "mx.google.com ESMTP {qid} - gsmtp",
                "greeting",
                "Gmail MX transcript: http://petermblair.com/email/email-service-testing/"
                "testing-smtp/",
            ),
            _t(
                250,
                "2.1.0 OK {qid} - gsmtp",
                "mail_ok",
                "Gmail SMTP transcript (2.1.0 OK / 2.1.5 OK): https://tototoshi.hatenablog.com/"
                "entry/20100602/1275486312",
            ),
            _t(
                250,
                "2.1.5 OK {qid} - gsmtp",
                "accept",
                "Gmail SMTP transcript: https://tototoshi.hatenablog.com/entry/20100602/1275486312",
            ),
            (
                _t(
                    550,
                    "5.1.1 The email account that you tried to reach does not exist. Please try\n"
                    "5.1.1 double-checking the recipient's email address for typos or\n"
                    "5.1.1 unnecessary spaces. Learn more at\n"
                    "5.1.1  https://support.google.com/mail/?p=NoSuchUser {qid} - gsmtp",
                    "unknown",
                    _FM + "550.json (google 5.1.1); https://support.google.com/mail/answer/6596; "
                    "multi-line form: https://pastebin.com/qwzF3GaS",
                ),
            ),
        ),
        ZooProfile(
            "exchange_online",
            _t(
                220,
                "{host} Microsoft ESMTP MAIL Service ready at Mon, 7 Dec 2026 14:00:00 +0000",
                "greeting",
                "Receive connector default banner (Set-ReceiveConnector -Banner): "
                "https://learn.microsoft.com/powershell/module/exchange/set-receiveconnector",
            ),
            _t(
                250,
                "2.1.0 Sender OK",
                "mail_ok",
                "Exchange SMTP replies: https://learn.microsoft.com/exchange/mail-flow/"
                "test-smtp-with-telnet",
            ),
            _t(
                250,
                "2.1.5 Recipient OK",
                "accept",
                "Exchange SMTP replies: https://learn.microsoft.com/exchange/mail-flow/"
                "test-smtp-with-telnet",
            ),
            (
                _t(
                    550,
                    "5.1.10 RESOLVER.ADR.RecipientNotFound; Recipient not found by SMTP "
                    "address lookup",
                    "unknown",
                    "Exchange Online NDR 5.1.10 (recipient does not exist), observed: "
                    "https://pastebin.com/4NLVeuUu",
                ),
                _t(
                    550,
                    "5.4.1 Recipient address rejected: Access denied. AS(201806281) [{host}]",
                    "unknown",
                    "Microsoft 365 Directory-Based Edge Blocking, NDR 550 5.4.1: "
                    + _FM
                    + "550.json (exchangeonline 5.4.1, links the Microsoft NDR article)",
                ),
            ),
        ),
        ZooProfile(
            "yahoo",
            _t(220, "{host} ESMTP ready", "greeting", _RFC5321),
            _t(250, "sender <{address}> ok", "mail_ok", _RFC5321),
            _t(250, "recipient <{address}> ok", "accept", _RFC5321),
            (
                _t(
                    552,
                    "1 Requested mail action aborted, mailbox not found",
                    "unknown",
                    _FM + "552.json (yahoo 5.1.1); https://postmaster.yahooinc.com/error-codes",
                ),
            ),
        ),
        ZooProfile(
            "icloud",
            _t(220, "{host} ESMTP", "greeting", _RFC5321),
            _t(250, "2.1.0 Ok", "mail_ok", _RFC5321),
            _t(250, "2.1.5 Ok", "accept", _RFC5321),
            (
                _t(
                    550,
                    "5.1.1 <{address}>: user does not exist",
                    "unknown",
                    _FM + "550.json (apple 5.1.1); https://support.apple.com/en-us/HT204137",
                ),
            ),
        ),
        ZooProfile(
            "zoho",
            _t(220, "{host} SMTP Server ready", "greeting", _RFC5321),
            _t(250, "Sender <{address}> OK", "mail_ok", _RFC5321),
            _t(250, "Recipient <{address}> OK", "accept", _RFC5321),
            (_t(550, "5.1.1 <{address}> User unknown", "unknown", _FM + "550.json (zoho 5.1.1)"),),
        ),
        ZooProfile(
            "gmx",
            _t(
                220,
                "gmx.net (mxgmx104) Nemesis ESMTP Service ready",
                "greeting",
                "GMX banner shape: https://postmaster.gmx.com/en/error-messages",
            ),
            _t(
                250,
                "Requested mail action okay, completed",
                "mail_ok",
                "RFC 5321 §4.2.2 stock 250 text (GMX uses no enhanced codes: "
                "https://postmaster.gmx.com/en/error-messages)",
            ),
            _t(
                250,
                "Requested mail action okay, completed",
                "accept",
                "RFC 5321 §4.2.2 stock 250 text",
            ),
            (
                _t(
                    550,
                    "Requested action not taken: mailbox unavailable",
                    "unknown",
                    _FM + "550.json (gmx 1); GMX documents it as the wrong-address answer: "
                    "https://support.gmx.com/email/composing-and-sending/bounce-reject.html",
                ),
            ),
        ),
        ZooProfile(
            "messagelabs",
            _t(220, "server-4.tower-21.messagelabs.com ESMTP", "greeting", _RFC5321),
            _t(250, "OK", "mail_ok", _RFC5321),
            _t(250, "OK", "accept", _RFC5321),
            (
                _t(
                    550,
                    "Invalid recipient <{address}>\n(#5.1.1)",
                    "unknown",
                    "Broadcom/Symantec Email Security.cloud: https://pastebin.com/7HST6vSQ; "
                    + _FM
                    + "550.json (emailsecuritycloud 5.1.1)",
                ),
            ),
        ),
        ZooProfile(
            "proofpoint",
            _t(220, "{host} ESMTP mfa-m0000000 Proofpoint", "greeting", _RFC5321),
            _t(250, "2.1.0 Sender ok", "mail_ok", _RFC5321),
            _t(250, "2.1.5 Recipient ok", "accept", _RFC5321),
            (
                _t(550, "5.1.1 User Unknown", "unknown", _FM + "550.json (proofpoint 5.1.1-3)"),
                _t(
                    550,
                    "5.1.1 <{address}>: Recipient address rejected: User unknown",
                    "unknown",
                    _FM + "550.json (proofpoint 5.1.1)",
                ),
            ),
        ),
        ZooProfile(
            "barracuda",
            _t(220, "{host} ESMTP (Barracuda)", "greeting", _RFC5321),
            _t(250, "Ok", "mail_ok", _RFC5321),
            _t(250, "Ok", "accept", _RFC5321),
            (_t(550, "No such user ({address})", "unknown", _FM + "550.json (barracuda 2)"),),
        ),
    )
}

PROFILE_NAMES: tuple[str, ...] = tuple(PROFILES)


def all_texts() -> list[ZooText]:
    return [t for p in PROFILES.values() for t in p.texts()]
