"""What an SMTP reply means for the prober: pure, table-driven, first matching rule wins.

Two vocabularies:

* `RcptVerdict` for RCPT TO replies. Only four verdicts are *about the address* and may ever feed
  a catch-all or pattern decision (`is_address_answer`): ACCEPTED, MAILBOX_UNKNOWN,
  MAILBOX_DISABLED, MAILBOX_FULL. Everything else is about the host, the domain, the moment, or us.
* `SessionVerdict` for the greeting, EHLO/HELO and MAIL FROM replies.

Reasoning (RFC 5321 §4.2, RFC 3463 status codes ``class.subject.detail``)
-----------------------------------------------------------------------
The enhanced code is more precise than the basic code, so when present it decides, with three
deliberate exceptions where *text* wins and which are checked first:

1. **421 at any stage** means the server is closing the channel (RFC 5321 §3.8): THROTTLED,
   whatever the rest says.
2. **Text naming a blocklist or our own client/sender** (Spamhaus, "blocked using", "Client host
   rejected", "Sender address rejected", "your IP"...) → POLICY_BLOCKED, even under a 5.1.1 code.
   Such a reply is about our IP or envelope, never about the address; misreading it as
   MAILBOX_UNKNOWN would poison catch-all and pattern decisions for the whole domain, while
   misreading a genuine unknown-user reply as a block only costs a retry. Between the two, a 4xx
   naming a rate or connection limit ("too many connections from your host") is THROTTLED: it
   is about us too, but about our pace, not our standing.
   Corpus-driven additions (tests/data/replies/, issue 9): SPF/DMARC/"unauthenticated" texts
   under any code (Exchange 550 5.7.23, Gmail 550 5.7.26, GMX "Reject due to SPF policy"),
   Mimecast "Envelope blocked" and "security policies", qmail "badmailfrom", 1&1/GMX "policy
   violations/restrictions", Yahoo "Excessive unknown recipients" (DHA), "IP reputation"
   (Broadcom's list) and "IP ... is blocked" (EarthLink) are about us.
2b. **Rate texts are about the moment, whatever the code**: Gmail's "receiving mail at a rate /
   too quickly" (450 4.2.1, support.google.com/a/answer/3726730), Yahoo's bare "450 User is
   receiving mail too quickly", Rackspace G30 "too much email in a short period", Outlook's
   "554 5.2.122 ... per hour", and hourly caps on our IP (Cisco AsyncOS "452 Too many recipients
   received this hour", Postfix smtpd_client_recipient_rate_limit "450 4.7.1 Error: too many
   recipients from <ip>") are THROTTLED. This precedes 5.2.1 (disabled) and the "too many
   recipients" rule, so an hourly cap is never learnt as a per-transaction limit. "Server busy",
   "Resources temporarily unavailable" (Yahoo) and a 4xx "Service unavailable" (iCloud) are the
   server's load: THROTTLED. Microsoft calls 451 4.7.500 "IP throttling", so it is THROTTLED too.
3. The subject digit: X.1.x is *addressing* status, X.2.x *mailbox* status, X.5.x *protocol*,
   X.7.x *security/policy*. Class 4 is persistent-transient, so 4.1.1 ("unverified address",
   Postfix's recipient callout in progress) is never a mailbox answer.

Then:

* 250/251 → ACCEPTED. 252 ("cannot VRFY, but will accept") and any other 2xx → UNVERIFIABLE.
* X.1.7/X.1.8 (bad *sender* address/system) → POLICY_BLOCKED: about our envelope, not the
  recipient, even when rejected at RCPT (sender callouts happen there).
* 5.1.2 (bad destination *system*) → DOMAIN_UNKNOWN: this host does not know the domain.
* every other 5.1.x → MAILBOX_UNKNOWN (5.1.1 bad mailbox, 5.1.0 other address status, 5.1.3
  syntax, 5.1.6 moved). 5.1.10 is RFC 7505's "null MX", but a null-MX domain is never probed, so a
  domain's own MX sending 5.1.10 is Exchange Online's ``RESOLVER.ADR.RecipientNotFound``.
* 5.2.1 → MAILBOX_DISABLED (known to the server, not accepting). An address answer, but it does
  *not* count as an accept (`counts_as_accept`): a disabled mailbox is often a suspended or
  departed account, evidence of a pattern at best, never of a deliverable address.
* X.2.2 (4.2.2 or 5.2.2) → MAILBOX_FULL. Counts as an accept for pattern purposes: a server can
  only know a quota for a mailbox it has resolved, so "over quota" proves the local part exists.
* 5.4.1 with "Recipient address rejected: Access denied" → MAILBOX_UNKNOWN. This is Microsoft
  365's Directory-Based Edge Blocking: the tenant rejects recipients absent from its directory at
  RCPT and answers 250 for real ones, so it is M365's user-unknown. (Subject 4 is network/routing,
  misused here; other 5.4.x stay PERMANENT_OTHER.)
* X.5.3, and "too many recipients" text (old servers use 552, RFC 5321 §4.5.3.1.10) →
  TOO_MANY_RECIPIENTS; also a plain 452 without enhanced code.
* relaying denied ("Relay access denied", "Unable to relay", qmail's rcpthosts, Zoho's "553
  Relaying disallowed", "not allowed") → RELAY_DENIED, under 4xx too (Postfix's default
  defer_unauth_destination answers "454 4.7.1 ... Relay access denied"): this host does not
  serve the domain at all (host-level, not an address answer).
* a 4xx naming a server error ("Temporary server error", "local error", "lookup failure") →
  TRANSIENT_OTHER, before the greylisting text: such replies also say "try again later".
* any 4xx with greylisting text ("greylisted", "try again later", "come back later"; 452 4.1.1
  "Greylisting in action" seen in the wild), Mimecast's "451 Internal resource temporarily
  unavailable" (documented as greylisting) or postgrey's 4.2.0 → GREYLISTED. This text check
  precedes 4.7.x, because greylisters (milter-greylist and others) commonly answer
  "451 4.7.1 ... try again later"; throttling replies name the limit ("rate", "too many
  connections") and are caught by the earlier throttle rule.
* any other 4.7.x → THROTTLED.
* 5.7.x with an unmistakable "no such user"/"user unknown" text (Yandex "550 5.7.1 No such
  user!", Proofpoint Essentials "address is marked as invalid") → MAILBOX_UNKNOWN; the about-us
  rules have already claimed every 5.7.x that names us.
* 5.7.x → POLICY_BLOCKED, except when the text is about the *recipient's* policy ("Recipient
  address rejected: Access denied" from a Postfix access map, restricted distribution groups):
  that is PERMANENT_OTHER, neither about us nor an existence answer.
* without an enhanced code (or with the uninformative X.0.0 or X.2.0), any 5xx (chkuser's 511)
  text saying
  "user unknown", "no such user", "does not exist", "mailbox unavailable", "invalid recipient"...
  → MAILBOX_UNKNOWN; "disabled"/"over quota" texts likewise. ("mailbox unavailable" is RFC 5321's
  stock 550 text and some servers use it for policy refusals too; the blocklist/us rules above
  catch the ones that say so.)
* a plain 452 whose text names something else ("temporary domain failure", Zoho's "restricted
  by policy", "insufficient system storage") → TRANSIENT_OTHER; only a bare 452 is read as the
  RFC 5321 §4.5.3.1.10 recipient cap.
* Known disagreements, kept as corpus misses rather than special cases: Proofpoint Essentials
  uses a bare "450 4.7.1 Sender address rejected" for its per-user inbound rate limit, which
  elsewhere means a blocked sender (we say POLICY_BLOCKED: not an address answer either way);
  Trend Micro HES says "Recipient address rejected: Access denied" for a recipient absent from
  its directory, which a Postfix access map also says for policy (we stay PERMANENT_OTHER).
* anything else: other 4xx → TRANSIENT_OTHER, other 5xx (e.g. 5.5.x syntax) → PERMANENT_OTHER.

The tables below are the whole policy; `explain_rcpt` returns the name of the rule that fired so
audit rows can say why.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Generic, Literal, NamedTuple, TypeVar

from ct_actors.smtp.reply_texts import TEXT_RE, TextName

# Re-exported: ct_actors.probe asks these of a reply's text through this module.
from ct_actors.smtp.reply_texts import is_about_us_text as is_about_us_text
from ct_actors.smtp.reply_texts import is_blocklist_text as is_blocklist_text
from ct_actors.smtp.reply_texts import is_throttle_text as is_throttle_text
from ct_actors.smtp.text_gate import GatedPattern
from ct_actors.smtp.types import EnhancedStatus, Reply


class RcptVerdict(enum.StrEnum):
    ACCEPTED = "accepted"
    MAILBOX_UNKNOWN = "mailbox_unknown"
    MAILBOX_DISABLED = "mailbox_disabled"
    MAILBOX_FULL = "mailbox_full"
    UNVERIFIABLE = "unverifiable"  # 252: will accept but cannot verify
    DOMAIN_UNKNOWN = "domain_unknown"  # 5.1.2: host does not know the domain
    RELAY_DENIED = "relay_denied"  # host does not serve the domain
    GREYLISTED = "greylisted"
    TOO_MANY_RECIPIENTS = "too_many_recipients"
    THROTTLED = "throttled"
    POLICY_BLOCKED = "policy_blocked"  # about us (IP, reputation, envelope sender)
    TRANSIENT_OTHER = "transient_other"
    PERMANENT_OTHER = "permanent_other"

    @property
    def is_address_answer(self) -> bool:
        """The server told us something about this mailbox. Only these may become a pattern or
        catch-all verdict."""
        return self in _ADDRESS_ANSWERS

    @property
    def counts_as_accept(self) -> bool:
        """The mailbox exists (ACCEPTED, or MAILBOX_FULL: only a resolved mailbox has a quota)."""
        return self is RcptVerdict.ACCEPTED or self is RcptVerdict.MAILBOX_FULL

    @property
    def is_ours(self) -> bool:
        """About our IP, reputation or envelope; never evidence about the address."""
        return self is RcptVerdict.POLICY_BLOCKED

    @property
    def is_host_level(self) -> bool:
        """This host will not answer for this domain at all (try another MX, or give up)."""
        return self is RcptVerdict.RELAY_DENIED or self is RcptVerdict.DOMAIN_UNKNOWN

    @property
    def is_transient(self) -> bool:
        """Asking again later may give a different answer."""
        return self in _TRANSIENT


_ADDRESS_ANSWERS = frozenset(
    {
        RcptVerdict.ACCEPTED,
        RcptVerdict.MAILBOX_UNKNOWN,
        RcptVerdict.MAILBOX_DISABLED,
        RcptVerdict.MAILBOX_FULL,
    }
)
_TRANSIENT = frozenset(
    {
        RcptVerdict.GREYLISTED,
        RcptVerdict.TOO_MANY_RECIPIENTS,
        RcptVerdict.THROTTLED,
        RcptVerdict.TRANSIENT_OTHER,
    }
)


class SessionVerdict(enum.StrEnum):
    OK = "ok"
    THROTTLED = "throttled"
    POLICY_BLOCKED = "policy_blocked"
    TRANSIENT = "transient"
    PERMANENT = "permanent"

    @property
    def is_ours(self) -> bool:
        return self is SessionVerdict.POLICY_BLOCKED

    @property
    def is_transient(self) -> bool:
        return self is SessionVerdict.THROTTLED or self is SessionVerdict.TRANSIENT


# ---------------------------------------------------------------------------------------------
# Rule machinery

V = TypeVar("V", RcptVerdict, SessionVerdict)

_Enh = tuple[int | None, int | None, int | None] | None  # None = "no enhanced code"


@dataclass(frozen=True, slots=True)
class Rule(Generic[V]):
    """`codes`: space-separated basic codes, "4xx"/"55x" ranges, or "*".
    `enhanced`: space-separated patterns like "5.1.1", "5.1.*", "*.2.2", "none" (no enhanced
    code), or "*" (anything, including none). `text`: a named pattern that must be found."""

    name: str
    codes: str
    enhanced: str
    text: TextName | None
    verdict: V

    def matches(self, reply: Reply) -> bool:
        return _compiled(self).matches(reply.code, reply.enhanced, reply.text.lower())


@dataclass(frozen=True, slots=True)
class _Compiled:
    codes: frozenset[int] | None
    enhanced: tuple[_Enh, ...] | None
    text: GatedPattern | None

    def matches(self, code: int, enhanced: EnhancedStatus | None, text: str) -> bool:
        """`text`: the reply's text, lower-cased (see TEXT_RE)."""
        if self.codes is not None and code not in self.codes:
            return False
        return self.matches_beyond_code(enhanced, text)

    def matches_beyond_code(self, enhanced: EnhancedStatus | None, text: str) -> bool:
        """`matches` for a reply whose code is already known to match."""
        if self.enhanced is not None and not any(_enh_match(p, enhanced) for p in self.enhanced):
            return False
        return self.text is None or self.text.search(text) is not None


def _enh_match(pattern: _Enh, e: EnhancedStatus | None) -> bool:
    if pattern is None:
        return e is None
    if e is None:
        return False
    k, s, d = pattern
    return (
        (k is None or k == e.klass)
        and (s is None or s == e.subject)
        and (d is None or d == e.detail)
    )


def _parse_codes(spec: str) -> frozenset[int] | None:
    if spec == "*":
        return None
    codes: set[int] = set()
    for token in spec.split():
        if token.endswith("xx"):
            base = int(token[0]) * 100
            codes.update(range(base, base + 100))
        elif token.endswith("x"):
            base = int(token[:2]) * 10
            codes.update(range(base, base + 10))
        else:
            codes.add(int(token))
    return frozenset(codes)


def _parse_enhanced(spec: str) -> tuple[_Enh, ...] | None:
    if spec == "*":
        return None
    out: list[_Enh] = []
    for token in spec.split():
        if token == "none":
            out.append(None)
            continue
        k, s, d = (None if part == "*" else int(part) for part in token.split("."))
        out.append((k, s, d))
    return tuple(out)


_COMPILED: dict[tuple[str, str, str | None], _Compiled] = {}


def _compiled(rule: Rule[V]) -> _Compiled:
    key = (rule.codes, rule.enhanced, rule.text)
    c = _COMPILED.get(key)
    if c is None:
        c = _Compiled(
            _parse_codes(rule.codes),
            _parse_enhanced(rule.enhanced),
            TEXT_RE[rule.text] if rule.text is not None else None,
        )
        _COMPILED[key] = c
    return c


class Classification(NamedTuple, Generic[V]):
    verdict: V
    rule: str


# Each table compiled once: classification runs for every reply the daemon reads, so the rule
# specs are not looked up again and the reply's text is joined once, not once per rule. The
# rules are also filed by basic code (the first test of every rule), so a reply is tried only
# against the rules that can match its code, in table order.
# The table itself is kept in the entry, so its id cannot be reused by another object.
_Rules = tuple[tuple[_Compiled, Classification[Any]], ...]


class _CompiledTable:
    __slots__ = ("by_code", "rules", "table")

    def __init__(self, table: Sequence[Rule[Any]]) -> None:
        self.table = table
        self.rules: _Rules = tuple((_compiled(r), Classification(r.verdict, r.name)) for r in table)
        self.by_code: dict[int, _Rules] = {}

    def for_code(self, code: int) -> _Rules:
        """Rules that can match `code` (the parser admits only 200..599: at most 400 entries)."""
        rules = self.by_code.get(code)
        if rules is None:
            rules = self.by_code[code] = tuple(
                (compiled, answer)
                for compiled, answer in self.rules
                if compiled.codes is None or code in compiled.codes
            )
        return rules


_TABLES: dict[int, _CompiledTable] = {}


def _first(table: Sequence[Rule[V]], reply: Reply) -> Classification[V]:
    entry = _TABLES.get(id(table))
    if entry is None or entry.table is not table:
        entry = _TABLES[id(table)] = _CompiledTable(table)
    enhanced, text = reply.enhanced, reply.text.lower()
    for rule, answer in entry.for_code(reply.code):
        if rule.matches_beyond_code(enhanced, text):
            return answer
    raise AssertionError("classification tables end with catch-all rules")  # pragma: no cover


R = RcptVerdict
S = SessionVerdict

# fmt: off
RCPT_RULES: tuple[Rule[RcptVerdict], ...] = (
    #    name                codes      enhanced       text            verdict
    Rule("server-closing",   "421",     "*",           None,           R.THROTTLED),
    Rule("blocklist-text",   "4xx 5xx", "*",           "blocklist",    R.POLICY_BLOCKED),
    Rule("rate-text",        "4xx 5xx", "*",           "rate",         R.THROTTLED),
    Rule("throttle-text",    "4xx",     "*",           "throttle",     R.THROTTLED),
    Rule("about-us-text",    "4xx 5xx", "*",           "about-us",     R.POLICY_BLOCKED),
    Rule("accepted",         "250 251", "*",           None,           R.ACCEPTED),
    Rule("cannot-verify",    "2xx",     "*",           None,           R.UNVERIFIABLE),
    Rule("intermediate",     "3xx",     "*",           None,           R.PERMANENT_OTHER),
    Rule("sender-address",   "4xx 5xx", "*.1.7 *.1.8", None,           R.POLICY_BLOCKED),
    Rule("bad-dest-system",  "5xx",     "5.1.2",       None,           R.DOMAIN_UNKNOWN),
    Rule("bad-mailbox",      "5xx",     "5.1.*",       None,           R.MAILBOX_UNKNOWN),
    Rule("mailbox-disabled", "5xx",     "5.2.1",       None,           R.MAILBOX_DISABLED),
    Rule("mailbox-full",     "4xx 5xx", "*.2.2",       None,           R.MAILBOX_FULL),
    Rule("m365-dbeb",        "5xx",     "5.4.1",       "m365-dbeb",    R.MAILBOX_UNKNOWN),
    Rule("too-many-rcpts",   "4xx 5xx", "*.5.3",       None,           R.TOO_MANY_RECIPIENTS),
    Rule("too-many-text",    "4xx 5xx", "*",           "too-many",     R.TOO_MANY_RECIPIENTS),
    Rule("relay-denied",     "4xx 5xx", "*",           "relay",        R.RELAY_DENIED),
    Rule("full-text",        "4xx 5xx", "none *.0.0",  "full",         R.MAILBOX_FULL),
    Rule("server-error",     "4xx",     "*",           "server-error", R.TRANSIENT_OTHER),
    Rule("greylist-text",    "4xx",     "*",           "greylist",     R.GREYLISTED),
    Rule("greylist-4.2.0",   "450 451", "4.2.0",       None,           R.GREYLISTED),
    Rule("policy-4.7",       "4xx",     "4.7.*",       None,           R.THROTTLED),
    Rule("no-such-user-5.7", "5xx",     "5.7.*",       "no-such-user", R.MAILBOX_UNKNOWN),
    Rule("rcpt-policy",      "5xx",     "5.7.*",       "rcpt-policy",  R.PERMANENT_OTHER),
    Rule("policy-5.7",       "5xx",     "5.7.*",       None,           R.POLICY_BLOCKED),
    Rule("unknown-text",     "5xx",     "none *.0.0 *.2.0", "user-unknown", R.MAILBOX_UNKNOWN),
    Rule("disabled-text",    "55x",     "none *.0.0",  "disabled",     R.MAILBOX_DISABLED),
    Rule("452-other-text",   "452",     "none",        "transient-452", R.TRANSIENT_OTHER),
    Rule("plain-452",        "452",     "none",        None,           R.TOO_MANY_RECIPIENTS),
    Rule("transient",        "4xx",     "*",           None,           R.TRANSIENT_OTHER),
    Rule("permanent",        "*",       "*",           None,           R.PERMANENT_OTHER),
)

_SESSION_HEAD: tuple[Rule[SessionVerdict], ...] = (
    Rule("positive",         "2xx",     "*",           None,           S.OK),
    Rule("server-closing",   "421",     "*",           None,           S.THROTTLED),
    Rule("blocklist-text",   "4xx 5xx", "*",           "blocklist",    S.POLICY_BLOCKED),
    Rule("rate-text",        "4xx 5xx", "*",           "rate",         S.THROTTLED),
    Rule("throttle-text",    "4xx",     "*",           "throttle",     S.THROTTLED),
    Rule("about-us-text",    "4xx 5xx", "*",           "about-us",     S.POLICY_BLOCKED),
)
_SESSION_TAIL: tuple[Rule[SessionVerdict], ...] = (
    Rule("policy-4.7",       "4xx",     "4.7.*",       None,           S.THROTTLED),
    Rule("policy-5.7",       "5xx",     "5.7.*",       None,           S.POLICY_BLOCKED),
    Rule("transient",        "4xx",     "*",           None,           S.TRANSIENT),
    Rule("permanent",        "*",       "*",           None,           S.PERMANENT),
)
# At MAIL FROM any addressing status (X.1.x) is about our reverse-path.
_MAIL_SENDER = Rule("sender-address", "4xx 5xx", "*.1.*", None, S.POLICY_BLOCKED)

GREETING_RULES = (*_SESSION_HEAD, *_SESSION_TAIL)
EHLO_RULES = (*_SESSION_HEAD, *_SESSION_TAIL)
MAIL_RULES = (*_SESSION_HEAD, _MAIL_SENDER, *_SESSION_TAIL)
# fmt: on


def explain_rcpt(reply: Reply) -> Classification[RcptVerdict]:
    return _first(RCPT_RULES, reply)


def classify_rcpt(reply: Reply) -> RcptVerdict:
    return _first(RCPT_RULES, reply).verdict


def explain_session(
    stage: Literal["greeting", "ehlo", "mail"], reply: Reply
) -> Classification[SessionVerdict]:
    table = {"greeting": GREETING_RULES, "ehlo": EHLO_RULES, "mail": MAIL_RULES}[stage]
    return _first(table, reply)


def classify_greeting(reply: Reply) -> SessionVerdict:
    """A 554 greeting without a telling text or 5.7.x stays PERMANENT: "no SMTP service here" is
    as likely as a silent block, and the caller moves on to the next MX host either way."""
    return _first(GREETING_RULES, reply).verdict


def classify_ehlo(reply: Reply) -> SessionVerdict:
    return _first(EHLO_RULES, reply).verdict


def classify_mail(reply: Reply) -> SessionVerdict:
    return _first(MAIL_RULES, reply).verdict
