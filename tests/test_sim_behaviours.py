"""Real servers' behaviours in the simulated internet, observed at the protocol level: Postfix's
error limits, a DHA blocker, a banner-421 host, postgrey at 300 s, a host whose TLS handshake
fails after STARTTLS, and the reply-text zoo. Virtual time (MockClock) wherever time matters."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio.testing

from ct_actors.net.connector import TrioConnector
from ct_actors.sim.behaviours import (
    GREET_421_TEXT,
    POSTGREY_DELAY,
    STRICT_ERROR_LIMITS,
    DhaGuard,
    DhaLimits,
    ErrorLimits,
    postgrey_key,
)
from ct_actors.sim.reply_zoo import PROFILES, all_texts
from ct_actors.sim.server import serve_world
from ct_actors.sim.smtp_server import handle_session
from ct_actors.sim.stats import SimStats
from ct_actors.sim.world import Behaviour, Expected, SimDomain, SimHost, World
from ct_actors.smtp.classify import RcptVerdict, classify_rcpt
from ct_actors.smtp.client import SmtpTlsError, connect_session, open_session
from ct_actors.smtp.reply import parse_reply
from ct_actors.testing import open_sim_connector

LAT = 0.05
SENDER = "probe@sender.test"


def world_of(behaviour: Behaviour, n: int = 40, **kwargs: object) -> World:
    """A world of `n` domains of one behaviour, fixed 50 ms replies."""
    return World.generate(17, n, mix={behaviour: 1.0}, latency_ms=50, jitter_ms=0, **kwargs)  # type: ignore[arg-type]


def first(world: World, *, catchall: bool = False, pattern: bool = True) -> SimDomain:
    """The first domain of the requested mailbox kind."""
    for d in world.domains.values():
        if d.is_catchall == catchall and (catchall or (d.format is not None) == pattern):
            return d
    raise AssertionError("no such domain in the test world")


def box(domain: SimDomain) -> str:
    return sorted(b for b in domain.mailboxes if b not in {"postmaster", "abuse"})[0]


def host_of(world: World, domain: SimDomain) -> SimHost:
    return world.mx_hosts(domain.name)[0]


def now() -> float:
    return trio.current_time()


class Client:
    """A tiny scripted SMTP client: raw lines, no opinions."""

    def __init__(self, stream: trio.abc.Stream) -> None:
        self.stream = stream
        self.buffer = bytearray()

    async def _line(self) -> str | None:
        while b"\r\n" not in self.buffer:
            data = await self.stream.receive_some(4096)
            if not data:
                return None
            self.buffer += data
        raw, _, rest = bytes(self.buffer).partition(b"\r\n")
        self.buffer = bytearray(rest)
        return raw.decode()

    async def reply(self) -> list[str]:
        lines: list[str] = []
        while True:
            line = await self._line()
            if line is None:
                raise EOFError(f"connection closed after {lines}")
            lines.append(line)
            if line[3:4] != "-":
                return lines

    async def one(self, text: str) -> str:
        await self.stream.send_all(text.encode() + b"\r\n")
        (line,) = await self.reply()
        return line

    async def at_eof(self) -> bool:
        return await self._line() is None

    async def ready(self, sender: str = SENDER) -> None:
        assert (await self.reply())[0].startswith("220 ")
        await self.stream.send_all(b"EHLO probe.sender.test\r\n")
        assert (await self.reply())[-1] == "250 SIZE 10240000"
        assert (await self.one(f"MAIL FROM:<{sender}>")).startswith("250 ")


@asynccontextmanager
async def session(
    world: World, host: SimHost, stats: SimStats, *, peer: str = "127.0.0.1"
) -> AsyncIterator[Client]:
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(handle_session, server, host, world, stats, peer=peer))
        yield Client(client)
        await client.aclose()


# -- Postfix error limits ----------------------------------------------------------------------

ERR = World.generate(17, 40, mix={Behaviour.ERROR_LIMIT: 1.0}, latency_ms=50, jitter_ms=0)
STRICT = World.generate(17, 40, mix={Behaviour.ERROR_LIMIT_STRICT: 1.0}, latency_ms=50, jitter_ms=0)


@pytest.mark.timeout(30)
async def test_error_limit_postfix_defaults(autojump_clock: trio.testing.MockClock) -> None:
    """10 rejected RCPTs, then every reply 1 s late; RSET forgives nothing; the 20th error is
    followed, unasked, by Postfix's 421 and the close."""
    domain = first(ERR)
    host = host_of(ERR, domain)
    assert host.error_limits == ErrorLimits(soft=10, hard=20, sleep=1.0, junk=100)
    stats = SimStats()
    unknown = "550 5.1.1 <nobody{i}@{d}>: Recipient address rejected: User unknown"
    with trio.fail_after(60):
        async with session(ERR, host, stats) as c:
            await c.ready()
            for i in range(10):
                t = now()
                line = await c.one(f"RCPT TO:<nobody{i}@{domain.name}>")
                assert line == unknown.format(i=i, d=domain.name)
                assert now() == pytest.approx(t + LAT)  # below the soft limit: no delay
            t = now()
            assert await c.one("RSET") == "250 2.0.0 Ok"
            assert now() == pytest.approx(t + LAT + 1.0)  # 10 errors: every reply slowed
            t = now()
            assert await c.one(f"MAIL FROM:<{SENDER}>") == "250 2.1.0 Ok"
            assert now() == pytest.approx(t + LAT + 1.0)  # RSET did not reset the count
            t = now()
            assert await c.one(f"RCPT TO:<{box(domain)}@{domain.name}>") == "250 2.1.5 Ok"
            assert now() == pytest.approx(t + LAT + 1.0)  # accepted replies are slowed too
            for i in range(10, 19):
                assert (await c.one(f"RCPT TO:<nobody{i}@{domain.name}>")).startswith("550 ")
            t = now()
            line = await c.one(f"RCPT TO:<nobody19@{domain.name}>")  # the 20th error
            assert line == unknown.format(i=19, d=domain.name)
            assert now() == pytest.approx(t + LAT + 1.0)
            assert await c.reply() == [f"421 4.7.0 {host.name} Error: too many errors"]
            assert now() == pytest.approx(t + 2 * (LAT + 1.0))
            assert await c.at_eof()
    assert stats.error_limit_hits[host.name] == 1
    assert stats.error_delays[host.name] == 14  # RSET, MAIL, the accept, 10 rejects, the 421


@pytest.mark.timeout(30)
async def test_error_limit_strict_and_per_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The strict host slows down after 3 errors and hangs up at 5; a new connection starts a
    new count, exactly as Postfix's per-session error_count."""
    domain = first(STRICT)
    host = host_of(STRICT, domain)
    assert host.error_limits == STRICT_ERROR_LIMITS
    stats = SimStats()
    with trio.fail_after(60):
        for _ in range(2):
            async with session(STRICT, host, stats) as c:
                await c.ready()
                times = []
                for i in range(5):
                    t = now()
                    assert (await c.one(f"RCPT TO:<x{i}@{domain.name}>")).startswith("550 5.1.1")
                    times.append(now() - t)
                assert times == pytest.approx([LAT, LAT, LAT, LAT + 1, LAT + 1])
                assert await c.reply() == [f"421 4.7.0 {host.name} Error: too many errors"]
                assert await c.at_eof()
    assert stats.error_limit_hits[host.name] == 2


@pytest.mark.timeout(30)
async def test_error_limit_counts_unknown_commands_and_junk(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Unknown commands are errors; NOOPs only count past smtpd_junk_command_limit."""
    world = World.generate(
        17, 10, mix={Behaviour.ERROR_LIMIT: 1.0}, latency_ms=50, jitter_ms=0,
        error_limits=ErrorLimits(soft=50, hard=3, sleep=1.0, junk=2),
    )  # fmt: skip
    domain = first(world)
    host = host_of(world, domain)
    with trio.fail_after(60):
        async with session(world, host, SimStats()) as c:
            await c.ready()  # EHLO is junk command no. 1
            assert await c.one("NOOP") == "250 2.0.0 Ok"  # 2
            assert await c.one("NOOP") == "250 2.0.0 Ok"  # 3: junk count was 2, not > 2
            assert await c.one("NOOP") == "250 2.0.0 Ok"  # 4: count 3 > 2 -> error 1
            assert await c.one("FROB") == "502 5.5.2 Error: command not recognized"  # error 2
            assert (await c.one(f"RCPT TO:<zz@{domain.name}>")).startswith("550 ")  # error 3
            assert await c.reply() == [f"421 4.7.0 {host.name} Error: too many errors"]
            assert await c.at_eof()


# -- directory harvest blocker -----------------------------------------------------------------

DHA = World.generate(17, 40, mix={Behaviour.DHA_BLOCK: 1.0}, latency_ms=50, jitter_ms=0)


def dha_text(peer: str) -> str:
    return f"554 5.7.1 <unknown[{peer}]>: Client host rejected: Too many invalid recipients"


@pytest.mark.timeout(30)
async def test_dha_blocks_after_n_unknown_per_minute(
    autojump_clock: trio.testing.MockClock,
) -> None:
    domain = first(DHA)
    host = host_of(DHA, domain)
    assert host.dha == DhaLimits(limit=10, window=60.0, block=600.0)
    good = f"{box(domain)}@{domain.name}"
    stats = SimStats()
    with trio.fail_after(2000):
        # Two sessions from one client share the count: 5 + 5 unknown within the minute.
        async with session(DHA, host, stats) as c:
            await c.ready()
            for i in range(5):
                assert (await c.one(f"RCPT TO:<a{i}@{domain.name}>")).startswith("550 5.1.1")
        async with session(DHA, host, stats) as c:
            await c.ready()
            for i in range(4):
                assert (await c.one(f"RCPT TO:<b{i}@{domain.name}>")).startswith("550 5.1.1")
            assert await c.one(f"RCPT TO:<{good}>") == "250 2.1.5 Ok"  # accepts do not count
            t_block = now()
            assert (await c.one(f"RCPT TO:<b4@{domain.name}>")).startswith("550 5.1.1")  # 10th
            # From now on every recipient is refused, existing ones included.
            assert await c.one(f"RCPT TO:<{good}>") == dha_text("127.0.0.1")
            assert await c.one(f"RCPT TO:<b5@{domain.name}>") == dha_text("127.0.0.1")
        # Another client is not affected; a new session of the blocked one is refused at RCPT
        # (the greeting and MAIL still succeed: Postfix's smtpd_delay_reject).
        async with session(DHA, host, stats, peer="127.0.0.2") as c:
            await c.ready()
            assert await c.one(f"RCPT TO:<{good}>") == "250 2.1.5 Ok"
        # Sessions are short, as a prober's are (the server's idle timeout is 60 s).
        await trio.sleep_until(t_block + LAT + 600 - 1 - 3 * LAT)
        async with session(DHA, host, stats) as c:
            await c.ready()
            assert now() == pytest.approx(t_block + LAT + 600 - 1)
            assert await c.one(f"RCPT TO:<{good}>") == dha_text("127.0.0.1")
        await trio.sleep_until(t_block + LAT + 600 - 3 * LAT)
        async with session(DHA, host, stats) as c:
            await c.ready()
            assert now() == pytest.approx(t_block + LAT + 600)
            assert await c.one(f"RCPT TO:<{good}>") == "250 2.1.5 Ok"  # block over
            # The count started afresh: nine more unknown do not block again.
            for i in range(9):
                assert (await c.one(f"RCPT TO:<c{i}@{domain.name}>")).startswith("550 5.1.1")
            assert await c.one(f"RCPT TO:<{good}>") == "250 2.1.5 Ok"
    snap = stats.statistics()
    assert snap.dha_blocks == 1 and snap.dha_refusals == 3


def test_dha_window_slides() -> None:
    guard = DhaGuard(DhaLimits(limit=3, window=60.0, block=100.0))
    assert not guard.record_unknown(0.0)
    assert not guard.record_unknown(30.0)
    assert not guard.record_unknown(60.0)  # the one at 0.0 left the window exactly now
    assert guard.record_unknown(61.0)  # 30, 60, 61: three within a minute
    assert guard.blocked(161.0 - 1e-9) and not guard.blocked(161.0)


# -- banner 421 ---------------------------------------------------------------------------------


@pytest.mark.timeout(30)
async def test_greet_421_on_every_mx_host(autojump_clock: trio.testing.MockClock) -> None:
    world = world_of(Behaviour.GREET_421, 10)
    domain = next(iter(world.domains.values()))
    hosts = world.mx_hosts(domain.name)
    assert len(hosts) == 2 and all(h.behaviour is Behaviour.GREET_421 for h in hosts)
    assert world.expected(domain.name) == Expected("FAIL", "CT-M-SMTP-FAIL")
    stats = SimStats()
    with trio.fail_after(10):
        for host in hosts:
            async with session(world, host, stats) as c:
                t = now()
                assert await c.reply() == [GREET_421_TEXT]
                assert now() == pytest.approx(t + LAT)
                assert await c.at_eof()
    assert stats.statistics().greet_421 == 2


# -- postgrey at 300 s --------------------------------------------------------------------------

GREY = World.generate(17, 40, mix={Behaviour.GREYLIST_300: 1.0}, latency_ms=50, jitter_ms=0)


def grey_text(address: str) -> str:
    domain = address.rpartition("@")[2]
    return (
        f"450 4.2.0 <{address}>: Recipient address rejected: Greylisted, see "
        f"http://postgrey.schweikert.ch/help/{domain}.html"
    )


@pytest.mark.timeout(30)
async def test_greylist_300_like_postgrey(autojump_clock: trio.testing.MockClock) -> None:
    domain = first(GREY)
    host = host_of(GREY, domain)
    assert host.greylist_delay == POSTGREY_DELAY == 300.0
    good = f"{box(domain)}@{domain.name}"
    other = f"{sorted(domain.mailboxes)[0]}@{domain.name}"
    assert other != good
    stats = SimStats()
    with trio.fail_after(2000):
        async with session(GREY, host, stats) as c:
            await c.ready()
            t_first = now()
            assert await c.one(f"RCPT TO:<{good}>") == grey_text(good)
        # A prober comes back on new connections (the server's idle timeout is 60 s).
        ready = 3 * LAT  # banner, EHLO, MAIL
        await trio.sleep_until(t_first + 299 - ready)
        async with session(GREY, host, stats) as c:
            await c.ready()
            assert now() == pytest.approx(t_first + 299)
            assert await c.one(f"RCPT TO:<{good}>") == grey_text(good)  # 299 s: still deferred
            t_other = now()
            assert await c.one(f"RCPT TO:<{other}>") == grey_text(other)  # its own clock
            await trio.sleep_until(t_first + 300)
            assert await c.one(f"RCPT TO:<{good}>") == "250 2.1.5 Ok"  # the same triplet
            assert await c.one(f"RCPT TO:<{other}>") == grey_text(other)
        await trio.sleep_until(t_other + 300 - ready)
        async with session(GREY, host, stats) as c:
            await c.ready()
            await trio.sleep_until(t_other + 300)  # float sums may land a hair early
            assert await c.one(f"RCPT TO:<{other}>") == "250 2.1.5 Ok"
        # postgrey keys on the client's /24: a neighbour shares the triplet, a stranger does not.
        async with session(GREY, host, stats, peer="127.0.0.77") as c:
            await c.ready()
            assert await c.one(f"RCPT TO:<{good}>") == "250 2.1.5 Ok"
        async with session(GREY, host, stats, peer="127.0.1.5") as c:
            await c.ready()
            assert await c.one(f"RCPT TO:<{good}>") == grey_text(good)
        # ...and on the sender (VERP numbers and +extensions folded like postgrey does).
        async with session(GREY, host, stats, peer="127.0.0.9") as c:
            await c.ready(sender="probe+123@sender.test")
            assert await c.one(f"RCPT TO:<{good}>") == "250 2.1.5 Ok"
            assert await c.one("RSET") == "250 2.0.0 Ok"
            assert await c.one("MAIL FROM:<other@sender.test>") == "250 2.1.0 Ok"
            assert await c.one(f"RCPT TO:<{good}>") == grey_text(good)


@pytest.mark.timeout(30)
async def test_greylist_300_catchall_needs_the_same_random_address(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A catch-all behind postgrey: a prober that retries a *new* random local part after the
    delay is greylisted again; only the same address passes."""
    domain = first(GREY, catchall=True)
    host = host_of(GREY, domain)
    assert GREY.expected(domain.name).is_catchall
    stats = SimStats()
    probe1, probe2 = f"zq8xkv3b@{domain.name}", f"wd5mnq7r@{domain.name}"
    with trio.fail_after(2000):
        async with session(GREY, host, stats) as c:
            await c.ready()
            t = now()
            assert await c.one(f"RCPT TO:<{probe1}>") == grey_text(probe1)
        await trio.sleep_until(t + 300 - 3 * LAT)
        async with session(GREY, host, stats) as c:
            await c.ready()
            await trio.sleep_until(t + 300)
            assert await c.one(f"RCPT TO:<{probe2}>") == grey_text(probe2)
            assert await c.one(f"RCPT TO:<{probe1}>") == "250 2.1.5 Ok"


def test_postgrey_key() -> None:
    assert postgrey_key("192.0.2.77", "Bounce+X7@Example.ORG", "Jane@Example.com") == (
        "192.0.2.0/bounce@example.org/jane@example.com"
    )
    assert postgrey_key("192.0.2.77", "news-2024-55@list.example", "a@b.c") == (
        "192.0.2.0/news-#-#@list.example/a@b.c"
    )
    assert postgrey_key("192.0.2.1", "", "a@b.c") == "192.0.2.0//a@b.c"


# -- broken TLS ---------------------------------------------------------------------------------

TLS = World.generate(17, 20, mix={Behaviour.TLS_BROKEN: 1.0}, latency_ms=50, jitter_ms=0)


@pytest.mark.timeout(30)
async def test_tls_breaker_in_memory_with_the_real_client(
    autojump_clock: trio.testing.MockClock,
) -> None:
    domain = first(TLS)
    host = host_of(TLS, domain)
    with trio.fail_after(30):
        async with open_sim_connector(TLS) as connector:
            with pytest.raises(SmtpTlsError) as caught:
                await connect_session(
                    connector, host.ip, TLS.smtp_port, helo_name="probe.sender.test",
                    connect_timeout=5, command_timeout=10,
                )  # fmt: skip
            assert caught.value.reason.startswith("tls: ")
            assert "HANDSHAKE_FAILURE" in caught.value.reason.upper()
            starttls = [e for e in caught.value.transcript if e.stage == "starttls"]
            assert [(e.command, e.code) for e in starttls] == [
                ("STARTTLS", 220),
                ("TLS handshake", None),
            ]
            # Plaintext on a new connection: a normal conversation.
            async with open_session(
                connector, host.ip, TLS.smtp_port, helo_name="probe.sender.test",
                connect_timeout=5, command_timeout=10, starttls="never",
            ) as s:  # fmt: skip
                assert "STARTTLS" in s.extensions and not s.tls
                assert (await s.mail_from(SENDER)).code == 250
                assert (await s.rcpt(f"{box(domain)}@{domain.name}")).code == 250
                assert (await s.rcpt(f"nobody9@{domain.name}")).code == 550
    assert connector.stats.tls_broken[host.name] == 1


@pytest.mark.timeout(60)
async def test_tls_breaker_over_loopback_tcp() -> None:
    world = World.generate(
        17, 6, mix={Behaviour.TLS_BROKEN: 1.0}, smtp_port=2571, dns_port=5371,
        dns_address="127.0.53.71", latency_ms=1, jitter_ms=0,
    )  # fmt: skip
    domain = first(world)
    host = host_of(world, domain)
    connector = TrioConnector()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            stats = await nursery.start(serve_world, world)
            with pytest.raises(SmtpTlsError) as caught:
                await connect_session(
                    connector, host.ip, world.smtp_port, helo_name="probe.sender.test",
                    connect_timeout=5, command_timeout=10,
                )  # fmt: skip
            assert "HANDSHAKE_FAILURE" in caught.value.reason.upper()
            async with open_session(
                connector, host.ip, world.smtp_port, helo_name="probe.sender.test",
                connect_timeout=5, command_timeout=10, starttls="never",
            ) as s:  # fmt: skip
                assert (await s.mail_from(SENDER)).code == 250
                assert (await s.rcpt(f"{box(domain)}@{domain.name}")).code == 250
            nursery.cancel_scope.cancel()
    assert stats.tls_broken[host.name] == 1


# -- reply zoo ----------------------------------------------------------------------------------

ZOO = World.generate(17, 300, mix={Behaviour.REPLY_ZOO: 1.0}, latency_ms=50, jitter_ms=0)


def test_zoo_texts_are_sourced_and_mean_what_they_say() -> None:
    texts = all_texts()
    rcpt = [t for t in texts if t.meaning in ("accept", "unknown")]
    assert 20 <= len(rcpt) <= 40
    for t in texts:
        assert t.source.strip(), t
        lines = t.render(address="jane.doe@example.com", host="mx.example.com", qid="q1")
        reply = parse_reply("".join(
            f"{line[:3]}{'-' if i < len(lines) - 1 else ' '}{line[4:]}\r\n"
            for i, line in enumerate(lines)
        ))  # fmt: skip
        assert reply.code == t.code
        if t.meaning == "accept":
            assert classify_rcpt(reply) is RcptVerdict.ACCEPTED, t
        elif t.meaning == "unknown":
            assert classify_rcpt(reply) is RcptVerdict.MAILBOX_UNKNOWN, t
        else:
            assert 200 <= reply.code < 300, t


@pytest.mark.timeout(30)
async def test_zoo_hosts_speak_their_profile(autojump_clock: trio.testing.MockClock) -> None:
    by_profile: dict[str, SimDomain] = {}
    for d in ZOO.domains.values():
        profile = host_of(ZOO, d).zoo
        assert profile in PROFILES
        if not d.is_catchall and d.format is not None:
            by_profile.setdefault(profile, d)
    assert len(by_profile) >= len(PROFILES) - 1  # the seeded draw covers (nearly) every profile
    with trio.fail_after(60):
        for name, domain in by_profile.items():
            profile = PROFILES[name]
            host = host_of(ZOO, domain)
            async with session(ZOO, host, SimStats()) as c:
                greeting = await c.reply()
                assert [ln[:3] for ln in greeting] == ["220"] * len(greeting)
                assert (
                    greeting[-1][4:] == profile.greeting.render(host=host.name, qid="q0r0")[-1][4:]
                )
                await c.stream.send_all(b"EHLO probe.sender.test\r\n")
                await c.reply()
                assert (
                    await c.one(f"MAIL FROM:<{SENDER}>")
                    == profile.mail_ok.render(address=SENDER, host=host.name, qid="q0r2")[-1]
                )
                good = f"{box(domain)}@{domain.name}"
                assert (
                    await c.one(f"RCPT TO:<{good}>")
                    == profile.accept.render(address=good, host=host.name, qid="q0r3")[-1]
                )
                bad = f"nobody7@{domain.name}"
                await c.stream.send_all(f"RCPT TO:<{bad}>\r\n".encode())
                expected = profile.unknown_for(bad).render(address=bad, host=host.name, qid="q0r4")
                got = await c.reply()
                assert [ln[:3] + " " + ln[4:] for ln in got] == list(expected)


# -- the world -----------------------------------------------------------------------------------


def test_real_mix_world_round_trips_and_keeps_the_truth() -> None:
    from ct_actors.sim.world import REAL_SERVER_MIX, SERVER_BEHAVIOURS

    world = World.generate(23, 1200, mix=REAL_SERVER_MIX)
    again = World.from_json(world.to_json())
    assert again == world and again.to_json() == world.to_json()
    server = [d for d in world.domains.values() if d.behaviour in SERVER_BEHAVIOURS]
    share = len(server) / len(world.domains)
    assert 0.10 <= share <= 0.16  # ~1-3 % each, 13 % in all
    kinds = {(d.is_catchall, d.format is not None) for d in server}
    assert kinds == {(True, True), (False, True), (False, False)}  # catch-all, pattern, none
    for d in server:
        exp = world.expected(d.name)
        if d.behaviour is Behaviour.GREET_421:
            assert exp == Expected("FAIL", "CT-M-SMTP-FAIL")
        elif d.is_catchall:
            assert exp.outcome == "PASS" and exp.is_catchall
        elif d.format is None:
            assert exp == Expected("FAIL", "CT-M-NO-PATTERN")
        else:
            assert exp.outcome == "PASS" and exp.method_type is not None
    # Host parameters survive the trip (a separate process serves the world from JSON).
    for name, host in world.hosts.items():
        assert again.hosts[name] == host
    # A world file from before these fields existed still loads.
    old = world.hosts[server[0].mx[0][1]].to_dict()
    for key in ("error_limits", "dha", "zoo"):
        del old[key]
    assert SimHost.from_dict(old).error_limits is None
