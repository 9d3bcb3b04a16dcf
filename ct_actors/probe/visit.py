"""One visit of a domain's probe to one MX host: the request a domain task sends to a host's
pool, and what happened there (pure data, read by the domain probe, the gate and the audit)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ct_actors.probe.plan import ProbePlan
from ct_actors.reply_slot import ReplySlot

# Visit outcomes beyond the conversation's own (`HostOutcome`).
CONNECT_FAILED = "connect-failed"
TIMEOUT = "timeout"
DISCONNECTED = "disconnected"
GREETING_REJECTED = "greeting-rejected"
PROTOCOL_ERROR = "protocol-error"
HOST_DEAD = "host-dead"
HALTED = "halted"  # not attempted: an SMTP kill switch is tripped (see smtp_gate.py)
NO_ADDRESS = "no-address"
NOT_PUBLIC = "not-public"  # refused: the MX address is not public (net/address_policy.py)


@dataclass(slots=True)
class ProbeRequest:
    domain: str
    plan: ProbePlan
    reply: ReplySlot[HostVisit] = field(default_factory=ReplySlot)
    # The MX name the domain asked for: a pool serves one IP address, which several tenants'
    # MX names may share; visits are reported under the name the domain's MX record gave.
    mx_name: str = ""


@dataclass(slots=True)
class HostVisit:
    """What happened on one visit to one MX host, kept for the outcome row's audit trail."""

    host: str
    address: str | None
    outcome: str
    detail: str = ""
    replies: list[str] = field(default_factory=list)
    tls: bool = False
    reused_session: bool = False
    progress: int = 0  # questions this visit moved on (answered or set aside as greylisted)
    pace: bool = False  # the session ended on a 421 about our pace
    dha_paused: bool = False  # the host's rejected-RCPT budget had no room: wait, then go on
    retry_in: float = 0.0  # with dha_paused: seconds until the budget has room again
    budget_spent: bool = False  # the session ended on our own per-session error budget
    tls_note: str = ""  # a STARTTLS failure and the plaintext fallback, when it happened
    # Seconds spent at the host (connect and conversation), not waiting for our own throttles.
    elapsed: float = 0.0
    slow: bool = False  # the host kept us waiting past slow_reply_seconds (the slow share)

    def audit(self) -> dict[str, object]:
        audit: dict[str, object] = {
            "host": self.host,
            "address": self.address,
            "outcome": self.outcome,
            "detail": self.detail,
            "replies": self.replies,
            "tls": self.tls,
        }
        if self.tls_note:
            audit["tls_note"] = self.tls_note
        if self.slow:
            audit["slow_host"] = True
        return audit


def is_connect_failure(visit: HostVisit) -> bool:
    """The TCP connection itself failed (refused, unreachable, connect timeout)."""
    if visit.outcome == CONNECT_FAILED:
        return True
    return visit.outcome == TIMEOUT and visit.detail.startswith("connect:")
