"""Real servers' defensive behaviours as pure, synchronous rules; `smtp_server` plays them.

Each rule is taken from the named server's documentation or source, so that a prober which
behaves well here behaves well on the internet:

* `ErrorLimits` / `ErrorCounter`: Postfix smtpd's per-connection error counting.
* `DhaGuard`: a gateway's directory-harvest-attack (DHA) blocker.
* `postgrey_key`: the greylisting triplet exactly as postgrey builds it.
* `GREET_421_TEXT`, `STARTTLS_READY`, `TLS_HANDSHAKE_FAILURE_ALERT`: a host that refuses at the
  banner, and one whose TLS handshake fails after it has agreed to STARTTLS.

No I/O and no clocks here: times are passed in (trio's virtual clock under tests).
"""

from __future__ import annotations

import ipaddress
import re
from collections import deque
from dataclasses import dataclass, field

# -- Postfix error limits -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ErrorLimits:
    """Postfix smtpd's error limits (postconf(5)).

    * ``smtpd_soft_error_limit`` (default 10): once the session's error count reaches it, every
      reply is delayed by ``smtpd_error_sleep_time`` (default 1s). Source, Postfix
      src/smtpd/smtpd_chat.c, smtpd_chat_reply(): ``if (state->error_count >=
      var_smtpd_soft_erlim) sleep(delay = var_smtpd_err_sleep);`` -- evaluated before the
      current command's own error is counted, so the 11th reply after 10 errors is the first one
      delayed (postconf(5) words it "error count is > $smtpd_soft_error_limit").
    * ``smtpd_hard_error_limit`` (default 20; 1 under overload): at the top of the command loop
      (src/smtpd/smtpd.c, smtpd_proto()) ``if (state->error_count >= var_smtpd_hard_erlim)``
      the server replies ``421 4.7.0 $myhostname Error: too many errors`` and disconnects --
      right after the reply that made the count reach the limit, without waiting for another
      command. The 421 goes through smtpd_chat_reply too, so it is delayed as well.
    * An error is any command whose action fails (every rejected RCPT, 4xx greylisting
      included, rejected MAIL, unknown commands, syntax errors): ``if (cmdp->action(state, argc,
      argv) != 0) state->error_count++``. RSET does not reset the count; only a delivered message
      does (``state->error_count = 0`` after DATA), which a prober never sends.
    * ``smtpd_junk_command_limit`` (default 100): NOOP, VRFY, ETRN, RSET (and HELO/EHLO, flagged
      SMTPD_CMD_FLAG_LIMIT in smtpd.c) count as errors once more than 100 have been sent.

    iCloud's MX answers exactly this text ("421 4.7.0 me.com Error: too many errors", SMTP Field
    Manual data/codes/421.json), i.e. real providers run these limits.
    """

    soft: int = 10
    hard: int = 20
    sleep: float = 1.0
    junk: int = 100

    def __post_init__(self) -> None:
        if self.hard <= 0 or self.soft < 0 or self.sleep < 0 or self.junk < 0:
            raise ValueError(f"bad error limits {self}")


POSTFIX_ERROR_LIMITS = ErrorLimits()
# A stricter site: a prober tuned to Postfix's defaults must learn a lower limit here.
STRICT_ERROR_LIMITS = ErrorLimits(soft=3, hard=5, sleep=1.0)

# Commands Postfix counts against smtpd_junk_command_limit (SMTPD_CMD_FLAG_LIMIT in smtpd.c).
JUNK_VERBS = frozenset({"HELO", "EHLO", "RSET", "NOOP", "VRFY", "ETRN"})


def too_many_errors_reply(host: str) -> str:
    return f"421 4.7.0 {host} Error: too many errors"


@dataclass(slots=True)
class ErrorCounter:
    """One connection's error count under `limits` (see `ErrorLimits`)."""

    limits: ErrorLimits
    errors: int = 0
    junk: int = 0

    def reply_delay(self) -> float:
        """Seconds to sleep before sending the next reply."""
        return self.limits.sleep if self.errors >= self.limits.soft else 0.0

    def count(self, verb: str, code: int) -> None:
        """Account for one answered command (`code` is the final reply code)."""
        if verb != "QUIT" and code >= 400:
            self.errors += 1
        if verb in JUNK_VERBS:
            # Postfix: `state->junk_cmds++ > var_smtpd_junk_cmd_limit` (post-increment).
            if self.junk > self.limits.junk:
                self.errors += 1
            self.junk += 1

    @property
    def exhausted(self) -> bool:
        return self.errors >= self.limits.hard


# -- directory harvest attack blocker -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DhaLimits:
    """After `limit` unknown-recipient rejections within a sliding `window` (seconds) from one
    client IP -- across all its sessions to the host -- the client is refused for `block`
    seconds.

    This is how gateways describe their DHA protection: Cisco Secure Email's DHAP ("maximum
    invalid recipients per hour" per sending IP, then reject), Vamsoft ORF's DHA test
    ("temporarily reject all delivery attempts if the sending IP address is sending to more than
    X non-existent recipients within a specified period of time",
    https://vamsoft.com/support/feature-requests/tags/25/page/1), hosted filters that
    "automatically disconnect senders who send mail to too many unknown recipients"
    (http://www.email.kdinteractive.com/Section/Business_Email_Solutions/Hosted_Exchange/
    Technology/Spam_Filtering/Directory_Harvests.html), and OPSWAT's "directory" throttle
    (https://www.opswat.com/docs/mdemail/configuration/smtp-server-connection-control).
    """

    limit: int = 10
    window: float = 60.0
    block: float = 600.0

    def __post_init__(self) -> None:
        if self.limit < 1 or self.window <= 0 or self.block <= 0:
            raise ValueError(f"bad DHA limits {self}")


DEFAULT_DHA_LIMITS = DhaLimits()


def dha_block_reply(peer: str) -> str:
    """What a blocked client hears at RCPT.

    The frame is Postfix's own for a client restriction (src/smtpd/smtpd_check.c,
    check_table_result(): ``"<%s>: %s rejected: %s"`` with reply name ``host[ip]`` and class
    "Client host"; 554 5.7.1 is access(5)'s default REJECT code), as a gateway built on
    Postfix/a policy service answers; the reason is the wording gateways use for DHA blocks
    ("550 Too many invalid recipients", Libero's MX, https://pastebin.com/d5zFErcd; Cisco DHAP's
    default text). Under Postfix's default smtpd_delay_reject=yes, client restrictions are
    applied at RCPT TO, so the greeting, EHLO and MAIL FROM still succeed.
    """
    return f"554 5.7.1 <unknown[{peer}]>: Client host rejected: Too many invalid recipients"


@dataclass(slots=True)
class DhaGuard:
    """One (host, client IP) pair's DHA state; lives across that client's sessions."""

    limits: DhaLimits
    unknown_at: deque[float] = field(default_factory=deque)
    blocked_until: float = float("-inf")
    blocks: int = 0

    def blocked(self, now: float) -> bool:
        return now < self.blocked_until

    def record_unknown(self, now: float) -> bool:
        """Count one unknown-recipient rejection; True when it trips the block."""
        horizon = now - self.limits.window
        while self.unknown_at and self.unknown_at[0] <= horizon:
            self.unknown_at.popleft()
        self.unknown_at.append(now)
        if len(self.unknown_at) < self.limits.limit:
            return False
        self.unknown_at.clear()  # counting starts afresh once the block ends
        self.blocked_until = now + self.limits.block
        self.blocks += 1
        return True


# -- postgrey -----------------------------------------------------------------------------------

POSTGREY_DELAY = 300.0  # postgrey(8): --delay=N "greylist for N seconds (default: 300)"
POSTGREY_IPV4_CIDR = 24  # --lookup-by-subnet is the default, --ipv4cidr default 24

_VERP_NUMBER = re.compile(r"\b\d+\b")


def postgrey_key(peer: str, sender: str, recipient: str, *, cidr: int = POSTGREY_IPV4_CIDR) -> str:
    """The triplet key postgrey stores (postgrey 1.37, smtpd_access_policy()):
    ``lc "$client_net/$sender/$attr->{recipient}"`` where client_net is the client's /24 network
    (do_client_substitutions) and the sender has a "+extension" stripped and VERP numbers
    replaced by "#" (do_sender_substitutions; BATV "prvs=" unwrapping is not modelled). The
    recipient is kept whole: a new recipient starts its own clock."""
    try:
        net = str(ipaddress.ip_network(f"{peer}/{cidr}", strict=False).network_address)
    except ValueError:
        net = peer
    user, at, domain = sender.rpartition("@")
    if at:
        user = _VERP_NUMBER.sub("#", user.split("+", 1)[0])
        sender = f"{user}@{domain}"
    return f"{net}/{sender}/{recipient}".lower()


def postgrey_reply(recipient: str) -> str:
    """Postfix's reply for postgrey's default action DEFER_IF_PERMIT with its default text
    ("Greylisted, see http://postgrey.schweikert.ch/help/%r.html", %r = recipient domain;
    DSN 4.2.0 prepended for Postfix >= 2.3)."""
    domain = recipient.rpartition("@")[2]
    return (
        f"450 4.2.0 <{recipient}>: Recipient address rejected: Greylisted, see "
        f"http://postgrey.schweikert.ch/help/{domain}.html"
    )


# -- banner refusal and broken TLS ---------------------------------------------------------------

# Exchange Online's banner refusal (SMTP Field Manual data/codes/421.json, outlook 4.3.2: "421
# 4.3.2 Service not available"); RFC 5321 §3.8/§4.2.2: 421 means the server closes the channel.
GREET_421_TEXT = "421 4.3.2 Service not available, closing transmission channel"

# Postfix src/smtpd/smtpd.c, starttls_cmd(): the exact 220 before the handshake.
STARTTLS_READY = "220 2.0.0 Ready to start TLS"

# A TLS alert record (RFC 5246 §6.2.1/§7.2, RFC 8446 §6): content type 21 (alert), legacy
# version 3.3, length 2, level 2 (fatal), description 40 (handshake_failure) -- what a server
# with no usable certificate or cipher sends in answer to the ClientHello.
TLS_HANDSHAKE_FAILURE_ALERT = bytes((21, 3, 3, 0, 2, 2, 40))
TLS_RECORD_HEADER = 5
