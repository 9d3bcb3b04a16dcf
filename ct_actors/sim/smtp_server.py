"""A small RFC 5321 server that plays one simulated MX host, quirks included.

Runs over any `trio.abc.Stream`, so the same code serves real loopback sockets and the
in-memory connector. All waiting is `trio.sleep`, which keeps it exact under `MockClock`.
"""

from __future__ import annotations

import random
import re

import trio

from ct_actors.sim.stats import RcptEvent, SimStats
from ct_actors.sim.world import Behaviour, SimHost, World

__all__ = ["DEFAULT_IDLE_TIMEOUT", "SimStats", "handle_session"]

DEFAULT_IDLE_TIMEOUT = 60.0
MAX_LINE = 4096  # RFC 5321 allows 512 for commands; be lenient, but bounded

_KNOWN_VERBS = frozenset(
    {"EHLO", "HELO", "MAIL", "RCPT", "RSET", "NOOP", "QUIT", "DATA", "VRFY", "EXPN", "STARTTLS"}
)
_MAIL_RE = re.compile(r"FROM:\s*<([^<>\s]*)>(?:\s+\S.*)?", re.IGNORECASE)
_RCPT_RE = re.compile(r"TO:\s*<([^<>\s]*)>(?:\s+\S.*)?", re.IGNORECASE)
_ADDR_RE = re.compile(r"[^@\s]+@[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?\.?")


class _Closed(Exception):
    """The peer went away (EOF, reset): end the session quietly."""


class _Session:
    def __init__(
        self,
        stream: trio.abc.Stream,
        host: SimHost,
        world: World,
        stats: SimStats,
        peer: str,
        seq: int,
    ) -> None:
        self.stream = stream
        self.host = host
        self.world = world
        self.stats = stats
        self.peer = peer
        # Seeded per (world, host, connection number) so a replay sees the same delays.
        self.rng = random.Random(f"{world.seed}/{host.name}/{seq}")
        self.buffer = bytearray()
        self.greeted = False
        self.sender: str | None = None
        self.rcpt_count = 0

    def delay(self) -> float:
        jitter = self.rng.uniform(-self.world.jitter_ms, self.world.jitter_ms)
        return max(0.0, self.world.latency_ms + jitter) / 1000.0

    async def reply(self, *lines: str) -> None:
        await trio.sleep(self.delay())
        self.stats.replies[lines[-1][:3]] += 1
        text = "".join(
            f"{line[:3]}-{line[4:]}\r\n" if i < len(lines) - 1 else f"{line}\r\n"
            for i, line in enumerate(lines)
        )
        try:
            await self.stream.send_all(text.encode("utf-8"))
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise _Closed from exc

    async def read_line(self) -> str | None:
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                raw = bytes(self.buffer[:end])
                del self.buffer[: end + 1]
                if raw.endswith(b"\r"):
                    raw = raw[:-1]
                return raw.decode("utf-8", "replace")
            if len(self.buffer) > MAX_LINE:
                self.buffer.clear()
                return ""  # answered as a syntax error
            try:
                data = await self.stream.receive_some(4096)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise _Closed from exc
            if not data:
                return None
            self.buffer += data

    def reset(self) -> None:
        self.sender = None
        self.rcpt_count = 0

    async def run(self, idle_timeout: float) -> None:
        if self.host.behaviour is Behaviour.TARPIT:
            await trio.sleep(self.host.tarpit_delay)
        await self.reply(f"220 {self.host.name} ESMTP ct-actors-sim")
        while True:
            line: str | None = None
            with trio.move_on_after(idle_timeout) as idle:
                line = await self.read_line()
            if idle.cancelled_caught:
                self.stats.idle_timeouts += 1
                await self.reply(f"421 4.4.2 {self.host.name} Error: timeout exceeded")
                return
            if line is None or not await self.command(line):
                return

    async def command(self, line: str) -> bool:
        """Answer one command line; False ends the session."""
        verb, _, arg = line.strip().partition(" ")
        verb = verb.upper()
        arg = arg.strip()
        self.stats.commands[verb if verb in _KNOWN_VERBS else "OTHER"] += 1
        if verb == "EHLO":
            if not arg:
                await self.reply("501 5.5.4 Syntax: EHLO hostname")
                return True
            self.greeted = True
            self.reset()
            await self.reply(
                f"250 {self.host.name}", "250 PIPELINING", "250 ENHANCEDSTATUSCODES",
                "250 SIZE 10240000",
            )  # fmt: skip
        elif verb == "HELO":
            if not arg:
                await self.reply("501 5.5.4 Syntax: HELO hostname")
                return True
            self.greeted = True
            self.reset()
            await self.reply(f"250 {self.host.name}")
        elif verb == "MAIL":
            return await self.mail(arg)
        elif verb == "RCPT":
            await self.rcpt(arg)
        elif verb == "RSET":
            self.reset()
            await self.reply("250 2.0.0 Ok")
        elif verb == "NOOP":
            await self.reply("250 2.0.0 Ok")
        elif verb == "QUIT":
            await self.reply("221 2.0.0 Bye")
            return False
        elif verb == "DATA":
            self.stats.data_attempts += 1
            await self.reply("554 5.5.1 DATA not allowed in simulation")
        elif not verb:
            await self.reply("500 5.5.2 Error: bad syntax")
        else:
            await self.reply("502 5.5.2 Error: command not recognized")
        return True

    async def mail(self, arg: str) -> bool:
        if not self.greeted:
            await self.reply("503 5.5.1 Error: send HELO/EHLO first")
            return True
        if self.sender is not None:
            await self.reply("503 5.5.1 Error: nested MAIL command")
            return True
        m = _MAIL_RE.fullmatch(arg)
        if m is None or (m.group(1) and _ADDR_RE.fullmatch(m.group(1)) is None):
            await self.reply("501 5.1.7 Bad sender address syntax")
            return True
        if self.host.behaviour is Behaviour.DROP_MID:
            self.stats.dropped[self.host.name] += 1
            return False
        self.sender = m.group(1).lower()
        self.rcpt_count = 0
        await self.reply("250 2.1.0 Ok")
        return True

    async def rcpt(self, arg: str) -> None:
        if self.sender is None:
            await self.reply("503 5.5.1 Error: need MAIL command")
            return
        m = _RCPT_RE.fullmatch(arg)
        if m is None or _ADDR_RE.fullmatch(m.group(1)) is None:
            await self.reply("501 5.1.3 Bad recipient address syntax")
            return
        address = m.group(1)
        local, _, domain = address.rpartition("@")
        domain = domain.lower().rstrip(".")
        self.stats.rcpts.append(RcptEvent(trio.current_time(), self.host.name, domain))
        behaviour = self.host.behaviour
        self.rcpt_count += 1
        if behaviour is Behaviour.RCPT_LIMIT_452 and self.rcpt_count > 1:
            await self.reply("452 4.5.3 Too many recipients")
            return
        if behaviour is Behaviour.BLOCKLIST:
            await self.reply(
                f"554 5.7.1 Service unavailable; Client host [{self.peer}] blocked using "
                "zen.spamhaus.org"
            )
            return
        if not self.world.serves(self.host.name, domain):
            await self.reply(f"550 5.1.2 <{address}>: Recipient address rejected: Domain not found")
            return
        if behaviour is Behaviour.GREYLIST and self.greylisted(address.lower()):
            await self.reply(
                f"450 4.2.0 <{address}>: Recipient address rejected: Greylisted, see "
                f"http://postgrey.schweikert.ch/help/{domain}.html"
            )
            return
        if self.world.accepts(domain, local):
            await self.reply("250 2.1.5 Ok")
        else:
            await self.reply(f"550 5.1.1 <{address}>: Recipient address rejected: User unknown")

    def greylisted(self, recipient: str) -> bool:
        assert self.sender is not None
        key = (self.host.name, self.sender, recipient)
        now = trio.current_time()
        first_seen = self.stats.greylist.setdefault(key, now)
        # `first + delay` rather than `now - first`: a client sleeping until exactly
        # first + delay must be let through despite float rounding.
        return now < first_seen + self.host.greylist_delay


async def handle_session(
    stream: trio.abc.Stream,
    host: SimHost,
    world: World,
    stats: SimStats,
    *,
    peer: str,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
) -> None:
    """Serve one SMTP connection to `host` from client IP `peer`, then close the stream."""
    seq = stats.connection_opened(host.name)
    session = _Session(stream, host, world, stats, peer, seq)
    try:
        limit = host.conn_limit
        if limit is not None and stats.admitted[host.name] >= limit:
            stats.rejected_421[host.name] += 1
            await session.reply("421 4.7.0 Too many connections, try again later")
            return
        stats.admitted[host.name] += 1
        try:
            await session.run(idle_timeout)
        finally:
            stats.admitted[host.name] -= 1
    except _Closed:
        pass
    finally:
        stats.connection_closed(host.name)
        await trio.aclose_forcefully(stream)
