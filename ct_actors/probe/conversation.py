"""One domain's RCPT conversation on an already-greeted SMTP session.

The plan decides which address to ask; this shell sends MAIL FROM / RCPT TO / RSET, classifies
each reply and tells the caller whether the domain is concluded or the host must be left
(greylisted, throttled, policy block of our IP, broken conversation). Session errors
(`SmtpError`) propagate: the pool worker owns the session and decides what they mean.

Per-session error budget. Stock servers count every rejected command against the *connection*,
and RSET does not reset the count: Postfix's smtpd delays every reply once a client has made
more than `smtpd_soft_error_limit` (10) errors and answers `421 4.7.0 Error: too many errors` at
`smtpd_hard_error_limit` (20) (postconf(5)); Sendmail's `BadRcptThrottle` sleeps a second per
RCPT after that many bad RCPTs in one session (sendmail, 4th ed., §24.9.9). A reused session
carries the errors of earlier domains, so the conversation stops *before* the session's budget
is spent and reports `SESSION_ENDED`: the domain goes on, from the same question, on a fresh
session. A 421 at MAIL/RCPT/RSET is the same kind of event (the server is closing this session,
RFC 5321 §3.8), never an answer about the domain.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from typing import Protocol

from ct_actors.probe.plan import ProbePlan
from ct_actors.smtp.classify import (
    RcptVerdict,
    SessionVerdict,
    classify_mail,
    classify_rcpt,
    is_throttle_text,
)
from ct_actors.smtp.client import SmtpSession
from ct_actors.smtp.types import Reply

# Address answers that mean "this mailbox exists": a full mailbox still exists.
_EXISTS = frozenset({RcptVerdict.ACCEPTED, RcptVerdict.MAILBOX_FULL})


class HostOutcome(enum.StrEnum):
    CONCLUDED = "concluded"  # the plan has its conclusion
    GREYLISTED = "greylisted"  # ask the same address again later
    THROTTLED = "throttled"  # 421 / 4.7.x: back off from this host
    POLICY_BLOCKED = "policy-blocked"  # the server refuses *us*: never a verdict on addresses
    FAILED = "failed"  # the server would not give address answers (5xx on MAIL, 252, ...)
    # The session cannot go on (421 closing, our per-session error budget spent, or, set by the
    # pool, a disconnect or timeout mid-conversation): continue on a fresh session.
    SESSION_ENDED = "session-ended"


# Replies saying the *session* has made too many errors (not a verdict on any address):
# Postfix's hard limit ("421 4.7.0 <host> Error: too many errors"), qmail-chkuser's
# "571 sorry, you are violating our security policies" once its wrong-recipient limit is hit.
_ERROR_LIMIT_TEXT = re.compile(r"too\s+many\s+errors|violating\s+our\s+security\s+polic", re.I)


def is_error_limit_reply(reply: Reply) -> bool:
    return reply.code in (421, 450, 451, 452, 550, 554, 571) and bool(
        _ERROR_LIMIT_TEXT.search(reply.text)
    )


class RejectionBudget(Protocol):
    """The host's directory-harvest budget: a RCPT is sent only with a reservation."""

    def reserve(self) -> float | None:
        """A reservation token, or None when the host's budget has no room now."""

    def settle(self, token: float, rejected: bool) -> None: ...


@dataclass(slots=True)
class ConversationResult:
    outcome: HostOutcome
    detail: str = ""
    replies: list[str] = field(default_factory=list)
    rcpt_limit: int | None = None  # learned from a 452 "too many recipients"
    rcpts_sent: int = 0
    errors: int = 0  # 4xx/5xx replies to MAIL/RCPT on this visit (the server counts them)
    progress: int = 0  # questions moved on (answered, or set aside as greylisted)
    # Errors this visit had made when the server said "too many errors" (the pool adds the
    # session's earlier ones and learns the host's lower limit from it).
    error_limit_after: int | None = None
    budget_spent: bool = False  # ended by our own per-session error budget
    pace: bool = False  # a 421 about our pace (4.7.x, rate texts): back off first
    dha_paused: bool = False  # ended because the host's rejected-RCPT budget had no room


def summarise(command: str, reply: Reply) -> str:
    """Compact audit line, e.g. 'RCPT ann.lee@x.io -> 550 5.1.1 User unknown'."""
    enhanced = f" {reply.enhanced}" if reply.enhanced else ""
    text = reply.text
    if reply.enhanced and text.startswith(str(reply.enhanced)):
        text = text[len(str(reply.enhanced)) :].lstrip()
    return f"{command} -> {reply.code}{enhanced} {text[:100]}".rstrip()


async def converse(
    session: SmtpSession,
    plan: ProbePlan,
    *,
    mail_from: str,
    rcpt_limit: int,
    error_budget: int = 1_000_000,
    rejections: RejectionBudget | None = None,
) -> ConversationResult:
    """`error_budget`: how many more rejected commands this session may take.
    `rejections`: the host's rejected-RCPT budget (directory-harvest safety)."""
    result = ConversationResult(HostOutcome.CONCLUDED)
    limit = max(1, rcpt_limit)
    # MAIL FROM goes with the first question (pipelined where allowed), not before the loop.
    need_mail = True

    def counted(reply: Reply) -> Reply:
        if reply.code >= 400:
            result.errors += 1
        return reply

    def session_ended(command: str, reply: Reply, errors_before: int) -> ConversationResult:
        """A 421 (or an error-limit reply): this session is over, the domain is not."""
        result.outcome = HostOutcome.SESSION_ENDED
        result.detail = f"{command}: {reply.code} {reply.text[:80]}"
        if is_error_limit_reply(reply):
            result.error_limit_after = errors_before
        elif reply.code == 421:
            result.pace = about_pace(reply)
        return result

    def mail_outcome(reply: Reply, before: int) -> ConversationResult | None:
        """None when the transaction is open; else the visit's end."""
        if reply.code == 421 or is_error_limit_reply(reply):
            return session_ended("MAIL FROM", reply, before)
        verdict = classify_mail(reply)
        if verdict is SessionVerdict.OK:
            return None
        result.outcome = _session_outcome(verdict)
        result.pace = result.outcome is HostOutcome.THROTTLED
        result.detail = f"MAIL FROM refused: {reply.code} {reply.text[:80]}"
        return result

    async def open_transaction(address: str) -> tuple[ConversationResult | None, Reply | None]:
        """MAIL FROM, with the first RCPT in the same write when the server offers PIPELINING
        (RFC 2920) and the session's budget has room for both to be refused (a refused MAIL
        makes the server refuse the RCPT too, and count it). Returns the visit's end if MAIL
        was refused, and the RCPT's reply if it was sent."""
        before = result.errors
        if session.pipelining and error_budget - result.errors >= 2:
            mail, rcpt = await session.mail_and_rcpt(mail_from, address)
        else:
            mail, rcpt = await session.mail_from(mail_from), None
        result.replies.append(summarise(f"MAIL FROM:<{mail_from}>", counted(mail)))
        early = mail_outcome(mail, before)
        if early is not None and rcpt is not None:
            # Answered without a transaction (e.g. 503 5.5.1): never an answer about the address.
            result.rcpts_sent += 1
            line = summarise(f"RCPT {address}", counted(rcpt))
            result.replies.append(f"{line} (no transaction: not an answer)")
        return early, rcpt

    async def reset() -> ConversationResult | None:
        """RSET between transactions; the next RCPT opens a new one (`open_transaction`)."""
        nonlocal need_mail
        reply = await session.rset()
        if not reply.is_positive:
            result.replies.append(summarise("RSET", reply))
            return session_ended("RSET", reply, result.errors)
        need_mail = True
        return None

    in_transaction = 0
    while (step := plan.current()) is not None:
        if result.errors >= error_budget:
            result.outcome = HostOutcome.SESSION_ENDED
            result.budget_spent = True
            result.detail = (
                f"per-session error budget spent ({result.errors} rejected command(s) on this "
                "visit); continuing on a fresh session"
            )
            return result
        if in_transaction >= limit:
            if (early := await reset()) is not None:
                return early
            in_transaction = 0
        token = rejections.reserve() if rejections is not None else 0.0
        if token is None:
            result.outcome = HostOutcome.SESSION_ENDED
            result.dha_paused = True
            result.detail = "the host's rejected-RCPT budget is spent for now; pacing"
            return result
        answer: Reply | None = None
        try:
            if need_mail:
                need_mail = False
                early, answer = await open_transaction(step.address)
                if early is not None:
                    if rejections is not None:
                        rejections.settle(token, rejected=answer is not None and answer.code >= 500)
                    return early
            before = result.errors
            if answer is None:
                answer = await session.rcpt(step.address)
        except BaseException:
            if rejections is not None:
                rejections.settle(token, rejected=False)
            raise
        reply = counted(answer)
        if rejections is not None:
            rejections.settle(token, rejected=reply.code >= 500)
        result.rcpts_sent += 1
        in_transaction += 1
        result.replies.append(summarise(f"RCPT {step.address}", reply))
        if reply.code == 421 or is_error_limit_reply(reply):
            return session_ended(f"RCPT {step.address}", reply, before)
        verdict = classify_rcpt(reply)
        if verdict.is_address_answer:
            plan.answer(verdict in _EXISTS)
            result.progress += 1
            continue
        if verdict is RcptVerdict.GREYLISTED:
            # Ask the remaining candidates now, so the domain costs one greylist wait.
            plan.defer_greylisted()
            result.progress += 1
            continue
        if verdict is RcptVerdict.TOO_MANY_RECIPIENTS and in_transaction > 1:
            # Not an answer about this address: the server caps recipients per transaction.
            # Remember the cap and ask again in a fresh transaction.
            limit = in_transaction - 1
            result.rcpt_limit = limit
            if (early := await reset()) is not None:
                return early
            in_transaction = 0
            continue
        result.outcome = _rcpt_outcome(verdict)
        # A throttling answer to MAIL/RCPT (4.7.x, a rate text) is about our pace.
        result.pace = result.outcome is HostOutcome.THROTTLED
        result.detail = f"RCPT {step.address}: {reply.code} {reply.text[:80]}"
        return result
    if plan.waiting_for_greylist:
        result.outcome = HostOutcome.GREYLISTED
        result.detail = f"{len(plan.greylisted)} address(es) greylisted"
    return result


def about_pace(reply: Reply) -> bool:
    """A 421 that names our pace (4.7.x, a rate text) rather than the server's own state."""
    enhanced = reply.enhanced
    return (enhanced is not None and enhanced.subject == 7) or is_throttle_text(reply.text)


def _session_outcome(verdict: SessionVerdict) -> HostOutcome:
    if verdict is SessionVerdict.POLICY_BLOCKED:
        return HostOutcome.POLICY_BLOCKED
    if verdict is SessionVerdict.THROTTLED:
        return HostOutcome.THROTTLED
    return HostOutcome.FAILED


def _rcpt_outcome(verdict: RcptVerdict) -> HostOutcome:
    if verdict is RcptVerdict.GREYLISTED:
        return HostOutcome.GREYLISTED
    if verdict is RcptVerdict.POLICY_BLOCKED:
        return HostOutcome.POLICY_BLOCKED
    if verdict is RcptVerdict.THROTTLED:
        return HostOutcome.THROTTLED
    return HostOutcome.FAILED
