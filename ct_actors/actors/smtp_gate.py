"""The gate in front of the SMTP pools: the SMTPCheck throttle and the SMTP kill switches.

Every host visit a domain task makes goes through `SmtpGate.visit`:

1. a host already known dead is skipped at once (no call is spent on it);
2. while an SMTP kill switch is tripped, no connection is made: the visit comes back HALTED
   and the record is deferred (pending), never failed;
3. the SMTPCheck limiter is acquired — one call is one mail transaction (MAIL FROM, the RCPTs
   for this domain, RSET) on one MX host; see docs/throttles.md;
4. the visit runs on the host's pool, and `SmtpGuard` reads what happened.

`SmtpGuard` holds the detectors for faults on *our* side:
- `ip_blacklist_detected`: our sending IP is on a blocklist. Proven about our side, not
  claimed by whoever writes "554 5.7.1" in a greeting: refusals are counted by independent
  network (/24, /48), weighed against the sessions that worked in the same window, and
  confirmed by looking our own address up in the operator's DNS blocklists
  (throttle/blocklist_evidence.py for the rule, dns/dnsbl.py for the lookup; the registry's
  SMTPCheck kill switch, halt_and_alert);
- `smtp_port_blocked`: connections to many distinct MX hosts in a row fail at connect time
  while DNS works — what a firewalled port 25 looks like (the canary environment);
and the reachability witness: an unreachable-host verdict (CT-M-SMTP-FAIL) is only trusted if
some SMTP connection succeeded recently, else the record is deferred.

A refusal of our IP that the evidence does not corroborate is the host's own policy: its
domains are deferred (it might still be about us) until the address has refused us for
`refusal_give_up` seconds, then their visits come back REFUSED and the domains conclude.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog
import trio

from ct_actors.actors.pool_manager import SmtpPoolManager
from ct_actors.actors.visit_request import ProbeRequest
from ct_actors.config import KillSwitchConfig
from ct_actors.dns.dnsbl import DnsblChecker, DnsblResult, DnsblStatistics
from ct_actors.dns.types import MxHost
from ct_actors.log import fields_as_log
from ct_actors.probe.visit import (
    NO_CONNECTION_TRIED,
    HostVisit,
    VisitOutcome,
    dead_host_visit,
)
from ct_actors.throttle.blocklist_evidence import (
    Assessment,
    BlocklistEvidence,
    BlocklistJudgement,
    Decision,
    EvidenceStatistics,
    RefusalStreaks,
    RefusalStreaksStatistics,
    Rule,
    decide,
)
from ct_actors.throttle.killswitch import (
    DistinctFailures,
    DistinctFailuresStatistics,
    KillSwitches,
)
from ct_actors.throttle.limiter import ToolLimiter

log = structlog.get_logger("ct_actors.smtp_gate")

IP_BLACKLISTED = "ip_blacklist_detected"
PORT_BLOCKED = "smtp_port_blocked"
SMTP_SWITCHES = (IP_BLACKLISTED, PORT_BLOCKED)


# Defaults are the config's (ct_actors/config/sections.py): defaults live in one place.
_KILLSWITCH = KillSwitchConfig()


@dataclass(frozen=True, slots=True)
class GuardSettings:
    blocklist_networks: int = _KILLSWITCH.blocklist_networks
    blocklist_fraction: float = _KILLSWITCH.blocklist_fraction
    blocklist_networks_alone: int = _KILLSWITCH.blocklist_networks_alone
    blocklist_window: float = _KILLSWITCH.blocklist_window
    refusal_give_up: float = _KILLSWITCH.refusal_give_up
    # Our public sending address, when the local one is not it (NAT); None: learnt from the
    # local address of our SMTP connections.
    dnsbl_address: str | None = _KILLSWITCH.dnsbl_address
    port_blocked_hosts: int = _KILLSWITCH.port_blocked_hosts
    reachability_window: float = _KILLSWITCH.reachability_window

    @property
    def rule(self) -> Rule:
        return Rule(self.blocklist_networks, self.blocklist_fraction, self.blocklist_networks_alone)


def _worked(visit: HostVisit) -> bool:
    """The host took our session and answered about mailboxes: it does not refuse our IP."""
    if visit.outcome in (VisitOutcome.CONCLUDED, VisitOutcome.GREYLISTED):
        return True
    return visit.outcome == VisitOutcome.SESSION_ENDED and visit.progress > 0


@dataclass(frozen=True, slots=True)
class BlocklistStatistics:
    evidence: EvidenceStatistics  # refusals of our IP and working sessions, in the window
    weighings: int
    not_us: int  # weighings that found the refusals about the hosts
    refusals_given_up: int
    sending_address: str | None  # our address as the receiving hosts see it

    def as_log(self) -> dict[str, Any]:
        """The evidence's counters flat in the `blocklist` object, as the dashboards read it."""
        line = fields_as_log(self)
        return {**line.pop("evidence"), **line}


@dataclass(frozen=True, slots=True)
class GuardStatistics:
    last_connected_ago: float | None  # seconds since our latest SMTP connection opened
    blocklist: BlocklistStatistics
    refusal_streaks: RefusalStreaksStatistics
    dnsbl: DnsblStatistics
    unreachable: DistinctFailuresStatistics  # the port-25 detector

    def as_log(self) -> dict[str, Any]:
        line = fields_as_log(self)
        if self.last_connected_ago is not None:
            line["last_connected_ago"] = round(self.last_connected_ago, 1)
        return line


class SmtpGuard:
    def __init__(
        self,
        settings: GuardSettings,
        switches: KillSwitches,
        *,
        dnsbl: DnsblChecker | None = None,
        local_address: Callable[[], str | None] | None = None,
    ) -> None:
        self.settings = settings
        self.switches = switches
        self.dnsbl = dnsbl if dnsbl is not None else DnsblChecker(None, ())
        self._local_address = local_address
        self._evidence = BlocklistEvidence(settings.blocklist_window)
        self._streaks = RefusalStreaks(settings.refusal_give_up)
        self._unreachable = DistinctFailures(settings.port_blocked_hosts)
        self.last_connected: float | None = None
        self._weighing = False
        self._weigh_again = False
        self._last_warning: tuple[float, int, str] | None = None
        self._stats = {"weighings": 0, "not_us": 0, "refusals_given_up": 0}

    def reconfigure(self, settings: GuardSettings) -> None:
        self.settings = settings
        # The evidence so far stays: a reload is not the operator saying "fixed".
        self._evidence.window = settings.blocklist_window
        self._streaks.give_up = settings.refusal_give_up
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

    def sending_address(self) -> str | None:
        """Our address as the receiving hosts see it: the configured one (NAT), else the
        local address of our latest SMTP connection."""
        if self.settings.dnsbl_address:
            return self.settings.dnsbl_address
        return self._local_address() if self._local_address is not None else None

    async def observe(self, visit: HostVisit) -> HostVisit:
        """Read what happened on a visit; returns the visit as the domain should see it (a
        refusal given up on comes back REFUSED)."""
        now = trio.current_time()
        if visit.outcome in NO_CONNECTION_TRIED:
            return visit
        if visit.connect_failed:
            if self._unreachable.failure(visit.host):
                self._trip(
                    PORT_BLOCKED,
                    f"connections to {self.settings.port_blocked_hosts} distinct MX hosts in a "
                    f"row failed (last: {visit.host}: {visit.detail}); is outbound port 25 "
                    "blocked?",
                )
            return visit
        self._unreachable.success()
        self.last_connected = now
        if _worked(visit):
            self._evidence.worked(visit.address, now)
            self._streaks.worked(visit.address)
            return visit
        if visit.outcome != VisitOutcome.POLICY_BLOCKED:
            return visit
        new_network = self._evidence.refused(visit.address, visit.host, visit.detail, now)
        streak = self._streaks.refused(visit.address, visit.detail, now)
        if new_network and self.halted() is None:
            await self._weigh(visit)
        if self.halted() is None and self._streaks.settled(streak):
            assert streak is not None
            self._stats["refusals_given_up"] += 1
            self._streaks.given_up += 1
            detail = (
                f"{visit.detail} (this address has refused us {streak.refusals} times over "
                f"{streak.last - streak.first:g}s, and no other evidence says our IP is "
                "blocklisted: the refusal is this host's policy)"
            )
            return dataclasses.replace(visit, outcome=VisitOutcome.REFUSED, detail=detail)
        return visit

    async def _weigh(self, visit: HostVisit) -> None:
        """Weigh the evidence (one weighing at a time; refusals from new networks that arrive
        meanwhile make it weigh once more)."""
        if self._weighing:
            self._weigh_again = True
            return
        self._weighing = True
        try:
            while True:
                self._weigh_again = False
                rule = self.settings.rule
                if self._evidence.assess(trio.current_time()).refusing_networks < rule.networks:
                    return  # nothing to weigh yet: no DNSBL query either
                self._stats["weighings"] += 1
                dnsbl = await self.dnsbl.check(self.sending_address())
                if self.halted() is not None:
                    return
                assessment = self._evidence.assess(trio.current_time())
                decision = decide(rule, assessment, dnsbl.status, dnsbl.listed_on)
                self._act(decision, assessment, dnsbl, visit)
                if not self._weigh_again:
                    return
        finally:
            self._weighing = False

    def _act(
        self, decision: Decision, a: Assessment, dnsbl: DnsblResult, visit: HostVisit
    ) -> None:
        if decision.verdict is BlocklistJudgement.TRIP:
            self._trip(
                IP_BLACKLISTED,
                f"{decision.basis} (last: {visit.host} [{visit.address}]: {visit.detail})",
                evidence=a.audit(),
                dnsbl=dnsbl.audit(),
            )
            return
        if decision.verdict is not BlocklistJudgement.NOT_US:
            return
        self._stats["not_us"] += 1
        now = trio.current_time()
        key = (a.refusing_networks, str(dnsbl.status))
        last = self._last_warning
        # Once per change in the evidence, or once per window while it stays the same.
        if last is not None and (last[1], last[2]) == key and now - last[0] < a.window:
            return
        self._last_warning = (now, *key)
        log.warning(
            "blocklist_evidence_not_about_us",
            basis=decision.basis,
            evidence=a.audit(),
            dnsbl=dnsbl.audit(),
            action="probing goes on; refusing hosts' domains are deferred, then concluded "
            f"after killswitch.refusal_give_up ({self.settings.refusal_give_up:g}s)",
        )

    def clear(self) -> None:
        """After the operator's fix (SIGHUP): forget the evidence along with the switches."""
        self._evidence.reset()
        self._streaks.reset()
        self._unreachable.reset()
        self.dnsbl.clear()
        self._last_warning = None

    def _trip(self, name: str, reason: str, **evidence: object) -> None:
        if self.switches.trip(name, reason, trio.current_time()):
            log.critical(
                "kill_switch_tripped",
                switch=name,
                action="halt_and_alert",
                reason=reason,
                clear="fix the cause, then SIGHUP (systemctl reload ct-actors) or restart",
                **evidence,
            )

    def statistics(self) -> GuardStatistics:
        now = trio.current_time()
        last = self.last_connected
        return GuardStatistics(
            last_connected_ago=None if last is None else now - last,
            blocklist=BlocklistStatistics(
                self._evidence.statistics(now),
                **self._stats,
                sending_address=self.sending_address(),
            ),
            refusal_streaks=self._streaks.statistics(),
            dnsbl=self.dnsbl.statistics(),
            unreachable=self._unreachable.statistics(),
        )


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
            return dead_host_visit(host.name)
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
            return HostVisit(host.name, None, VisitOutcome.HALTED, f"SMTP probing halted: {halted}")
        visit = await self._pools.visit(host, request)
        return await self.guard.observe(visit)
