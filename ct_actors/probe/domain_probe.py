"""From an MX lookup to a result for one domain: walk the MX hosts in preference order through
their pools, retry greylisting and throttling later in the same pass, and turn what happened
into PASS / FAIL / Deferred with an audit trail.

Waiting (greylist, throttle back-off) happens here, in the domain's own task, so it never holds
an SMTP worker or blocks other domains.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from ct_actors.actors.smtp_pool import (
    HALTED,
    HOST_DEAD,
    NO_ADDRESS,
    HostVisit,
    ProbeRequest,
    is_connect_failure,
)
from ct_actors.dns.types import MxHost, MxLookup, MxStatus
from ct_actors.outcome import Deferred, Failed, FailureCode, Passed, Result
from ct_actors.probe.conversation import HostOutcome
from ct_actors.probe.patterns import (
    CATCHALL_CONFIDENCE,
    DEFAULT_METHOD,
    MX_ONLY_CONFIDENCE,
    template,
)
from ct_actors.probe.plan import Conclusion, ProbePlan
from ct_actors.throttle.backoff import backoff_delay

_NO_MX_REASONS = {
    MxStatus.NXDOMAIN: "NXDOMAIN: the domain does not exist",
    MxStatus.NO_MX: "no MX records published",
    MxStatus.NULL_MX: "null MX (RFC 7505): the domain accepts no mail",
}


class HostVisitor(Protocol):
    async def visit(self, host: MxHost, request: ProbeRequest) -> HostVisit: ...


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    greylist_delay: float = 120.0
    greylist_retries: int = 2
    throttle_delay: float = 2.0  # the registry's SMTPCheck backoff
    throttle_retries: int = 2
    throttle_strategy: str = "exponential"
    defer_seconds: float = 600.0


@dataclass(frozen=True, slots=True)
class DomainResult:
    result: Result
    mx_host: str | None


def mx_evidence(mx: MxLookup) -> dict[str, Any]:
    return {
        "mx_status": str(mx.status),
        "mx_hosts": [
            {"name": h.name, "preference": h.preference, "addresses": list(h.addresses)}
            for h in mx.hosts
        ],
        "nameserver": mx.nameserver,
    }


def no_mx_result(mx: MxLookup) -> DomainResult | None:
    """CT-M-NO-MX with the precise reason, or None if the domain has MX hosts."""
    if mx.status is MxStatus.FOUND and mx.hosts:
        return None
    reason = _NO_MX_REASONS.get(mx.status, "no usable MX hosts")
    detail = f"{reason}{': ' + mx.detail if mx.detail else ''}"
    return DomainResult(Failed(FailureCode.NO_MX, detail, evidence=mx_evidence(mx)), None)


def mx_only_result(mx: MxLookup) -> DomainResult:
    if (failed := no_mx_result(mx)) is not None:
        return failed
    evidence = {**mx_evidence(mx), "mode": "mx-only"}
    passed = Passed(
        template(DEFAULT_METHOD, mx.domain), DEFAULT_METHOD, MX_ONLY_CONFIDENCE, False, evidence
    )
    return DomainResult(passed, mx.hosts[0].name)


async def smtp_probe(
    mx: MxLookup,
    people: Sequence[tuple[str, str]],
    pools: HostVisitor,
    policy: RetryPolicy,
    *,
    reachable_recently: Callable[[], bool] | None = None,
) -> DomainResult:
    """`reachable_recently` says whether our side has made an SMTP connection lately; when it
    says no, "no MX host reachable" is treated as our fault (deferred), not the domain's."""
    if (failed := no_mx_result(mx)) is not None:
        return failed
    plan = ProbePlan(mx.domain, people)
    visits: list[HostVisit] = []
    concluded_on: HostVisit | None = None
    for host in mx.hosts:
        if not host.addresses:
            visits.append(HostVisit(host.name, None, NO_ADDRESS, "MX host name does not resolve"))
            continue
        plan.restart()
        greylists = throttles = 0
        while True:
            visit = await pools.visit(host, ProbeRequest(mx.domain, plan))
            visits.append(visit)
            if visit.outcome == HostOutcome.GREYLISTED and greylists < policy.greylist_retries:
                greylists += 1
                await trio.sleep(policy.greylist_delay)
                plan.resume()
                continue
            if visit.outcome == HostOutcome.THROTTLED and throttles < policy.throttle_retries:
                await trio.sleep(
                    backoff_delay(policy.throttle_strategy, policy.throttle_delay, throttles)
                )
                throttles += 1
                continue
            break
        if visit.outcome == HostOutcome.CONCLUDED:
            concluded_on = visit
            break
    evidence = {
        **mx_evidence(mx),
        "mode": "smtp",
        "visits": [v.audit() for v in visits],
        "catchall_probe": plan.catchall_address,
    }
    if plan.skipped:  # never sent: not a valid RFC 5321 local part (issue 10, item 7)
        evidence["skipped_candidates"] = [s.audit() for s in plan.skipped]
    if concluded_on is not None:
        return DomainResult(_concluded(plan, mx.domain, evidence), concluded_on.host)
    if halted := [v for v in visits if v.outcome == HALTED]:
        reason = f"not probed: {halted[0].detail}"
        return DomainResult(Deferred(reason, policy.defer_seconds, evidence), None)
    unreachable = [v for v in visits if _unreachable(v)]
    if (
        unreachable
        and reachable_recently is not None
        and all(_unreachable(v) or v.outcome == NO_ADDRESS for v in visits)
        and not reachable_recently()
    ):
        reason = (
            "no MX host reachable, and no SMTP connection of ours succeeded recently: "
            "the fault may be on our side (outbound port 25)"
        )
        return DomainResult(Deferred(reason, policy.defer_seconds, evidence), None)
    if throttled := [v for v in visits if v.outcome == HostOutcome.THROTTLED]:
        # The server asked us to slow down (421, 4.7.x) and the retries are spent: that is
        # about our pace, not an answer about the domain. Keep the record pending.
        reason = f"throttled by {throttled[-1].host}: {throttled[-1].detail}"
        return DomainResult(Deferred(reason, policy.defer_seconds, evidence), throttled[-1].host)
    if any(v.outcome == HostOutcome.POLICY_BLOCKED for v in visits):
        # A block of our IP says nothing about the domain: keep the record pending.
        blocked = [v for v in visits if v.outcome == HostOutcome.POLICY_BLOCKED]
        reason = f"our address is blocked by {blocked[0].host}: {blocked[0].detail}"
        return DomainResult(Deferred(reason, policy.defer_seconds, evidence), blocked[0].host)
    summary = "; ".join(
        f"{v.host}: {v.outcome}{' (' + v.detail + ')' if v.detail else ''}" for v in visits
    )
    smtp_fail = Failed(
        FailureCode.SMTP_FAIL, f"no MX host gave an answer: {summary}"[:2000], evidence=evidence
    )
    return DomainResult(smtp_fail, visits[-1].host if visits else None)


def _unreachable(visit: HostVisit) -> bool:
    return visit.outcome == HOST_DEAD or is_connect_failure(visit)


def _concluded(plan: ProbePlan, domain: str, evidence: dict[str, Any]) -> Result:
    if plan.conclusion is Conclusion.CATCHALL:
        return Passed(
            template(DEFAULT_METHOD, domain), DEFAULT_METHOD, CATCHALL_CONFIDENCE, True, evidence
        )
    if plan.conclusion is Conclusion.PATTERN and plan.winner is not None:
        winner = plan.winner
        return Passed(
            template(winner.method_type, domain),
            winner.method_type,
            winner.confidence,
            False,
            evidence,
        )
    tried = len(plan.steps) - 1
    return Failed(
        FailureCode.NO_PATTERN, f"all {tried} candidate addresses rejected", evidence=evidence
    )
