"""The stages between a domain and its decision, wired in one place for the daemon
(`Supervisor`, which `canary` runs too), `once` and `probe` (`app.probe_domain`): the MX lookup
(`ResolverStage`), the SMTP pools behind their gate (`SmtpGate`: the SMTPCheck throttle and the
SMTP kill switches) and guard (`SmtpGuard`), and the Tier-2 verifier, all on one set of kill
switches. So the one-shot commands decide a domain exactly as the daemon does.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal

import trio

from ct_actors.actors.domain_task import smtp_probe
from ct_actors.actors.pool_manager import SmtpPoolManager
from ct_actors.actors.resolver_stage import RESOLVER_FAILURE, ResolverSettings, ResolverStage
from ct_actors.actors.smtp_gate import (
    IP_BLACKLISTED,
    PORT_BLOCKED,
    GuardSettings,
    SmtpGate,
    SmtpGuard,
)
from ct_actors.dns.dnsbl import DnsblChecker
from ct_actors.dns.types import MxLookup, MxResolver
from ct_actors.net.address_policy import AddressPolicy
from ct_actors.probe.domain_probe import DomainResult, RetryPolicy, mx_only_result
from ct_actors.throttle.killswitch import KillSwitches
from ct_actors.throttle.limiter import ToolThrottles
from ct_actors.toolbox import MX_LOOKUP, SMTP_CHECK
from ct_actors.verify.gate import BUDGET_CAP_REACHED, EmailVerifier

# Every kill switch the pipeline knows, with the registry's action for it.
KILL_SWITCHES = {
    RESOLVER_FAILURE: "switch_resolver",
    IP_BLACKLISTED: "halt_and_alert",
    PORT_BLOCKED: "halt_and_alert",
    # The verifier's: stops verifier calls only; claiming and probing go on.
    BUDGET_CAP_REACHED: "halt_and_alert",
}


class ProbeStages:
    """`throttles`: the registry's limits (None: unthrottled, for tests). `verifier` builds the
    Tier-2 verifier on the stages' kill switches (None: no Tier 2)."""

    def __init__(
        self,
        *,
        resolver: MxResolver,
        resolver_settings: ResolverSettings,
        pools: SmtpPoolManager,
        guard_settings: GuardSettings,
        throttles: ToolThrottles | None = None,
        verifier: Callable[[KillSwitches], EmailVerifier] | None = None,
        dnsbl: DnsblChecker | None = None,
        local_address: Callable[[], str | None] | None = None,
    ) -> None:
        self.switches = KillSwitches(dict(KILL_SWITCHES))
        self.verifier = verifier(self.switches) if verifier is not None else None
        self.resolver = ResolverStage(
            resolver,
            resolver_settings,
            limiter=throttles[MX_LOOKUP] if throttles is not None else None,
            switches=self.switches,
        )
        self.pools = pools
        self.guard = SmtpGuard(
            guard_settings, self.switches, dnsbl=dnsbl, local_address=local_address
        )
        pools.on_connected = self.guard.connected
        self.gate = SmtpGate(
            pools, throttles[SMTP_CHECK] if throttles is not None else None, self.guard
        )

    async def start(self, nursery: trio.Nursery) -> None:
        """Start the resolver stage and the pools in `nursery`; `close()` ends them."""
        await nursery.start(self.resolver.run)
        await nursery.start(self.pools.run)

    def close(self) -> None:
        """The pools' workers QUIT their sessions."""
        self.resolver.close()
        self.pools.close()

    async def probe(
        self,
        mx: MxLookup,
        people: Sequence[tuple[str, str]],
        *,
        mode: Literal["smtp", "mx-only"],
        retry: RetryPolicy,
        addresses: AddressPolicy | None,
        catchall_address: str = "",
    ) -> DomainResult:
        """The domain's decision from its MX lookup: mx-only, or the SMTP pass through the gate
        (an unreachable host counts against the domain only if our port 25 worked lately)."""
        if mode == "mx-only":
            return mx_only_result(mx)
        return await smtp_probe(
            mx,
            people,
            self.gate,
            retry,
            reachable_recently=self.guard.reachable_recently,
            catchall_address=catchall_address,
            addresses=addresses,
        )
