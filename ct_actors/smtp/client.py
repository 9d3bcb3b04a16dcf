"""The async shell around `reply`: opening one SMTP conversation over a `Connector` stream (the
session itself, `SmtpSession`, is `ct_actors.smtp.session`; it is re-exported here).

    async with open_session(connector, "192.0.2.25", 25, helo_name="probe.example.net",
                            connect_timeout=10, command_timeout=30) as session:
        await session.mail_from("bounce@example.net")
        reply = await session.rcpt("jane.doe@example.com")
        verdict = classify_rcpt(reply)

Rules of the shell:

* Replies are returned, never raised: a 550 to RCPT is data for `classify_rcpt`. The exceptions
  (`ct_actors.smtp.errors`) are for "no usable reply": timeout, EOF, reset, bad framing, or a
  greeting/EHLO refusal after which there is no session.
* Every step waits at most its timeout (connect: `connect_timeout`; greeting: `greeting_timeout`,
  default `command_timeout`; each command: `command_timeout`, covering send and reply). Time comes
  only from trio, so the whole conversation runs under `trio.testing.MockClock`.
* After a timeout, EOF, protocol error or cancellation mid-command the session is *broken*: a late
  reply could be mistaken for the next command's, so every later command raises
  `SmtpDisconnected` and `aclose` skips QUIT.
* There is no DATA. `format_command` refuses it, and nothing here would send it.
* `aclose` is bounded: QUIT under `trio.move_on_after(quit_timeout, shield=True)`, then a forceful
  close. It never raises for a broken or already-closed connection. `retire` is `aclose` with
  an RSET first, both in one write where PIPELINING is offered (RFC 2920 §3.1 lets QUIT end a
  group): the RSET reply tells whether the server had stopped taking commands (a 421 "too many
  errors" there teaches the host's limit), for one round trip instead of two.
* One task at a time per session; concurrent use raises `trio.BusyResourceError`.
* PIPELINING (RFC 2920) only where the server offers it, and only for the transaction commands
  RSET, MAIL FROM and RCPT TO (`batch`; the caller decides what goes together) and for RSET with
  QUIT (`retire`): one write, then the replies read one by one in order, each recorded against
  its own command. A 421 ends the reading (the server closes).

STARTTLS (RFC 3207) is opportunistic like MTA-to-MTA delivery: used when offered and the mode is
"opportunistic", with a context that does not verify certificates (there is no name to verify a
probe against, and a refused upgrade must not cost us the answer). A non-220 reply to STARTTLS
means "carry on in plaintext". Any bytes already buffered when the server says 220 are a
plaintext-injection attempt and end the session (`SmtpProtocolError`). After the handshake the
EHLO knowledge is discarded and EHLO is sent again.
"""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

import trio

from ct_actors.net.connector import Connector
from ct_actors.smtp.errors import (
    SmtpCommandRefused,
    SmtpConnectError,
    SmtpDisconnected,
    SmtpError,
    SmtpGreetingRejected,
    SmtpProtocolError,
    SmtpRejected,
    SmtpTimeout,
    SmtpTlsError,
    describe_failure,
)
from ct_actors.smtp.session import (
    DEFAULT_QUIT_TIMEOUT,
    SmtpSession,
    StartTlsMode,
)
from ct_actors.smtp.step_watch import StepWatch
from ct_actors.smtp.tls import opportunistic_tls_context
from ct_actors.smtp.types import TranscriptEntry

__all__ = [
    "DEFAULT_QUIT_TIMEOUT",
    "SmtpClient",
    "SmtpCommandRefused",
    "SmtpConnectError",
    "SmtpDisconnected",
    "SmtpError",
    "SmtpGreetingRejected",
    "SmtpProtocolError",
    "SmtpRejected",
    "SmtpSession",
    "SmtpTimeout",
    "SmtpTlsError",
    "StartTlsMode",
    "TranscriptEntry",
    "connect_session",
    "open_session",
    "opportunistic_tls_context",
]


async def connect_session(
    connector: Connector,
    address: str,
    port: int = 25,
    *,
    helo_name: str,
    connect_timeout: float,
    command_timeout: float,
    starttls: StartTlsMode = "opportunistic",
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    greeting_timeout: float | None = None,
    quit_timeout: float = DEFAULT_QUIT_TIMEOUT,
    watch: StepWatch | None = None,
) -> SmtpSession:
    """Connect, read the greeting, EHLO (HELO fallback), optional STARTTLS. The caller owns the
    returned session and must `aclose` it; prefer `open_session`. On failure the connection is
    closed and the exception carries the transcript so far (`exc.transcript`). `watch` times
    how long the host keeps each step waiting (`ct_actors.smtp.step_watch`); its first step,
    the greeting, starts when the connection is open."""
    if not helo_name or any(c.isspace() for c in helo_name):
        raise SmtpCommandRefused("ehlo", "helo_name must be a non-empty name without spaces")
    started = trio.current_time()
    transcript: list[TranscriptEntry] = []
    target = f"{address}:{port}"
    try:
        stream = await _connect(connector, address, port, connect_timeout)
    except SmtpError as exc:
        transcript.append(
            TranscriptEntry(
                "connect", target, None, None, exc.reason, started, trio.current_time() - started
            )
        )
        exc.transcript = tuple(transcript)
        raise
    transcript.append(
        TranscriptEntry(
            "connect", target, None, None, "connected", started, trio.current_time() - started
        )
    )
    if watch is not None:
        watch.step()
    session = SmtpSession(
        stream,
        address=address,
        port=port,
        helo_name=helo_name,
        command_timeout=command_timeout,
        quit_timeout=quit_timeout,
        started_at=started,
        transcript=transcript,
        watch=watch,
    )
    try:
        await session._handshake(
            greeting_timeout=command_timeout if greeting_timeout is None else greeting_timeout,
            starttls=starttls,
            ssl_context=ssl_context,
            server_hostname=server_hostname,
        )
    except SmtpError as exc:
        await session.aclose()
        exc.transcript = tuple(session.transcript)
        raise
    except BaseException:
        await session.aclose()
        raise
    return session


async def _connect(connector: Connector, address: str, port: int, limit: float) -> trio.abc.Stream:
    try:
        with trio.fail_after(limit):
            return await connector.connect(address, port)
    except trio.TooSlowError:
        raise SmtpTimeout("connect", limit) from None
    except OSError as exc:
        raise SmtpConnectError(describe_failure(exc)) from None


@asynccontextmanager
async def open_session(
    connector: Connector,
    address: str,
    port: int = 25,
    *,
    helo_name: str,
    connect_timeout: float,
    command_timeout: float,
    starttls: StartTlsMode = "opportunistic",
    ssl_context: ssl.SSLContext | None = None,
    server_hostname: str | None = None,
    greeting_timeout: float | None = None,
    quit_timeout: float = DEFAULT_QUIT_TIMEOUT,
    watch: StepWatch | None = None,
) -> AsyncIterator[SmtpSession]:
    """`connect_session` as an async context manager; QUIT and close on exit, always."""
    session = await connect_session(
        connector,
        address,
        port,
        helo_name=helo_name,
        connect_timeout=connect_timeout,
        command_timeout=command_timeout,
        starttls=starttls,
        ssl_context=ssl_context,
        server_hostname=server_hostname,
        greeting_timeout=greeting_timeout,
        quit_timeout=quit_timeout,
        watch=watch,
    )
    try:
        yield session
    finally:
        await session.aclose()


@dataclass(frozen=True, slots=True)
class SmtpClient:
    """Configuration bound once (from the daemon config), sessions opened per MX host."""

    connector: Connector
    helo_name: str
    connect_timeout: float = 10.0
    command_timeout: float = 30.0
    starttls: StartTlsMode = "opportunistic"
    ssl_context: ssl.SSLContext | None = None
    greeting_timeout: float | None = None
    quit_timeout: float = DEFAULT_QUIT_TIMEOUT

    def session(
        self, address: str, port: int = 25, *, server_hostname: str | None = None
    ) -> AbstractAsyncContextManager[SmtpSession]:
        return open_session(
            self.connector,
            address,
            port,
            helo_name=self.helo_name,
            connect_timeout=self.connect_timeout,
            command_timeout=self.command_timeout,
            starttls=self.starttls,
            ssl_context=self.ssl_context,
            server_hostname=server_hostname,
            greeting_timeout=self.greeting_timeout,
            quit_timeout=self.quit_timeout,
        )
