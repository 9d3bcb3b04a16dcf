"""One domain's RCPT conversation on an already-greeted SMTP session.

The plan decides which address to ask; this shell sends MAIL FROM / RCPT TO / RSET, classifies
each reply and tells the caller whether the domain is concluded or the host must be left
(greylisted, throttled, policy block of our IP, broken conversation). Session errors
(`SmtpError`) propagate: the pool worker owns the session and decides what they mean.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from ct_actors.probe.plan import ProbePlan
from ct_actors.smtp.classify import RcptVerdict, SessionVerdict, classify_mail, classify_rcpt
from ct_actors.smtp.client import SmtpSession
from ct_actors.smtp.reply import Reply

# Address answers that mean "this mailbox exists": a full mailbox still exists.
_EXISTS = frozenset({RcptVerdict.ACCEPTED, RcptVerdict.MAILBOX_FULL})


class HostOutcome(enum.StrEnum):
    CONCLUDED = "concluded"  # the plan has its conclusion
    GREYLISTED = "greylisted"  # ask the same address again later
    THROTTLED = "throttled"  # 421 / 4.7.x: back off from this host
    POLICY_BLOCKED = "policy-blocked"  # the server refuses *us*: never a verdict on addresses
    FAILED = "failed"  # the server would not give address answers (5xx on MAIL, 252, ...)


@dataclass(slots=True)
class ConversationResult:
    outcome: HostOutcome
    detail: str = ""
    replies: list[str] = field(default_factory=list)
    rcpt_limit: int | None = None  # learned from a 452 "too many recipients"
    rcpts_sent: int = 0


def summarise(command: str, reply: Reply) -> str:
    """Compact audit line, e.g. 'RCPT ann.lee@x.io -> 550 5.1.1 User unknown'."""
    enhanced = f" {reply.enhanced}" if reply.enhanced else ""
    text = reply.text
    if reply.enhanced and text.startswith(str(reply.enhanced)):
        text = text[len(str(reply.enhanced)) :].lstrip()
    return f"{command} -> {reply.code}{enhanced} {text[:100]}".rstrip()


async def converse(
    session: SmtpSession, plan: ProbePlan, *, mail_from: str, rcpt_limit: int
) -> ConversationResult:
    result = ConversationResult(HostOutcome.CONCLUDED)
    limit = max(1, rcpt_limit)

    async def start_transaction() -> ConversationResult | None:
        reply = await session.mail_from(mail_from)
        result.replies.append(summarise(f"MAIL FROM:<{mail_from}>", reply))
        verdict = classify_mail(reply)
        if verdict is SessionVerdict.OK:
            return None
        result.outcome = _session_outcome(verdict)
        result.detail = f"MAIL FROM refused: {reply.code} {reply.text[:80]}"
        return result

    if (early := await start_transaction()) is not None:
        return early
    in_transaction = 0
    while (step := plan.current()) is not None:
        if in_transaction >= limit:
            await session.rset()
            if (early := await start_transaction()) is not None:
                return early
            in_transaction = 0
        reply = await session.rcpt(step.address)
        result.rcpts_sent += 1
        in_transaction += 1
        result.replies.append(summarise(f"RCPT {step.address}", reply))
        verdict = classify_rcpt(reply)
        if verdict.is_address_answer:
            plan.answer(verdict in _EXISTS)
            continue
        if verdict is RcptVerdict.GREYLISTED:
            # Ask the remaining candidates now, so the domain costs one greylist wait.
            plan.defer_greylisted()
            continue
        if verdict is RcptVerdict.TOO_MANY_RECIPIENTS and in_transaction > 1:
            # Not an answer about this address: the server caps recipients per transaction.
            # Remember the cap and ask again in a fresh transaction.
            limit = in_transaction - 1
            result.rcpt_limit = limit
            await session.rset()
            if (early := await start_transaction()) is not None:
                return early
            in_transaction = 0
            continue
        result.outcome = _rcpt_outcome(verdict)
        result.detail = f"RCPT {step.address}: {reply.code} {reply.text[:80]}"
        return result
    if plan.waiting_for_greylist:
        result.outcome = HostOutcome.GREYLISTED
        result.detail = f"{len(plan.greylisted)} address(es) greylisted"
    return result


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
