"""One domain's RCPT conversation on an already-greeted SMTP session, as a sans-IO state
machine: it says which commands to send (`Conversation.next_commands`) and reads their replies
(`Conversation.receive`); it never awaits, and knows nothing of sockets or clocks. The shell
that moves the bytes is `ct_actors.actors.smtp_session.run_conversation`; like h11 for HTTP, the
decisions here do not change when the shell sends commands differently (RFC 2920 pipelining: a
batch of commands goes out in one write, and their replies come back in order).

The plan decides which address to ask; the conversation sends MAIL FROM / RCPT TO / RSET,
classifies each reply and tells the caller whether the domain is concluded or the host must be
left (greylisted, throttled, policy block of our IP, broken conversation). Session errors
(`SmtpError`) are the shell's: the pool worker owns the session and decides what they mean; the
shell then calls `abandon()` so the host's rejected-RCPT reservation is given back.

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
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from ct_actors.probe.plan import ProbePlan
from ct_actors.probe.visit import VisitOutcome
from ct_actors.smtp.classify import (
    RcptVerdict,
    SessionVerdict,
    classify_mail,
    classify_rcpt,
    is_throttle_text,
)
from ct_actors.smtp.types import Reply

# Address answers that mean "this mailbox exists": a full mailbox still exists.
_EXISTS = frozenset({RcptVerdict.ACCEPTED, RcptVerdict.MAILBOX_FULL})

# Replies saying the *session* has made too many errors (not a verdict on any address):
# Postfix's hard limit ("421 4.7.0 <host> Error: too many errors"), qmail-chkuser's
# "571 sorry, you are violating our security policies" once its wrong-recipient limit is hit.
_ERROR_LIMIT_TEXT = re.compile(r"too\s+many\s+errors|violating\s+our\s+security\s+polic", re.I)


def is_error_limit_reply(reply: Reply) -> bool:
    return reply.code in (421, 450, 451, 452, 550, 554, 571) and bool(
        _ERROR_LIMIT_TEXT.search(reply.text)
    )


def about_pace(reply: Reply) -> bool:
    """A 421 that names our pace (4.7.x, a rate text) rather than the server's own state."""
    enhanced = reply.enhanced
    return (enhanced is not None and enhanced.subject == 7) or is_throttle_text(reply.text)


class RejectionBudget(Protocol):
    """The host's directory-harvest budget: a RCPT is sent only with a reservation."""

    def reserve(self) -> float | None:
        """A reservation token, or None when the host's budget has no room now."""

    def settle(self, token: float, rejected: bool) -> None: ...


class Verb(enum.StrEnum):
    MAIL = "MAIL"
    RCPT = "RCPT"
    RSET = "RSET"


@dataclass(frozen=True, slots=True)
class Command:
    verb: Verb
    address: str = ""  # MAIL's reverse-path, RCPT's forward-path


@dataclass(slots=True)
class ConversationResult:
    outcome: VisitOutcome
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
    # The RSET that opened this visit on a reused session was refused (a 421 queued while the
    # session idled, the host's error limit): the session was over before the domain began.
    reset_failed: bool = False


def summarise(command: str, reply: Reply) -> str:
    """Compact audit line, e.g. 'RCPT ann.lee@x.io -> 550 5.1.1 User unknown'."""
    enhanced = f" {reply.enhanced}" if reply.enhanced else ""
    text = reply.text
    if reply.enhanced and text.startswith(str(reply.enhanced)):
        text = text[len(str(reply.enhanced)) :].lstrip()
    return f"{command} -> {reply.code}{enhanced} {text[:100]}".rstrip()


class Conversation:
    """Commands out, replies in. `next_commands()` gives the next batch to send; `receive()`
    takes their replies, in order (fewer when the server closed after a 421). An empty batch
    means the visit is over: read `result`.

    Batches (RFC 2920, only where the server offers PIPELINING): a reused session's RSET goes
    with the domain's first transaction (`reset_first`); MAIL FROM goes with the first RCPT,
    and with the catch-all probe also with the first candidate. That second RCPT can never
    cost a rejection the verdict did not need: a catch-all accepts it, and a refused probe is
    followed by exactly that question anyway. Later questions go one at a time, so an accepted
    candidate is never followed by a needless rejection. Each batch fits the session's error
    budget even if every command in it is refused.

    `error_budget`: how many more rejected commands this session may take.
    `rejections`: the host's rejected-RCPT budget (directory-harvest safety)."""

    def __init__(
        self,
        plan: ProbePlan,
        *,
        mail_from: str,
        rcpt_limit: int,
        error_budget: int = 1_000_000,
        pipelining: bool = False,
        rejections: RejectionBudget | None = None,
        reset_first: bool = False,
    ) -> None:
        self.plan = plan
        self.result = ConversationResult(VisitOutcome.CONCLUDED)
        self._mail_from = mail_from
        self._limit = max(1, rcpt_limit)
        self._budget = error_budget
        self._pipelining = pipelining
        self._rejections = rejections
        self._over = False
        self._sent: tuple[Command, ...] = ()
        self._reset_pending = reset_first  # the reused session's RSET is not answered yet
        self._need_mail = True  # MAIL FROM goes with the next question
        self._mail_refused = False  # RCPTs sent with a refused MAIL are not answers
        self._in_transaction = 0  # RCPTs answered in the open transaction
        self._rset_now = False  # the server capped recipients: a new transaction first
        self._rcpt_now = False  # MAIL FROM went alone and was accepted: its RCPT next
        self._tokens: list[float] = []  # rejected-RCPT reservations of the RCPTs in flight
        self._errors_before_mail = 0

    @property
    def over(self) -> bool:
        return self._over

    @property
    def reset_pending(self) -> bool:
        """The opening RSET of a reused session has not been answered yet."""
        return self._reset_pending

    def next_commands(self) -> tuple[Command, ...]:
        if self._sent:
            raise RuntimeError("replies to the last commands are outstanding")
        if self._over:
            return ()
        if self._rset_now or (self._reset_pending and not self._pipelining):
            return self._send(Command(Verb.RSET))
        if self._rcpt_now:
            self._rcpt_now = False
            return self._send(self._rcpt())
        result = self.result
        if (step := self.plan.current()) is None:
            if self.plan.waiting_for_greylist:
                result.outcome = VisitOutcome.GREYLISTED
                result.detail = f"{len(self.plan.greylisted)} address(es) greylisted"
            return self._end()
        if result.errors >= self._budget:
            result.outcome = VisitOutcome.SESSION_ENDED
            result.budget_spent = True
            result.detail = (
                f"per-session error budget spent ({result.errors} rejected command(s) on this "
                "visit); continuing on a fresh session"
            )
            return self._end()
        if self._in_transaction >= self._limit:
            return self._send(Command(Verb.RSET))
        token = self._reserve()
        if token is None:
            result.outcome = VisitOutcome.SESSION_ENDED
            result.dha_paused = True
            result.detail = "the host's rejected-RCPT budget is spent for now; pacing"
            return self._end()
        self._tokens = [token]
        if not self._need_mail:
            return self._send(self._rcpt())
        self._need_mail = False
        self._mail_refused = False
        self._errors_before_mail = result.errors
        reset = (Command(Verb.RSET),) if self._reset_pending else ()
        mail = Command(Verb.MAIL, self._mail_from)
        room = self._budget - result.errors
        # A refused MAIL makes the server refuse every RCPT after it too, and count them: the
        # whole batch must fit the budget.
        if not self._pipelining or room < 2:
            return self._send(*reset, mail)
        rcpts = [Command(Verb.RCPT, step.address)]
        if (
            step is self.plan.steps[0]  # the catch-all probe
            and (following := self.plan.following()) is not None
            and room >= 3
            and self._limit >= 2
            and (second := self._reserve()) is not None
        ):
            self._tokens.append(second)
            rcpts.append(Command(Verb.RCPT, following.address))
        return self._send(*reset, mail, *rcpts)

    def receive(self, replies: Sequence[Reply]) -> None:
        sent, self._sent = self._sent, ()
        if not sent or not 1 <= len(replies) <= len(sent):
            raise RuntimeError(f"{len(replies)} replies to {len(sent)} commands")
        for command, reply in zip(sent, replies, strict=False):
            if command.verb is Verb.RSET and not self._over:
                self._on_rset(reply)
            elif command.verb is Verb.MAIL and not self._over:
                self._on_mail(reply)
            elif command.verb is Verb.RCPT and not self._over and self._asks(command):
                self._on_rcpt(command.address, reply)
            else:
                self._not_an_answer(command, reply)
        # RCPTs never answered (the server closed after a 421) or never sent (the batch's MAIL
        # went alone and was refused): nothing was rejected.
        for command in sent[len(replies) :]:
            if command.verb is Verb.RCPT:
                self._settle(rejected=False)
        if self._over:
            while self._tokens:
                self._settle(rejected=False)

    def abandon(self) -> None:
        """The session broke off (an SMTP error, a cancellation): nothing more is sent, and
        open reservations are given back unspent (no answer, no rejection)."""
        self._sent = ()
        while self._tokens:
            self._settle(rejected=False)
        self._over = True

    # -- replies ---------------------------------------------------------------------------

    def _asks(self, command: Command) -> bool:
        """Whether this RCPT still asks the plan's open question (a pipelined second RCPT
        does not once the first answer concluded the domain)."""
        step = self.plan.current()
        return not self._mail_refused and step is not None and step.address == command.address

    def _on_rset(self, reply: Reply) -> None:
        """RSET between transactions; the next RCPT opens a new one."""
        opening, self._reset_pending = self._reset_pending, False
        if not reply.is_positive:
            self.result.replies.append(summarise("RSET", reply))
            self.result.reset_failed = opening
            self._session_ended("RSET", reply, self.result.errors)
            return
        self._rset_now = False
        if not opening:
            self._need_mail = True
        self._in_transaction = 0

    def _on_mail(self, mail: Reply) -> None:
        result = self.result
        result.replies.append(summarise(f"MAIL FROM:<{self._mail_from}>", self._counted(mail)))
        if mail.code == 421 or is_error_limit_reply(mail):
            self._mail_refused = True
            self._session_ended("MAIL FROM", mail, self._errors_before_mail)
        elif (verdict := classify_mail(mail)) is not SessionVerdict.OK:
            self._mail_refused = True
            result.outcome = _session_outcome(verdict)
            result.pace = result.outcome is VisitOutcome.THROTTLED
            result.detail = f"MAIL FROM refused: {mail.code} {mail.text[:80]}"
            self._end()
        else:
            self._rcpt_now = True  # the transaction is open; its first RCPT goes next

    def _on_rcpt(self, address: str, answer: Reply) -> None:
        self._rcpt_now = False
        result = self.result
        before = result.errors
        reply = self._counted(answer)
        self._settle(rejected=reply.code >= 500)
        result.rcpts_sent += 1
        self._in_transaction += 1
        result.replies.append(summarise(f"RCPT {address}", reply))
        if reply.code == 421 or is_error_limit_reply(reply):
            self._session_ended(f"RCPT {address}", reply, before)
            return
        verdict = classify_rcpt(reply)
        if verdict.is_address_answer:
            self.plan.answer(verdict in _EXISTS)
            result.progress += 1
            return
        if verdict is RcptVerdict.GREYLISTED:
            # Ask the remaining candidates now, so the domain costs one greylist wait.
            self.plan.defer_greylisted()
            result.progress += 1
            return
        if verdict is RcptVerdict.TOO_MANY_RECIPIENTS and self._in_transaction > 1:
            # Not an answer about this address: the server caps recipients per transaction.
            # Remember the cap and ask again in a fresh transaction.
            self._limit = self._in_transaction - 1
            result.rcpt_limit = self._limit
            self._rset_now = True
            return
        result.outcome = _rcpt_outcome(verdict)
        # A throttling answer to MAIL/RCPT (4.7.x, a rate text) is about our pace.
        result.pace = result.outcome is VisitOutcome.THROTTLED
        result.detail = f"RCPT {address}: {reply.code} {reply.text[:80]}"
        self._end()

    def _not_an_answer(self, command: Command, reply: Reply) -> None:
        """A reply to a command sent in a batch that the replies before it made moot: the
        server still counts its errors, and a RCPT's reservation is settled as it went."""
        self._counted(reply)
        if command.verb is not Verb.RCPT:
            return
        self._settle(rejected=reply.code >= 500)
        self.result.rcpts_sent += 1
        why = "no transaction" if self._mail_refused else "not needed"
        line = summarise(f"RCPT {command.address}", reply)
        self.result.replies.append(f"{line} ({why}: not an answer)")

    # -- helpers ---------------------------------------------------------------------------

    def _rcpt(self) -> Command:
        step = self.plan.current()
        assert step is not None  # a reservation is only taken for an open question
        return Command(Verb.RCPT, step.address)

    def _reserve(self) -> float | None:
        return self._rejections.reserve() if self._rejections is not None else 0.0

    def _send(self, *commands: Command) -> tuple[Command, ...]:
        self._sent = commands
        return commands

    def _end(self) -> tuple[Command, ...]:
        self._over = True
        return ()

    def _counted(self, reply: Reply) -> Reply:
        if reply.code >= 400:
            self.result.errors += 1
        return reply

    def _settle(self, *, rejected: bool) -> None:
        if not self._tokens:
            return
        token = self._tokens.pop(0)
        if self._rejections is not None:
            self._rejections.settle(token, rejected)

    def _session_ended(self, command: str, reply: Reply, errors_before: int) -> None:
        """A 421 (or an error-limit reply): this session is over, the domain is not."""
        result = self.result
        result.outcome = VisitOutcome.SESSION_ENDED
        result.detail = f"{command}: {reply.code} {reply.text[:80]}"
        if is_error_limit_reply(reply):
            result.error_limit_after = errors_before
        elif reply.code == 421:
            result.pace = about_pace(reply)
        self._end()


def _session_outcome(verdict: SessionVerdict) -> VisitOutcome:
    if verdict is SessionVerdict.POLICY_BLOCKED:
        return VisitOutcome.POLICY_BLOCKED
    if verdict is SessionVerdict.THROTTLED:
        return VisitOutcome.THROTTLED
    return VisitOutcome.FAILED


def _rcpt_outcome(verdict: RcptVerdict) -> VisitOutcome:
    if verdict is RcptVerdict.GREYLISTED:
        return VisitOutcome.GREYLISTED
    if verdict is RcptVerdict.POLICY_BLOCKED:
        return VisitOutcome.POLICY_BLOCKED
    if verdict is RcptVerdict.THROTTLED:
        return VisitOutcome.THROTTLED
    return VisitOutcome.FAILED
