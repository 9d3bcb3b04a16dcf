"""Exceptions of the SMTP client.

Every exception carries `.stage` (where in the conversation it happened) and a short `.reason`
string meant for audit rows and the canonical log line. None of them is a verdict about a
mailbox: a reply the server *did* send is returned as a `Reply`, never raised, except for a
rejected greeting or EHLO/HELO, after which there is no session to return.
"""

from __future__ import annotations

import errno
import ssl

import trio

from ct_actors.smtp.types import Reply, Stage, TranscriptEntry


class SmtpError(Exception):
    """Base class. `stage` and `reason` are stable, short and safe to store."""

    def __init__(self, stage: Stage, reason: str) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage: Stage = stage
        self.reason = reason
        # Filled in by `open_session` when the session dies before the caller ever sees it, so
        # the audit trail of a failed greeting/EHLO/STARTTLS is not lost.
        self.transcript: tuple[TranscriptEntry, ...] = ()


class SmtpConnectError(SmtpError):
    """The TCP connection could not be opened (refused, unreachable, reset during connect).

    `SmtpConnectError(reason)`; `SmtpConnectError("connect", reason)` is accepted too, for
    symmetry with the base class.
    """

    def __init__(self, *args: str) -> None:
        if len(args) == 1:
            reason = args[0]
        elif len(args) == 2 and args[0] == "connect":
            reason = args[1]
        else:
            raise TypeError("SmtpConnectError(reason) or SmtpConnectError('connect', reason)")
        super().__init__("connect", reason)


class SmtpTimeout(SmtpError):
    """No complete reply (or no connection) within the allotted time."""

    def __init__(self, stage: Stage, timeout: float) -> None:
        super().__init__(stage, f"timeout after {timeout:g}s")
        self.timeout = timeout


class SmtpDisconnected(SmtpError):
    """The server closed (or reset) the connection while we were waiting on it, or the session
    is no longer usable because of an earlier error."""

    def __init__(self, stage: Stage, reason: str = "connection closed by server") -> None:
        super().__init__(stage, reason)


class SmtpProtocolError(SmtpError):
    """The server's bytes are not a well-formed SMTP reply (bad code, mixed codes in a
    multi-line reply, over-long line, too many lines, data pushed after STARTTLS...)."""

    def __init__(self, reason: str, stage: Stage = "reply") -> None:
        super().__init__(stage, reason)


class SmtpTlsError(SmtpError):
    """The STARTTLS handshake failed after the server agreed to it. The connection is unusable;
    a caller that wants to carry on retries on a new connection with starttls="never"."""

    def __init__(self, reason: str) -> None:
        super().__init__("starttls", reason)


class SmtpRejected(SmtpError):
    """A reply that makes the session impossible (greeting or EHLO+HELO refused).

    The reply itself is kept so the caller can classify it (`classify_greeting`/`classify_ehlo`).
    """

    def __init__(self, stage: Stage, reply: Reply) -> None:
        super().__init__(stage, f"{reply.code} {reply.text[:80]}".rstrip())
        self.reply = reply


class SmtpGreetingRejected(SmtpRejected):
    """The greeting was not 2xx (e.g. 421 busy, 554 no service): move on to the next MX host."""

    def __init__(self, reply: Reply) -> None:
        super().__init__("greeting", reply)


class SmtpCommandRefused(SmtpError, ValueError):
    """We refused to *send* a command: a forbidden verb (DATA, BDAT...) or an argument that would
    break the framing (CR, LF, other control characters, non-ASCII, too long). Raised before
    anything touches the wire, so the session stays usable."""

    def __init__(self, stage: Stage, reason: str) -> None:
        super().__init__(stage, reason)


def describe_failure(exc: BaseException) -> str:
    """A short stable reason for audit rows: errno name when there is one."""
    cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else None
    target = cause if cause is not None else exc
    if isinstance(target, ssl.SSLError):  # before OSError: its errno is an SSL_ERROR_* number
        return f"tls: {target.reason or type(target).__name__}"
    if isinstance(target, OSError) and target.errno is not None:
        return errno.errorcode.get(target.errno, str(target.errno))
    text = str(target)
    return (text or type(target).__name__)[:120]
