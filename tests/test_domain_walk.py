"""A domain's pass over its MX hosts without a network or a clock: `DomainWalk` is driven
with made-up visits, and its actions (visit, wait, decided) are read back. The same walk runs
through the real pools in test_actors_probe.py, test_smtp_gate.py and test_slow_hosts.py."""

from __future__ import annotations

import pytest

from ct_actors.dns.types import MxHost, MxLookup, MxStatus
from ct_actors.outcome import Failed, FailureCode
from ct_actors.probe.domain_probe import RetryPolicy
from ct_actors.probe.domain_walk import Action, Decided, DomainWalk, Visit, Wait
from ct_actors.probe.visit import HostVisit, VisitOutcome

pytestmark = pytest.mark.timeout(10)

POLICY = RetryPolicy(throttle_delay=2.0, throttle_retries=2, fresh_sessions=3, remote_attempts=3)
MX = MxLookup(
    "acme.example",
    MxStatus.FOUND,
    (MxHost("mx1.acme.example", 10, ("192.0.2.1",)), MxHost("mx2.acme.example", 20, ())),
)


def visited(walk: DomainWalk, outcome: VisitOutcome, **fields: object) -> Action:
    action = walk.next_action()
    assert isinstance(action, Visit), action
    visit = HostVisit(action.host.name, action.host.addresses[0], outcome)
    for name, value in fields.items():
        setattr(visit, name, value)
    if outcome is VisitOutcome.CONCLUDED:
        action.plan.answer(True)  # the catch-all probe was accepted
    walk.visited(visit)
    return walk.next_action()


def test_a_concluded_visit_decides_the_domain() -> None:
    walk = DomainWalk(MX, [], POLICY)
    decided = visited(walk, VisitOutcome.CONCLUDED)
    assert isinstance(decided, Decided)
    assert (decided.result.result.kind, decided.result.mx_host) == ("pass", "mx1.acme.example")


def test_a_421_about_our_pace_backs_off_then_visits_the_same_host() -> None:
    walk = DomainWalk(MX, [], POLICY)
    assert visited(walk, VisitOutcome.SESSION_ENDED, pace=True) == Wait(2.0)
    assert isinstance(walk.next_action(), Visit)
    assert visited(walk, VisitOutcome.SESSION_ENDED, pace=True) == Wait(4.0)


def test_lost_sessions_are_bounded_then_the_next_host_is_tried() -> None:
    walk = DomainWalk(MX, [], POLICY)
    for _ in range(POLICY.fresh_sessions - 1):
        # A reused session that ended: the domain goes on at once on a fresh session.
        assert isinstance(visited(walk, VisitOutcome.SESSION_ENDED, reused_session=True), Visit)
    # The third lost session leaves mx1; mx2 does not resolve; every host failed for reasons of
    # theirs, so the walk is walked again after the SMTPCheck backoff.
    assert visited(walk, VisitOutcome.SESSION_ENDED, reused_session=True) == Wait(2.0)
    assert [v.outcome for v in walk.visits][-1] is VisitOutcome.NO_ADDRESS
    assert isinstance(walk.next_action(), Visit) and walk.attempt == 2


def test_a_new_session_dropped_before_any_answer_ends_the_hosts_walk() -> None:
    # The host did it, not our reuse of a session: no instant reconnect, the pass's back-off
    # is the retry.
    walk = DomainWalk(MX, [], POLICY)
    assert visited(walk, VisitOutcome.SESSION_ENDED) == Wait(2.0)
    assert len(walk.visits) == 2 and walk.attempt == 1


def test_a_connect_failure_is_read_from_the_stage_never_from_the_detail() -> None:
    timeout = VisitOutcome.TIMEOUT
    unreachable = HostVisit("mx1", "192.0.2.1", timeout, "connect: x", stage="connect")
    slow_greeting = HostVisit("mx1", "192.0.2.1", timeout, "connect: x", stage="greeting")
    assert unreachable.connect_failed and not slow_greeting.connect_failed


def test_a_pass_that_spent_its_remote_attempts_fails_listing_them() -> None:
    walk = DomainWalk(MX, [], RetryPolicy(remote_attempts=2, throttle_delay=1.0))
    action = visited(walk, VisitOutcome.DISCONNECTED)
    assert action == Wait(1.0)
    decided = visited(walk, VisitOutcome.DISCONNECTED)
    assert isinstance(decided, Decided)
    result = decided.result.result
    assert isinstance(result, Failed) and result.code is FailureCode.SMTP_FAIL
    assert "(after 2 attempts)" in result.blocking_reason
    assert [v["attempt"] for v in result.evidence["visits"]] == [1, 1, 2, 2]
