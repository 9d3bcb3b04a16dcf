"""One SMTP session on an open stream (`SmtpSession`): the handshake, the transaction commands
(RSET/MAIL/RCPT, pipelined where offered), QUIT, and the transcript. Opening one (connect,
greeting, EHLO, STARTTLS) is `ct_actors.smtp.client`, whose docstring states the rules both
follow."""

from __future__ import annotations

import contextlib
import functools
import ssl
from collections import deque
from collections.abc import Callable, Sequence
from typing import Literal

import trio

from ct_actors.net.tcp_stream import TcpStream
from ct_actors.smtp.errors import (
    SmtpCommandRefused,
    SmtpDisconnected,
    SmtpError,
    SmtpGreetingRejected,
    SmtpProtocolError,
    SmtpRejected,
    SmtpTimeout,
    SmtpTlsError,
    describe_failure,
)
from ct_actors.smtp.reply import (
    ReplyParser,
    format_command,
    mail_from_arg,
    parse_extensions,
    rcpt_to_arg,
)
from ct_actors.smtp.step_watch import SLOW_EVICTION, StepWatch, WatchedStream
from ct_actors.smtp.tls import opportunistic_tls_context
from ct_actors.smtp.types import TEXT_LIMIT, Reply, SessionStatistics, Stage, TranscriptEntry

StartTlsMode = Literal["opportunistic", "never"]


RECEIVE_SIZE = 65536


DEFAULT_QUIT_TIMEOUT = 2.0


_HELO_FALLBACK_CODES = frozenset({500, 502})  # "command unrecognized/not implemented"


TransactionVerb = Literal["RSET", "MAIL", "RCPT"]


_TRANSACTION: dict[str, tuple[Stage, str]] = {
    "RSET": ("rset", "RSET"),
    "MAIL": ("mail", "MAIL"),
    "RCPT": ("rcpt", "RCPT"),
}


def _argument(verb: str, arg: str) -> str | None:
    if verb == "MAIL":
        return mail_from_arg(arg)
    if verb == "RCPT":
        return rcpt_to_arg(arg)
    return None


class SmtpSession:
    """One connected conversation. Build it with `open_session`, not directly."""

    def __init__(
        self,
        stream: trio.abc.Stream,
        *,
        address: str,
        port: int,
        helo_name: str,
        command_timeout: float,
        quit_timeout: float,
        started_at: float,
        transcript: list[TranscriptEntry] | None = None,
        watch: StepWatch | None = None,
    ) -> None:
        self.address = address
        self.port = port
        self.helo_name = helo_name
        self.command_timeout = command_timeout
        self.quit_timeout = quit_timeout
        self.greeting: Reply | None = None
        self.ehlo_reply: Reply | None = None
        self.esmtp = False
        self.extensions: dict[str, str] = {}
        self.tls = False
        self.transcript: list[TranscriptEntry] = transcript if transcript is not None else []
        self._stream: trio.abc.Stream = stream
        self._watch = watch  # None under TLS: then a WatchedStream under the TLS layer has it
        self._parser = ReplyParser()
        self._pending: deque[Reply] = deque()
        self._started_at = started_at
        self._commands = 0
        self._bytes_sent = 0
        self._bytes_received = 0
        self._busy = False
        self._broken: str | None = None
        self._server_closing = False
        self._closed = False

    # -- public commands ---------------------------------------------------------------------

    async def mail_from(self, sender: str) -> Reply:
        """MAIL FROM:<sender>; an empty sender sends the null reverse-path <>."""
        return await self._command("mail", "MAIL", functools.partial(mail_from_arg, sender))

    async def rcpt(self, address: str) -> Reply:
        return await self._command("rcpt", "RCPT", functools.partial(rcpt_to_arg, address))

    async def rset(self) -> Reply:
        return await self._command("rset", "RSET", None)

    @property
    def pipelining(self) -> bool:
        """The server offered PIPELINING (RFC 2920) in its EHLO reply."""
        return self.esmtp and "PIPELINING" in self.extensions

    async def batch(self, commands: Sequence[tuple[TransactionVerb, str]]) -> list[Reply]:
        """RSET / MAIL FROM / RCPT TO commands in one write where the server offers PIPELINING
        (RFC 2920 §3.1: these "can all appear anywhere in a pipelined command group"), their
        replies read in order; without it, in lock-step. Fewer replies than commands after a
        421 (the server closes and answers nothing more). The argument is MAIL's sender or
        RCPT's address (empty for RSET)."""
        lines: list[tuple[Stage, bytes]] = []
        for verb, arg in commands:
            stage, text = _TRANSACTION[verb]
            try:
                lines.append((stage, format_command(text, _argument(verb, arg))))
            except SmtpCommandRefused as exc:
                self._record(stage, text, None, f"refused: {exc.reason}", trio.current_time())
                raise
        if len(lines) > 1 and self.pipelining:
            return await self._pipeline(lines)
        replies: list[Reply] = []
        for stage, line in lines:
            reply = await self._exchange(stage, line, self.command_timeout)
            replies.append(reply)
            if reply.code == 421:
                break
        return replies

    async def noop(self) -> Reply:
        return await self._command("noop", "NOOP", None)

    @property
    def usable(self) -> bool:
        """False once closed, broken, or after the server said 421 (closing)."""
        return not (self._closed or self._broken is not None or self._server_closing)

    def statistics(self) -> SessionStatistics:
        return SessionStatistics(
            address=self.address,
            port=self.port,
            started_at=self._started_at,
            duration=trio.current_time() - self._started_at,
            commands=self._commands,
            bytes_sent=self._bytes_sent,
            bytes_received=self._bytes_received,
            esmtp=self.esmtp,
            tls=self.tls,
            broken=self._broken,
        )

    async def aclose(self) -> None:
        """QUIT (bounded by `quit_timeout`, shielded from outer cancellation) and close. Never
        hangs; never raises for a dead connection; idempotent."""
        if self._closed:
            return
        try:
            if self.usable and not self._busy:
                await self._last_words([("quit", format_command("QUIT"))])
        finally:
            self._closed = True
            await self._close_stream()

    async def retire(self) -> Reply | None:
        """RSET, QUIT and close, bounded like `aclose`; the RSET reply, or None when the session
        was unusable or the reply did not come in time. Never raises for a dead connection."""
        if self._closed:
            return None
        try:
            if not self.usable or self._busy:
                return None
            rset: tuple[Stage, bytes] = ("rset", format_command("RSET"))
            quit_: tuple[Stage, bytes] = ("quit", format_command("QUIT"))
            if self.pipelining:
                replies = await self._last_words([rset, quit_])
            else:
                replies = await self._last_words([rset])
                if replies and replies[0].code != 421:
                    await self._last_words([quit_])
            return replies[0] if replies else None
        finally:
            self._closed = True
            await self._close_stream()

    async def _last_words(self, lines: list[tuple[Stage, bytes]]) -> list[Reply]:
        """A closing exchange: shielded from outer cancellation, within `quit_timeout`."""
        limit = min(self.quit_timeout, self.command_timeout)
        started = trio.current_time()
        replies: list[Reply] = []
        with (
            trio.move_on_after(self.quit_timeout, shield=True) as scope,
            contextlib.suppress(SmtpError),  # already recorded in the transcript
        ):
            if len(lines) == 1:
                replies.append(await self._exchange(lines[0][0], lines[0][1], limit))
            else:
                await self._pipeline(lines, limit, replies)
        if scope.cancelled_caught:
            stage, line = lines[min(len(replies), len(lines) - 1)]
            note = f"timeout after {limit:g}s"
            self._record(stage, line[:-2].decode("ascii"), None, note, started)
        return replies

    # -- handshake (used by open_session) ------------------------------------------------------

    async def _handshake(
        self,
        *,
        greeting_timeout: float,
        starttls: StartTlsMode,
        ssl_context: ssl.SSLContext | None,
        server_hostname: str | None,
    ) -> None:
        greeting = await self._exchange("greeting", None, greeting_timeout)
        self.greeting = greeting
        if not greeting.is_positive:
            raise SmtpGreetingRejected(greeting)
        await self._hello()
        if starttls == "opportunistic" and "STARTTLS" in self.extensions:
            await self._starttls(ssl_context or opportunistic_tls_context(), server_hostname)

    async def _hello(self) -> None:
        reply = await self._command("ehlo", "EHLO", self.helo_name)
        if reply.is_positive:
            self.esmtp = True
            self.extensions = parse_extensions(reply)
        elif reply.code in _HELO_FALLBACK_CODES:
            reply = await self._command("ehlo", "HELO", self.helo_name)
            if not reply.is_positive:
                raise SmtpRejected("ehlo", reply)
            self.esmtp = False
            self.extensions = {}
        else:
            raise SmtpRejected("ehlo", reply)
        self.ehlo_reply = reply

    async def _starttls(self, context: ssl.SSLContext, server_hostname: str | None) -> None:
        reply = await self._command("starttls", "STARTTLS", None)
        if reply.code == 421:
            raise SmtpRejected("starttls", reply)
        if reply.code != 220:
            return  # RFC 3207: e.g. 454 TLS not available; opportunistic, so carry on in clear
        if self._pending or self._parser.has_partial:
            self._broken = "data after STARTTLS reply"
            raise SmtpProtocolError("server sent data after its STARTTLS reply", "starttls")
        started = trio.current_time()
        transport = self._stream
        if self._watch is not None:
            # The TLS layer reads and writes records the session does not see one by one: the
            # watch moves under it, onto the transport.
            transport = WatchedStream(transport, self._watch)
            self._watch = None
        ssl_stream = trio.SSLStream(transport, context, server_hostname=server_hostname)
        ok = False
        try:
            with trio.move_on_after(self.command_timeout) as scope:
                await ssl_stream.do_handshake()
                ok = True
            if scope.cancelled_caught:
                raise SmtpTimeout("starttls", self.command_timeout)
        except trio.BrokenResourceError as exc:
            err = SmtpTlsError(describe_failure(exc))
            self._fail("starttls", "TLS handshake", err, started)
            raise err from None
        except SmtpTimeout as err:
            self._fail("starttls", "TLS handshake", err, started)
            raise
        finally:
            if not ok and self._broken is None:
                self._broken = "interrupted TLS handshake"
        self._stream = ssl_stream
        self.tls = True
        version = ssl_stream.version()
        cipher = ssl_stream.cipher()
        detail = f"{version} {cipher[0]}" if cipher else str(version)
        self._record("starttls", "TLS handshake", None, detail, started)
        # RFC 3207 §4.2: forget everything learnt before TLS and EHLO again.
        self.esmtp = False
        self.extensions = {}
        self.ehlo_reply = None
        await self._hello()

    # -- the one exchange primitive -----------------------------------------------------------

    async def _command(self, stage: Stage, verb: str, arg: str | Callable[[], str] | None) -> Reply:
        try:
            line = format_command(verb, arg() if callable(arg) else arg)
        except SmtpCommandRefused as exc:
            self._record(stage, verb, None, f"refused: {exc.reason}", trio.current_time())
            raise
        return await self._exchange(stage, line, self.command_timeout)

    async def _exchange(self, stage: Stage, line: bytes | None, limit: float) -> Reply:
        """Send `line` (None: just read, for the greeting) and read exactly one reply."""
        self._check_usable(stage)
        command = line[:-2].decode("ascii") if line is not None else None
        started = trio.current_time()
        self._busy = True
        ok = False
        try:
            reply = await self._step(stage, line, limit)
            ok = True
        except SmtpError as exc:
            self._fail(stage, command, exc, started)
            raise
        finally:
            self._busy = False
            if not ok and self._broken is None:
                self._broken = "interrupted command"  # cancelled mid-command
        if reply.code == 421:
            self._server_closing = True
        self._record(stage, command, reply, None, started)
        return reply

    async def _pipeline(
        self,
        lines: list[tuple[Stage, bytes]],
        limit: float | None = None,
        replies: list[Reply] | None = None,
    ) -> list[Reply]:
        """Send every line in one write, then read one reply per line, in order; stops after
        a 421. Each command has `limit` (default `command_timeout`) for its reply. Replies are
        appended to `replies` as they come (kept when a later one times out)."""
        limit = self.command_timeout if limit is None else limit
        first_stage = lines[0][0]
        self._check_usable(first_stage)
        started = trio.current_time()
        self._busy = True
        replies = [] if replies is None else replies
        ok = False
        unsolicited: Reply | None = None
        try:
            unsolicited = self._unsolicited(first_stage)
            if unsolicited is not None:
                replies.append(unsolicited)  # a queued 421: the server is closing
            else:
                group: bytes | None = b"".join(line for _, line in lines)
                self._commands += len(lines) - 1
                for stage, _ in lines:
                    reply = await self._step(stage, group, limit)
                    group = None
                    self._answered(lines[len(replies)], reply, started)
                    replies.append(reply)
                    if reply.code == 421:
                        break
            ok = True
        except SmtpError as exc:
            stage, line = lines[len(replies)]
            self._fail(stage, line[:-2].decode("ascii"), exc, started)
            raise
        finally:
            self._busy = False
            if not ok and self._broken is None:
                self._broken = "interrupted command"
        if unsolicited is not None:
            self._answered(lines[0], unsolicited, started)
        return replies

    def _answered(self, sent: tuple[Stage, bytes], reply: Reply, started: float) -> None:
        if reply.code == 421:
            self._server_closing = True
        self._record(sent[0], sent[1][:-2].decode("ascii"), reply, None, started)

    def _check_usable(self, stage: Stage) -> None:
        if self._closed:
            raise SmtpDisconnected(stage, "session closed")
        if self._broken is not None:
            raise SmtpDisconnected(stage, f"session unusable after {self._broken}")
        if self._server_closing:
            raise SmtpDisconnected(stage, "server sent 421 and is closing")
        if self._busy:
            raise trio.BusyResourceError("another task is using this SMTP session")

    def _unsolicited(self, stage: Stage) -> Reply | None:
        """A reply read before we sent a command: a 421 (the server closing) answers the
        command; anything else breaks the framing."""
        if not self._pending:
            return None
        unsolicited = self._pending.popleft()
        if unsolicited.code == 421:
            return unsolicited
        raise SmtpProtocolError(f"unsolicited reply {unsolicited.code} before command", stage)

    async def _send(self, stage: Stage, data: bytes) -> None:
        if self._watch is not None:
            self._watch.step()
        try:
            await self._stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise SmtpDisconnected(stage, describe_failure(exc)) from None
        self._commands += 1
        self._bytes_sent += len(data)

    async def _read(self, stage: Stage) -> None:
        try:
            data = await self._stream.receive_some(RECEIVE_SIZE)
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            raise SmtpDisconnected(stage, describe_failure(exc)) from None
        if not data:
            raise SmtpDisconnected(stage)
        if self._watch is not None:
            self._watch.progress()
        self._bytes_received += len(data)
        try:
            self._pending.extend(self._parser.feed(bytes(data)))
        except SmtpProtocolError as exc:
            raise SmtpProtocolError(exc.reason, stage) from None

    async def _step(self, stage: Stage, data: bytes | None, limit: float) -> Reply:
        """Send `data` (None: nothing to send: the greeting, or the next reply of a pipelined
        group) and read one reply, all within `limit` seconds.

        One cancel scope per step, not one per read: its deadline is the earlier of the step's
        limit and the watch's moment (a host keeping us waiting too long, `StepWatch`). When the
        watch's moment comes first, the watch judges: go on reading (a cancelled read consumed
        nothing) or end the session now."""
        pending = self._pending
        if data is None:
            if pending:
                return pending.popleft()  # pipelined replies often arrive together
        elif (unsolicited := self._unsolicited(stage)) is not None:
            return unsolicited  # the server announced it is closing; that is our answer
        deadline = trio.current_time() + limit
        watch = self._watch
        while True:
            with trio.CancelScope(deadline=deadline) as scope:
                if data is not None:
                    await self._send(stage, data)
                    data = None
                while not pending:
                    if watch is not None:
                        scope.deadline = min(deadline, watch.deadline())
                    await self._read(stage)
                return pending.popleft()
            if data is not None or watch is None or trio.current_time() >= deadline:
                raise SmtpTimeout(stage, limit)
            if not watch.judge():
                raise SmtpDisconnected(stage, SLOW_EVICTION)

    # -- bookkeeping ---------------------------------------------------------------------------

    def _fail(self, stage: Stage, command: str | None, exc: SmtpError, started: float) -> None:
        if self._broken is None:
            self._broken = f"{type(exc).__name__} at {stage}"
        self._record(stage, command, None, exc.reason, started)

    def _record(
        self,
        stage: Stage,
        command: str | None,
        reply: Reply | None,
        note: str | None,
        started: float,
    ) -> None:
        if reply is not None:
            code: int | None = reply.code
            enhanced = str(reply.enhanced) if reply.enhanced is not None else None
            text = reply.text[:TEXT_LIMIT]
        else:
            code, enhanced, text = None, None, (note or "")[:TEXT_LIMIT]
        elapsed = trio.current_time() - started
        self.transcript.append(
            TranscriptEntry(stage, command, code, enhanced, text, started, elapsed)
        )

    async def _close_stream(self) -> None:
        if isinstance(self._stream, TcpStream):
            self._stream.close()  # nothing to say at close on plain TCP: no checkpoint needed
            return
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            await trio.aclose_forcefully(self._stream)
