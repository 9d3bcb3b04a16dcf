"""The resolver health check that `dns_resolver_failure` needs before blaming our side, the
bounded life of a domain whose own DNS is broken, and the resolver stage that weighs one
against the other. Real DnsMxResolver over a socket-less client answering from a FakeDnsServer
table, under the autojump MockClock: exact virtual timelines."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import dns.message
import dns.name
import dns.rdatatype
import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from ct_actors.actors.resolver_stage import RESOLVER_FAILURE, ResolverSettings, ResolverStage
from ct_actors.app import probe_domain
from ct_actors.config import load_config
from ct_actors.dns import wire
from ct_actors.dns.client import DnsReply, UdpDnsClient
from ct_actors.dns.domain_failures import DnsAttempt, DomainDnsFailures
from ct_actors.dns.health import HealthAnswer, ResolverHealth
from ct_actors.dns.mx import DnsMxResolver
from ct_actors.dns.types import DnsUnavailable, DomainDnsFailure
from ct_actors.outcome import Deferred
from ct_actors.testing import FakeDnsServer, Records
from ct_actors.toolbox import load_toolbox

pytestmark = pytest.mark.timeout(60)

BOUND = 100_000.0
NAMESERVERS = ("10.0.0.1", "10.0.0.2")
LATENCY = 0.01  # every answer
TIMEOUT = 2.0  # a dead nameserver: the client's timeout

ROOT: Records = {
    ".": [("NS", f"{letter}.root-servers.net.") for letter in "abc"],
    "a.root-servers.net": [("A", "198.41.0.4")],
}
GOOD: Records = {
    **{f"good{i}.example": [("MX", f"10 mx{i}.good.example.")] for i in range(5)},
    **{f"mx{i}.good.example": [("A", f"192.0.2.{10 + i}")] for i in range(5)},
}


def cname_loops(n: int) -> Records:
    """`n` domains whose zones hold a CNAME loop (loopN -> backN -> loopN)."""
    records: dict[str, list[tuple[str, str]]] = {}
    for i in range(n):
        records[f"loop{i}.example"] = [("CNAME", f"back{i}.example.")]
        records[f"back{i}.example"] = [("CNAME", f"loop{i}.example.")]
    return records


class Client:
    """A UdpDnsClient look-alike without sockets: answers from a FakeDnsServer table after
    LATENCY; a nameserver in `dead` answers nothing (DnsUnavailable after TIMEOUT). Switchable
    like the real client; every question is recorded with its time and nameserver."""

    def __init__(self, records: Records, rcodes: dict[str, str] | None = None) -> None:
        self.server = FakeDnsServer(records, rcodes=rcodes)
        self.primary = 0
        self.dead: set[str] = set()
        self.asked: list[tuple[float, str, str, str]] = []  # (time, nameserver, name, type)

    @property
    def active_nameserver(self) -> str:
        return NAMESERVERS[self.primary]

    def switch_nameserver(self) -> str | None:
        if self.primary + 1 >= len(NAMESERVERS):
            return None
        self.primary += 1
        return self.active_nameserver

    def reset_nameserver(self) -> None:
        self.primary = 0

    def questions(self, rdtype: str) -> Counter[str]:
        return Counter(name for _, _, name, t in self.asked if t == rdtype)

    async def exchange(
        self, name: str | dns.name.Name, rdtype: dns.rdatatype.RdataType | str
    ) -> DnsReply:
        query = dns.message.make_query(name, rdtype)
        q = query.question[0]
        ns = self.active_nameserver
        self.asked.append(
            (
                trio.current_time(),
                ns,
                q.name.to_text(omit_final_dot=True) or ".",
                dns.rdatatype.to_text(q.rdtype),
            )
        )
        if ns in self.dead:
            await trio.sleep(TIMEOUT)
            raise DnsUnavailable(str(name), f"no reply after 1 attempt(s): {ns}: timeout", ns)
        await trio.sleep(LATENCY)
        data = self.server.build_response(query).to_wire()
        return DnsReply(wire.decode_reply(data), ns, False, data)


def stage_for(client: Client, **kw: float) -> ResolverStage:
    settings = ResolverSettings(
        workers=int(kw.pop("workers", 8)),
        retry_delay=0.1,
        max_retries=int(kw.pop("max_retries", 0)),
        failure_domains=int(kw.pop("failure_domains", 20)),
        health_check_interval=kw.pop("interval", 30.0),
    )
    assert not kw
    return ResolverStage(DnsMxResolver(client), settings)


async def outcome(stage: ResolverStage, domain: str) -> object:
    try:
        return await stage.lookup(domain)
    except DnsUnavailable as exc:
        return exc


# -- the health check itself ----------------------------------------------------------------


async def test_health_check_asks_the_name_and_the_root_ns_of_the_active_nameserver(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client = Client(ROOT)
    answers = await DnsMxResolver(client).check_health("a.root-servers.net")
    assert answers == (
        HealthAnswer("a.root-servers.net A", True, "NOERROR, 198.41.0.4"),
        HealthAnswer(". NS", True, "NOERROR, 3 records"),
    )
    # Both at once, to the active nameserver.
    assert sorted(client.asked) == [
        (0.0, "10.0.0.1", ".", "NS"),
        (0.0, "10.0.0.1", "a.root-servers.net", "A"),
    ]
    assert trio.current_time() == LATENCY


@pytest.mark.parametrize(
    ("records", "rcodes", "dead", "expected"),
    [
        pytest.param(
            ROOT, None, True,
            (
                HealthAnswer("a.root-servers.net A", False, "no reply after 1 attempt(s): "
                             "10.0.0.1: timeout"),
                HealthAnswer(". NS", False, "no reply after 1 attempt(s): 10.0.0.1: timeout"),
            ),
            id="dead",
        ),
        pytest.param(
            ROOT, {".": "SERVFAIL", "a.root-servers.net": "SERVFAIL"}, False,
            (
                HealthAnswer("a.root-servers.net A", False, "nameserver answered SERVFAIL"),
                HealthAnswer(". NS", False, "SERVFAIL with 0 records"),
            ),
            id="servfail",
        ),
        pytest.param(
            {}, None, False,
            (
                HealthAnswer("a.root-servers.net A", False, "NXDOMAIN without an address"),
                HealthAnswer(". NS", False, "NXDOMAIN with 0 records"),
            ),
            id="cannot-recurse",
        ),
    ],
)
async def test_health_check_fails_on_a_broken_resolver(
    autojump_clock: trio.testing.MockClock,
    records: Records,
    rcodes: dict[str, str] | None,
    dead: bool,
    expected: tuple[HealthAnswer, ...],
) -> None:
    client = Client(records, rcodes)
    if dead:
        client.dead.add("10.0.0.1")
    assert await DnsMxResolver(client).check_health("a.root-servers.net") == expected


async def test_an_answer_from_another_nameserver_does_not_prove_the_active_one(
    autojump_clock: trio.testing.MockClock,
) -> None:
    class Failover(Client):
        async def exchange(
            self, name: str | dns.name.Name, rdtype: dns.rdatatype.RdataType | str
        ) -> DnsReply:
            # The real client's second attempt goes to the next nameserver.
            reply = await super().exchange(name, rdtype)
            return reply._replace(nameserver="10.0.0.2")

    answers = await DnsMxResolver(Failover(ROOT)).check_health("a.root-servers.net")
    assert [a.ok for a in answers] == [False, False]
    assert answers[0].detail == "10.0.0.1 failed, answered by 10.0.0.2 instead"


async def test_checks_are_cached_for_the_interval_and_coalesced(
    autojump_clock: trio.testing.MockClock,
) -> None:
    calls: list[float] = []

    async def probe(name: str) -> tuple[HealthAnswer, ...]:
        calls.append(trio.current_time())
        await trio.sleep(1.0)
        return (HealthAnswer(f"{name} A", True, "NOERROR"),)

    health = ResolverHealth("a.root-servers.net", interval=30.0)
    reports: list[tuple[float, bool]] = []

    async def ask(max_age: float, nameserver: str = "10.0.0.1") -> None:
        report = await health.check(probe, nameserver, max_age=max_age)
        reports.append((trio.current_time(), report.healthy))

    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            for _ in range(50):  # a flood of failures: one check in flight, shared
                nursery.start_soon(ask, 30.0)
        await trio.sleep_until(20.0)
        await ask(30.0)  # cached: 19 s old
        await ask(0.0)  # must be fresh: asks again
        await trio.sleep_until(52.0)
        await ask(30.0)  # 31 s old: asks again
        await ask(30.0, "10.0.0.2")  # another nameserver: nothing known about it
    assert calls == [0.0, 20.0, 52.0, 53.0]
    assert reports == [(1.0, True)] * 50 + [(20.0, True), (21.0, True), (53.0, True), (54.0, True)]
    stats = health.statistics()
    assert (stats.checks, stats.shared, stats.cached) == (4, 49, 1)


async def test_without_a_probe_there_is_no_evidence_of_health() -> None:
    report = await ResolverHealth().check(None, "10.0.0.1", max_age=30.0)
    assert not report.healthy
    assert report.summary() == "the resolver offers no health check"


# -- a domain's bounded life ------------------------------------------------------------------


def test_broken_domain_is_deferred_three_times_doubling_then_concludes() -> None:
    policy = DomainDnsFailures(retries=3, delay=1800.0)
    t = 0.0
    waits = []
    for _ in range(3):
        verdict = policy.failed("loop.example", DnsAttempt(t, "CNAME loop at loop.example", "ns"))
        assert verdict.retry_after is not None
        waits.append(verdict.retry_after)
        assert policy.waiting_until("loop.example", t) == t + verdict.retry_after
        t += verdict.retry_after
    final = policy.failed("loop.example", DnsAttempt(t, "CNAME loop at loop.example", "ns"))
    assert waits == [1800.0, 3600.0, 7200.0]
    assert final.concluded and len(final.attempts) == 4
    assert [e["after_seconds"] for e in final.evidence()] == [0.0, 1800.0, 5400.0, 12600.0]
    assert final.history().startswith("#1 at +0s: CNAME loop at loop.example; #2 at +1800s")
    assert policy.statistics().domains == 0  # concluded: forgotten


def test_failures_before_the_retry_time_do_not_count() -> None:
    policy = DomainDnsFailures(retries=1, delay=600.0)
    first = policy.failed("x.example", DnsAttempt(0.0, "SERVFAIL", None))
    early = policy.failed("x.example", DnsAttempt(100.0, "SERVFAIL", None))
    assert (first.retry_after, early.retry_after, len(early.attempts)) == (600.0, 500.0, 1)
    assert policy.failed("x.example", DnsAttempt(600.0, "SERVFAIL", None)).concluded


def test_a_repaired_domain_starts_over_and_stale_entries_are_dropped() -> None:
    policy = DomainDnsFailures(retries=1, delay=600.0)
    policy.failed("fixed.example", DnsAttempt(0.0, "SERVFAIL", None))
    policy.resolved("fixed.example")
    assert policy.failed("fixed.example", DnsAttempt(700.0, "SERVFAIL", None)).retry_after == 600
    policy.failed("gone.example", DnsAttempt(800.0, "SERVFAIL", None))
    # Neither came back within an hour of its retry time: both dropped at the next sweep.
    policy.failed("other.example", DnsAttempt(800.0 + 600.0 + 3601.0, "SERVFAIL", None))
    assert policy.statistics().domains == 1


# -- the resolver stage: whose failure is it? -------------------------------------------------


async def test_cname_loops_are_the_domains_failures_and_never_trip(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client = Client({**ROOT, **GOOD, **cname_loops(45)})
    stage = stage_for(client)
    results: dict[str, object] = {}

    async def one(domain: str) -> None:
        results[domain] = await outcome(stage, domain)

    with capture_logs() as logs, trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            await nursery.start(stage.run)
            async with trio.open_nursery() as callers:
                for i in range(45):
                    callers.start_soon(one, f"loop{i}.example")
            for i in range(5):
                await one(f"good{i}.example")
            stage.close()

    assert not stage.switches.is_tripped(RESOLVER_FAILURE)
    assert client.primary == 0  # never switched
    for i in range(45):
        failure = results[f"loop{i}.example"]
        assert isinstance(failure, DomainDnsFailure), failure
        assert failure.reason == f"CNAME loop at loop{i}.example"
        assert failure.health["healthy"] is True
    for i in range(5):
        assert getattr(results[f"good{i}.example"], "hosts", None), results[f"good{i}.example"]
    # 45 failures, two streaks of 20 forgiven, each saying so.
    averted = [e for e in logs if e["event"] == "resolver_failure_not_ours"]
    assert len(averted) == 2
    assert "the failures belong to the domains" in averted[0]["reason"]
    assert averted[0]["health_check"].startswith("a.root-servers.net A: answered")
    assert [e for e in logs if e["event"] in ("resolver_switched", "kill_switch_tripped")] == []
    # The flood cost one health check (both questions once), shared by every failure.
    assert client.questions("A")["a.root-servers.net"] == 1
    assert client.questions("NS")["."] == 1
    stats = stage.statistics()
    assert (stats.domain_failures, stats.switches_averted) == (45, 2)


async def test_a_dead_resolver_still_switches_then_trips_and_says_why(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client = Client({**ROOT, **GOOD})
    client.dead.update(NAMESERVERS)
    stage = stage_for(client, failure_domains=5, workers=1)
    results: list[object] = []
    with capture_logs() as logs, trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            await nursery.start(stage.run)
            for i in range(12):
                results.append(await outcome(stage, f"d{i}.example"))
            stage.close()

    # Every failure is ours: plain DnsUnavailable, never charged to a domain.
    assert all(type(r) is DnsUnavailable for r in results)
    [switched] = [e for e in logs if e["event"] == "resolver_switched"]
    assert (switched["failed"], switched["now_using"]) == ("10.0.0.1", "10.0.0.2")
    assert "the health check failed too" in switched["reason"]
    assert "a.root-servers.net A: FAILED (no reply" in switched["health_check"]
    [tripped] = [e for e in logs if e["event"] == "kill_switch_tripped"]
    assert tripped["failed"] == "10.0.0.2"
    assert ". NS: FAILED (no reply after 1 attempt(s): 10.0.0.2: timeout)" in (
        tripped["health_check"]
    )
    assert stage.switches.is_tripped(RESOLVER_FAILURE)
    assert [e for e in logs if e["event"] == "resolver_failure_not_ours"] == []
    # Timeline on each nameserver (one worker, 2 s timeouts): the first domain's lookup fails
    # at +2 s and the health check is asked (fails at +4 s); the next four lookups reuse that
    # result (30 s interval); the fifth reaches the threshold and the check is asked once more
    # before acting: switch at 14 s, trip at 28 s.
    first = [(t, name) for t, ns, name, _ in client.asked if ns == "10.0.0.1"]
    assert [t for t, name in first if name == "a.root-servers.net"] == [2.0, 12.0]
    second = [(t, name) for t, ns, name, _ in client.asked if ns == "10.0.0.2"]
    assert second[0] == (14.0, "d5.example")
    assert [t for t, name in second if name == "a.root-servers.net"] == [16.0, 26.0]
    # Paused after the trip: the last domains are answered at once, no question asked.
    assert max(t for t, *_ in client.asked) == 26.0
    last = results[-1]
    assert isinstance(last, DnsUnavailable)
    assert last.reason == f"paused by the {RESOLVER_FAILURE} kill switch"


async def test_a_resolver_that_dies_later_is_found_out_by_the_next_check(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """A healthy result stands for the interval; after it the dead resolver is caught."""
    client = Client({**ROOT, **GOOD, **cname_loops(3)})
    stage = stage_for(client, failure_domains=3, workers=1, interval=30.0)
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            await nursery.start(stage.run)
            broken = await outcome(stage, "loop0.example")
            await trio.sleep_until(100.0)
            client.dead.add("10.0.0.1")
            later = [await outcome(stage, f"good{i}.example") for i in range(3)]
            stage.close()
    assert isinstance(broken, DomainDnsFailure)
    # The healthy result (0.01 s) had expired: asked again at 102 s, it failed, so the
    # failures are ours; at the threshold (106 s) it is asked once more before the switch.
    assert [t for t, _, name, _ in client.asked if name == "a.root-servers.net"] == [
        0.01,
        102.0,
        106.0,
    ]
    assert [type(r) for r in later[:2]] == [DnsUnavailable, DnsUnavailable]
    assert client.primary == 1  # switched at the threshold, a failed check as evidence
    assert getattr(later[2], "nameserver", None) == "10.0.0.2"


# -- probe / once: one pass reports such a domain coherently ---------------------------------


@pytest.mark.parametrize("dead", [False, True], ids=["domain-broken", "resolver-dead"])
async def test_probe_says_whose_dns_failed(
    autojump_clock: trio.testing.MockClock, dead: bool
) -> None:
    cfg = load_config(None, env={}, overrides={"probe.mode": "mx-only"}, probing=False)
    toolbox = load_toolbox(Path(__file__).parent.parent / "config" / "SNAP_ON_TOOLBOX.yaml")
    client = Client({**ROOT, **cname_loops(1)})
    if dead:
        client.dead.add("10.0.0.1")
    with trio.fail_after(BOUND):
        decided = await probe_domain(
            cfg, toolbox, "loop0.example", resolver=DnsMxResolver(client)
        )
    result = decided.result
    assert isinstance(result, Deferred)
    if dead:
        assert result.reason.startswith("our resolver could not answer: no reply")
        assert result.retry_after == cfg.probe.defer_seconds
        assert "resolver_health" not in result.evidence
        return
    assert result.reason == (
        "DNS for the domain is broken: CNAME loop at loop0.example (our resolver answered its "
        "health check; `run` concludes CT-M-NO-MX after dns.domain_failure_retries deferrals)"
    )
    assert result.retry_after == cfg.dns.domain_failure_delay == 1800.0
    assert result.evidence["resolver_health"] == {
        "nameserver": "10.0.0.1",
        "healthy": True,
        "answers": [
            "a.root-servers.net A: answered (NOERROR, 198.41.0.4)",
            ". NS: answered (NOERROR, 3 records)",
        ],
    }


# -- smoke: the real UDP client against the loopback fake resolver (real time, short) --------


async def test_health_check_and_cname_loop_over_real_udp_on_loopback() -> None:
    server = FakeDnsServer({**ROOT, **cname_loops(1)}, host="127.0.77.3")
    with trio.fail_after(10):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            async with UdpDnsClient(["127.0.77.3"], port=server.port, timeout=1.0) as client:
                resolver = DnsMxResolver(client)
                answers = await resolver.check_health("a.root-servers.net")
                with pytest.raises(DnsUnavailable, match="CNAME loop at"):
                    await resolver.lookup("loop0.example")
            nursery.cancel_scope.cancel()
    assert answers == (
        HealthAnswer("a.root-servers.net A", True, "NOERROR, 198.41.0.4"),
        HealthAnswer(". NS", True, "NOERROR, 3 records"),
    )
