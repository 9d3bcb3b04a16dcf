"""The simulated servers: SMTP sessions on a virtual clock, the in-memory connector and
resolver, the DNS responder, and one run on real loopback sockets."""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rcode
import dns.rdatatype
import pytest
import trio
import trio.testing

from ct_actors.dns.client import UdpDnsClient
from ct_actors.dns.mx import DnsMxResolver
from ct_actors.dns.types import DnsUnavailable, MxStatus
from ct_actors.log import as_log
from ct_actors.sim.__main__ import build_parser, main
from ct_actors.sim.dns_server import BrokenDns, DnsResponder, serve_dns
from ct_actors.sim.server import serve_world
from ct_actors.sim.smtp_server import handle_session
from ct_actors.sim.stats import SimStats
from ct_actors.sim.world import SHARED_HOSTS, Behaviour, SimDomain, SimHost, World
from ct_actors.testing import SimResolver, open_sim_connector

LAT = 0.05  # the test world's fixed reply latency, seconds
SENDER = "probe@sender.test"
EHLO_REPLY = ["250-{host}", "250-PIPELINING", "250-ENHANCEDSTATUSCODES", "250 SIZE 10240000"]

WORLD = World.generate(11, 200, latency_ms=50, jitter_ms=0)
JITTERY = World.generate(11, 200, latency_ms=50, jitter_ms=25)


def pick(world: World, behaviour: Behaviour) -> tuple[SimDomain, SimHost]:
    domain = world.by_behaviour(behaviour)[0]
    live = [h for h in world.mx_hosts(domain.name) if h.listening]
    return domain, live[0]


def person_box(domain: SimDomain) -> str:
    return sorted(b for b in domain.mailboxes if b not in {"postmaster", "abuse"})[0]


class Client:
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

    async def send(self, text: str) -> None:
        await self.stream.send_all(text.encode() + b"\r\n")

    async def cmd(self, text: str) -> list[str]:
        await self.send(text)
        return await self.reply()

    async def one(self, text: str) -> str:
        (line,) = await self.cmd(text)
        return line

    async def at_eof(self) -> bool:
        return await self._line() is None

    async def ready(self) -> None:
        """Read the banner, EHLO, start a transaction."""
        assert (await self.reply())[0].startswith("220 ")
        assert (await self.cmd("EHLO probe.sender.test"))[-1] == "250 SIZE 10240000"
        assert await self.one(f"MAIL FROM:<{SENDER}>") == "250 2.1.0 Ok"


@asynccontextmanager
async def session(
    world: World, host: SimHost, stats: SimStats, *, peer: str = "127.0.0.1"
) -> AsyncIterator[Client]:
    client, server = trio.testing.memory_stream_pair()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(functools.partial(handle_session, server, host, world, stats, peer=peer))
        yield Client(client)
        await client.aclose()


def now() -> float:
    return trio.current_time()


# -- SMTP over memory streams, virtual clock ---------------------------------------------------


async def test_transcript_and_latency(autojump_clock: trio.testing.MockClock) -> None:
    domain, host = pick(WORLD, Behaviour.VERIFIABLE)
    box = person_box(domain)
    stats = SimStats()
    with trio.fail_after(10):
        async with session(WORLD, host, stats) as c:
            t0 = now()
            assert await c.reply() == [f"220 {host.name} ESMTP ct-actors-sim"]
            assert now() == pytest.approx(t0 + LAT)
            ehlo = await c.cmd("EHLO probe.sender.test")
            assert ehlo == [EHLO_REPLY[0].format(host=host.name), *EHLO_REPLY[1:]]
            assert now() == pytest.approx(t0 + 2 * LAT)
            assert await c.one(f"MAIL FROM:<{SENDER}>") == "250 2.1.0 Ok"
            t_rcpt = now()
            assert await c.one(f"RCPT TO:<{box}@{domain.name}>") == "250 2.1.5 Ok"
            assert now() == pytest.approx(t0 + 4 * LAT)
            assert await c.one(f"RCPT TO:<{box.upper()}@{domain.name.upper()}>") == "250 2.1.5 Ok"
            assert await c.one(f"rcpt to:<zz9top@{domain.name}>") == (
                f"550 5.1.1 <zz9top@{domain.name}>: Recipient address rejected: User unknown"
            )
            assert await c.one("RCPT TO:<a@elsewhere.test>") == (
                "550 5.1.2 <a@elsewhere.test>: Recipient address rejected: Domain not found"
            )
            assert await c.one("RCPT TO:<no-at-sign>") == "501 5.1.3 Bad recipient address syntax"
            assert await c.one("RCPT TO: alice@x.test") == "501 5.1.3 Bad recipient address syntax"
            assert await c.one("MAIL FROM:<again@x.test>") == "503 5.5.1 Error: nested MAIL command"
            assert await c.one("RSET") == "250 2.0.0 Ok"
            assert await c.one(f"RCPT TO:<{box}@{domain.name}>") == (
                "503 5.5.1 Error: need MAIL command"
            )
            assert await c.one("NOOP") == "250 2.0.0 Ok"
            assert await c.one("VRFY postmaster") == "502 5.5.2 Error: command not recognized"
            assert await c.one("STARTTLS") == "502 5.5.2 Error: command not recognized"
            assert await c.one("HELO probe.sender.test") == f"250 {host.name}"
            assert await c.one("QUIT") == "221 2.0.0 Bye"
            assert now() == pytest.approx(t0 + 17 * LAT)
            assert await c.at_eof()
    assert stats.rcpts[0].time == pytest.approx(t_rcpt)
    assert stats.rcpts[0].host == host.name and stats.rcpts[0].domain == domain.name
    assert len(stats.rcpts) == 4  # syntax errors and out-of-transaction RCPTs are not probes
    snap = stats.statistics()
    assert snap.connections_by_host == {host.name: 1}
    assert snap.commands["RCPT"] == 7 and snap.commands["QUIT"] == 1
    assert snap.open_connections == 0 and snap.data_attempts == 0
    json.dumps(as_log(snap))  # the sim_stopped line's rendering


async def test_greeting_rules(autojump_clock: trio.testing.MockClock) -> None:
    _, host = pick(WORLD, Behaviour.VERIFIABLE)
    with trio.fail_after(10):
        async with session(WORLD, host, SimStats()) as c:
            await c.reply()
            assert await c.one("MAIL FROM:<a@b.test>") == "503 5.5.1 Error: send HELO/EHLO first"
            assert await c.one("EHLO") == "501 5.5.4 Syntax: EHLO hostname"
            await c.cmd("EHLO x.test")
            assert await c.one("MAIL FROM:a@b.test") == "501 5.1.7 Bad sender address syntax"
            assert await c.one("MAIL FROM:<> SIZE=100") == "250 2.1.0 Ok"
            assert await c.one("") == "500 5.5.2 Error: bad syntax"


async def test_jitter_is_bounded_and_seeded(autojump_clock: trio.testing.MockClock) -> None:
    _, host = pick(JITTERY, Behaviour.VERIFIABLE)

    async def delays() -> list[float]:
        out = []
        async with session(JITTERY, host, SimStats()) as c:
            t = now()
            await c.reply()
            for _ in range(10):
                out.append(now() - t)
                t = now()
                await c.cmd("NOOP")
        return out

    with trio.fail_after(10):
        first, second = await delays(), await delays()
    assert first == pytest.approx(second)  # fresh stats: same connection number, same delays
    assert all(0.025 - 1e-9 <= d <= 0.075 + 1e-9 for d in first)
    assert len({round(d, 6) for d in first}) > 3


async def test_pipelining(autojump_clock: trio.testing.MockClock) -> None:
    domain, host = pick(WORLD, Behaviour.SHARED_HOST)
    box = person_box(domain)
    with trio.fail_after(10):
        async with session(WORLD, host, SimStats()) as c:
            await c.reply()
            t0 = now()
            await c.stream.send_all(
                f"EHLO x.test\r\nMAIL FROM:<{SENDER}>\r\nRCPT TO:<{box}@{domain.name}>\r\n"
                "QUIT\r\n".encode()
            )
            assert (await c.reply())[-1] == "250 SIZE 10240000"
            assert await c.reply() == ["250 2.1.0 Ok"]
            assert await c.reply() == ["250 2.1.5 Ok"]
            assert await c.reply() == ["221 2.0.0 Bye"]
            # The four replies go out in one write when the input runs dry (as Postfix's smtpd
            # flushes its replies): one round trip for the group, not four.
            assert now() == pytest.approx(t0 + LAT)


async def test_shared_host_serves_only_its_domains(autojump_clock: trio.testing.MockClock) -> None:
    google, outlook = SHARED_HOSTS[0], SHARED_HOSTS[1]
    mine = sorted(WORLD.served_by(google))[0]
    other = sorted(WORLD.served_by(outlook))[0]
    assert len(WORLD.served_by(google)) > 10
    with trio.fail_after(10):
        async with session(WORLD, WORLD.hosts[google], SimStats()) as c:
            await c.ready()
            assert await c.one(f"RCPT TO:<postmaster@{mine}>") == "250 2.1.5 Ok"
            assert (await c.one(f"RCPT TO:<postmaster@{other}>")).startswith("550 5.1.2 ")


async def test_catchall_accepts_anything(autojump_clock: trio.testing.MockClock) -> None:
    domain, host = pick(WORLD, Behaviour.CATCHALL)
    with trio.fail_after(10):
        async with session(WORLD, host, SimStats()) as c:
            await c.ready()
            assert await c.one(f"RCPT TO:<qx7zv1k@{domain.name}>") == "250 2.1.5 Ok"


async def test_greylist(autojump_clock: trio.testing.MockClock) -> None:
    domain, host = pick(WORLD, Behaviour.GREYLIST)
    assert host.greylist_delay == 2.0
    box = f"{person_box(domain)}@{domain.name}"
    grey = (
        f"450 4.2.0 <{box}>: Recipient address rejected: Greylisted, see "
        f"http://postgrey.schweikert.ch/help/{domain.name}.html"
    )
    stats = SimStats()
    with trio.fail_after(30):
        async with session(WORLD, host, stats) as c:
            await c.ready()
            t_first = now()
            assert await c.one(f"RCPT TO:<{box}>") == grey
            await trio.sleep_until(t_first + 1.9)
            assert await c.one(f"RCPT TO:<{box}>") == grey  # too soon: still greylisted
            assert now() == pytest.approx(t_first + 1.9 + LAT)
            await trio.sleep_until(t_first + 2.0)
            assert await c.one(f"RCPT TO:<{box}>") == "250 2.1.5 Ok"
            assert now() == pytest.approx(t_first + 2.0 + LAT)
            unknown = f"nobody1@{domain.name}"
            t_unknown = now()
            assert (await c.one(f"RCPT TO:<{unknown}>")).startswith("450 4.2.0 ")
            await trio.sleep_until(t_unknown + 2.0)
            assert (await c.one(f"RCPT TO:<{unknown}>")).startswith("550 5.1.1 ")
        # The triplet outlives the session; a new sender starts over.
        async with session(WORLD, host, stats) as c:
            await c.ready()
            assert await c.one(f"RCPT TO:<{box}>") == "250 2.1.5 Ok"
            assert await c.one("RSET") == "250 2.0.0 Ok"
            assert await c.one("MAIL FROM:<other@sender.test>") == "250 2.1.0 Ok"
            assert (await c.one(f"RCPT TO:<{box}>")).startswith("450 4.2.0 ")
    assert stats.statistics().greylist_entries == 3


async def test_rcpt_limit_452(autojump_clock: trio.testing.MockClock) -> None:
    domain, host = pick(WORLD, Behaviour.RCPT_LIMIT_452)
    box = f"{person_box(domain)}@{domain.name}"
    with trio.fail_after(10):
        async with session(WORLD, host, SimStats()) as c:
            await c.ready()
            assert await c.one(f"RCPT TO:<{box}>") == "250 2.1.5 Ok"
            assert await c.one(f"RCPT TO:<zz1@{domain.name}>") == "452 4.5.3 Too many recipients"
            assert await c.one(f"RCPT TO:<{box}>") == "452 4.5.3 Too many recipients"
            assert await c.one("RSET") == "250 2.0.0 Ok"
            assert await c.one(f"MAIL FROM:<{SENDER}>") == "250 2.1.0 Ok"
            assert (await c.one(f"RCPT TO:<zz1@{domain.name}>")).startswith("550 5.1.1 ")
            assert await c.one(f"RCPT TO:<{box}>") == "452 4.5.3 Too many recipients"
            await c.cmd("EHLO again.test")  # EHLO also ends the transaction
            assert await c.one(f"MAIL FROM:<{SENDER}>") == "250 2.1.0 Ok"
            assert await c.one(f"RCPT TO:<{box}>") == "250 2.1.5 Ok"


async def test_drop_mid(autojump_clock: trio.testing.MockClock) -> None:
    _, host = pick(WORLD, Behaviour.DROP_MID)
    stats = SimStats()
    with trio.fail_after(10):
        for _ in range(2):  # every time, not just once
            async with session(WORLD, host, stats) as c:
                await c.reply()
                await c.cmd("EHLO x.test")
                t = now()
                await c.send(f"MAIL FROM:<{SENDER}>")
                assert await c.at_eof()
                assert now() == pytest.approx(t)
    assert stats.dropped[host.name] == 2
    assert stats.statistics().dropped == 2


async def test_blocklist(autojump_clock: trio.testing.MockClock) -> None:
    domain, host = pick(WORLD, Behaviour.BLOCKLIST)
    with trio.fail_after(10):
        async with session(WORLD, host, SimStats()) as c:
            await c.ready()
            assert await c.one(f"RCPT TO:<{person_box(domain)}@{domain.name}>") == (
                "554 5.7.1 Service unavailable; Client host [127.0.0.1] blocked using "
                "zen.spamhaus.org"
            )
        async with session(WORLD, host, SimStats(), peer="127.0.0.9") as c:
            await c.ready()
            assert "[127.0.0.9]" in await c.one(f"RCPT TO:<info@{domain.name}>")


async def test_conn_limit_421(autojump_clock: trio.testing.MockClock) -> None:
    _, host = pick(WORLD, Behaviour.CONN_LIMIT_421)
    assert host.conn_limit == 4
    stats = SimStats()
    with trio.fail_after(10):
        async with AsyncExitStack() as stack:
            clients = [
                await stack.enter_async_context(session(WORLD, host, stats)) for _ in range(4)
            ]
            for c in clients:
                assert (await c.reply())[0].startswith("220 ")
            async with session(WORLD, host, stats) as extra:
                t = now()
                assert await extra.reply() == ["421 4.7.0 Too many connections, try again later"]
                assert now() == pytest.approx(t + LAT)
                assert await extra.at_eof()
            assert stats.peak_concurrent[host.name] == 5
            assert await clients[0].one("QUIT") == "221 2.0.0 Bye"
            assert await clients[0].at_eof()
            async with session(WORLD, host, stats) as again:
                assert (await again.reply())[0].startswith("220 ")
    snap = stats.statistics()
    assert snap.rejected_421 == 1 and snap.replies["421"] == 1
    assert snap.connections_by_host == {host.name: 6}


async def test_tarpit_banner(autojump_clock: trio.testing.MockClock) -> None:
    _, host = pick(WORLD, Behaviour.TARPIT)
    with trio.fail_after(10):
        async with session(WORLD, host, SimStats()) as c:
            t0 = now()
            assert (await c.reply())[0].startswith("220 ")
            assert now() == pytest.approx(t0 + 3.0 + LAT)
            await c.cmd("EHLO x.test")
            assert now() == pytest.approx(t0 + 3.0 + 2 * LAT)


async def test_data_refused_and_counted(autojump_clock: trio.testing.MockClock) -> None:
    domain, host = pick(WORLD, Behaviour.VERIFIABLE)
    stats = SimStats()
    with trio.fail_after(10):
        async with session(WORLD, host, stats) as c:
            await c.ready()
            await c.cmd(f"RCPT TO:<{person_box(domain)}@{domain.name}>")
            assert await c.one("DATA") == "554 5.5.1 DATA not allowed in simulation"
            assert await c.one("QUIT") == "221 2.0.0 Bye"
    assert stats.data_attempts == 1
    assert stats.statistics().commands["DATA"] == 1


async def test_idle_timeout(autojump_clock: trio.testing.MockClock) -> None:
    _, host = pick(WORLD, Behaviour.VERIFIABLE)
    stats = SimStats()
    with trio.fail_after(120):
        async with session(WORLD, host, stats) as c:
            t0 = now()
            await c.reply()
            line = await c.reply()
            assert line == [f"421 4.4.2 {host.name} Error: timeout exceeded"]
            assert now() == pytest.approx(t0 + LAT + 60.0 + LAT)
            assert await c.at_eof()
    assert stats.idle_timeouts == 1


# -- in-memory connector and resolver ----------------------------------------------------------


async def test_sim_connector(autojump_clock: trio.testing.MockClock) -> None:
    domain, _ = pick(WORLD, Behaviour.FIRST_MX_DEAD)
    dead, live = WORLD.mx_hosts(domain.name)
    with trio.fail_after(10):
        async with open_sim_connector(WORLD, connect_latency=0.01) as connector:
            for address, port in [(dead.ip, 2525), ("127.99.0.1", 2525), (live.ip, 25)]:
                with pytest.raises(ConnectionRefusedError):
                    await connector.connect(address, port)
            t0 = now()
            c = Client(await connector.connect(live.ip, WORLD.smtp_port))
            assert now() == pytest.approx(t0 + 0.01)
            await c.ready()
            assert await c.one(f"RCPT TO:<{person_box(domain)}@{domain.name}>") == "250 2.1.5 Ok"
            # A leaked session must not keep the context open until its idle timeout.
            leaked = await connector.connect(live.ip, WORLD.smtp_port)
            t_exit = now()
        assert now() < t_exit + 1
        assert connector.stats.connections[live.name] == 2
        assert len(connector.attempts) == 5
        with pytest.raises(ConnectionRefusedError):
            await connector.connect(live.ip, WORLD.smtp_port)
        await leaked.aclose()


async def test_sim_resolver(autojump_clock: trio.testing.MockClock) -> None:
    resolver = SimResolver(WORLD, latency=0.02, unavailable={"down.test"})
    dead_domain, _ = pick(WORLD, Behaviour.FIRST_MX_DEAD)
    with trio.fail_after(10):
        t0 = now()
        found = await resolver.lookup(dead_domain.name.upper() + ".")
        assert now() == pytest.approx(t0 + 0.02)
        assert found.status is MxStatus.FOUND and found.domain == dead_domain.name
        assert [(h.preference, h.name) for h in found.hosts] == list(dead_domain.mx)
        assert found.hosts[0].addresses == (WORLD.hosts[dead_domain.mx[0][1]].ip,)
        for behaviour, status in [
            (Behaviour.NXDOMAIN, MxStatus.NXDOMAIN),
            (Behaviour.NO_MX, MxStatus.NO_MX),
            (Behaviour.NULL_MX, MxStatus.NULL_MX),
            (Behaviour.SHARED_HOST, MxStatus.FOUND),
        ]:
            d = WORLD.by_behaviour(behaviour)[0]
            assert (await resolver.lookup(d.name)).status is status
        assert (await resolver.lookup("never-heard-of.test")).status is MxStatus.NXDOMAIN
        with pytest.raises(DnsUnavailable):
            await resolver.lookup("down.test")


# -- DNS responder, no sockets -----------------------------------------------------------------


def _ask(
    responder: DnsResponder, name: str, rdtype: str, qid: int = 1, **kwargs: Any
) -> dns.message.Message:
    query = dns.message.make_query(name, rdtype, **kwargs)
    query.id = qid
    wire = responder.respond(query.to_wire())
    assert wire is not None
    reply = dns.message.from_wire(wire)
    assert reply.id == qid and reply.flags & dns.flags.AA
    return reply


def _texts(reply: dns.message.Message) -> list[str]:
    return sorted(rd.to_text() for rrset in reply.answer for rd in rrset)


@pytest.mark.parametrize("fast", [True, False])
def test_dns_responder(fast: bool) -> None:
    stats = SimStats()
    responder = DnsResponder(WORLD, stats, fast=fast)
    dead_domain, _ = pick(WORLD, Behaviour.FIRST_MX_DEAD)
    mx1, mx2 = WORLD.mx_hosts(dead_domain.name)
    reply = _ask(responder, dead_domain.name, "MX")
    assert _texts(reply) == [f"10 {mx1.name}.", f"20 {mx2.name}."]
    assert reply.answer[0].ttl == 300
    glue = sorted(rd.to_text() for rrset in reply.additional for rd in rrset)
    assert glue == sorted([mx1.ip, mx2.ip])
    assert _texts(_ask(responder, mx1.name.upper(), "A")) == [mx1.ip]

    null = WORLD.by_behaviour(Behaviour.NULL_MX)[0]
    assert _texts(_ask(responder, null.name, "MX")) == ["0 ."]

    no_mx = WORLD.by_behaviour(Behaviour.NO_MX)[0]
    reply = _ask(responder, no_mx.name, "MX")
    assert reply.rcode() == dns.rcode.NOERROR and not reply.answer
    assert reply.authority[0].rdtype == dns.rdatatype.SOA
    assert reply.authority[0].name.to_text() == no_mx.name + "."
    assert _texts(_ask(responder, no_mx.name, "A")) == [no_mx.a]

    for name in (WORLD.by_behaviour(Behaviour.NXDOMAIN)[0].name, "nope.example.test"):
        reply = _ask(responder, name, "MX")
        assert reply.rcode() == dns.rcode.NXDOMAIN and reply.authority

    reply = _ask(responder, SHARED_HOSTS[0], "AAAA")
    assert reply.rcode() == dns.rcode.NOERROR and not reply.answer
    assert _ask(responder, "sim-google.test", "A").rcode() == dns.rcode.NOERROR  # ancestor

    reply = _ask(responder, dead_domain.name, "MX", qid=4242, use_edns=0, payload=1232)
    assert _texts(reply) == [f"10 {mx1.name}.", f"20 {mx2.name}."]
    assert reply.edns == 0 and reply.payload == 8192
    assert _ask(responder, mx1.name, "A", rdclass="CH").rcode() == dns.rcode.REFUSED
    assert responder.respond(b"\x00\x01garbage") is None
    assert responder.respond(b"\x00" * 40) is None
    snap = stats.statistics()
    assert snap.dns_queries == {"MX": 6, "A": 4, "AAAA": 1}
    assert snap.dns_rcodes["NXDOMAIN"] == 2 and snap.dns_malformed == 2


def test_dns_fast_path_matches_dnspython() -> None:
    fast, slow = DnsResponder(WORLD, SimStats()), DnsResponder(WORLD, SimStats(), fast=False)
    names = [d.name for d in list(WORLD.domains.values())[:60]]
    names += [h.name for h in list(WORLD.hosts.values())[:20]]
    names += ["nope.example.test", "sim-google.test", "co.uk", "x.y.z.co.uk"]
    for i, name in enumerate(names):
        for rdtype in ("MX", "A", "AAAA", "TXT"):
            for edns in (-1, 0):
                q = dns.message.make_query(name.title(), rdtype, use_edns=edns)
                q.id = i
                wire = q.to_wire()
                a, b = fast.respond(wire), slow.respond(wire)
                assert a is not None and b is not None
                assert dns.message.from_wire(a) == dns.message.from_wire(b), (name, rdtype)
                # dnspython compresses MX targets against the query's spelling of the name.
                # Rdatasets are sets, so compare line sets.
                text_a, text_b = (
                    sorted(dns.message.from_wire(x).to_text().lower().splitlines()) for x in (a, b)
                )
                assert text_a == text_b


# -- real sockets ------------------------------------------------------------------------------


async def test_serve_world_on_loopback() -> None:
    world = World.generate(
        5, 30, smtp_port=2599, dns_port=5399, dns_address="127.0.53.53", latency_ms=1, jitter_ms=0
    )

    def query(name: str, rdtype: str) -> dns.message.Message:
        q = dns.message.make_query(name, rdtype)
        return dns.query.udp(q, world.dns_address, port=world.dns_port, timeout=5)

    async def ask(name: str, rdtype: str) -> dns.message.Message:
        return await trio.to_thread.run_sync(query, name, rdtype)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            stats = await nursery.start(serve_world, world)
            verifiable = world.by_behaviour(Behaviour.VERIFIABLE)[0]
            host = world.mx_hosts(verifiable.name)[0]
            assert _texts(await ask(verifiable.name, "MX")) == [f"10 {host.name}."]
            assert _texts(await ask(host.name, "A")) == [host.ip]
            null = world.by_behaviour(Behaviour.NULL_MX)[0]
            assert _texts(await ask(null.name, "MX")) == ["0 ."]
            nx = world.by_behaviour(Behaviour.NXDOMAIN)[0]
            assert (await ask(nx.name, "MX")).rcode() == dns.rcode.NXDOMAIN

            stream = await trio.open_tcp_stream(host.ip, world.smtp_port)
            async with stream:
                c = Client(stream)
                assert await c.reply() == [f"220 {host.name} ESMTP ct-actors-sim"]
                assert (await c.cmd("EHLO probe.sender.test"))[0] == f"250-{host.name}"
                assert await c.one(f"MAIL FROM:<{SENDER}>") == "250 2.1.0 Ok"
                box = person_box(verifiable)
                assert await c.one(f"RCPT TO:<{box}@{verifiable.name}>") == "250 2.1.5 Ok"
                assert await c.one("QUIT") == "221 2.0.0 Bye"
                assert await c.at_eof()

            # One wildcard listener serves every address, so a dead host cannot refuse the
            # connect: it accepts and resets before any byte (server.py says why).
            dead = world.mx_hosts(world.by_behaviour(Behaviour.FIRST_MX_DEAD)[0].name)[0]
            async with await trio.open_tcp_stream(dead.ip, world.smtp_port) as stream:
                with pytest.raises(trio.BrokenResourceError):
                    await stream.receive_some(4096)
            nursery.cancel_scope.cancel()
    snap = stats.statistics()
    assert snap.connections_by_host == {host.name: 1}
    assert snap.reset_dead_host == 1
    assert snap.dns_queries == {"MX": 3, "A": 1}


def test_cli_serve(tmp_path: Path) -> None:
    world_file = tmp_path / "world.json"
    cmd = [
        sys.executable, "-m", "ct_actors.sim", "serve", "--seed", "3", "--domains", "20",
        "--world-file", str(world_file), "--smtp-port", "2598", "--dns-port", "5398",
        "--latency-ms", "1",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) as proc:
        try:
            assert proc.stdout is not None
            ready = json.loads(proc.stdout.readline())
            assert ready["event"] == "sim_ready" and ready["domains"] == 20
            world = World.from_json(world_file.read_text(encoding="utf-8"))
            assert world.to_json() == World.generate(3, 20, latency_ms=1, smtp_port=2598,
                                                     dns_port=5398).to_json()  # fmt: skip
            proc.send_signal(signal.SIGTERM)
            stopped = json.loads(proc.stdout.readline())
            assert stopped["event"] == "sim_stopped" and stopped["signal"] == "SIGTERM"
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


# -- broken resolvers (fault modes) ------------------------------------------------------------


@pytest.mark.parametrize("rd", [True, False])
@pytest.mark.parametrize("edns", [-1, 0])
def test_dns_responder_servfail(rd: bool, edns: int) -> None:
    stats = SimStats()
    responder = DnsResponder(WORLD, stats, fault="servfail")
    domain, _ = pick(WORLD, Behaviour.VERIFIABLE)
    query = dns.message.make_query(domain.name.upper(), "MX", use_edns=edns)
    query.id = 4711
    if not rd:
        query.flags &= ~dns.flags.RD
    wire = responder.respond(query.to_wire())
    assert wire is not None
    reply = dns.message.from_wire(wire)
    assert reply.id == 4711 and reply.rcode() == dns.rcode.SERVFAIL
    assert bool(reply.flags & dns.flags.QR) and not reply.flags & dns.flags.AA
    assert bool(reply.flags & dns.flags.RD) is rd
    assert reply.question == query.question  # echoed as asked, case included
    assert reply.question[0].name.to_text() == domain.name.upper() + "."
    assert not reply.answer and not reply.authority and not reply.additional
    assert reply.edns == edns
    assert query.is_response(reply)  # what dnspython checks before trusting an answer
    # Garbage and responses are still ignored, not SERVFAILed.
    assert responder.respond(b"\x00\x01garbage") is None
    assert responder.respond(wire) is None
    snap = stats.statistics()
    assert snap.dns_rcodes == {"SERVFAIL": 1} and snap.dns_queries == {"MX": 1}
    assert snap.dns_malformed == 2


def test_dns_responder_silent_and_repair() -> None:
    stats = SimStats()
    responder = DnsResponder(WORLD, stats, fault="silent")
    domain, host = pick(WORLD, Behaviour.VERIFIABLE)
    query = dns.message.make_query(domain.name, "MX")
    assert responder.respond(query.to_wire()) is None
    assert stats.statistics().dns_dropped == 1
    responder.fault = "none"
    assert _texts(_ask(responder, domain.name, "MX")) == [f"10 {host.name}."]
    responder.fault = "servfail"
    wire = responder.respond(query.to_wire())
    assert wire is not None and dns.message.from_wire(wire).rcode() == dns.rcode.SERVFAIL
    with pytest.raises(ValueError, match="fault must be one of"):
        responder.fault = "broken"  # type: ignore[assignment]
    assert responder.fault == "servfail"
    with pytest.raises(ValueError, match="fault must be one of"):
        DnsResponder(WORLD, stats, fault="SERVFAIL")  # type: ignore[arg-type]


async def _serve_pair(nursery: trio.Nursery, broken: DnsResponder) -> tuple[str, str, int]:
    """A healthy listener and `broken` on one port (the client asks every nameserver on one
    port), on two loopback addresses; returns (healthy, broken, port)."""
    healthy_ip, broken_ip = "127.0.54.1", "127.0.54.2"
    _, port = await nursery.start(
        functools.partial(serve_dns, WORLD, SimStats(), address=healthy_ip, port=0)
    )
    await nursery.start(
        functools.partial(serve_dns, WORLD, SimStats(), address=broken_ip, port=port,
                          responder=broken)
    )  # fmt: skip
    return healthy_ip, broken_ip, port


async def test_broken_resolvers_seen_by_the_udp_client() -> None:
    domain, host = pick(WORLD, Behaviour.VERIFIABLE)
    stats = SimStats()
    broken = DnsResponder(WORLD, stats, fault="servfail")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            healthy_ip, broken_ip, port = await _serve_pair(nursery, broken)

            # SERVFAIL from the only nameserver comes back as such (the caller's
            # interpretation turns it into DnsUnavailable).
            async with UdpDnsClient([broken_ip], port=port, timeout=2.0, attempts=1) as client:
                reply = await client.exchange(domain.name, "MX")
                assert reply.reply.rcode == dns.rcode.SERVFAIL
                assert reply.nameserver == broken_ip and not reply.via_tcp
                assert reply.message.rcode() == dns.rcode.SERVFAIL

            # Broken first, healthy second: the client moves on and gets the answer.
            servers = [broken_ip, healthy_ip]
            async with UdpDnsClient(servers, port=port, timeout=2.0, attempts=2) as client:
                reply = await client.exchange(domain.name, "MX")
                assert reply.nameserver == healthy_ip
                assert reply.reply.rcode == dns.rcode.NOERROR
                assert _texts(reply.message) == [f"10 {host.name}."]

            # Silent: a timeout, never an answer.
            broken.fault = "silent"
            async with UdpDnsClient([broken_ip], port=port, timeout=0.3, attempts=2) as client:
                with pytest.raises(DnsUnavailable, match="timeout") as info:
                    await client.exchange(domain.name, "MX")
                assert info.value.nameserver == broken_ip
                assert client.statistics().timeouts == 2

                # Repaired while serving: answers come back on the same socket.
                broken.fault = "none"
                reply = await client.exchange(domain.name, "MX")
                assert reply.nameserver == broken_ip
                assert _texts(reply.message) == [f"10 {host.name}."]
            nursery.cancel_scope.cancel()
    snap = stats.statistics()
    assert snap.dns_rcodes == {"SERVFAIL": 2, "NOERROR": 1}
    assert snap.dns_dropped == 2


async def test_serve_dns_fault_argument() -> None:
    domain, _ = pick(WORLD, Behaviour.VERIFIABLE)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            address, port = await nursery.start(
                functools.partial(
                    serve_dns, WORLD, SimStats(), address="127.0.54.3", port=0, fault="servfail"
                )
            )
            assert address == "127.0.54.3"
            async with UdpDnsClient([address], port=port, timeout=2.0, attempts=1) as client:
                reply = await client.exchange(domain.name, "MX")
                assert reply.reply.rcode == dns.rcode.SERVFAIL
            with pytest.raises(ValueError, match="either a responder or a fault"):
                await serve_dns(
                    WORLD, SimStats(), port=0, fault="silent",
                    responder=DnsResponder(WORLD, SimStats()),
                )  # fmt: skip
            nursery.cancel_scope.cancel()


def test_cli_broken_dns_syntax(capsys: pytest.CaptureFixture[str]) -> None:
    base = ["serve", "--seed", "1", "--domains", "1", "--world-file", "/nonexistent/w.json"]
    args = build_parser().parse_args(
        [*base, "--broken-dns", "127.0.53.54=servfail", "--broken-dns", "127.0.53.55:5400=silent"]
    )
    assert [(b.address, b.port, b.fault) for b in args.broken_dns] == [
        ("127.0.53.54", None, "servfail"),
        ("127.0.53.55", 5400, "silent"),
    ]
    assert build_parser().parse_args(base).broken_dns == []
    assert str(BrokenDns("127.0.53.54", 5353, "servfail")) == "127.0.53.54:5353=servfail"
    bad: list[tuple[list[str], str]] = [
        (["--broken-dns", "127.0.53.54"], "expected ADDRESS[:PORT]=FAULT"),
        (["--broken-dns", "127.0.53.54=none"], "FAULT one of servfail, silent"),
        (["--broken-dns", "127.0.53.54=refused"], "expected ADDRESS[:PORT]=FAULT"),
        (["--broken-dns", "localhost=servfail"], "IPv4 ADDRESS"),
        (["--broken-dns", "::1=servfail"], "IPv4 ADDRESS"),
        (["--broken-dns", "127.0.53.54:0=silent"], "expected ADDRESS[:PORT]=FAULT"),
        (["--broken-dns", "127.0.53.54:x=silent"], "expected ADDRESS[:PORT]=FAULT"),
        # Checked once --dns-address/--dns-port are known, before anything is bound.
        (["--broken-dns", "127.0.53.53=silent"], "is the healthy DNS server's too"),
        (
            [
                "--dns-port",
                "5400",
                "--broken-dns",
                "127.0.53.53:5353=silent",
                "--broken-dns",
                "127.0.53.53=servfail",
            ],
            "is the healthy DNS server's too",
        ),
        (
            ["--broken-dns", "127.0.53.54=silent", "--broken-dns", "127.0.53.54:5353=servfail"],
            "is --broken-dns 127.0.53.54:5353=silent's too",
        ),
    ]
    for extra, message in bad:
        with pytest.raises(SystemExit) as info:
            main([*base, *extra])
        assert info.value.code == 2
        assert message in capsys.readouterr().err, extra


@pytest.mark.timeout(90)
def test_cli_serve_with_broken_dns(tmp_path: Path) -> None:
    """A healthy and two broken resolvers from one simulator process, as a daemon test would
    configure them: dns.nameservers = [broken, healthy], one dns.port."""
    world_file = tmp_path / "world.json"
    port = 5397
    cmd = [
        sys.executable, "-m", "ct_actors.sim", "serve", "--seed", "3", "--domains", "20",
        "--world-file", str(world_file), "--smtp-port", "2597", "--dns-port", str(port),
        "--latency-ms", "1",
        "--broken-dns", "127.0.53.54=servfail", "--broken-dns", "127.0.53.55=silent",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}

    def ask(address: str, timeout: float = 5.0) -> dns.message.Message:
        return dns.query.udp(dns.message.make_query(name, "MX"), address, port=port,
                             timeout=timeout)  # fmt: skip

    with subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env) as proc:
        try:
            assert proc.stdout is not None
            ready = json.loads(proc.stdout.readline())
            assert ready["event"] == "sim_ready", ready
            assert ready["broken_dns"] == [
                f"127.0.53.54:{port}=servfail",
                f"127.0.53.55:{port}=silent",
            ]
            world = World.from_json(world_file.read_text(encoding="utf-8"))
            name = world.by_behaviour(Behaviour.VERIFIABLE)[0].name
            assert ask("127.0.53.53").rcode() == dns.rcode.NOERROR
            assert ask("127.0.53.54").rcode() == dns.rcode.SERVFAIL
            with pytest.raises(dns.exception.Timeout):
                ask("127.0.53.55", timeout=0.3)
            proc.send_signal(signal.SIGTERM)
            stopped = json.loads(proc.stdout.readline())
            assert stopped["event"] == "sim_stopped"
            assert stopped["stats"]["dns_rcodes"] == {"NOERROR": 1, "SERVFAIL": 1}
            assert stopped["stats"]["dns_dropped"] == 1
            assert proc.wait(timeout=30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


@pytest.mark.parametrize("fast", [True, False])
def test_dns_responder_answers_what_a_resolver_health_check_asks(fast: bool) -> None:
    # `. NS` and `a.root-servers.net A` (ct_actors/dns/health.py): what any recursive resolver
    # answers, so the daemon's health check passes against the simulated internet.
    responder = DnsResponder(WORLD, SimStats(), fast=fast)
    assert _texts(_ask(responder, ".", "NS")) == ["a.root-servers.net."]
    assert _texts(_ask(responder, "a.root-servers.net", "A")) == ["198.41.0.4"]
    reply = _ask(responder, "a.root-servers.net", "AAAA")
    assert reply.rcode() == dns.rcode.NOERROR and not reply.answer


async def test_resolver_health_check_passes_on_the_simulated_dns_fails_on_servfail() -> None:
    broken = DnsResponder(WORLD, SimStats(), fault="servfail")
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            healthy_ip, broken_ip, port = await _serve_pair(nursery, broken)
            for ip, healthy in ((healthy_ip, True), (broken_ip, False)):
                async with UdpDnsClient([ip], port=port, timeout=2.0, attempts=1) as client:
                    answers = await DnsMxResolver(client).check_health("a.root-servers.net")
                    assert [a.ok for a in answers] == [healthy, healthy]
            nursery.cancel_scope.cancel()
