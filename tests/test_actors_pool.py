"""HostPool and SmtpPoolManager on a fake mail network, under the autojump MockClock.

Every fake host answers each command 0.25 s after reading it (the greeting 0.25 s after the
connection), so a fresh session's first domain with the default plan (catch-all probe, then
info@) costs greeting + EHLO + MAIL + 2 RCPT = 1.25 s, and a reused session's domain RSET + MAIL
+ 2 RCPT = 1.0 s. All times below are exact binary fractions, so they are compared exactly.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import trio
import trio.testing
from trio import current_time as now

from ct_actors.actors.pool_manager import SmtpPoolManager
from ct_actors.actors.pool_settings import PoolSettings
from ct_actors.actors.pool_statistics import PoolManagerStatistics, PoolStatistics
from ct_actors.actors.visit_request import ProbeRequest
from ct_actors.probe.plan import Conclusion, ProbePlan
from ct_actors.probe.visit import HostVisit, VisitOutcome
from ct_actors.testing import EHLO, HELO, MAIL, MAIL_FROM, MailHost, MailHostNet, rcpt

BOUND = 600.0

SETTINGS = PoolSettings(
    # Not about directory-harvest pacing (test_actors_probe's rejected-RCPT budget test is):
    # lifted, so the timelines below show the behaviour under test alone.
    max_rejected_rcpts_per_host=1_000_000,
    port=25,
    helo_name=HELO,
    mail_from=MAIL_FROM,
    connect_timeout=10.0,
    command_timeout=30.0,
    starttls="never",
    # A fixed window (initial = maximum) for the tests of sessions and reuse; the adaptive
    # window has its own tests below.
    initial_connections_per_host=2,
    max_connections_per_host=2,
    max_recipients_per_session=10,
    session_reuse_seconds=30.0,
    session_idle_seconds=2.0,
    pool_idle_seconds=60.0,
    dead_host_backoff=300.0,
)


def settings(**changes: object) -> PoolSettings:
    return dataclasses.replace(SETTINGS, **changes)  # type: ignore[arg-type]


def fixed_window(n: int) -> PoolSettings:
    """n sessions per host from the start, never more (initial = maximum)."""
    return settings(max_connections_per_host=n, initial_connections_per_host=n)


def request(domain: str, people: Sequence[tuple[str, str]] = ()) -> ProbeRequest:
    plan = ProbePlan(domain, people, catchall_address=f"ct-probe-{'0' * 20}@{domain}")
    return ProbeRequest(domain, plan)


def default_domain(domain: str) -> list[str]:
    """Commands of one domain with the default plan on a host where only info@ exists."""
    return [MAIL, rcpt("ct-probe-X", domain), rcpt("info", domain)]


@asynccontextmanager
async def pools(
    hosts: Sequence[MailHost], pool_settings: PoolSettings = SETTINGS, max_connections: int = 64
) -> AsyncIterator[tuple[MailHostNet, SmtpPoolManager]]:
    async with trio.open_nursery() as nursery:
        net = MailHostNet(nursery, hosts)
        manager = SmtpPoolManager(pool_settings, net, max_connections=max_connections)
        await nursery.start(manager.run)
        try:
            yield net, manager
        finally:
            manager.close()


async def visit_at(
    manager: SmtpPoolManager, host: MailHost, req: ProbeRequest, at: float
) -> tuple[HostVisit, float]:
    await trio.sleep_until(at)
    visit = await manager.visit(host.mx, req)
    return visit, now()


def info_host(name: str = "mx1.test", address: str = "192.0.2.1", **kw: object) -> MailHost:
    return MailHost(name, address, mailboxes=frozenset({"info"}), **kw)  # type: ignore[arg-type]


async def test_two_domains_reuse_one_session_with_rset_and_quit_at_idle_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    host = info_host()
    with trio.fail_after(BOUND):
        async with pools([host]) as (net, manager):
            a, b = request("a.test"), request("b.test")
            first = await manager.visit(host.mx, a)
            assert now() == 1.25
            second = await manager.visit(host.mx, b)
            assert now() == 2.25
            await trio.sleep(5)
            pool = manager.pool(host.mx)
            assert pool.statistics() == PoolStatistics(
                host="mx1.test",
                workers=1,  # idle, without a session, until pool_idle_seconds
                idle_workers=1,
                open_sessions=0,
                window=2,
                rcpt_limit=10,
                dead=False,
                slow=False,
                slow_sessions=0,
                requests=2,
                sessions_opened=1,
                rcpts=4,
                failures=0,
                error_limits_hit=0,
                tls_fallbacks=0,
            )
    assert (first.outcome, first.reused_session) == (VisitOutcome.CONCLUDED, False)
    assert (second.outcome, second.reused_session) == (VisitOutcome.CONCLUDED, True)
    assert first.replies == [
        f"MAIL FROM:<{MAIL_FROM}> -> 250 2.1.0 Ok",
        f"RCPT {a.plan.catchall_address} -> 550 5.1.1 User unknown",
        "RCPT info@a.test -> 250 2.1.5 Ok",
    ]
    assert a.plan.conclusion is b.plan.conclusion is Conclusion.PATTERN
    assert net.attempts == [(0.0, "192.0.2.1")]
    assert host.sessions == 1
    assert host.commands() == [
        EHLO,
        *default_domain("a.test"),
        "RSET",
        *default_domain("b.test"),
        "QUIT",
    ]
    # One session, one EHLO; QUIT exactly session_idle_seconds after the last reply (2.25).
    assert [e.time for e in host.events] == [0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 1.75, 2.0, 4.25]


async def test_session_older_than_reuse_seconds_is_quit_and_not_reused(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The session is ready at 0.5 (after EHLO); with reuse 3 s it may serve new domains until
    # 3.5, even though the idle timeout (10 s) has not run out.
    host = info_host()
    with trio.fail_after(BOUND):
        async with pools(
            [host], settings(session_reuse_seconds=3.0, session_idle_seconds=10.0)
        ) as (
            _,
            manager,
        ):
            await manager.visit(host.mx, request("a.test"))
            assert now() == 1.25
            reused = await manager.visit(host.mx, request("b.test"))
            assert now() == 2.25
            await trio.sleep_until(5.0)
            fresh = await manager.visit(host.mx, request("c.test"))
            assert now() == 6.25
            await trio.sleep_until(10.0)
            stats = manager.pool(host.mx).statistics()
    assert reused.reused_session and not fresh.reused_session
    assert host.sessions == 2
    # Each session QUITs at opened_at (after EHLO: 0.5, 5.5) + reuse, before its idle timeout.
    assert host.times("QUIT") == [3.5, 8.5]
    assert host.times("EHLO") == [0.25, 5.25]
    assert host.commands(2) == [EHLO, *default_domain("c.test"), "QUIT"]
    assert stats.sessions_opened == 2


async def test_idle_worker_retires_and_manager_retires_the_pool(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # session_idle 2: QUIT at 3.25, 221 at 3.5; the worker then idles pool_idle (10 s) and
    # retires at 13.5. The manager reaps every max(1, 10 / 2) = 5 s: at 15 the pool (unused
    # since 1.25) is retired.
    host = info_host()
    with trio.fail_after(BOUND):
        async with pools([host], settings(pool_idle_seconds=10.0)) as (_, manager):
            await manager.visit(host.mx, request("a.test"))
            pool = manager.pool(host.mx)
            await trio.sleep_until(13.4)
            assert (pool.workers, pool.open_sessions) == (1, 0)
            await trio.sleep_until(13.6)
            assert pool.workers == 0
            assert manager.statistics().pools == 1  # not reaped before the next sweep
            await trio.sleep_until(14.9)
            assert manager.statistics().pools_retired == 0
            await trio.sleep_until(15.5)
            retired = manager.statistics()
            # The next domain on that host gets a new pool and a new session.
            await manager.visit(host.mx, request("b.test"))
            assert now() == 16.75
            await trio.sleep_until(20.0)
            again = manager.statistics()
    assert host.times("QUIT") == [3.25, 16.75 + 2.0]
    assert retired == PoolManagerStatistics(
        # The window (with a.test's rejected catch-all probe) outlives the retired pool.
        rejected_rcpts_peak=1,
        rejected_rcpts_peak_host="192.0.2.1",  # politeness is per IP address
        rejection_budget_waits=0,
        pools=0,
        pools_created=1,
        pools_retired=1,
        sessions_opened_total=1,
        open_sessions=0,
        connections_in_use=0,
        dead_hosts=0,
        slow_hosts=0,
        slow_connections_in_use=0,
        slow_connections_max=16,  # a quarter of max_connections (64)
        slow_share_waits=0,
        slow_moves=0,
        slow_evictions=0,
        top_pools=(),
    )
    assert again.pools_created == 2
    assert again.sessions_opened_total == 2


async def test_per_host_concurrency_never_exceeds_max_connections_per_host(
    autojump_clock: trio.testing.MockClock,
) -> None:
    host = info_host()
    done: list[float] = []
    peak_workers = 0

    async def one(domain: str) -> None:
        visit = await manager.visit(host.mx, request(domain))
        assert visit.outcome == VisitOutcome.CONCLUDED
        done.append(now())

    async def watch() -> None:
        nonlocal peak_workers
        pool = manager.pool(host.mx)
        while True:
            peak_workers = max(peak_workers, pool.workers)
            await trio.sleep(0.125)

    with trio.fail_after(BOUND):
        async with pools([host], fixed_window(3)) as (net, manager):
            async with trio.open_nursery() as watcher:
                watcher.start_soon(watch)
                async with trio.open_nursery() as nursery:
                    for i in range(10):
                        nursery.start_soon(one, f"d{i}.test")
                watcher.cancel_scope.cancel()
            await trio.sleep_until(10.0)
            stats = manager.pool(host.mx).statistics()
    # Three sessions serve the ten domains in rounds: 1.25 s fresh, then 1.0 s per reused domain.
    assert sorted(done) == [1.25] * 3 + [2.25] * 3 + [3.25] * 3 + [4.25]
    assert host.max_active == net.max_active == 3
    assert host.sessions == 3
    assert peak_workers == 3
    assert host.times("EHLO") == [0.25] * 3
    assert host.times("RSET") == [1.25] * 3 + [2.25] * 3 + [3.25]
    assert sorted(host.times("QUIT")) == [5.25, 5.25, 6.25]
    assert stats.sessions_opened == 3
    assert stats.requests == 10
    assert stats.rcpts == 20


async def test_global_cap_reclaims_an_idle_session_of_another_host_at_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # One connection for everything. Host A's session is idle after 1.25 (it would QUIT at
    # 1.25 + 5). A domain on host B at 2.0 finds no free slot: A's idle session QUITs at 2.0,
    # its 221 at 2.25 frees the slot, B connects at 2.25 and answers at 2.25 + 1.25.
    a, b = info_host("mx-a.test", "192.0.2.1"), info_host("mx-b.test", "192.0.2.2")
    with trio.fail_after(BOUND):
        async with pools([a, b], settings(session_idle_seconds=5.0), max_connections=1) as (
            net,
            manager,
        ):
            await manager.visit(a.mx, request("a.test"))
            assert now() == 1.25
            await trio.sleep_until(2.0)
            visit = await manager.visit(b.mx, request("b.test"))
            assert now() == 3.5
            stats = manager.statistics()
            await trio.sleep_until(10.0)
    assert visit.outcome == VisitOutcome.CONCLUDED
    assert a.times("QUIT") == [2.0]
    assert b.connects == [2.25]
    assert b.times("QUIT") == [3.5 + 5.0]  # nobody needed B's slot: normal idle timeout
    assert net.max_active == 1
    assert manager.counters["idle_reclaims"] == 1
    assert stats.connections_in_use == 1
    assert stats.open_sessions == 1


async def test_global_cap_holds_while_two_hosts_are_busy(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # With one connection slot and both hosts busy at once, the second host waits for the
    # first host's session to end; never two connections at a time.
    a, b = info_host("mx-a.test", "192.0.2.1"), info_host("mx-b.test", "192.0.2.2")
    done: dict[str, float] = {}

    async def one(host: MailHost, domain: str) -> None:
        await manager.visit(host.mx, request(domain))
        done[domain] = now()

    with trio.fail_after(BOUND):
        async with (
            pools([a, b], settings(session_idle_seconds=0.0), max_connections=1) as (
                net,
                manager,
            ),
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(one, a, "a.test")
            await trio.sleep(0.1)
            nursery.start_soon(one, b, "b.test")
    assert net.max_active == 1
    assert done["a.test"] == 1.25
    assert a.times("QUIT") == [1.25]  # idle 0 s: QUIT right away, 221 at 1.5
    assert b.connects == [1.5]
    assert done["b.test"] == 2.75


async def test_session_going_idle_releases_the_slot_to_a_waiting_host(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A is mid-conversation when B asks for the only slot (0.5): nothing is idle to reclaim.
    # When A's domain ends (1.25) its session should QUIT at once for B, not at 1.25 + 5.
    a, b = info_host("mx-a.test", "192.0.2.1"), info_host("mx-b.test", "192.0.2.2")
    with trio.fail_after(BOUND):
        async with (
            pools([a, b], settings(session_idle_seconds=5.0), max_connections=1) as (
                _,
                manager,
            ),
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(manager.visit, a.mx, request("a.test"))
            await trio.sleep_until(0.5)
            await manager.visit(b.mx, request("b.test"))
    assert a.times("QUIT") == [1.25]
    assert b.connects == [1.5]


async def test_refused_connection_marks_the_host_dead_for_the_backoff(
    autojump_clock: trio.testing.MockClock,
) -> None:
    host = info_host(refuse=True)
    with trio.fail_after(BOUND):
        async with pools([host]) as (net, manager):
            refused = await manager.visit(host.mx, request("a.test"))
            assert now() == 0.0
            await trio.sleep_until(1.0)
            skipped = await manager.visit(host.mx, request("b.test"))
            assert now() == 1.0  # at once: no connect attempt, no timeout paid
            dead_stats = manager.pool(host.mx).statistics()
            assert manager.is_dead(host.mx)
            host.refuse = False  # the host recovers, but we only find out after the backoff
            await trio.sleep_until(299.75)
            still_dead = await manager.visit(host.mx, request("c.test"))
            await trio.sleep_until(300.0)  # dead_until = 0.0 + dead_host_backoff
            retried = await manager.visit(host.mx, request("d.test"))
            assert now() == 301.25
    assert (refused.outcome, refused.detail) == (
        VisitOutcome.CONNECT_FAILED,
        "connect: ECONNREFUSED",
    )
    assert refused.stage == "connect" and refused.connect_failed
    assert (skipped.outcome, skipped.address) == (VisitOutcome.HOST_DEAD, None)
    assert still_dead.outcome == VisitOutcome.HOST_DEAD
    assert retried.outcome == VisitOutcome.CONCLUDED
    assert net.attempts == [(0.0, "192.0.2.1"), (300.0, "192.0.2.1")]
    assert dead_stats == PoolStatistics(
        host="mx1.test",
        workers=1,
        idle_workers=1,
        open_sessions=0,
        window=1,  # an unreachable host gets one connection at a time
        rcpt_limit=10,
        dead=True,
        slow=False,
        slow_sessions=0,
        requests=2,
        sessions_opened=0,
        rcpts=0,
        failures=1,
        error_limits_hit=0,
        tls_fallbacks=0,
    )


async def test_connect_timeout_marks_the_host_dead(
    autojump_clock: trio.testing.MockClock,
) -> None:
    host = info_host(connect_delay=math.inf)
    with trio.fail_after(BOUND):
        async with pools([host]) as (net, manager):
            timed_out = await manager.visit(host.mx, request("a.test"))
            assert now() == 10.0  # connect_timeout
            skipped = await manager.visit(host.mx, request("b.test"))
            assert now() == 10.0
    assert (timed_out.outcome, timed_out.stage) == (VisitOutcome.TIMEOUT, "connect")
    assert timed_out.detail == "connect: timeout after 10s" and timed_out.connect_failed
    assert skipped.outcome == VisitOutcome.HOST_DEAD
    assert len(net.attempts) == 1


async def test_request_queued_behind_a_dead_host_is_not_sent_to_connect_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    host = info_host(connect_delay=math.inf)
    done: dict[str, tuple[str, float]] = {}

    async def one(domain: str) -> None:
        visit = await manager.visit(host.mx, request(domain))
        done[domain] = (visit.outcome, now())

    with trio.fail_after(BOUND):
        async with (
            pools([host], fixed_window(1)) as (net, manager),
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(one, "a.test")
            nursery.start_soon(one, "b.test")
    assert sorted(done.values()) == [(VisitOutcome.HOST_DEAD, 10.0), (VisitOutcome.TIMEOUT, 10.0)]
    assert len(net.attempts) == 1


async def test_greeting_421_is_a_throttled_visit_not_a_dead_host(
    autojump_clock: trio.testing.MockClock,
) -> None:
    host = info_host(greeting=(421, "4.7.0 mx1.test Too many connections, try again later"))
    with trio.fail_after(BOUND):
        async with pools([host]) as (_, manager):
            visit = await manager.visit(host.mx, request("a.test"))
            assert now() == 0.25
            stats = manager.pool(host.mx).statistics()
    assert visit.outcome == VisitOutcome.THROTTLED
    assert visit.detail == "greeting: 421 mx1.test Too many connections, try again later"
    assert stats.dead is False
    assert stats.failures == 1
    assert stats.open_sessions == 0
    assert host.events == []  # nothing was sent after the 421


async def test_connection_dropped_mid_conversation_ends_the_session_not_the_domain(
    autojump_clock: trio.testing.MockClock,
) -> None:
    host = info_host(drop={1: "RCPT"})
    with trio.fail_after(BOUND):
        async with pools([host], fixed_window(1)) as (_, manager):
            broken = await manager.visit(host.mx, request("a.test"))
            assert now() == 0.75  # the first RCPT is sent at 0.75 and gets EOF
            nxt = await manager.visit(host.mx, request("b.test"))
            assert now() == 0.75 + 1.25
            await trio.sleep_until(5.0)
            stats = manager.pool(host.mx).statistics()
    # The drop is about the session: the domain is told to go on from the same question on a
    # fresh session (SESSION_ENDED, nothing answered), never a visit that failed the host.
    assert (broken.outcome, broken.detail) == (
        VisitOutcome.SESSION_ENDED,
        "rcpt: connection closed by server",
    )
    assert broken.progress == 0
    assert (nxt.outcome, nxt.reused_session) == (VisitOutcome.CONCLUDED, False)
    assert host.commands(1) == [EHLO, MAIL, rcpt("ct-probe-X", "a.test")]
    assert host.commands(2) == [EHLO, *default_domain("b.test"), "QUIT"]
    assert host.times("QUIT") == [2.0 + 2.0]  # the fresh session idles out normally
    assert host.connects == [0.0, 0.75]
    assert (stats.sessions_opened, stats.failures) == (2, 1)


async def test_session_closed_by_server_while_idle_is_replaced_transparently(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The server hangs up on the idle session: the RSET before the next domain fails, and the
    # worker opens a fresh session for it instead of reporting a broken visit.
    host = info_host(drop={1: "RSET"})
    with trio.fail_after(BOUND):
        async with pools([host]) as (_, manager):
            await manager.visit(host.mx, request("a.test"))
            visit = await manager.visit(host.mx, request("b.test"))
            assert now() == 1.25 + 1.25
    assert (visit.outcome, visit.reused_session) == (VisitOutcome.CONCLUDED, False)
    assert host.commands(1) == [EHLO, *default_domain("a.test"), "RSET"]
    assert host.commands(2) == [EHLO, *default_domain("b.test"), "QUIT"]
    assert host.connects == [0.0, 1.25]


async def test_address_change_does_not_break_a_domain_queued_on_the_old_pool(
    autojump_clock: trio.testing.MockClock,
) -> None:
    old = info_host("mx1.test", "192.0.2.1")
    new = info_host("mx1.test", "192.0.2.9")  # same host name, re-resolved to a new address
    done: dict[str, str] = {}

    async def one(mx: MailHost, domain: str) -> None:
        try:
            done[domain] = (await manager.visit(mx.mx, request(domain))).outcome
        except trio.ClosedResourceError as exc:  # what the bug looks like
            done[domain] = repr(exc)

    with trio.fail_after(BOUND):
        async with (
            pools([old, new], fixed_window(1)) as (_, manager),
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(one, old, "a.test")  # served by the only worker
            await trio.sleep(0.5)
            nursery.start_soon(one, old, "b.test")  # queued behind a.test
            await trio.sleep(0.25)
            nursery.start_soon(one, new, "c.test")  # the new address replaces the pool
    assert done == {d: VisitOutcome.CONCLUDED for d in ("a.test", "b.test", "c.test")}


# ─── the adaptive window ─────────────────────────────────────────────────────────────────────


async def test_window_grows_with_successes_and_serves_domains_already_queued(
    autojump_clock: trio.testing.MockClock,
) -> None:
    host = info_host()
    done: list[float] = []

    async def one(domain: str) -> None:
        visit = await manager.visit(host.mx, request(domain))
        assert visit.outcome == VisitOutcome.CONCLUDED
        done.append(now())

    adaptive = settings(initial_connections_per_host=1, max_connections_per_host=3)
    with trio.fail_after(BOUND):
        async with pools([host], adaptive) as (_, manager):
            async with trio.open_nursery() as nursery:
                for i in range(6):
                    nursery.start_soon(one, f"d{i}.test")
            window = manager.pool(host.mx).window.limit
    # One session until the first success (1.25), two until two more (2.5), then three: each
    # new session starts for a domain that was already waiting.
    assert host.connects == [0.0, 1.25, 2.5]
    assert sorted(done) == [1.25, 2.25, 2.5, 3.25, 3.5, 3.75]
    assert host.max_active == 3 and window == 3


async def test_dead_host_backoff_doubles_while_the_host_stays_unreachable(
    autojump_clock: trio.testing.MockClock,
) -> None:
    host = info_host(refuse=True)
    with trio.fail_after(2 * BOUND):
        async with pools([host]) as (net, manager):
            await manager.visit(host.mx, request("a.test"))  # dead until 300
            await trio.sleep_until(300.0)
            again = await manager.visit(host.mx, request("b.test"))  # dead until 300 + 600
            await trio.sleep_until(899.75)
            skipped = await manager.visit(host.mx, request("c.test"))
            host.refuse = False
            await trio.sleep_until(900.0)
            back = await manager.visit(host.mx, request("d.test"))
            stats = manager.pool(host.mx).window.statistics()
    assert again.outcome == VisitOutcome.CONNECT_FAILED
    assert skipped.outcome == VisitOutcome.HOST_DEAD
    assert back.outcome == VisitOutcome.CONCLUDED
    assert [t for t, _ in net.attempts] == [0.0, 300.0, 900.0]
    assert (stats.dead_marked, stats.dead_streak) == (2, 0)  # the success reset it


async def test_smtp_quit_timeout_bounds_the_quit_of_every_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # smtp.quit_timeout reaches the sessions (it used to stop at the config: every session
    # waited the client's 2 s default). A host that never answers QUIT: the session is closed
    # quit_timeout after the QUIT, and only then is its connection slot free.
    host = info_host()
    host.quit_latency = 100.0  # far past any quit_timeout
    with trio.fail_after(BOUND):
        async with pools([host], settings(quit_timeout=3.0)) as (_, manager):
            await manager.visit(host.mx, request("a.test"))
            assert now() == 1.25
            await trio.sleep_until(1.25 + 2.0 + 3.0 - 0.125)  # QUIT at 3.25 (idle 2 s)
            assert manager.connections.borrowed_tokens == 1
            await trio.sleep_until(1.25 + 2.0 + 3.0 + 0.125)
            assert manager.connections.borrowed_tokens == 0
    assert host.times("QUIT") == [3.25]
