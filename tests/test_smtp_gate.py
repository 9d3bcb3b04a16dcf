"""SmtpGuard: the SMTP kill-switch detectors and the reachability witness, on visit results."""

from __future__ import annotations

import trio
import trio.testing
from structlog.testing import capture_logs

from ct_actors.actors.smtp_gate import (
    IP_BLACKLISTED,
    PORT_BLOCKED,
    GuardSettings,
    SmtpGuard,
)
from ct_actors.actors.smtp_pool import CONNECT_FAILED, HOST_DEAD, TIMEOUT, HostVisit
from ct_actors.actors.supervisor import KILL_SWITCHES
from ct_actors.probe.conversation import HostOutcome
from ct_actors.throttle.killswitch import KillSwitches

SPAMHAUS = "greeting: 554 5.7.1 Client host [198.51.100.7] blocked using zen.spamhaus.org"


def guard(**kw: float) -> SmtpGuard:
    return SmtpGuard(GuardSettings(**kw), KillSwitches(dict(KILL_SWITCHES)))  # type: ignore[arg-type]


def visit(host: str, outcome: str, detail: str = "") -> HostVisit:
    return HostVisit(host, "192.0.2.1", outcome, detail)


async def test_blocklisting_on_three_distinct_hosts_halts_smtp(
    autojump_clock: trio.testing.MockClock,
) -> None:
    g = guard(blocklist_hosts=3, blocklist_window=3600.0)
    with trio.fail_after(10_000), capture_logs() as logs:
        g.observe(visit("mx1.a.test", HostOutcome.POLICY_BLOCKED, SPAMHAUS))
        g.observe(visit("mx1.a.test", HostOutcome.POLICY_BLOCKED, SPAMHAUS))  # same host
        g.observe(visit("mx1.b.test", HostOutcome.CONCLUDED))  # others still take us
        await trio.sleep(3000.0)
        g.observe(visit("mx1.c.test", HostOutcome.POLICY_BLOCKED, SPAMHAUS))
        assert g.halted() is None
        g.observe(visit("mx1.d.test", HostOutcome.POLICY_BLOCKED, SPAMHAUS))
    assert g.halted() == IP_BLACKLISTED
    (alert,) = [e for e in logs if e["event"] == "kill_switch_tripped"]
    assert (alert["switch"], alert["log_level"]) == (IP_BLACKLISTED, "critical")
    assert "mx1.d.test" in alert["reason"] and "SIGHUP" in alert["clear"]


async def test_blocklisting_spread_over_more_than_the_window_does_not_trip(
    autojump_clock: trio.testing.MockClock,
) -> None:
    g = guard(blocklist_hosts=3, blocklist_window=3600.0)
    for host in ("mx1.a.test", "mx1.b.test", "mx1.c.test"):
        g.observe(visit(host, HostOutcome.POLICY_BLOCKED, SPAMHAUS))
        await trio.sleep(2000.0)
    assert g.halted() is None


async def test_connect_failures_on_many_hosts_in_a_row_mean_port_25_is_blocked(
    autojump_clock: trio.testing.MockClock,
) -> None:
    g = guard(port_blocked_hosts=4)
    g.observe(visit("mx1.a.test", TIMEOUT, "connect: timeout after 10s"))
    g.observe(visit("mx1.b.test", CONNECT_FAILED, "connect: ECONNREFUSED"))
    g.observe(visit("mx1.c.test", TIMEOUT, "greeting: timeout after 10s"))  # connected: resets
    g.observe(visit("mx1.d.test", HOST_DEAD))  # says nothing either way
    for host in ("e", "f", "g"):
        g.observe(visit(f"mx1.{host}.test", TIMEOUT, "connect: timeout after 10s"))
    assert g.halted() is None
    g.observe(visit("mx1.h.test", TIMEOUT, "connect: timeout after 10s"))
    assert g.halted() == PORT_BLOCKED
    assert g.switches.is_tripped(PORT_BLOCKED)
    assert g.switches.clear_all() == [PORT_BLOCKED]
    g.clear()
    assert g.halted() is None


async def test_reachability_witness_expires(autojump_clock: trio.testing.MockClock) -> None:
    g = guard(reachability_window=900.0)
    assert not g.reachable_recently()  # nothing proven yet
    g.observe(visit("mx1.a.test", HostOutcome.CONCLUDED))
    await trio.sleep(900.0)
    assert g.reachable_recently()
    await trio.sleep(0.5)
    assert not g.reachable_recently()
