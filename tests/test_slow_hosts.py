"""Issue 10, item 5 (second half): slow hosts (tarpits) must not starve the global connection cap.

`smtp_probe` through the real pools on the fake mail network (`MailHostNet`), under the
autojump MockClock. A tarpit answers every command 29 s late (just inside command_timeout,
30 s), as Exim's `delay` ACL modifier or a Postfix past `smtpd_soft_error_limit` with a long
`smtpd_error_sleep_time` would; a healthy host answers in 0.25 s. A domain's default plan on a
host where only info@ exists is: greeting, EHLO, MAIL, RCPT catch-all probe, RCPT info@ — five
replies: 1.25 s on a healthy host, 145 s on a tarpit. A greeting or reply still awaited after
`slow_reply_seconds` (10 s) marks the host slow; the slow share is a quarter of
`max_connections`; a client QUIT waits at most 2 s (DEFAULT_QUIT_TIMEOUT).
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest
import trio
import trio.testing
from trio import current_time as now

from ct_actors.actors.domain_task import smtp_probe
from ct_actors.actors.pool_manager import SmtpPoolManager
from ct_actors.actors.pool_settings import PoolSettings
from ct_actors.actors.pool_statistics import PoolManagerStatistics
from ct_actors.actors.visit_request import ProbeRequest
from ct_actors.dns.types import MxHost, MxLookup, MxStatus
from ct_actors.net.connector import Connector
from ct_actors.outcome import Passed
from ct_actors.probe.domain_probe import DomainResult, RetryPolicy
from ct_actors.probe.visit import HostVisit
from ct_actors.testing import (
    HELO,
    MAIL_FROM,
    Expect,
    Hang,
    MailHost,
    MailHostNet,
    ScriptedConnector,
    Step,
    closing,
    opening,
    reply,
)

pytestmark = pytest.mark.timeout(60)

BOUND = 10_000.0  # virtual seconds
TARPIT = 29.0  # seconds per reply, just inside command_timeout

SETTINGS = PoolSettings(
    # Not about directory-harvest pacing: lifted, so the timelines show the slow share alone.
    max_rejected_rcpts_per_host=1_000_000,
    helo_name=HELO,
    mail_from=MAIL_FROM,
    connect_timeout=10.0,
    command_timeout=30.0,
    # The timelines below count a tarpit's unanswered QUIT as 2 s (smtp.quit_timeout set so).
    quit_timeout=2.0,
    starttls="never",
    initial_connections_per_host=1,
    max_connections_per_host=2,
    session_reuse_seconds=30.0,
    session_idle_seconds=2.0,
    pool_idle_seconds=60.0,
    slow_reply_seconds=10.0,
    slow_host_seconds=3600.0,
    slow_connections_share=0.25,
)
POLICY = RetryPolicy(greylist_delay=120.0, throttle_delay=2.0, defer_seconds=600.0)


def info_host(name: str, address: str, latency: float = 0.25) -> MailHost:
    return MailHost(name, address, latency=latency, mailboxes=frozenset({"info"}))


@dataclass(eq=False)
class TurningHost(MailHost):
    """Answers quickly until `slow_from`, then every reply TARPIT seconds late (a server that
    starts tarpitting mid-conversation)."""

    slow_from: float = 0.0

    @property  # type: ignore[override]
    def latency(self) -> float:
        return TARPIT if now() >= self.slow_from else self._fast

    @latency.setter
    def latency(self, value: float) -> None:
        self._fast = value


def tarpits(n: int = 8) -> list[MailHost]:
    return [info_host(f"mx.tarpit{i}.test", f"192.0.2.{10 + i}", TARPIT) for i in range(n)]


@asynccontextmanager
async def network(
    hosts: Sequence[MailHost], *, max_connections: int, settings: PoolSettings = SETTINGS
) -> AsyncIterator[SmtpPoolManager]:
    async with trio.open_nursery() as nursery:
        net = MailHostNet(nursery, hosts)
        manager = SmtpPoolManager(settings, net, max_connections=max_connections)
        await nursery.start(manager.run)
        try:
            yield manager
        finally:
            manager.close()


async def probe(manager: SmtpPoolManager, domain: str, host: MailHost) -> DomainResult:
    mx = MxLookup(domain, MxStatus.FOUND, (host.as_mx(10),), nameserver="192.0.2.53:53")
    return await smtp_probe(mx, [], manager, POLICY)


def assert_info_pass(result: DomainResult, domain: str) -> None:
    assert isinstance(result.result, Passed), result.result
    assert (result.result.method_type, result.result.email_method) == ("info", f"info@{domain}")


async def healthy_domain_at(
    start: float, tarpit_hosts: Sequence[MailHost], max_connections: int = 8
) -> tuple[float, dict[str, DomainResult], PoolManagerStatistics]:
    """Two domains per tarpit host from t=0 on (so the tarpits keep holding sessions), then
    one domain on a healthy host at `start`. Returns how long the healthy domain took, every
    result, and the pool statistics when the healthy domain started."""
    healthy = info_host("mx.healthy.test", "192.0.2.1")
    results: dict[str, DomainResult] = {}
    seen: list[PoolManagerStatistics] = []

    async def one(domain: str, host: MailHost) -> None:
        results[domain] = await probe(manager, domain, host)

    t0 = now()
    async with (
        network([healthy, *tarpit_hosts], max_connections=max_connections) as manager,
        trio.open_nursery() as nursery,
    ):
        for i, host in enumerate(tarpit_hosts):
            for j in range(2):
                nursery.start_soon(one, f"t{i}-{j}.test", host)
        await trio.sleep_until(t0 + start)
        seen.append(manager.statistics())
        assert_info_pass(await probe(manager, "healthy.test", healthy), "healthy.test")
        took = now() - t0 - start
    return took, results, seen[0]


async def test_a_healthy_domain_waits_no_longer_because_eight_tarpits_hold_connections(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # max_connections 8: eight tarpits would hold every connection for minutes. Once they
    # are known slow they share 2 (a quarter) and the healthy domain finds the other 6.
    with trio.fail_after(BOUND):
        alone, _, _ = await healthy_domain_at(60.0, [])
        hosts = tarpits()
        with_tarpits, results, seen = await healthy_domain_at(60.0, hosts)
    assert alone == 1.25
    assert with_tarpits == alone  # exactly the same virtual timeline
    assert seen.slow_hosts == 8
    assert (seen.slow_connections_in_use, seen.slow_connections_max) == (2, 2)
    assert seen.connections_in_use == 2  # the six others wait holding nothing
    assert seen.slow_moves == 2 and seen.slow_evictions == 6
    # Every tarpit domain still concludes, with the right answer: slowness is never a FAIL.
    assert len(results) == 16
    for domain, result in results.items():
        assert_info_pass(result, domain)
        assert [v["outcome"] for v in result.result.evidence["visits"]] == ["concluded"]
        assert result.result.evidence["visits"][0]["slow_host"] is True


async def test_tarpits_met_for_the_first_time_hold_the_cap_only_until_the_threshold(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Eight unknown tarpits take all 8 connections at t=0; the healthy domain asks at t=1. At
    # t=10 each greeting has kept us waiting slow_reply_seconds: two sessions move into the
    # slow share, six are closed at once, and the healthy domain connects at 10.0, not when a
    # tarpit's 145 s conversation ends.
    with trio.fail_after(BOUND):
        took, results, _ = await healthy_domain_at(1.0, tarpits())
    assert took == 9.0 + 1.25
    assert len(results) == 16
    for domain, result in results.items():
        assert_info_pass(result, domain)


async def test_a_session_turning_slow_mid_conversation_moves_into_the_slow_share(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Greeting and EHLO in 0.25 s each, then MAIL (sent at 0.5) is answered at 29.5: at 10.5
    # the session takes a slow-share token (there is room) and carries on, same session.
    host = TurningHost("mx.turning.test", "192.0.2.2", mailboxes=frozenset({"info"}), slow_from=0.5)
    with trio.fail_after(BOUND):
        async with network([host], max_connections=8) as manager:
            result = await probe(manager, "turning.test", host)
            assert now() == 0.5 + 3 * TARPIT
            stats = manager.statistics()
    assert_info_pass(result, "turning.test")
    assert host.sessions == 1
    assert (stats.slow_hosts, stats.slow_moves, stats.slow_evictions) == (1, 1, 0)
    assert result.result.evidence["visits"][0]["slow_host"] is True


async def test_a_session_turning_slow_with_the_share_full_is_cut_and_the_domain_goes_on(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # max_connections 4: the slow share is 1, held by a tarpit from t=10 to its QUIT (145 + 2).
    # The turning host's MAIL (sent at 20.5) is still unanswered at 30.5: no room, so that
    # connection is closed at once; the domain waits for the share (holding no connection),
    # then goes on from the same question on a fresh session: greeting, EHLO, MAIL, the two
    # RCPTs at 29 s each from 147 on. One visit, concluded; no session lost to the domain.
    tarpit = info_host("mx.tarpit.test", "192.0.2.10", TARPIT)
    turning = TurningHost(
        "mx.turning.test", "192.0.2.2", mailboxes=frozenset({"info"}), slow_from=20.5
    )
    with trio.fail_after(BOUND):
        async with network([tarpit, turning], max_connections=4) as manager:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(probe, manager, "tarpit.test", tarpit)
                await trio.sleep_until(20.0)
                result = await probe(manager, "turning.test", turning)
                assert now() == 147.0 + 5 * TARPIT
            stats = manager.statistics()
    assert_info_pass(result, "turning.test")
    visits = result.result.evidence["visits"]
    assert [(v["outcome"], v["slow_host"]) for v in visits] == [("concluded", True)]
    assert turning.sessions == 2 and turning.connects == [20.0, 147.0]
    assert (stats.slow_moves, stats.slow_evictions, stats.slow_share_waits) == (1, 1, 1)


async def test_the_time_a_domain_waits_for_the_slow_share_is_not_time_at_the_host(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # As above, seen from the pool: the visit's `elapsed` (what the domain's time budget
    # counts) is 10.5 s on the cut session plus 145 s on the fresh one, not the 116.5 s spent
    # waiting for the share.
    tarpit = info_host("mx.tarpit.test", "192.0.2.10", TARPIT)
    turning = TurningHost(
        "mx.turning.test", "192.0.2.2", mailboxes=frozenset({"info"}), slow_from=20.5
    )
    elapsed: list[float] = []

    class Recording:
        async def visit(self, host: MxHost, request: ProbeRequest) -> HostVisit:
            visit = await manager.visit(host, request)
            elapsed.append(visit.elapsed)
            return visit

    with trio.fail_after(BOUND):
        async with (
            network([tarpit, turning], max_connections=4) as manager,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(probe, manager, "tarpit.test", tarpit)
            await trio.sleep_until(20.0)
            mx = MxLookup("turning.test", MxStatus.FOUND, (turning.as_mx(10),), nameserver="ns:53")
            result = await smtp_probe(mx, [], Recording(), POLICY)
    assert_info_pass(result, "turning.test")
    assert elapsed == [10.5 + 5 * TARPIT]


async def test_a_slow_host_gets_one_connection_whatever_its_window(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Three domains queued on one tarpit whose window may grow to 2. A healthy host's window
    # grows after its first success and a second session opens for the waiting domains; a
    # slow host keeps one: each domain's session opens after the previous one's QUIT (2 s).
    host = info_host("mx.tarpit.test", "192.0.2.10", TARPIT)
    results: dict[str, DomainResult] = {}

    async def one(domain: str) -> None:
        results[domain] = await probe(manager, domain, host)

    with trio.fail_after(BOUND):
        async with network([host], max_connections=8) as manager:
            async with trio.open_nursery() as nursery:
                for i in range(3):
                    nursery.start_soon(one, f"d{i}.test")
            stats = manager.statistics()
    assert host.connects == [0.0, 147.0, 294.0]
    assert len(results) == 3
    for domain, result in results.items():
        assert_info_pass(result, domain)
    assert stats.slow_evictions == 0


async def test_an_idle_session_in_the_slow_share_is_reclaimed_for_a_waiting_slow_host(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The slow share is 1 (max_connections 4); idle sessions are kept 20 s. B (a tarpit) holds
    # the share from t=10; A's greeting at t=1 is cut at 11 and A waits; B's session hands over
    # as soon as its domain is done (145, QUIT until 147); A's domain runs 147..292 and its
    # session then idles. B, known slow, asks again at 300: no room, so the idle session in
    # the share is asked to QUIT at once (done at 302), instead of after its 20 s idle time
    # (312, QUIT done at 314).
    a = info_host("mx.a.test", "192.0.2.11", TARPIT)
    b = info_host("mx.b.test", "192.0.2.12", TARPIT)
    settings = dataclasses.replace(
        SETTINGS, session_idle_seconds=20.0, session_reuse_seconds=600.0
    )
    with trio.fail_after(BOUND):
        async with network([a, b], max_connections=4, settings=settings) as manager:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(probe, manager, "b1.test", b)
                await trio.sleep_until(1.0)
                assert_info_pass(await probe(manager, "a1.test", a), "a1.test")
                assert now() == 147.0 + 5 * TARPIT
            await trio.sleep_until(300.0)
            assert_info_pass(await probe(manager, "b2.test", b), "b2.test")
            assert now() == 302.0 + 5 * TARPIT
            stats = manager.statistics()
    assert a.connects == [1.0, 147.0] and b.connects == [0.0, 302.0]
    assert manager.counters["idle_reclaims"] == 1
    assert stats.slow_hosts == 2


async def test_a_postscreen_like_greeting_pause_is_not_slow(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # postscreen waits up to postscreen_greet_wait (6 s) before the rest of its greeting, and
    # busy servers take seconds for an RCPT (DNSBL lookups): below slow_reply_seconds, such a
    # host keeps its window and never touches the slow share.
    host = info_host("mx.postscreen.test", "192.0.2.3", latency=6.0)
    with trio.fail_after(BOUND):
        async with network([host], max_connections=8) as manager:
            result = await probe(manager, "calm.test", host)
            stats = manager.statistics()
    assert_info_pass(result, "calm.test")
    assert "slow_host" not in result.result.evidence["visits"][0]
    assert (stats.slow_hosts, stats.slow_moves, stats.slow_evictions) == (0, 0, 0)


def test_the_slow_share_is_a_quarter_of_the_cap_at_least_one() -> None:
    assert [SETTINGS.slow_connections(n) for n in (1, 3, 4, 8, 64)] == [1, 1, 1, 2, 16]
    half = dataclasses.replace(SETTINGS, slow_connections_share=0.5)
    assert half.slow_connections(64) == 32
    assert dataclasses.replace(SETTINGS, slow_connections_share=1.0).slow_connections(8) == 8


async def test_a_reload_resizes_the_slow_share_with_the_cap(
    autojump_clock: trio.testing.MockClock,
) -> None:
    with trio.fail_after(BOUND):
        async with network([], max_connections=64) as manager:
            assert manager.statistics().slow_connections_max == 16
            capped = dataclasses.replace(SETTINGS, max_connections=8)
            manager.reconfigure(dataclasses.replace(capped, slow_connections_share=0.5))
            assert manager.statistics().slow_connections_max == 4
            manager.reconfigure(capped)
            assert manager.statistics().slow_connections_max == 2


class ByAddress:
    """A connector that sends each address to its own fake network."""

    def __init__(self, routes: dict[str, Connector]) -> None:
        self.routes = routes

    async def connect(self, address: str, port: int) -> trio.abc.Stream:
        return await self.routes[address].connect(address, port)


async def test_a_slow_tls_handshake_cut_for_the_slow_share_is_not_a_broken_tls_stack(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The share (1) is held by a tarpit from t=10 to 147. B offers STARTTLS at t=20, then
    # never answers our ClientHello: at 30 the handshake is cut for the share. That is our
    # limit, not B's TLS: no plaintext fallback is learnt and no plaintext reconnect is made
    # at once; B's domain waits for the share and goes on at 147 (B, now answering in
    # plaintext at once, concludes at 147).
    tarpit = info_host("mx.tarpit.test", "192.0.2.10", TARPIT)
    silent_tls: list[Step] = [
        *opening(extensions=("PIPELINING", "STARTTLS")),
        Expect("STARTTLS"),
        reply(220, "2.0.0 Ready to start TLS"),
        Hang(),
    ]
    answering: list[Step] = [
        *opening(extensions=("PIPELINING",)),
        Expect("MAIL FROM:"),
        reply(250, "2.1.0 Ok"),
        Expect("RCPT TO:<ct-probe-"),
        reply(550, "5.1.1 User unknown"),
        Expect("RCPT TO:<info@b.test>"),
        reply(250, "2.1.5 Ok"),
        *closing(),
    ]
    b = MailHost("mx.b.test", "192.0.2.20")
    settings = dataclasses.replace(SETTINGS, starttls="opportunistic")
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            scripted = ScriptedConnector(nursery, silent_tls, answering)
            net = MailHostNet(nursery, [tarpit])
            routes: dict[str, Connector] = {tarpit.address: net, b.address: scripted}
            manager = SmtpPoolManager(settings, ByAddress(routes), max_connections=4)
            await nursery.start(manager.run)
            nursery.start_soon(probe, manager, "tarpit.test", tarpit)
            await trio.sleep_until(20.0)
            result = await probe(manager, "b.test", b)
            assert now() == 147.0
            pool = manager.pool(b.mx).statistics()
            stats = manager.statistics()
            manager.close()
    assert_info_pass(result, "b.test")
    assert scripted.attempts == [("192.0.2.20", 25), ("192.0.2.20", 25)]
    assert pool.tls_fallbacks == 0
    assert (stats.slow_evictions, stats.slow_hosts) == (1, 2)
