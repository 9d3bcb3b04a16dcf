"""A small RFC 5321 server that plays one simulated MX host, quirks included.

Runs over any `trio.abc.Stream`, so the same code serves real loopback sockets and the
in-memory connector: every behaviour, TLS breakage included, is played here once for both.
All waiting is `trio.sleep`, which keeps it exact under `MockClock`. The rules of the real
servers' defences live in `ct_actors.sim.behaviours` (with their sources), their texts in
`ct_actors.sim.reply_zoo`.
"""

from __future__ import annotations

import random
import re

import trio

from ct_actors.sim.behaviours import (
    GREET_421_TEXT,
    STARTTLS_READY,
    TLS_HANDSHAKE_FAILURE_ALERT,
    TLS_RECORD_HEADER,
    ErrorCounter,
    dha_block_reply,
    postgrey_key,
    postgrey_reply,
    too_many_errors_reply,
)
from ct_actors.sim.reply_zoo import PROFILES, ZooProfile
from ct_actors.sim.stats import RcptEvent, SimStats
from ct_actors.sim.world import World
from ct_actors.sim.world_types import Behaviour, SimHost

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
        self.seq = seq
        self.buffer = bytearray()
        self.greeted = False
        self.sender: str | None = None
        self.rcpt_count = 0
        self.errors = ErrorCounter(host.error_limits) if host.error_limits is not None else None
        self.zoo: ZooProfile | None = PROFILES[host.zoo] if host.zoo is not None else None
        self.sent = 0  # replies sent, for the zoo's per-reply ids
        # Replies to pipelined commands held until the client's input runs dry (see reply).
        self.held = bytearray()
        self.last_code = 0  # code of the last reply sent, for the error counter

    def delay(self) -> float:
        jitter = self.rng.uniform(-self.world.jitter_ms, self.world.jitter_ms)
        return max(0.0, self.world.latency_ms + jitter) / 1000.0

    def qid(self) -> str:
        # Real servers append a session/queue id; unique per reply, reproducible per run.
        return f"q{self.seq:x}r{self.sent}"

    async def reply(self, *lines: str) -> None:
        if self.errors is not None and (pause := self.errors.reply_delay()):
            self.stats.error_delays[self.host.name] += 1
            await trio.sleep(pause)
        self.sent += 1
        self.last_code = int(lines[-1][:3])
        self.stats.replies[lines[-1][:3]] += 1
        text = "".join(
            f"{line[:3]}-{line[4:]}\r\n" if i < len(lines) - 1 else f"{line}\r\n"
            for i, line in enumerate(lines)
        )
        self.held += text.encode("utf-8")
        if b"\n" in self.buffer and self.last_code != 421:
            # Another command is already here (the client pipelined, RFC 2920): answer it in
            # the same write, as Postfix's smtpd flushes its replies only when its input buffer
            # is empty. The group costs one round trip, not one per command.
            return
        await trio.sleep(self.delay())
        out, self.held = bytes(self.held), bytearray()
        try:
            await self.stream.send_all(out)
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
        behaviour = self.host.behaviour
        if behaviour is Behaviour.TARPIT:
            await trio.sleep(self.host.tarpit_delay)
        if behaviour is Behaviour.GREET_421:
            self.stats.greet_421[self.host.name] += 1
            await self.reply(GREET_421_TEXT)
            return
        if self.zoo is not None:
            await self.reply(*self.zoo.greeting.render(host=self.host.name, qid=self.qid()))
        else:
            await self.reply(f"220 {self.host.name} ESMTP ct-actors-sim")
        while True:
            if self.errors is not None and self.errors.exhausted:
                # Postfix checks the hard limit before reading the next command.
                self.stats.error_limit_hits[self.host.name] += 1
                await self.reply(too_many_errors_reply(self.host.name))
                return
            line: str | None = None
            with trio.move_on_after(idle_timeout) as idle:
                line = await self.read_line()
            if idle.cancelled_caught:
                self.stats.idle_timeouts += 1
                await self.reply(f"421 4.4.2 {self.host.name} Error: timeout exceeded")
                return
            if line is None:
                return
            verb = line.strip().partition(" ")[0].upper()
            self.last_code = 0
            keep_going = await self.command(line)
            if self.errors is not None and self.last_code:
                self.errors.count(verb, self.last_code)
            if not keep_going:
                return

    async def command(self, line: str) -> bool:
        """Answer one command line; False ends the session."""
        verb, _, arg = line.strip().partition(" ")
        verb = verb.upper()
        arg = arg.strip()
        self.stats.commands[verb if verb in _KNOWN_VERBS else "OTHER"] += 1
        tls_offered = self.host.behaviour is Behaviour.TLS_BROKEN
        if verb == "EHLO":
            if not arg:
                await self.reply("501 5.5.4 Syntax: EHLO hostname")
                return True
            self.greeted = True
            self.reset()
            await self.reply(
                f"250 {self.host.name}", "250 PIPELINING", "250 ENHANCEDSTATUSCODES",
                *(("250 STARTTLS",) if tls_offered else ()), "250 SIZE 10240000",
            )  # fmt: skip
        elif verb == "STARTTLS" and tls_offered and not arg:
            await self.reply(STARTTLS_READY)
            await self.break_tls()
            return False
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
        if self.zoo is not None:
            ok = self.zoo.mail_ok
            await self.reply(*ok.render(address=self.sender, host=self.host.name, qid=self.qid()))
        else:
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
        dha = None
        if self.host.dha is not None:
            dha = self.stats.dha_guard(self.host.name, self.peer, self.host.dha)
            if dha.blocked(trio.current_time()):
                self.stats.dha_refusals[self.host.name] += 1
                await self.reply(dha_block_reply(self.peer))
                return
        if not self.world.serves(self.host.name, domain):
            await self.reply(f"550 5.1.2 <{address}>: Recipient address rejected: Domain not found")
            return
        if self.host.greylist_delay > 0 and self.greylisted(address.lower()):
            await self.reply(postgrey_reply(address))
            return
        zoo = self.zoo
        if self.world.accepts(domain, local):
            if zoo is not None:
                await self.reply(*zoo.accept.render(address=address, host=self.host.name,
                                                    qid=self.qid()))  # fmt: skip
            else:
                await self.reply("250 2.1.5 Ok")
            return
        if dha is not None:
            dha.record_unknown(trio.current_time())
        if zoo is not None:
            text = zoo.unknown_for(address)
            await self.reply(*text.render(address=address, host=self.host.name, qid=self.qid()))
        else:
            await self.reply(f"550 5.1.1 <{address}>: Recipient address rejected: User unknown")

    def greylisted(self, recipient: str) -> bool:
        """postgrey's decision for this triplet (see `behaviours.postgrey_key`): deferred until
        `greylist_delay` seconds after the triplet was first seen. Unknown recipients are
        greylisted too: Postfix applies postgrey's DEFER_IF_PERMIT before its implicit
        reject_unlisted_recipient (smtpd_check.c, smtpd_check_rcpt())."""
        assert self.sender is not None
        key = (self.host.name, postgrey_key(self.peer, self.sender, recipient))
        now = trio.current_time()
        first_seen = self.stats.greylist.setdefault(key, now)
        # `first + delay` rather than `now - first`: a client sleeping until exactly
        # first + delay must be let through despite float rounding (postgrey: diff > 0 defers).
        return now < first_seen + self.host.greylist_delay

    async def break_tls(self) -> None:
        """Read the ClientHello's record header, answer with a fatal handshake_failure alert, and
        let the session close: the client's handshake fails with an ssl error, as against a
        real server whose TLS set-up is broken."""
        while len(self.buffer) < TLS_RECORD_HEADER:
            try:
                data = await self.stream.receive_some(4096)
            except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                raise _Closed from exc
            if not data:
                return
            self.buffer += data
        self.stats.tls_broken[self.host.name] += 1
        try:
            await self.stream.send_all(TLS_HANDSHAKE_FAILURE_ALERT)
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise _Closed from exc


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
