"""One visit of a domain's probe to one MX host: what happened there (pure data, read by the
domain walk, the gate and the audit)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ct_actors.smtp.types import Stage


class VisitOutcome(enum.StrEnum):
    """How a visit ended. The values are the audit trail's words (stored in the evidence)."""

    # The conversation's own ends (probe/conversation.py):
    CONCLUDED = "concluded"  # the plan has its conclusion
    GREYLISTED = "greylisted"  # ask the same address again later
    THROTTLED = "throttled"  # 421 / 4.7.x: back off from this host
    POLICY_BLOCKED = "policy-blocked"  # the server refuses *us*: never a verdict on addresses
    FAILED = "failed"  # the server would not give address answers (5xx on MAIL, 252, ...)
    # The session cannot go on (421 closing, our per-session error budget spent, or, set by the
    # pool, a disconnect or timeout mid-conversation): continue on a fresh session.
    SESSION_ENDED = "session-ended"
    # The session's (set by the pool from the SMTP error, with `HostVisit.stage`):
    CONNECT_FAILED = "connect-failed"
    TIMEOUT = "timeout"
    DISCONNECTED = "disconnected"
    GREETING_REJECTED = "greeting-rejected"
    PROTOCOL_ERROR = "protocol-error"
    # Never connected:
    HOST_DEAD = "host-dead"  # marked dead by an earlier visit (throttle/host_window.py)
    HALTED = "halted"  # not attempted: an SMTP kill switch is tripped (see smtp_gate.py)
    NO_ADDRESS = "no-address"
    NOT_PUBLIC = "not-public"  # refused: the MX address is not public (net/address_policy.py)
    # The gate's (actors/smtp_gate.py): the host has refused our IP for refusal_give_up seconds
    # and nothing corroborated that the refusal is about us; the domain treats it as the
    # host's failure (CT-M-SMTP-FAIL listing it).
    REFUSED = "refused-us"


# Outcomes that say nothing about whether we can reach port 25: no connection was tried.
NO_CONNECTION_TRIED = frozenset(
    {VisitOutcome.HOST_DEAD, VisitOutcome.HALTED, VisitOutcome.NO_ADDRESS, VisitOutcome.NOT_PUBLIC}
)


@dataclass(slots=True)
class HostVisit:
    """What happened on one visit to one MX host, kept for the outcome row's audit trail."""

    host: str
    address: str | None
    outcome: VisitOutcome
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
    # Where the session broke off (the SMTP error's stage), None when no SMTP error ended it.
    stage: Stage | None = None

    @property
    def connect_failed(self) -> bool:
        """The TCP connection itself failed (refused, unreachable, connect timeout)."""
        if self.outcome is VisitOutcome.CONNECT_FAILED:
            return True
        return self.outcome is VisitOutcome.TIMEOUT and self.stage == "connect"

    def audit(self) -> dict[str, object]:
        audit: dict[str, object] = {
            "host": self.host,
            "address": self.address,
            "outcome": self.outcome.value,
            "detail": self.detail,
            "replies": self.replies,
            "tls": self.tls,
        }
        if self.tls_note:
            audit["tls_note"] = self.tls_note
        if self.slow:
            audit["slow_host"] = True
        return audit


def dead_host_visit(host: str) -> HostVisit:
    """A host marked dead by an earlier visit: skipped, no connection, no call spent."""
    return HostVisit(host, None, VisitOutcome.HOST_DEAD, "marked dead by an earlier visit")
