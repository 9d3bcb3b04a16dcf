"""One domain's SMTP pass over its MX hosts, as a sans-IO state machine: it says what to do next
(`DomainWalk.next_action`: visit a host, wait, or the decision) and reads what a visit brought
(`DomainWalk.visited`). It never awaits and reads no clock; the domain task
(`ct_actors.actors.domain_task`) does the visiting and the waiting.

The hosts are walked in preference order. On a host, a session that ended without ending the
domain goes on from the same question on a fresh session (bounded by `fresh_sessions` sessions
in a row that move nothing on); a 421 about our pace backs off first; a throttling answer is
retried `throttle_retries` times. A concluded visit ends the walk. A walk that failed only for
transient reasons on the remote side is walked again, `remote_attempts` walks in all, with the
registry's SMTPCheck backoff between them; then the pass's verdict is `pass_verdict`'s.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from ct_actors.dns.types import MxHost, MxLookup
from ct_actors.net.address_policy import AddressPolicy
from ct_actors.probe.domain_probe import DomainResult, RetryPolicy, pass_verdict, worth_another_walk
from ct_actors.probe.plan import ProbePlan
from ct_actors.probe.visit import HostVisit, VisitOutcome
from ct_actors.throttle.backoff import backoff_delay


@dataclass(frozen=True, slots=True)
class Visit:
    """Ask `host` (only its allowed addresses) the plan's open questions."""

    host: MxHost
    plan: ProbePlan


@dataclass(frozen=True, slots=True)
class Wait:
    seconds: float


@dataclass(frozen=True, slots=True)
class Decided:
    result: DomainResult


Action = Visit | Wait | Decided


class DomainWalk:
    """`catchall_address`: the catch-all probe address to use (kept across a greylisting
    deferral, so the retry presents the same triplet); a fresh random one when empty.

    `addresses`: which MX addresses may be connected to (production refuses non-public ones;
    None: no check, for tests on documentation addresses).

    `reachable_recently` says whether our side has made an SMTP connection lately; when it
    says no, "no MX host reachable" is treated as our fault (deferred), not the domain's.

    The domain must have MX hosts (`no_mx_result` is None)."""

    def __init__(
        self,
        mx: MxLookup,
        people: Sequence[tuple[str, str]],
        policy: RetryPolicy,
        *,
        reachable_recently: Callable[[], bool] | None = None,
        catchall_address: str = "",
        addresses: AddressPolicy | None = None,
    ) -> None:
        self.mx = mx
        self.policy = policy
        self.plan = ProbePlan(mx.domain, people, catchall_address=catchall_address)
        self.visits: list[HostVisit] = []
        self.attempts: list[int] = []  # the pass attempt of each visit, for the audit trail
        self.attempt = 0
        self._reachable_recently = reachable_recently
        self._addresses = addresses
        # No record may take unbounded time: a tarpit answering each command just inside
        # command_timeout, times ten MX hosts, would outlast the watchdog's record rule (1 h).
        # The budget counts time spent at the hosts, never time spent waiting for our own
        # throttles (SMTPCheck spacing, the rejected-RCPT budget), so our politeness cannot
        # fail a domain.
        self._clock = _HostClock(policy.time_budget)
        self._result: DomainResult | None = None
        self._pause: float | None = None  # a wait owed before the next action
        self._walk_due = True  # a (first or further) walk over the hosts is to begin
        self._hosts: list[MxHost] = []  # hosts left in this walk
        self._first = 0  # index of this walk's first visit
        self._fresh = policy.fresh_sessions  # fresh sessions in a row allowed on a host
        self._host: MxHost | None = None  # the host being visited (its allowed addresses)
        self._throttles = 0  # throttling answers retried on this host
        self._lost = 0  # sessions in a row on this host that moved nothing on

    @property
    def result(self) -> DomainResult | None:
        return self._result

    def next_action(self) -> Action:
        if self._pause is not None:
            seconds, self._pause = self._pause, None
            return Wait(seconds)
        while self._result is None and self._host is None:
            if self._walk_due:
                self._begin_walk()
            if not self._next_host():
                self._end_walk(None)
                if self._pause is not None:
                    return self.next_action()
        if self._result is not None:
            return Decided(self._result)
        assert self._host is not None
        return Visit(self._host, self.plan)

    def visited(self, visit: HostVisit) -> None:
        """What the last `Visit` brought."""
        policy = self.policy
        self.visits.append(visit)
        self.attempts.append(self.attempt)
        if self._clock.charge(visit.elapsed):
            self._host = None
            self._end_walk(visit if visit.outcome is VisitOutcome.CONCLUDED else None)
            return
        if visit.outcome is VisitOutcome.SESSION_ENDED:
            # The session ended, not the domain: go on from the same question on a fresh
            # session. Sessions that end without moving the plan on are bounded; a pause for
            # the host's rejected-RCPT budget is ours, not a lost session (the gate waits for
            # room before the next visit).
            if visit.dha_paused:
                self._pause = visit.retry_in
                return
            self._lost = 0 if visit.progress else self._lost + 1
            if self._lost >= self._fresh:
                self._host = None
                return
            if not (visit.reused_session or visit.progress or visit.pace or visit.budget_spent):
                # A session opened for this domain ended before any answer: the host did it,
                # not our reuse of a session. Like Postfix after "lost connection with X while
                # sending MAIL FROM" (next MX, then the queue's back-off, never an instant
                # reconnect), the walk moves on and the pass's retry with SMTPCheck's back-off
                # is the next try.
                self._host = None
                return
            if visit.pace:
                # Only a 421 about our pace asks for a back-off; any other fresh session is
                # spaced by the SMTPCheck throttle (per_domain) like every visit.
                self._pause = self._backoff(max(0, self._lost - 1))
            return
        if (
            visit.outcome is VisitOutcome.THROTTLED
            and visit.pace
            and self._throttles < policy.throttle_retries
        ):
            self._pause = self._backoff(self._throttles)
            self._throttles += 1
            return
        self._host = None
        if visit.outcome is VisitOutcome.CONCLUDED:
            self._end_walk(visit)

    # -- the walks -------------------------------------------------------------------------

    def _begin_walk(self) -> None:
        self._walk_due = False
        self.attempt += 1
        self._first = len(self.visits)
        self._hosts = list(self.mx.hosts)
        # A later walk is itself the retry: one session per host, not another round of fresh
        # sessions.
        self._fresh = self.policy.fresh_sessions if self.attempt == 1 else 1

    def _next_host(self) -> bool:
        """Start on the walk's next host that may be visited; False when none is left."""
        while self._hosts:
            host = self._hosts.pop(0)
            if not host.addresses:
                why = "MX host name does not resolve"
                self._skip(HostVisit(host.name, None, VisitOutcome.NO_ADDRESS, why))
                continue
            if self._addresses is not None:
                # Never connect to loopback, private, link-local, multicast... addresses an
                # MX record points at (internal banners would land in the evidence): no call,
                # no connection, the host is skipped with the reason.
                allowed = tuple(a for a in host.addresses if self._addresses.refusal(a) is None)
                if not allowed:
                    why = self._addresses.refusal(host.addresses[0]) or ""
                    self._skip(
                        HostVisit(host.name, host.addresses[0], VisitOutcome.NOT_PUBLIC, why)
                    )
                    continue
                host = dataclasses.replace(host, addresses=allowed)
            self.plan.restart()
            self._host, self._throttles, self._lost = host, 0, 0
            return True
        return False

    def _skip(self, visit: HostVisit) -> None:
        self.visits.append(visit)
        self.attempts.append(self.attempt)

    def _end_walk(self, concluded_on: HostVisit | None) -> None:
        """Walk again (after a back-off), or decide."""
        if not (
            concluded_on is not None
            or self.attempt >= self.policy.remote_attempts
            or self._clock.spent
            or not worth_another_walk(self.visits[self._first :], self._reachable_recently)
        ):
            self._pause = self._backoff(self.attempt - 1)
            self._walk_due = True
            return
        self._result = pass_verdict(
            self.mx,
            self.plan,
            self.visits,
            self.attempts,
            self.policy,
            attempt=self.attempt,
            concluded_on=concluded_on,
            time_spent=self._clock.spent,
            reachable_recently=self._reachable_recently,
        )

    def _backoff(self, retry: int) -> float:
        policy = self.policy
        return backoff_delay(policy.throttle_strategy, policy.throttle_delay, retry)


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
