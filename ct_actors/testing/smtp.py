"""SMTP servers on in-memory streams: a scripted one and a rule-driven one.

`ScriptedServer` plays a fixed script per connection, for tests of the SMTP client and session
(the exact dialogue: which bytes, in which order, TLS)::

    script = [
        *opening(extensions=("PIPELINING", "ENHANCEDSTATUSCODES")),
        Expect("MAIL FROM:"), reply(250, "2.1.0 Ok"),
        Expect("RCPT TO:<nobody@example.com>"), reply(550, "5.1.1 User unknown"),
        *closing(),
    ]
    async with trio.open_nursery() as nursery:
        connector = ScriptedConnector(nursery, script)
        async with open_session(connector, "192.0.2.1", 25, ...) as session: ...

`Expect` fails loudly (AssertionError in the server task, which fails the test through the
nursery) when the client sends something else, or closes early. When the script runs out the
server keeps reading (and recording) until the client closes.

`MailHost` answers whatever the client asks, by rules, for tests of the pools and the probe:
which local parts exist, a catch-all, greylisting, a per-transaction recipient limit,
per-address reply overrides, dropping a connection at a given command. Every line it reads is
recorded with its virtual receive time and session number, and it counts concurrent sessions,
so tests can assert exact command sequences, timelines and concurrency limits (its network is
`MailHostNet`). `HELO`, `MAIL_FROM`, `EHLO`, `MAIL`, `rcpt()` and `anon()` spell the command
lines it records for the identity the actor tests configure.

Both wait with `trio.sleep` only, so they run under `MockClock(autojump_threshold=0)` with
exact virtual times.
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import trio

from ct_actors.dns.types import MxHost


@dataclass(frozen=True, slots=True)
class Send:
    """Write these bytes as they are (use `reply()` to build well-formed replies)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Expect:
    """Read one line; it must start with `prefix` (case-insensitive)."""

    prefix: str


@dataclass(frozen=True, slots=True)
class Sleep:
    seconds: float


@dataclass(frozen=True, slots=True)
class Close:
    """Close the connection now (the client sees EOF)."""


@dataclass(frozen=True, slots=True)
class Hang:
    """Never answer again: read and record lines until the client closes."""


@dataclass(frozen=True, slots=True)
class StartTls:
    """Become the server side of a TLS handshake on this connection."""

    context: ssl.SSLContext


Step = Send | Expect | Sleep | Close | Hang | StartTls


def reply(code: int, *lines: str, bare_lf: bool = False) -> Send:
    """A reply with one line per argument (``250-a``, ``250 b``); no argument: just the code."""
    texts = lines or ("",)
    eol = "\n" if bare_lf else "\r\n"
    out = []
    for i, text in enumerate(texts):
        sep = " " if i == len(texts) - 1 else "-"
        out.append(f"{code}{sep}{text}".rstrip(" ") + eol)
    return Send("".join(out).encode("utf-8"))


def opening(
    greeting: str = "mx.test ESMTP",
    extensions: Iterable[str] = ("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES"),
    *,
    ehlo_prefix: str = "EHLO ",
) -> list[Step]:
    """220 greeting, then EHLO answered with the given extensions."""
    return [
        reply(220, greeting),
        Expect(ehlo_prefix),
        reply(250, "mx.test Hello", *extensions),
    ]


def closing() -> list[Step]:
    """QUIT answered with 221, then the server closes."""
    return [Expect("QUIT"), reply(221, "2.0.0 Bye"), Close()]


class ScriptedServer:
    def __init__(self, script: Sequence[Step]) -> None:
        self.script = list(script)
        self.received: list[str] = []
        self.tls = False
        self.finished = trio.Event()
        self._buf = bytearray()

    async def run(self, stream: trio.abc.Stream) -> None:
        try:
            for step in self.script:
                if isinstance(step, Send):
                    await stream.send_all(step.data)
                elif isinstance(step, Expect):
                    line = await self._readline(stream)
                    if line is None:
                        raise AssertionError(f"client closed while server expected {step.prefix!r}")
                    if not line.upper().startswith(step.prefix.upper()):
                        raise AssertionError(f"server expected {step.prefix!r}, got {line!r}")
                elif isinstance(step, Sleep):
                    await trio.sleep(step.seconds)
                elif isinstance(step, Close):
                    return
                elif isinstance(step, Hang):
                    break
                else:
                    ssl_stream = trio.SSLStream(stream, step.context, server_side=True)
                    await ssl_stream.do_handshake()
                    stream = ssl_stream
                    self.tls = True
            while await self._readline(stream) is not None:
                pass
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass  # the client went away while we were sending
        finally:
            await trio.aclose_forcefully(stream)
            self.finished.set()

    async def _readline(self, stream: trio.abc.Stream) -> str | None:
        line = await _read_line(self._buf, stream)
        if line is not None:
            self.received.append(line)
        return line


async def _read_line(buf: bytearray, stream: trio.abc.ReceiveStream) -> str | None:
    """The next line from `stream` without its CRLF (None at EOF); `buf` keeps what was read
    past it, for the next call."""
    while (nl := buf.find(b"\n")) < 0:
        data = await stream.receive_some(65536)
        if not data:
            return None
        buf += data
    raw = bytes(buf[: nl + 1])
    del buf[: nl + 1]
    return raw.rstrip(b"\r\n").decode("utf-8", "replace")


# --- a rule-driven mail host -----------------------------------------------------------------

HELO = "probe.ct-actors.test"
MAIL_FROM = "bounce@ct-actors.test"

_CATCHALL_RE = re.compile(r"ct-probe-[0-9a-f]{20}")

RcptRule = Callable[[str], tuple[int, str] | None]


class SessionCount(Protocol):
    """The network's count of open sessions, across its hosts (`MailHostNet`)."""

    active: int
    max_active: int


def anon(line: str) -> str:
    """Replace the random catch-all probe token so command sequences can be compared."""
    return _CATCHALL_RE.sub("ct-probe-X", line)


@dataclass(frozen=True, slots=True)
class Event:
    time: float
    session: int  # 1-based, per host, in connection order
    line: str  # the command as received, without CRLF


@dataclass(eq=False)
class MailHost:
    """One fake MX host.

    Reply order for RCPT: `drop`, greylisting, the recipient limit, `rcpt_rule`, then
    `mailboxes` / `catchall` (250) or 550 5.1.1. Every reply comes `latency` seconds after the
    command was read (the greeting `latency` seconds after the connection). After any 421 reply
    the server closes the connection, as real servers do.
    """

    name: str
    address: str
    latency: float = 0.25
    refuse: bool = False
    connect_delay: float = 0.0  # math.inf: black-holed SYN
    greeting: tuple[int, str] = (220, "mx.test ESMTP")
    mailboxes: frozenset[str] = frozenset()  # local parts that exist
    catchall: bool = False
    rcpt_rule: RcptRule | None = None  # local part -> reply, or None for the default
    rcpt_limit: int | None = None  # 452 4.5.3 past this many RCPTs in one transaction
    greylist: float | None = None  # seconds an address stays greylisted (math.inf: forever)
    drop: dict[int, str] = field(default_factory=dict)  # session -> command prefix: close there
    # Postfix's smtpd_hard_error_limit: once a connection has this many rejected commands,
    # the next command gets "421 4.7.0 <host> Error: too many errors" and the close.
    error_limit: int | None = None
    # Offers STARTTLS, says 220, then answers the ClientHello with a fatal handshake_failure
    # alert (RFC 8446 §6.2): a server whose TLS stack cannot talk to ours.
    tls_broken: bool = False
    quit_latency: float | None = None  # seconds before QUIT is answered (math.inf: never)
    events: list[Event] = field(default_factory=list)
    connects: list[float] = field(default_factory=list)  # connection attempt times
    sessions: int = 0
    active: int = 0
    max_active: int = 0
    _first_seen: dict[str, float] = field(default_factory=dict)

    @property
    def mx(self) -> MxHost:
        return self.as_mx(10)

    def as_mx(self, preference: int) -> MxHost:
        return MxHost(self.name, preference, (self.address,))

    def commands(self, session: int | None = None) -> list[str]:
        return [anon(e.line) for e in self.events if session is None or e.session == session]

    def times(self, prefix: str) -> list[float]:
        return [e.time for e in self.events if e.line.upper().startswith(prefix.upper())]

    async def serve(self, stream: trio.abc.Stream, net: SessionCount) -> None:
        self.sessions += 1
        session = self.sessions
        self.active += 1
        net.active += 1
        self.max_active = max(self.max_active, self.active)
        net.max_active = max(net.max_active, net.active)
        conv = _Conversation(self, session, stream)
        try:
            await conv.run()
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            self.active -= 1
            net.active -= 1
            await trio.aclose_forcefully(stream)

    def rcpt_reply(self, address: str, in_transaction: int) -> tuple[int, str]:
        local = address.partition("@")[0].lower()
        if self.greylist is not None:
            first = self._first_seen.setdefault(address.lower(), trio.current_time())
            if trio.current_time() - first < self.greylist:
                return 451, "4.7.1 Greylisted, try again later"
        if self.rcpt_limit is not None and in_transaction > self.rcpt_limit:
            return 452, "4.5.3 Too many recipients"
        if self.rcpt_rule is not None and (ruled := self.rcpt_rule(local)) is not None:
            return ruled
        if self.catchall or local in self.mailboxes:
            return 250, "2.1.5 Ok"
        return 550, "5.1.1 User unknown"


class _Conversation:
    def __init__(self, host: MailHost, session: int, stream: trio.abc.Stream) -> None:
        self.host = host
        self.session = session
        self.stream = stream
        self.buf = bytearray()
        self.rcpts = 0
        self.errors = 0  # rejected commands on this connection; RSET does not reset it

    async def send(self, code: int, *lines: str) -> bool:
        """Reply after the host's latency; False when the server closes after it (421)."""
        await trio.sleep(self.host.latency)
        texts = lines or ("",)
        out = []
        for i, text in enumerate(texts):
            sep = " " if i == len(texts) - 1 else "-"
            out.append(f"{code}{sep}{text}".rstrip() + "\r\n")
        await self.stream.send_all("".join(out).encode())
        return code != 421

    async def run(self) -> None:
        host = self.host
        if not await self.send(*host.greeting) or host.greeting[0] >= 400:
            return
        while (line := await _read_line(self.buf, self.stream)) is not None:
            host.events.append(Event(trio.current_time(), self.session, line))
            drop = host.drop.get(self.session)
            if drop is not None and line.upper().startswith(drop.upper()):
                return  # close without a reply
            verb = line.split(" ", 1)[0].upper()
            if host.error_limit is not None and self.errors >= host.error_limit:
                await self.send(421, f"4.7.0 {host.name} Error: too many errors")
                return
            if verb in ("EHLO", "HELO"):
                extensions = ["PIPELINING", "ENHANCEDSTATUSCODES"]
                if host.tls_broken:
                    extensions.append("STARTTLS")
                ok = await self.send(250, f"{host.name} Hello", *extensions)
            elif verb == "STARTTLS" and host.tls_broken:
                await self.send(220, "2.0.0 Ready to start TLS")
                await self.stream.receive_some(65536)  # the ClientHello
                await self.stream.send_all(b"\x15\x03\x01\x00\x02\x02\x28")
                return
            elif verb == "MAIL":
                self.rcpts = 0
                ok = await self.send(250, "2.1.0 Ok")
            elif verb == "RCPT":
                self.rcpts += 1
                address = line.partition("<")[2].rstrip(">")
                code, text = host.rcpt_reply(address, self.rcpts)
                self.errors += code >= 400
                ok = await self.send(code, text)
            elif verb == "RSET":
                self.rcpts = 0
                ok = await self.send(250, "2.0.0 Ok")
            elif verb == "QUIT":
                if host.quit_latency is not None:
                    await trio.sleep(host.quit_latency)
                await self.send(221, "2.0.0 Bye")
                return
            else:
                ok = await self.send(502, "5.5.2 Command not implemented")
            if not ok:
                return


def rcpt(local: str, domain: str) -> str:
    return f"RCPT TO:<{local}@{domain}>"


MAIL = f"MAIL FROM:<{MAIL_FROM}>"
EHLO = f"EHLO {HELO}"
