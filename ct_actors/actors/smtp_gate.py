"""The gate in front of the SMTP pools: the SMTPCheck throttle and the SMTP kill switches.

Every host visit a domain task makes goes through `SmtpGate.visit`:

1. a host already known dead is skipped at once (no call is spent on it);
2. while an SMTP kill switch is tripped, no connection is made: the visit comes back HALTED
   and the record is deferred (pending), never failed;
3. the SMTPCheck limiter is acquired — one call is one mail transaction (MAIL FROM, the RCPTs
   for this domain, RSET) on one MX host; see docs/throttles.md;
4. the visit runs on the host's pool, and `SmtpGuard` reads what happened.

`SmtpGuard` holds the detectors for faults on *our* side:
- `ip_blacklist_detected`: several distinct MX hosts refuse us with blocklist texts or 5.7.x
  reputation codes within a window (the registry's SMTPCheck kill switch, halt_and_alert);
- `smtp_port_blocked`: connections to many distinct MX hosts in a row fail at connect time
  while DNS works — what a firewalled port 25 looks like (the canary environment);
and the reachability witness: an unreachable-host verdict (CT-M-SMTP-FAIL) is only trusted if
some SMTP connection succeeded recently, else the record is deferred.
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
import trio

from ct_actors.actors.pool_manager import SmtpPoolManager
from ct_actors.actors.smtp_pool import (
    HALTED,
    HOST_DEAD,
    NO_ADDRESS,
    NOT_PUBLIC,
    HostVisit,
    ProbeRequest,
    is_connect_failure,
)
from ct_actors.dns.types import MxHost
from ct_actors.probe.conversation import HostOutcome
from ct_actors.throttle.killswitch import DistinctFailures, DistinctWithin, KillSwitches
from ct_actors.throttle.limiter import ToolLimiter

log = structlog.get_logger("ct_actors.smtp_gate")

IP_BLACKLISTED = "ip_blacklist_detected"
PORT_BLOCKED = "smtp_port_blocked"
SMTP_SWITCHES = (IP_BLACKLISTED, PORT_BLOCKED)

# Visit outcomes that say nothing about whether we can reach port 25.
_NO_CONNECTION_TRIED = frozenset({HOST_DEAD, HALTED, NO_ADDRESS, NOT_PUBLIC})


@dataclass(frozen=True, slots=True)
class GuardSettings:
    blocklist_hosts: int = 3
    blocklist_window: float = 3600.0
    port_blocked_hosts: int = 10
    reachability_window: float = 900.0


class SmtpGuard:
    def __init__(self, settings: GuardSettings, switches: KillSwitches) -> None:
        self.settings = settings
        self.switches = switches
        self._blocklist = DistinctWithin(settings.blocklist_hosts, settings.blocklist_window)
        self._unreachable = DistinctFailures(settings.port_blocked_hosts)
        self.last_connected: float | None = None

    def update(self, settings: GuardSettings) -> None:
        self.settings = settings
        self._blocklist = DistinctWithin(settings.blocklist_hosts, settings.blocklist_window)
        self._unreachable = DistinctFailures(settings.port_blocked_hosts)

    def halted(self) -> str | None:
        """The name of the tripped SMTP switch, if any."""
        for name in SMTP_SWITCHES:
            if self.switches.is_tripped(name):
                return name
        return None

    def reachable_recently(self) -> bool:
        """Has some SMTP connection succeeded within the reachability window? Without that
        proof an unreachable MX host may be our own firewall, not the target's fault."""
        if self.last_connected is None:
            return False
        return trio.current_time() - self.last_connected <= self.settings.reachability_window

    def connected(self) -> None:
        """An SMTP session opened somewhere: our side can connect."""
        self._unreachable.success()
        self.last_connected = trio.current_time()

    def observe(self, visit: HostVisit) -> None:
        now = trio.current_time()
        if visit.outcome in _NO_CONNECTION_TRIED:
            return
        if is_connect_failure(visit):
            if self._unreachable.failure(visit.host):
                self._trip(
                    PORT_BLOCKED,
                    f"connections to {self.settings.port_blocked_hosts} distinct MX hosts in a "
                    f"row failed (last: {visit.host}: {visit.detail}); is outbound port 25 "
                    "blocked?",
                )
            return
        self._unreachable.success()
        self.last_connected = now
        if visit.outcome == HostOutcome.POLICY_BLOCKED and self._blocklist.failure(
            visit.host, now
        ):
            self._trip(
                IP_BLACKLISTED,
                f"{self.settings.blocklist_hosts} distinct MX hosts refused our address within "
                f"{self.settings.blocklist_window:g}s (last: {visit.host}: {visit.detail})",
            )

    def clear(self) -> None:
        """After the operator's fix (SIGHUP): forget the evidence along with the switches."""
        self._blocklist.reset()
        self._unreachable.reset()

    def _trip(self, name: str, reason: str) -> None:
        if self.switches.trip(name, reason, trio.current_time()):
            log.critical(
                "kill_switch_tripped",
                switch=name,
                action="halt_and_alert",
                reason=reason,
                clear="fix the cause, then SIGHUP (systemctl reload ct-actors) or restart",
            )

    def statistics(self) -> dict[str, object]:
        return {
            "last_connected_ago": None
            if self.last_connected is None
            else round(trio.current_time() - self.last_connected, 1),
            "blocklist": self._blocklist.statistics(),
            "unreachable": self._unreachable.statistics(),
        }


class SmtpGate:
    """A `HostVisitor` for the domain tasks: throttled, guarded access to the pools."""

    def __init__(
        self, pools: SmtpPoolManager, limiter: ToolLimiter | None, guard: SmtpGuard
    ) -> None:
        self._pools = pools
        self._limiter = limiter
        self.guard = guard

    async def visit(self, host: MxHost, request: ProbeRequest) -> HostVisit:
        if self._pools.is_dead(host):
            return HostVisit(host.name, None, HOST_DEAD, "marked dead by an earlier visit")
        if self.guard.halted() is None:
            # Directory-harvest safety: a host's domains wait for its rejected-RCPT budget
            # before they spend an SMTPCheck call.
            await self._pools.wait_for_rejection_room(host)
        if (halted := self.guard.halted()) is None and self._limiter is not None:
            await self._limiter.acquire(request.domain)
            halted = self.guard.halted()  # may have tripped while we waited for the throttle
            if halted is not None:
                self._limiter.cancel_call()
        if halted is not None:
            return HostVisit(host.name, None, HALTED, f"SMTP probing halted: {halted}")
        visit = await self._pools.visit(host, request)
        self.guard.observe(visit)
        return visit
