"""SmtpGuard: the SMTP kill-switch detectors and the reachability witness, on visit results."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from ct_actors.actors.domain_task import smtp_probe
from ct_actors.actors.smtp_gate import (
    IP_BLACKLISTED,
    PORT_BLOCKED,
    GuardSettings,
    SmtpGate,
    SmtpGuard,
)
from ct_actors.actors.stages import KILL_SWITCHES
from ct_actors.actors.visit_request import ProbeRequest
from ct_actors.dns.dnsbl import DnsblChecker
from ct_actors.dns.types import DnsUnavailable, MxHost, MxLookup, MxStatus
from ct_actors.outcome import Deferred, Failed, FailureCode
from ct_actors.probe.domain_probe import RetryPolicy
from ct_actors.probe.plan import ProbePlan
from ct_actors.probe.visit import HostVisit, VisitOutcome
from ct_actors.smtp.types import Stage
from ct_actors.throttle.killswitch import KillSwitches

SPAMHAUS = "greeting: 554 5.7.1 Client host [198.51.100.7] blocked using zen.spamhaus.org"
OUR_IP = "11.22.33.44"  # our sending address, as the receiving hosts see it (public)


def guard(
    dnsbl: DnsblChecker | None = None, local: str | None = OUR_IP, **kw: Any
) -> SmtpGuard:
    return SmtpGuard(
        GuardSettings(**kw),
        KillSwitches(dict(KILL_SWITCHES)),
        dnsbl=dnsbl,
        local_address=lambda: local,
    )


def visit(
    host: str,
    outcome: VisitOutcome,
    detail: str = "",
    address: str = "192.0.2.1",
    stage: Stage | None = None,
) -> HostVisit:
    return HostVisit(host, address, outcome, detail, stage=stage)


def connect_timeout(host: str) -> HostVisit:
    return visit(host, VisitOutcome.TIMEOUT, "connect: timeout after 10s", stage="connect")


def refusal(n: int, address: str | None = None) -> HostVisit:
    """A blocklist refusal from network number n (a /24 of its own)."""
    return visit(f"mx.n{n}.test", VisitOutcome.POLICY_BLOCKED, SPAMHAUS, address or f"203.0.{n}.25")


def working(n: int) -> HostVisit:
    return visit(f"mx.w{n}.test", VisitOutcome.CONCLUDED, "", f"198.18.{n}.25")


class FakeDnsbl:
    """An AddressLookup: names listed in `listed` answer their codes, the zone's RFC 5782 test
    entry is listed unless `broken`, anything else is NXDOMAIN; `fail` raises DnsUnavailable."""

    def __init__(
        self, listed: dict[str, tuple[str, ...]] | None = None, *, fail: bool = False
    ) -> None:
        self.listed = listed or {}
        self.fail = fail
        self.broken: set[str] = set()
        self.queries: list[tuple[float, str]] = []

    async def addresses(self, name: str) -> tuple[str, ...]:
        await trio.sleep(0.05)
        self.queries.append((trio.current_time(), name))
        if self.fail:
            raise DnsUnavailable(name, "timeout after 2s")
        if name in self.listed:
            return self.listed[name]
        zone = name.split(".", 4)[4]
        if name.startswith("2.0.0.127.") and zone not in self.broken:
            return ("127.0.0.2",)
        return ()


def checker(lookup: FakeDnsbl, *zones: str) -> DnsblChecker:
    return DnsblChecker(lookup, zones or ("bl.example.net",), cache_ttl=900.0, timeout=5.0)


LISTED_NAME = "44.33.22.11.bl.example.net"  # OUR_IP in bl.example.net


def alerts(logs: list[Any], event: str = "kill_switch_tripped") -> list[Any]:
    return [e for e in logs if e["event"] == event]


async def test_refusals_from_three_networks_and_no_working_session_trip_on_the_network_alone(
    autojump_clock: trio.testing.MockClock,
) -> None:
    g = guard(blocklist_networks=3, blocklist_window=3600.0)
    with trio.fail_after(10_000), capture_logs() as logs:
        await g.observe(refusal(1))
        await g.observe(refusal(1, "203.0.1.26"))  # same /24: the same network
        await trio.sleep(3000.0)
        await g.observe(refusal(2))
        assert g.halted() is None
        await g.observe(refusal(3))
    assert g.halted() == IP_BLACKLISTED
    (alert,) = alerts(logs)
    assert (alert["switch"], alert["log_level"]) == (IP_BLACKLISTED, "critical")
    assert "SIGHUP" in alert["clear"]
    assert "3 networks refused us (100% of the 3 we talked to)" in alert["reason"]
    assert "network evidence alone" in alert["reason"] and "mx.n3.test" in alert["reason"]
    assert alert["evidence"]["refusing_networks"] == 3
    assert alert["evidence"]["working_networks"] == 0
    assert {r["network"] for r in alert["evidence"]["refusals"]} == {
        "203.0.1.0/24", "203.0.2.0/24", "203.0.3.0/24"
    }  # fmt: skip
    assert alert["dnsbl"]["status"] == "unknown"
    assert "no DNSBL zone configured" in alert["dnsbl"]["note"]


async def test_refusals_spread_over_more_than_the_window_do_not_trip(
    autojump_clock: trio.testing.MockClock,
) -> None:
    g = guard(blocklist_networks=3, blocklist_window=3600.0)
    for n in (1, 2, 3):
        await g.observe(refusal(n))
        await trio.sleep(2000.0)
    assert g.halted() is None


async def test_many_mx_addresses_in_one_slash_24_are_one_network(
    autojump_clock: trio.testing.MockClock,
) -> None:
    g = guard(blocklist_networks=3)
    with capture_logs() as logs:
        for last in range(1, 30):
            await g.observe(refusal(1, f"203.0.1.{last}"))
    assert g.halted() is None
    assert alerts(logs) == []


async def test_ipv6_refusals_count_by_slash_48(autojump_clock: trio.testing.MockClock) -> None:
    g = guard(blocklist_networks=3)
    # Three addresses in one /48 (different /64s): one operator, one network.
    for sub in ("1", "2", "ffff"):
        await g.observe(refusal(1, f"2001:db8:aa:{sub}::25"))
    assert g.halted() is None
    await g.observe(refusal(2, "2001:db8:bb::25"))
    await g.observe(refusal(3, "2001:db8:cc::25"))
    assert g.halted() == IP_BLACKLISTED


async def test_a_dnsbl_listing_trips_and_names_the_list(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lookup = FakeDnsbl({LISTED_NAME: ("127.0.0.2",)})
    g = guard(checker(lookup, "bl.example.net", "other.example.org"), blocklist_networks=3)
    with capture_logs() as logs:
        await g.observe(refusal(1))
        await g.observe(refusal(2))
        assert lookup.queries == []  # nothing is asked before three networks' evidence
        await g.observe(refusal(3))
    assert g.halted() == IP_BLACKLISTED
    (alert,) = alerts(logs)
    assert "our address is listed on bl.example.net" in alert["reason"]
    zones = {z["zone"]: z for z in alert["dnsbl"]["zones"]}
    assert zones["bl.example.net"] == {
        "zone": "bl.example.net", "answer": "listed", "codes": ["127.0.0.2"]
    }  # fmt: skip
    assert zones["other.example.org"]["answer"] == "not-listed"
    assert alert["dnsbl"]["address"] == OUR_IP


async def test_dnsbl_not_listed_with_weak_evidence_does_not_halt_but_warns(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lookup = FakeDnsbl()
    g = guard(checker(lookup), blocklist_networks=3, blocklist_networks_alone=10)
    with capture_logs() as logs:
        for n in (1, 2, 3, 4):
            await g.observe(refusal(n))
    assert g.halted() is None
    assert alerts(logs) == []
    warnings = alerts(logs, "blocklist_evidence_not_about_us")
    assert [w["evidence"]["refusing_networks"] for w in warnings] == [3, 4]
    assert warnings[0]["log_level"] == "warning"
    assert "DNSBLs say our address is not listed" in warnings[0]["basis"]
    assert warnings[0]["dnsbl"]["zones"] == [{"zone": "bl.example.net", "answer": "not-listed"}]
    # One query for our address and one for the test entry; the second weighing was cached.
    assert len(lookup.queries) == 2


async def test_overwhelming_refusals_halt_even_when_the_dnsbls_say_clean(
    autojump_clock: trio.testing.MockClock,
) -> None:
    g = guard(checker(FakeDnsbl()), blocklist_networks=3, blocklist_networks_alone=5)
    with capture_logs() as logs:
        for n in range(1, 6):
            await g.observe(refusal(n))
    assert g.halted() == IP_BLACKLISTED
    (alert,) = alerts(logs)
    assert "5 or more refusing networks halt on their own" in alert["reason"]


async def test_working_sessions_outweigh_a_few_refusals(
    autojump_clock: trio.testing.MockClock,
) -> None:
    g = guard(blocklist_networks=3, blocklist_fraction=0.5)  # no DNSBL configured
    with capture_logs() as logs:
        for n in range(1, 7):
            await g.observe(working(n))
        for n in (1, 2, 3):
            await g.observe(refusal(n))  # 3 of 9 networks: about those hosts
        assert g.halted() is None
        (warning,) = alerts(logs, "blocklist_evidence_not_about_us")
        assert "below 50%" in warning["basis"]
        assert warning["evidence"]["working_networks"] == 6
        # A network that worked and now refuses us counts once, as a refusal.
        await g.observe(refusal(4, "198.18.1.99"))  # 4 of 9
        assert g.halted() is None
        await g.observe(refusal(5))  # 5 of 10
    assert g.halted() == IP_BLACKLISTED
    (alert,) = alerts(logs)
    assert "5 networks refused us (50% of the 10 we talked to)" in alert["reason"]
    assert alert["evidence"]["working_networks"] == 5


async def test_dnsbl_lookups_that_fail_or_are_refused_leave_the_network_evidence(
    autojump_clock: trio.testing.MockClock,
) -> None:
    refused = FakeDnsbl({LISTED_NAME: ("127.255.255.254",)})  # Spamhaus: via an open resolver
    g = guard(checker(refused), blocklist_networks=3)
    with capture_logs() as logs:
        for n in (1, 2, 3):
            await g.observe(refusal(n))
    assert g.halted() == IP_BLACKLISTED  # not "listed": decided on the network evidence
    (alert,) = alerts(logs)
    assert "network evidence alone" in alert["reason"]
    assert alert["dnsbl"]["zones"][0]["answer"] == "refused"
    failing = guard(checker(FakeDnsbl(fail=True)), blocklist_networks=3)
    for n in (1, 2, 3):
        await failing.observe(refusal(n))
    assert failing.halted() == IP_BLACKLISTED


async def test_without_a_public_sending_address_the_dnsbls_are_not_asked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    lookup = FakeDnsbl({LISTED_NAME: ("127.0.0.2",)})
    behind_nat = guard(checker(lookup), local="10.1.2.3", blocklist_networks=3)
    with capture_logs() as logs:
        for n in (1, 2, 3):
            await behind_nat.observe(refusal(n))
    assert lookup.queries == []
    (alert,) = alerts(logs)
    assert "not a public one" in alert["dnsbl"]["note"]
    # Told the public address (killswitch.dnsbl_address), the DNSBL is asked.
    told = guard(checker(lookup), local="10.1.2.3", dnsbl_address=OUR_IP, blocklist_networks=3)
    for n in (1, 2, 3):
        await told.observe(refusal(n))
    assert told.statistics().blocklist.sending_address == OUR_IP
    assert LISTED_NAME in {name for _, name in lookup.queries}


async def test_connect_failures_on_many_hosts_in_a_row_mean_port_25_is_blocked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    g = guard(port_blocked_hosts=4)
    await g.observe(connect_timeout("mx1.a.test"))
    refused = "connect: ECONNREFUSED"
    await g.observe(visit("mx1.b.test", VisitOutcome.CONNECT_FAILED, refused, stage="connect"))
    greeting = "greeting: timeout after 10s"  # connected: says our port 25 works
    await g.observe(visit("mx1.c.test", VisitOutcome.TIMEOUT, greeting, stage="greeting"))
    await g.observe(visit("mx1.d.test", VisitOutcome.HOST_DEAD))  # says nothing either way
    for host in ("e", "f", "g"):
        await g.observe(connect_timeout(f"mx1.{host}.test"))
    assert g.halted() is None
    await g.observe(connect_timeout("mx1.h.test"))
    assert g.halted() == PORT_BLOCKED
    assert g.switches.is_tripped(PORT_BLOCKED)
    assert g.switches.clear_all() == [PORT_BLOCKED]
    g.clear()
    assert g.halted() is None


async def test_reachability_witness_expires(autojump_clock: trio.testing.MockClock) -> None:
    g = guard(reachability_window=900.0)
    assert not g.reachable_recently()  # nothing proven yet
    await g.observe(visit("mx1.a.test", VisitOutcome.CONCLUDED))
    await trio.sleep(900.0)
    assert g.reachable_recently()
    await trio.sleep(0.5)
    assert not g.reachable_recently()


# -- issue 10 item 2: ip_blacklist_detected must be proven about our side ----------------------

HOSTILE_IP = "203.0.113.66"  # one IP behind three hostile domains' MX names
GREET_554 = "greeting: 554 5.7.1 Service unavailable; Client host [198.51.100.7] blocked"


class FakePools:
    """The gate's view of the pool manager: every visit is answered by `answer(host)`."""

    def __init__(self, answer: Callable[[MxHost], tuple[str, str]]) -> None:
        self.answer = answer
        self.visits: list[tuple[float, str, str]] = []

    def is_dead(self, host: MxHost) -> bool:
        return False

    async def wait_for_rejection_room(self, host: MxHost) -> float:
        await trio.lowlevel.checkpoint()
        return 0.0

    async def visit(self, host: MxHost, request: ProbeRequest) -> HostVisit:
        await trio.sleep(0.1)
        self.visits.append((trio.current_time(), host.name, host.addresses[0]))
        outcome, detail = self.answer(host)
        return HostVisit(host.name, host.addresses[0], outcome, detail)


def plan_for(domain: str) -> ProbeRequest:
    return ProbeRequest(domain, ProbePlan(domain, [("Ada", "Lovelace")]))


@pytest.mark.timeout(30)
async def test_three_mx_names_on_one_ip_greeting_554_do_not_halt_probing(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The reproduction: three hostile domains whose MX names all resolve to one IP that
    greets 554 5.7.1 halted every SMTP probe (counted as three "distinct MX hosts")."""
    pools = FakePools(
        lambda h: (VisitOutcome.POLICY_BLOCKED, GREET_554)
        if h.addresses[0] == HOSTILE_IP
        else (VisitOutcome.CONCLUDED, "")
    )
    g = guard(blocklist_window=3600.0)
    gate = SmtpGate(pools, None, g)  # type: ignore[arg-type]
    with trio.fail_after(10_000), capture_logs() as logs:
        for n in (1, 2, 3, 4):
            host = MxHost(f"mx.hostile-{n}.test", 10, (HOSTILE_IP,))
            visit = await gate.visit(host, plan_for(f"hostile-{n}.test"))
            assert visit.outcome == VisitOutcome.POLICY_BLOCKED
        healthy = await gate.visit(MxHost("mx.ok.test", 10, ("192.0.2.10",)), plan_for("ok.test"))
    assert g.halted() is None
    assert healthy.outcome == VisitOutcome.CONCLUDED
    assert [e for e in logs if e["event"] == "kill_switch_tripped"] == []


@pytest.mark.timeout(30)
async def test_a_refusal_nothing_corroborates_is_deferred_then_concludes_after_the_give_up(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Item 5: the hostile domains must not come back forever. Their refusal is deferred
    (it might be about us) until the address has refused us for refusal_give_up seconds;
    then the domain concludes CT-M-SMTP-FAIL saying why. A restart or SIGHUP starts over,
    bounded again."""
    pools = FakePools(lambda h: (VisitOutcome.POLICY_BLOCKED, GREET_554))
    g = guard(refusal_give_up=7200.0)
    gate = SmtpGate(pools, None, g)  # type: ignore[arg-type]
    mx = MxLookup(
        "hostile-1.test", MxStatus.FOUND, (MxHost("mx.hostile-1.test", 10, (HOSTILE_IP,)),)
    )
    policy = RetryPolicy(defer_seconds=600.0)
    results = []
    with trio.fail_after(100_000):
        while True:
            result = (await smtp_probe(mx, [("Ada", "Lovelace")], gate, policy)).result
            results.append((trio.current_time(), result))
            if not isinstance(result, Deferred):
                break
            await trio.sleep(result.retry_after)  # the record comes back after defer_seconds
    deferred = [r for _, r in results if isinstance(r, Deferred)]
    assert all("our address is blocked by mx.hostile-1.test" in r.reason for r in deferred)
    last_at, last = results[-1]
    assert isinstance(last, Failed) and last.code is FailureCode.SMTP_FAIL
    assert "refused-us" in last.blocking_reason
    assert "no other evidence says our IP is blocklisted" in last.blocking_reason
    # Visits every 600 s (plus the visit's 0.1 s) until the streak spans 7200 s: 13 in all.
    assert len(results) == 13 and 7200.0 <= last_at < 7200.0 + 600.0 + 2.0
    assert g.statistics().refusal_streaks.given_up == 1
    # After SIGHUP (or a restart) the streak starts over: deferred again, bounded again.
    g.clear()
    again = (await smtp_probe(mx, [("Ada", "Lovelace")], gate, policy)).result
    assert isinstance(again, Deferred)


async def test_no_refusal_is_given_up_while_the_switch_is_tripped_or_after_a_working_session(
    autojump_clock: trio.testing.MockClock,
) -> None:
    g = guard(refusal_give_up=100.0, blocklist_networks=3)
    hostile = refusal(1, HOSTILE_IP)
    assert (await g.observe(hostile)).outcome == VisitOutcome.POLICY_BLOCKED
    await trio.sleep(60.0)
    # The host takes a session: its earlier refusal was not its policy towards us.
    await g.observe(visit("mx.n1.test", VisitOutcome.CONCLUDED, "", HOSTILE_IP))
    await trio.sleep(60.0)
    assert (await g.observe(hostile)).outcome == VisitOutcome.POLICY_BLOCKED
    await trio.sleep(100.0)
    assert (await g.observe(hostile)).outcome == VisitOutcome.REFUSED
    # Once our IP is proven blocklisted, every refusal is about us: none is given up.
    await g.observe(refusal(2))
    await g.observe(refusal(3))
    assert g.halted() == IP_BLACKLISTED
    await trio.sleep(100.0)
    assert (await g.observe(hostile)).outcome == VisitOutcome.POLICY_BLOCKED
