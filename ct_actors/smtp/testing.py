"""A scripted SMTP server on in-memory streams, for tests of anything that speaks SMTP.

A script is a list of steps run in order against one connection::

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
server keeps reading (and recording) until the client closes. Everything is trio-only, so it runs
under `MockClock(autojump_threshold=0)` with exact virtual times.
"""

from __future__ import annotations

import errno
import ssl
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import trio
import trio.testing


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
        while (nl := self._buf.find(b"\n")) < 0:
            data = await stream.receive_some(65536)
            if not data:
                return None
            self._buf += data
        raw = bytes(self._buf[: nl + 1])
        del self._buf[: nl + 1]
        line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
        self.received.append(line)
        return line


class ScriptedConnector:
    """A `Connector` whose every connect starts the next script's server in `nursery`.

    `connect_delay` (seconds, may be `math.inf`) models a slow or black-holed SYN;
    `connect_error` a refused connection. With no script left, connect is refused.
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        *scripts: Sequence[Step],
        connect_delay: float = 0.0,
        connect_error: OSError | None = None,
    ) -> None:
        self._nursery = nursery
        self._scripts: deque[Sequence[Step]] = deque(scripts)
        self.connect_delay = connect_delay
        self.connect_error = connect_error
        self.attempts: list[tuple[str, int]] = []
        self.servers: list[ScriptedServer] = []

    async def connect(self, address: str, port: int) -> trio.abc.Stream:
        self.attempts.append((address, port))
        if self.connect_delay > 0:
            await trio.sleep(self.connect_delay)
        else:
            await trio.lowlevel.checkpoint()
        if self.connect_error is not None:
            raise self.connect_error
        if not self._scripts:
            raise OSError(errno.ECONNREFUSED, "no scripted server left")
        server = ScriptedServer(self._scripts.popleft())
        self.servers.append(server)
        client_stream, server_stream = trio.testing.memory_stream_pair()
        self._nursery.start_soon(server.run, server_stream)
        return client_stream
