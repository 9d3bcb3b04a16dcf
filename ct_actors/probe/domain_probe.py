"""From an MX lookup to a result for one domain: walk the MX hosts in preference order through
their pools, retry greylisting and throttling later in the same pass, and turn what happened
into PASS / FAIL / Deferred with an audit trail.

Waiting (greylist, throttle back-off) happens here, in the domain's own task, so it never holds
an SMTP worker or blocks other domains.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import trio

from ct_actors.config import ProbeConfig, SmtpConfig
from ct_actors.dns.types import MxHost, MxLookup, MxStatus
from ct_actors.net.address_policy import AddressPolicy
from ct_actors.outcome import Deferred, Failed, FailureCode, Passed, Result
from ct_actors.probe.conversation import HostOutcome
from ct_actors.probe.patterns import (
    CATCHALL_CONFIDENCE,
    DEFAULT_METHOD,
    MX_ONLY_CONFIDENCE,
    template,
)
from ct_actors.probe.plan import Conclusion, ProbePlan
from ct_actors.probe.visit import (
    DISCONNECTED,
    HALTED,
    HOST_DEAD,
    NO_ADDRESS,
    NOT_PUBLIC,
    TIMEOUT,
    HostVisit,
    ProbeRequest,
    is_connect_failure,
)
from ct_actors.throttle.backoff import backoff_delay

_NO_MX_REASONS = {
    MxStatus.NXDOMAIN: "NXDOMAIN: the domain does not exist",
    MxStatus.NO_MX: "no MX records published",
    MxStatus.NULL_MX: "null MX (RFC 7505): the domain accepts no mail",
}


class HostVisitor(Protocol):
    async def visit(self, host: MxHost, request: ProbeRequest) -> HostVisit: ...


# Defaults are the config's (ct_actors/config/sections.py): defaults live in one place.
_SMTP = SmtpConfig()
_PROBE = ProbeConfig()


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    greylist_delay: float = _SMTP.greylist_retry_delay
    # Greylisted passes a domain may come back for (waits doubling from greylist_delay)
    # before it concludes CT-M-SMTP-FAIL.
    greylist_retries: int = _SMTP.greylist_max_retries
    throttle_delay: float = 2.0  # the registry's SMTPCheck backoff
    throttle_retries: int = 2
    throttle_strategy: str = "exponential"
    defer_seconds: float = float(_PROBE.defer_seconds)
    # Fresh sessions in a row that may end without moving the plan on (421, drop, timeout).
    fresh_sessions: int = _SMTP.max_fresh_sessions
    # Walks over the MX hosts in one pass when they fail for transient reasons of theirs.
    remote_attempts: int = _SMTP.remote_attempts
    # Seconds one domain's pass may spend at its MX hosts (tarpits, slow hosts); waits for
    # our own throttles do not count.
    time_budget: float = _SMTP.domain_time_budget


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
    catchall_address: str = "",
    addresses: AddressPolicy | None = None,
) -> DomainResult:
    """`catchall_address`: the catch-all probe address to use (kept across a greylisting
    deferral, so the retry presents the same triplet); a fresh random one when empty.

    `addresses`: which MX addresses may be connected to (production refuses non-public ones;
    None: no check, for tests on documentation addresses).

    `reachable_recently` says whether our side has made an SMTP connection lately; when it
    says no, "no MX host reachable" is treated as our fault (deferred), not the domain's.

    Whose fault decides what a failed pass becomes (docs/design.md, "Whose fault"): trouble
    about *us* (a block of our IP or envelope, our pace, port 25) is deferred and never a FAIL;
    trouble about *them* (421/4.3.x at the greeting, hosts that drop or time out, every MX host
    unavailable) is retried in this pass with SMTPCheck's backoff, `policy.remote_attempts`
    times in all, and then becomes CT-M-SMTP-FAIL listing every attempt."""
    if (failed := no_mx_result(mx)) is not None:
        return failed
    plan = ProbePlan(mx.domain, people, catchall_address=catchall_address)
    visits: list[HostVisit] = []
    attempts: list[int] = []  # the pass attempt of each visit, for the audit trail
    concluded_on: HostVisit | None = None
    attempt = 0
    # No record may take unbounded time: a tarpit answering each command just inside
    # command_timeout, times ten MX hosts, would outlast the watchdog's record rule (1 h). The
    # budget counts time spent at the hosts, never time spent waiting for our own throttles
    # (SMTPCheck spacing, the rejected-RCPT budget), so our politeness cannot fail a domain.
    clock = _HostClock(policy.time_budget)
    while True:
        attempt += 1
        first = len(visits)
        # A later walk is itself the retry: one session per host, not another round of
        # fresh sessions.
        fresh = policy.fresh_sessions if attempt == 1 else 1
        concluded_on = await _walk_hosts(
            mx, plan, pools, policy, visits, addresses, fresh, clock
        )
        attempts.extend([attempt] * (len(visits) - first))
        if concluded_on is not None or attempt >= policy.remote_attempts or clock.spent:
            break
        if not _about_them(visits[first:], reachable_recently):
            break
        await trio.sleep(
            backoff_delay(policy.throttle_strategy, policy.throttle_delay, attempt - 1)
        )
    evidence = {
        **mx_evidence(mx),
        "mode": "smtp",
        "visits": [{**v.audit(), "attempt": n} for v, n in zip(visits, attempts, strict=True)],
        "attempts": attempt,
        "catchall_probe": plan.catchall_address,
    }
    if plan.skipped:  # never sent: not a valid RFC 5321 local part (issue 10, item 7)
        evidence["skipped_candidates"] = [s.audit() for s in plan.skipped]
    if concluded_on is not None:
        return DomainResult(_concluded(plan, mx.domain, evidence), concluded_on.host)
    last_attempt = [v for v, n in zip(visits, attempts, strict=True) if n == attempt]
    if (deferred := _about_us(last_attempt, visits, reachable_recently, policy)) is not None:
        return DomainResult(Deferred(deferred[0], policy.defer_seconds, evidence), deferred[1])
    if clock.spent:
        # Conclude with what we have: nothing about us held it up, so the hosts did.
        evidence = {**evidence, "time_budget_spent": policy.time_budget}
        last = visits[-1] if visits else None
        seen = f"; last: {last.host}: {last.outcome} ({last.detail})" if last is not None else ""
        reason = f"time budget of {policy.time_budget:g}s spent without an answer{seen}"
        return DomainResult(
            Failed(FailureCode.SMTP_FAIL, reason[:2000], evidence=evidence),
            last.host if last is not None else None,
        )
    if greylisted := [v for v in last_attempt if v.outcome == HostOutcome.GREYLISTED]:
        # Greylisting asks us to come back with the same triplet after its delay (postgrey:
        # 300 s; others up to an hour). The record goes back to pending meanwhile, holding no
        # worker, connection or in-flight credit; the dispatcher keeps the catch-all address
        # and bounds how long the domain may stay greylisted (`greylist_deferral`).
        host = greylisted[0]
        reason = f"greylisted by {host.host}: {host.detail}"
        evidence = {**evidence, GREYLISTED_KEY: True}
        return DomainResult(Deferred(reason, policy.greylist_delay, evidence), host.host)
    summary = "; ".join(
        f"{v.host}: {v.outcome}{' (' + v.detail + ')' if v.detail else ''}" for v in last_attempt
    )
    tried = f" (after {attempt} attempts)" if attempt > 1 else ""
    smtp_fail = Failed(
        FailureCode.SMTP_FAIL,
        f"no MX host gave an answer{tried}: {summary}"[:2000],
        evidence=evidence,
    )
    return DomainResult(smtp_fail, visits[-1].host if visits else None)


async def _walk_hosts(
    mx: MxLookup,
    plan: ProbePlan,
    pools: HostVisitor,
    policy: RetryPolicy,
    visits: list[HostVisit],
    addresses: AddressPolicy | None = None,
    fresh_sessions: int | None = None,
    clock: _HostClock | None = None,
) -> HostVisit | None:
    """One walk over the MX hosts in preference order; the visit that concluded, if any."""
    for host in mx.hosts:
        if not host.addresses:
            visits.append(HostVisit(host.name, None, NO_ADDRESS, "MX host name does not resolve"))
            continue
        if addresses is not None:
            # Never connect to loopback, private, link-local, multicast... addresses an MX
            # record points at (internal banners would land in the evidence): no call, no
            # connection, the host is skipped with the reason.
            allowed = tuple(a for a in host.addresses if addresses.refusal(a) is None)
            if not allowed:
                why = addresses.refusal(host.addresses[0]) or ""
                visits.append(HostVisit(host.name, host.addresses[0], NOT_PUBLIC, why))
                continue
            host = dataclasses.replace(host, addresses=allowed)
        plan.restart()
        throttles = lost = 0
        while True:
            visit = await pools.visit(host, ProbeRequest(mx.domain, plan, mx_name=host.name))
            visits.append(visit)
            if clock is not None and clock.charge(visit.elapsed):
                return None if visit.outcome != HostOutcome.CONCLUDED else visit
            if visit.outcome == HostOutcome.SESSION_ENDED:
                # The session ended, not the domain: go on from the same question on a fresh
                # session. Sessions that end without moving the plan on are bounded; a pause
                # for the host's rejected-RCPT budget is ours, not a lost session (the gate
                # waits for room before the next visit).
                if visit.dha_paused:
                    await trio.sleep(visit.retry_in)
                    continue
                lost = 0 if visit.progress else lost + 1
                if lost >= (fresh_sessions or policy.fresh_sessions):
                    break
                if not (visit.reused_session or visit.progress or visit.pace or visit.budget_spent):
                    # A session opened for this domain ended before any answer: the host
                    # did it, not our reuse of a session. Like Postfix after "lost connection
                    # with X while sending MAIL FROM" (next MX, then the queue's back-off,
                    # never an instant reconnect), the walk moves on and the pass's retry
                    # with SMTPCheck's back-off is the next try.
                    break
                if visit.pace:
                    # Only a 421 about our pace asks for a back-off; any other fresh session is
                    # spaced by the SMTPCheck throttle (per_domain) like every visit.
                    await trio.sleep(
                        backoff_delay(
                            policy.throttle_strategy, policy.throttle_delay, max(0, lost - 1)
                        )
                    )
                continue
            if (
                visit.outcome == HostOutcome.THROTTLED
                and visit.pace
                and throttles < policy.throttle_retries
            ):
                await trio.sleep(
                    backoff_delay(policy.throttle_strategy, policy.throttle_delay, throttles)
                )
                throttles += 1
                continue
            break
        if visit.outcome == HostOutcome.CONCLUDED:
            return visit
    return None


@dataclass(slots=True)
class _HostClock:
    """Time a domain's pass has spent at its hosts, against its budget."""

    budget: float
    used: float = 0.0

    @property
    def spent(self) -> bool:
        return self.used >= self.budget

    def charge(self, seconds: float) -> bool:
        self.used += seconds
        return self.spent


GREYLISTED_KEY = "greylisted"


@dataclass(frozen=True, slots=True)
class GreylistState:
    """A domain waiting out greylisting: kept by the dispatcher between its deferrals."""

    catchall_address: str
    attempts: int  # greylisted passes so far
    history: tuple[str, ...]  # one line per greylisted pass, for the final evidence


def greylist_deferral(attempts: int, policy: RetryPolicy) -> float | None:
    """How long to wait after greylisted pass number `attempts` (1, 2, ...), or None when the
    domain has used its `greylist_retries` and must conclude.

    The waits double from `greylist_delay`. The default 300 s is postgrey's default delay and
    Postfix's first retry of deferred mail (`minimal_backoff_time`); four retries (300, 600,
    1200, 2400 s: 75 minutes in all) cover greylisters with delays of 15 to 60 minutes."""
    if attempts > policy.greylist_retries:
        return None
    return policy.greylist_delay * 2.0 ** min(attempts - 1, 20)


# Visit outcomes about the remote side that may clear up within minutes.
_TRANSIENT_THEIRS = frozenset(
    {HostOutcome.THROTTLED, HostOutcome.SESSION_ENDED, TIMEOUT, DISCONNECTED, HOST_DEAD}
)


def _about_them(visits: Sequence[HostVisit], reachable_recently: Callable[[], bool] | None) -> bool:
    """Did this walk fail only for transient reasons on the remote side (worth another walk)?
    Each host is judged by its last visit: a session that ended on our error budget and went
    on is not a failure."""
    last = list({v.host: v for v in visits}.values())
    if not last or any(_ours(v) for v in visits):
        return False
    if any(v.outcome == HostOutcome.GREYLISTED for v in last):
        return False  # greylisting has its own, longer, deferral
    if reachable_recently is not None and not reachable_recently():
        return False  # no proof that our port 25 works: not theirs to blame
    return any(v.outcome in _TRANSIENT_THEIRS or is_connect_failure(v) for v in last)


def _ours(visit: HostVisit) -> bool:
    """About us: a block of our IP or envelope, our pace, or probing halted by a kill switch."""
    if visit.outcome in (HALTED, HostOutcome.POLICY_BLOCKED):
        return True
    return visit.pace and visit.outcome in (HostOutcome.THROTTLED, HostOutcome.SESSION_ENDED)


def _about_us(
    last: Sequence[HostVisit],
    visits: Sequence[HostVisit],
    reachable_recently: Callable[[], bool] | None,
    policy: RetryPolicy,
) -> tuple[str, str | None] | None:
    """The deferral reason (and host) when the failed pass was our own trouble, else None."""
    if halted := [v for v in visits if v.outcome == HALTED]:
        return f"not probed: {halted[0].detail}", None
    if (
        reachable_recently is not None
        and any(_unreachable(v) for v in last)
        and all(_unreachable(v) or v.outcome == NO_ADDRESS for v in last)
        and not reachable_recently()
    ):
        return (
            "no MX host reachable, and no SMTP connection of ours succeeded recently: "
            "the fault may be on our side (outbound port 25)",
            None,
        )
    if paced := [v for v in last if _ours(v) and v.outcome != HostOutcome.POLICY_BLOCKED]:
        # The server asked us to slow down (421/4.7.x about our rate) and the retries are
        # spent: that is about our pace, not an answer about the domain.
        return f"throttled by {paced[-1].host}: {paced[-1].detail}", paced[-1].host
    if blocked := [v for v in last if v.outcome == HostOutcome.POLICY_BLOCKED]:
        # A block of our IP says nothing about the domain: keep the record pending.
        return f"our address is blocked by {blocked[0].host}: {blocked[0].detail}", blocked[0].host
    return None


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
