"""One pooled SMTP session: the record a pool worker keeps of it, the thin shell that runs a
domain's conversation on it, and what an SMTP error means as a host visit.

The decisions are the conversation's (`ct_actors.probe.conversation.Conversation`, sans-IO):
this shell only turns its command batches into the session's calls and hands the replies back.
A batch of RSET, MAIL FROM and RCPT TO goes out in one write (`SmtpSession.batch`, RFC 2920).
"""

from __future__ import annotations

import contextlib
import ssl
from dataclasses import dataclass, field
from typing import Literal

import trio

from ct_actors.actors.pool_settings import PoolSettings
from ct_actors.actors.slow_hosts import SlowLease
from ct_actors.net.connector import Connector
from ct_actors.probe.conversation import (
    Conversation,
    ConversationResult,
    about_pace,
)
from ct_actors.probe.visit import HostVisit, VisitOutcome
from ct_actors.smtp.classify import SessionVerdict, classify_ehlo, classify_greeting
from ct_actors.smtp.client import (
    SmtpConnectError,
    SmtpDisconnected,
    SmtpError,
    SmtpRejected,
    SmtpTimeout,
    open_session,
)
from ct_actors.smtp.session import SmtpSession
from ct_actors.smtp.step_watch import StepWatch
from ct_actors.throttle.host_window import HostWindow


@dataclass(slots=True)
class PooledSession:
    """One open SMTP session and the exit stack that QUITs it and frees its connection slot."""

    stack: contextlib.AsyncExitStack
    session: SmtpSession
    opened_at: float
    errors: int = 0  # rejected commands on this session (servers count them per connection)
    tls_note: str = ""  # what happened to STARTTLS, when it did not simply work
    lease: SlowLease = field(default_factory=SlowLease)


async def run_conversation(session: SmtpSession, conversation: Conversation) -> ConversationResult:
    """Send the conversation's batches and hand their replies back. SMTP errors propagate (the
    worker owns the session); the conversation is abandoned first, so no rejected-RCPT
    reservation is lost."""
    try:
        while commands := conversation.next_commands():
            replies = await session.batch([(c.verb.value, c.address) for c in commands])
            conversation.receive(replies)
    except BaseException:
        conversation.abandon()
        raise
    return conversation.result


@dataclass(slots=True)
class WindowRejections:
    """The conversation's view of the host's rejected-RCPT budget."""

    window: HostWindow

    def reserve(self) -> float | None:
        now = trio.current_time()
        return now if self.window.reserve_rejection(now) else None

    def settle(self, token: float, rejected: bool) -> None:
        self.window.settle_rejection(token, rejected)


def error_outcome(exc: SmtpError) -> VisitOutcome:
    if isinstance(exc, SmtpTimeout):
        return VisitOutcome.TIMEOUT
    if isinstance(exc, SmtpDisconnected):
        return VisitOutcome.DISCONNECTED
    if isinstance(exc, SmtpConnectError):
        return VisitOutcome.CONNECT_FAILED
    return VisitOutcome.PROTOCOL_ERROR


def error_visit(
    host: str, address: str | None, exc: SmtpError, outcome: VisitOutcome | None = None
) -> HostVisit:
    """The visit an SMTP error ended: its stage is kept as data, and in the audit's words."""
    kind = error_outcome(exc) if outcome is None else outcome
    return HostVisit(host, address, kind, f"{exc.stage}: {exc.reason}", stage=exc.stage)


def open_failure_visit(host: str, address: str | None, exc: SmtpError) -> HostVisit:
    """The visit when no session could be opened (connect, greeting, EHLO, STARTTLS)."""
    if isinstance(exc, SmtpRejected) and exc.stage in ("greeting", "ehlo"):
        classify = classify_greeting if exc.stage == "greeting" else classify_ehlo
        # A refusal of *us* (blocklist, 5.7.x) must never read as an answer about the host.
        outcome = {
            SessionVerdict.POLICY_BLOCKED: VisitOutcome.POLICY_BLOCKED,
            SessionVerdict.THROTTLED: VisitOutcome.THROTTLED,
        }.get(classify(exc.reply), VisitOutcome.GREETING_REJECTED)
        visit = error_visit(host, address, exc, outcome)
        # "421 4.7.0 Too many connections from your IP" is about our pace; "421 4.3.2
        # Service not available" is about the server (docs/design.md, "Whose fault").
        visit.pace = outcome is VisitOutcome.THROTTLED and about_pace(exc.reply)
        return visit
    return error_visit(host, address, exc)


def broken_visit(
    host: str, address: str, exc: SmtpError, session: SmtpSession, reused: bool, progress: int
) -> HostVisit:
    """A session that broke off mid-conversation. Dropped or silent after its greeting, it
    ended the session, not the domain: the domain goes on from the same question (`progress`:
    questions this visit moved on before). Any other SMTP error is its own outcome."""
    if not isinstance(exc, SmtpDisconnected | SmtpTimeout):
        visit = error_visit(host, address, exc)
        visit.reused_session = reused
        return visit
    visit = error_visit(host, address, exc, VisitOutcome.SESSION_ENDED)
    visit.replies = transcript_lines(session)
    visit.tls, visit.reused_session = session.tls, reused
    visit.progress = max(0, progress)
    return visit


def conversation_visit(
    host: str,
    address: str,
    result: ConversationResult,
    conn: PooledSession,
    *,
    reused: bool,
    retry_in: float,
) -> HostVisit:
    return HostVisit(
        host,
        address,
        result.outcome,
        result.detail,
        result.replies,
        tls=conn.session.tls,
        reused_session=reused,
        progress=result.progress,
        pace=result.pace,
        budget_spent=result.budget_spent,
        dha_paused=result.dha_paused,
        tls_note=conn.tls_note,
        retry_in=retry_in,
    )


def open_pool_session(
    connector: Connector,
    address: str,
    settings: PoolSettings,
    starttls: Literal["opportunistic", "never"],
    ssl_context: ssl.SSLContext | None,
    watch: StepWatch | None = None,
) -> contextlib.AbstractAsyncContextManager[SmtpSession]:
    return open_session(
        connector,
        address,
        settings.port,
        helo_name=settings.helo_name,
        connect_timeout=settings.connect_timeout,
        command_timeout=settings.command_timeout,
        quit_timeout=settings.quit_timeout,
        starttls=starttls,
        ssl_context=ssl_context,
        watch=watch,
    )


def timed(visit: HostVisit, started: float, waited: float = 0.0) -> HostVisit:
    """Time at the host: since the worker took the request, less our own limits' waits."""
    visit.elapsed = trio.current_time() - started - waited
    return visit


def transcript_lines(session: SmtpSession, last: int = 4) -> list[str]:
    """The last exchanges of a session that died mid-conversation, for the audit trail."""
    lines = []
    for entry in session.transcript[-last:]:
        code = "" if entry.code is None else f"{entry.code} "
        lines.append(f"{entry.command or entry.stage} -> {code}{entry.text[:100]}".rstrip())
    return lines
