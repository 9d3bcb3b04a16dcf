"""`smtp_probe` through the real SMTP pools on a fake mail network, under the autojump MockClock.

Each fake host answers 0.25 s after every command (greeting: 0.25 s after the connection), so
times are exact binary fractions and compared exactly. The random catch-all local part is shown
as `ct-probe-X` in recorded commands.
"""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal

import trio
import trio.testing
from trio import current_time as now

from ct_actors.actors.domain_task import smtp_probe
from ct_actors.actors.pool_manager import SmtpPoolManager
from ct_actors.actors.pool_settings import PoolSettings
from ct_actors.dns.types import MxHost, MxLookup, MxStatus
from ct_actors.net.address_policy import AddressPolicy, parse_networks
from ct_actors.outcome import Deferred, Failed, FailureCode, Passed
from ct_actors.probe.domain_probe import DomainResult, RetryPolicy, greylist_deferral
from ct_actors.testing import EHLO, HELO, MAIL, MAIL_FROM, MailHost, MailHostNet, anon, rcpt

BOUND = 3600.0

SETTINGS = PoolSettings(
    # Not about directory-harvest pacing (test_actors_probe's rejected-RCPT budget test is):
    # lifted, so the timelines below show the behaviour under test alone.
    max_rejected_rcpts_per_host=1_000_000,
    # Five, not the default eight: the timelines below split a domain's questions over
    # sessions with few candidates.
    max_errors_per_session=5,
    helo_name=HELO,
    mail_from=MAIL_FROM,
    connect_timeout=10.0,
    command_timeout=30.0,
    starttls="never",
    max_connections_per_host=2,
    max_recipients_per_session=10,
    session_reuse_seconds=30.0,
    session_idle_seconds=2.0,
    pool_idle_seconds=60.0,
    dead_host_backoff=300.0,
)
POLICY = RetryPolicy(
    greylist_delay=120.0,
    greylist_retries=2,
    throttle_delay=2.0,
    throttle_retries=2,
    defer_seconds=600.0,
)
ANN = [("Ann", "Lee")]
ANN_ADDRESSES = ["ann.lee", "annlee", "a.lee", "ann.l", "ann", "lee"]


@asynccontextmanager
async def network(*hosts: MailHost) -> AsyncIterator[SmtpPoolManager]:
    async with trio.open_nursery() as nursery:
        manager = SmtpPoolManager(SETTINGS, MailHostNet(nursery, hosts), max_connections=64)
        await nursery.start(manager.run)
        try:
            yield manager
            # Let idle sessions reach their QUIT, so recorded command lists are complete.
            await trio.sleep(SETTINGS.session_idle_seconds + 1.0)
        finally:
            manager.close()


def lookup(domain: str, *hosts: MailHost) -> MxLookup:
    mx = tuple(h.as_mx(10 * (i + 1)) for i, h in enumerate(hosts))
    return MxLookup(domain, MxStatus.FOUND, mx, nameserver="192.0.2.53:53")


async def probe(
    manager: SmtpPoolManager,
    domain: str,
    hosts: Sequence[MailHost],
    people: Sequence[tuple[str, str]] = (),
    policy: RetryPolicy = POLICY,
) -> DomainResult:
    return await smtp_probe(lookup(domain, *hosts), people, manager, policy)


def visits(result: DomainResult) -> list[tuple[str, str]]:
    return [(v["host"], v["outcome"]) for v in result.result.evidence["visits"]]


def rcpts(domain: str, *locals_: str) -> list[str]:
    return [rcpt(local, domain) for local in locals_]


async def test_first_mx_refusing_second_mx_answers_and_dead_host_is_skipped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    mx1 = MailHost("mx1.test", "192.0.2.1", refuse=True)
    mx2 = MailHost("mx2.test", "192.0.2.2", mailboxes=frozenset({"info"}))
    with trio.fail_after(BOUND):
        async with network(mx1, mx2) as manager:
            first = await probe(manager, "acme.test", [mx1, mx2])
            assert now() == 1.25  # the refusal costs nothing; mx2's fresh session 1.25 s
            second = await probe(manager, "beta.test", [mx1, mx2])
            assert now() == 2.25  # mx2's session is reused: RSET + MAIL + 2 RCPT
    assert isinstance(first.result, Passed)
    assert (first.result.method_type, first.result.email_method) == ("info", "info@acme.test")
    assert first.result.confidence == Decimal("0.70")
    assert first.mx_host == "mx2.test"
    assert visits(first) == [("mx1.test", "connect-failed"), ("mx2.test", "concluded")]
    assert first.result.evidence["visits"][0]["detail"] == "connect: ECONNREFUSED"
    assert visits(second) == [("mx1.test", "host-dead"), ("mx2.test", "concluded")]
    assert mx1.connects == [0.0]  # marked dead: beta.test never tried to connect
    assert first.result.evidence["mx_hosts"] == [
        {"name": "mx1.test", "preference": 10, "addresses": ["192.0.2.1"]},
        {"name": "mx2.test", "preference": 20, "addresses": ["192.0.2.2"]},
    ]


async def test_greylisted_pass_is_deferred_and_the_retry_presents_the_same_triplets(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Every address is greylisted for 120 s from its first RCPT, and each 450 counts against
    # the session like any rejection (Postfix counts every rejected command): the first pass
    # asks five questions on one session (the error budget), the other four on a fresh one,
    # and comes back Deferred, holding nothing. The retry, 120 s later, presents the same
    # catch-all address and finds a.lee@ after three answers.
    host = MailHost("mx1.test", "192.0.2.1", mailboxes=frozenset({"a.lee"}), greylist=120.0)
    with trio.fail_after(BOUND):
        async with network(host) as manager:
            first = await probe(manager, "acme.test", [host], ANN)
            assert now() == 4.0
            deferred = first.result
            assert isinstance(deferred, Deferred)
            assert deferred.retry_after == POLICY.greylist_delay
            assert deferred.evidence["greylisted"] is True
            assert anon(deferred.reason) == "greylisted by mx1.test: 9 address(es) greylisted"
            await trio.sleep(deferred.retry_after)
            again = await smtp_probe(
                lookup("acme.test", host),
                ANN,
                manager,
                POLICY,
                catchall_address=deferred.evidence["catchall_probe"],
            )
            assert now() == 4.0 + 120.0 + 1.75
    assert isinstance(again.result, Passed)
    assert (again.result.method_type, again.result.confidence) == ("f.last", Decimal("0.90"))
    assert again.result.evidence["catchall_probe"] == deferred.evidence["catchall_probe"]
    assert visits(first) == [("mx1.test", "session-ended"), ("mx1.test", "greylisted")]
    assert visits(again) == [("mx1.test", "concluded")]
    everything = rcpts("acme.test", "ct-probe-X", *ANN_ADDRESSES, "info", "contact")
    assert host.commands(1) == [EHLO, MAIL, *everything[:5], "QUIT"]
    # Four errors left it with less than half its budget: retired (RSET, QUIT) at once.
    assert host.commands(2) == [EHLO, MAIL, *everything[5:], "RSET", "QUIT"]
    assert host.commands(3) == [EHLO, MAIL, *everything[:4], "RSET", "QUIT"]
    assert host.connects == [0.0, 2.25, 124.0]
    # The very same recipient strings, so a greylister keyed on the triplet lets them through.
    sent = [e.line for e in host.events if e.line.startswith("RCPT")]
    assert sent[0] == sent[9]


def test_greylisted_passes_wait_doubling_delays_and_are_bounded() -> None:
    policy = RetryPolicy(greylist_delay=300.0, greylist_retries=4)
    waits = [greylist_deferral(n, policy) for n in range(1, 6)]
    # postgrey's 300 s, doubling: 75 minutes in all cover greylisters of up to an hour.
    assert waits == [300.0, 600.0, 1200.0, 2400.0, None]
    assert greylist_deferral(1, RetryPolicy(greylist_retries=0)) is None


async def test_452_after_first_rcpt_reasks_after_rset_and_pool_learns_the_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    host = MailHost("mx1.test", "192.0.2.1", mailboxes=frozenset({"info"}), rcpt_limit=1)
    with trio.fail_after(BOUND):
        async with network(host) as manager:
            first = await probe(manager, "acme.test", [host])
            assert now() == 2.0
            assert manager.pool(host.mx).statistics().rcpt_limit == 1
            second = await probe(manager, "beta.test", [host])
            assert now() == 3.5
    assert isinstance(first.result, Passed) and first.result.method_type == "info"
    assert isinstance(second.result, Passed) and second.result.method_type == "info"
    assert host.commands() == [
        EHLO,
        MAIL,
        rcpt("ct-probe-X", "acme.test"),
        rcpt("info", "acme.test"),  # 452 4.5.3: not an answer about info@
        "RSET",
        MAIL,
        rcpt("info", "acme.test"),  # the same address, asked again
        # the next domain starts with the learnt limit of one RCPT per transaction
        "RSET",
        MAIL,
        rcpt("ct-probe-X", "beta.test"),
        "RSET",
        MAIL,
        rcpt("info", "beta.test"),
        "RSET",  # three errors on it, less than half the budget left: retired
        "QUIT",
    ]
    assert [anon(r) for r in first.result.evidence["visits"][0]["replies"]] == [
        f"MAIL FROM:<{MAIL_FROM}> -> 250 2.1.0 Ok",
        "RCPT ct-probe-X@acme.test -> 550 5.1.1 User unknown",
        "RCPT info@acme.test -> 452 4.5.3 Too many recipients",
        f"MAIL FROM:<{MAIL_FROM}> -> 250 2.1.0 Ok",
        "RCPT info@acme.test -> 250 2.1.5 Ok",
    ]


async def throttle_timeline(
    code: int, text: str, outcome: str = "throttled", *, answered_both: bool = True
) -> None:
    # The catch-all probe and the first candidate ("info": no sample names) travel in one
    # write; this fake answers each pipelined command 0.25 s after the one before, unless it
    # closed after a 421 (`answered_both` False).
    mx1 = MailHost("mx1.test", "192.0.2.1", rcpt_rule=lambda local: (code, text))
    mx2 = MailHost("mx2.test", "192.0.2.2", mailboxes=frozenset({"info"}))
    visit = 1.25 if answered_both else 1.0  # greeting, EHLO, MAIL, RCPT (and RCPT)
    with trio.fail_after(BOUND):
        async with network(mx1, mx2) as manager:
            result = await probe(manager, "acme.test", [mx1, mx2])
            # Visits at 0, then after 2 s and 4 s of back-off; then mx2.
            assert now() == 3 * visit + 2.0 + 4.0 + 1.25
    # Retries after 2 s then 4 s: exponential from the registry's 2000 ms.
    assert mx1.connects == [0.0, visit + 2.0, 2 * visit + 6.0]
    assert mx1.times("RCPT")[:: 2 if answered_both else 1] == [
        start + 0.75 for start in mx1.connects
    ]
    assert mx2.connects == [3 * visit + 6.0]
    assert isinstance(result.result, Passed) and result.mx_host == "mx2.test"
    assert visits(result) == [("mx1.test", outcome)] * 3 + [("mx2.test", "concluded")]


async def test_421_throttling_backs_off_exponentially_then_next_host(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A 421 at RCPT ends the session (RFC 5321 §3.8), not the domain: fresh sessions, with
    # SMTPCheck's back-off since it names our pace (4.7.0), three in a row, then the next MX.
    await throttle_timeline(
        421,
        "4.7.0 mx1.test Service not available, closing channel",
        "session-ended",
        answered_both=False,
    )


async def test_4_7_x_throttling_backs_off_exponentially_then_next_host(
    autojump_clock: trio.testing.MockClock,
) -> None:
    await throttle_timeline(451, "4.7.1 Please slow down")


async def test_spamhaus_block_is_deferred_never_fail_never_pattern(
    autojump_clock: trio.testing.MockClock,
) -> None:
    text = "5.7.1 Service unavailable; Client host [198.51.100.7] blocked using zen.spamhaus.org"
    mx1 = MailHost(
        "mx1.test", "192.0.2.1", mailboxes=frozenset({"info"}), rcpt_rule=lambda _: (554, text)
    )
    mx2 = MailHost("mx2.test", "192.0.2.2", refuse=True)
    with trio.fail_after(BOUND):
        async with network(mx1, mx2) as manager:
            result = await probe(manager, "acme.test", [mx1, mx2], ANN)
            assert now() == 1.25
    assert isinstance(result.result, Deferred)
    assert result.result.retry_after == 600.0
    assert anon(result.result.reason) == (
        "our address is blocked by mx1.test: RCPT ct-probe-X@acme.test: 554 Service "
        "unavailable; Client host [198.51.100.7] blocked using zen.spamhaus.org"
    )
    assert result.mx_host == "mx1.test"
    assert visits(result) == [("mx1.test", "policy-blocked"), ("mx2.test", "connect-failed")]
    # The block ended the host visit: nothing was asked after it (the first candidate had
    # travelled with the catch-all probe, in the same write, and its reply is no answer).
    assert mx1.commands() == [
        EHLO, MAIL, rcpt("ct-probe-X", "acme.test"), rcpt("ann.lee", "acme.test"), "QUIT",
    ]  # fmt: skip


async def test_every_candidate_rejected_is_no_pattern(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Nine rejections, five per session (the error budget): the verdict needs two sessions,
    # the second opened at once, and is a NO_PATTERN, never a failure of the host.
    host = MailHost("mx1.test", "192.0.2.1")
    with trio.fail_after(BOUND):
        async with network(host) as manager:
            result = await probe(manager, "acme.test", [host], ANN)
            # (The pool's one worker QUITs the spent session before it opens the next.)
            assert now() == 2.25 + 0.75 + 4 * 0.25
    assert isinstance(result.result, Failed)
    assert result.result.code is FailureCode.NO_PATTERN
    assert result.result.blocking_reason == "all 8 candidate addresses rejected"
    assert result.mx_host == "mx1.test"
    everything = rcpts("acme.test", "ct-probe-X", *ANN_ADDRESSES, "info", "contact")
    assert host.commands(1) == [EHLO, MAIL, *everything[:5], "QUIT"]
    # Four more rejections leave less than half the budget: retired (RSET, QUIT) at once.
    assert host.commands(2) == [EHLO, MAIL, *everything[5:], "RSET", "QUIT"]
    assert visits(result) == [("mx1.test", "session-ended"), ("mx1.test", "concluded")]
    assert host.connects == [0.0, 2.25]


async def test_catchall_is_pass_first_last_050(autojump_clock: trio.testing.MockClock) -> None:
    host = MailHost("mx1.test", "192.0.2.1", catchall=True)
    with trio.fail_after(BOUND):
        async with network(host) as manager:
            result = await probe(manager, "acme.test", [host], ANN)
            assert now() == 1.25  # the first candidate travelled with the probe
    assert result.result == Passed(
        "{first}.{last}@acme.test",
        "first.last",
        Decimal("0.50"),
        True,
        result.result.evidence,
    )
    probe_address = result.result.evidence["catchall_probe"]
    assert anon(probe_address) == "ct-probe-X@acme.test"
    # The catch-all question decides: a server accepting it says nothing about people. (The
    # first candidate travelled with it in one write; a catch-all accepts it too, no error.)
    assert host.events[2].line == f"RCPT TO:<{probe_address}>"
    assert host.commands() == [
        EHLO, MAIL, rcpt("ct-probe-X", "acme.test"), rcpt("ann.lee", "acme.test"), "QUIT",
    ]  # fmt: skip
    assert result.result.evidence["visits"][0]["replies"][-1].endswith(
        "(not needed: not an answer)"
    )
    assert host.times("RCPT") == [0.75, 1.0]


async def test_candidates_are_asked_in_contract_order_with_people(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Two people, six patterns each, then the role addresses; only contact@ exists. Fourteen
    # rejections: five per session (the per-session error budget), so three sessions.
    host = MailHost("mx1.test", "192.0.2.1", mailboxes=frozenset({"contact"}))
    people = [("Ann", "Lee"), ("Bo", "Chen")]
    with trio.fail_after(BOUND):
        async with network(host) as manager:
            result = await probe(manager, "acme.test", [host], people)
    assert isinstance(result.result, Passed)
    assert (result.result.method_type, result.result.confidence) == ("contact", Decimal("0.70"))
    order = ["ct-probe-X", *ANN_ADDRESSES, "bo.chen", "bochen", "b.chen", "bo.c", "bo", "chen"]
    order += ["info", "contact"]
    expected = rcpts("acme.test", *order)
    assert host.commands(1) == [EHLO, MAIL, *expected[:5], "QUIT"]
    assert host.commands(2) == [EHLO, MAIL, *expected[5:10], "QUIT"]
    assert host.commands(3) == [EHLO, MAIL, *expected[10:], "RSET", "QUIT"]


async def test_mailbox_full_counts_as_existing(autojump_clock: trio.testing.MockClock) -> None:
    def full(local: str) -> tuple[int, str] | None:
        return (552, "5.2.2 Mailbox full") if local == "ann.lee" else None

    host = MailHost("mx1.test", "192.0.2.1", rcpt_rule=full)
    with trio.fail_after(BOUND):
        async with network(host) as manager:
            result = await probe(manager, "acme.test", [host], ANN)
            assert now() == 1.25
    assert isinstance(result.result, Passed)
    assert (result.result.method_type, result.result.confidence) == ("first.last", Decimal("0.95"))
    assert result.result.email_method == "{first}.{last}@acme.test"
    assert not result.result.is_catchall


async def test_spamhaus_block_in_the_greeting_is_deferred(
    autojump_clock: trio.testing.MockClock,
) -> None:
    text = "5.7.1 Service unavailable; Client host [198.51.100.7] blocked using zen.spamhaus.org"
    host = MailHost("mx1.test", "192.0.2.1", greeting=(554, text))
    with trio.fail_after(BOUND):
        async with network(host) as manager:
            result = await probe(manager, "acme.test", [host], ANN)
    assert visits(result) == [("mx1.test", "policy-blocked")]
    assert isinstance(result.result, Deferred)


async def test_server_error_limit_on_a_reused_session_is_about_the_session_and_is_learnt(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A stricter-than-stock server: 421 "too many errors" once a connection has 3 rejections
    # (Postfix's smtpd_hard_error_limit, set low). acme.test leaves 3 on the session, less
    # than half the budget left: the RSET that retires it gets the 421, and the pool keeps one
    # error below the host's limit from then on. beta.test is never failed for it: it starts
    # on a fresh session with that budget and goes on on another.
    host = MailHost("mx1.test", "192.0.2.1", error_limit=3)
    with trio.fail_after(BOUND):
        async with network(host) as manager:
            first = await probe(manager, "acme.test", [host])
            second = await probe(manager, "beta.test", [host])
            pool = manager.pool(host.mx)
            assert pool.error_budget() == 2
            assert pool.window.error_limit == 2
    for result in (first, second):
        assert isinstance(result.result, Failed)
        assert result.result.code is FailureCode.NO_PATTERN
    assert host.commands(1) == [
        EHLO, MAIL, *rcpts("acme.test", "ct-probe-X", "info", "contact"), "RSET",
    ]  # fmt: skip
    assert host.commands(2) == [EHLO, MAIL, *rcpts("beta.test", "ct-probe-X", "info"), "QUIT"]
    assert host.commands(3) == [EHLO, MAIL, *rcpts("beta.test", "contact"), "QUIT"]
    assert visits(second) == [("mx1.test", "session-ended"), ("mx1.test", "concluded")]


async def test_421_at_rcpt_mid_session_continues_from_the_same_question(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # The hard limit reached inside one domain's own conversation (limit 2, budget 5): the
    # 421 at the third RCPT ends the session; the domain resumes at that very question on a
    # fresh session. The host tolerated two errors, so one per session from now on.
    host = MailHost("mx1.test", "192.0.2.1", mailboxes=frozenset({"a.lee"}), error_limit=2)
    with trio.fail_after(BOUND):
        async with network(host) as manager:
            result = await probe(manager, "acme.test", [host], ANN)
    assert isinstance(result.result, Passed)
    assert result.result.method_type == "f.last"
    assert host.commands(1) == [
        EHLO, MAIL, *rcpts("acme.test", "ct-probe-X", "ann.lee", "annlee"),
    ]  # fmt: skip
    assert host.commands(2) == [EHLO, MAIL, rcpt("annlee", "acme.test"), "QUIT"]
    assert host.commands(3)[:3] == [EHLO, MAIL, rcpt("a.lee", "acme.test")]
    assert visits(result)[0] == ("mx1.test", "session-ended")
    assert "too many errors" in result.result.evidence["visits"][0]["detail"]


async def test_greeting_421_on_every_host_is_retried_in_the_pass_then_smtp_fail(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # "421 4.3.2" at every greeting is about the servers, not our pace: the pass walks the MX
    # hosts again after SMTPCheck's back-off (2 s, 4 s), three walks in all, then concludes
    # CT-M-SMTP-FAIL with every attempt in the evidence (never pending forever).
    greeting = (421, "4.3.2 Service not available, closing transmission channel")
    mx1 = MailHost("mx1.test", "192.0.2.1", greeting=greeting)
    mx2 = MailHost("mx2.test", "192.0.2.2", greeting=greeting)
    with trio.fail_after(BOUND):
        async with network(mx1, mx2) as manager:
            result = await smtp_probe(
                lookup("acme.test", mx1, mx2), [], manager, POLICY, reachable_recently=lambda: True
            )
            assert now() == 0.5 + 2.0 + 0.5 + 4.0 + 0.5
    assert isinstance(result.result, Failed)
    assert result.result.code is FailureCode.SMTP_FAIL
    assert result.result.blocking_reason.startswith("no MX host gave an answer (after 3 attempts)")
    evidence = result.result.evidence
    assert evidence["attempts"] == 3
    assert [(v["host"], v["attempt"]) for v in evidence["visits"]] == [
        ("mx1.test", 1), ("mx2.test", 1), ("mx1.test", 2), ("mx2.test", 2),
        ("mx1.test", 3), ("mx2.test", 3),
    ]  # fmt: skip
    assert mx1.connects == [0.0, 2.5, 7.0]


async def test_greeting_421_about_our_pace_is_deferred_never_failed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    greeting = (421, "4.7.0 Too many connections from your IP, try again later")
    mx1 = MailHost("mx1.test", "192.0.2.1", greeting=greeting)
    with trio.fail_after(BOUND):
        async with network(mx1) as manager:
            result = await smtp_probe(
                lookup("acme.test", mx1), [], manager, POLICY, reachable_recently=lambda: True
            )
    assert isinstance(result.result, Deferred)
    assert result.result.reason.startswith("throttled by mx1.test")


async def test_rejected_rcpt_budget_paces_a_host_and_never_fails_its_domains(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Directory-harvest safety: at most 4 rejected RCPTs per host in any 60 s. Two no-pattern
    # domains of three questions each (6 rejections) get their answers; the RCPTs that would
    # exceed the budget wait until the oldest rejection leaves the window.
    host = MailHost("mx1.test", "192.0.2.1")
    settings = dataclasses.replace(
        SETTINGS, max_rejected_rcpts_per_host=4, rejected_rcpts_window=60.0
    )
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            manager = SmtpPoolManager(settings, MailHostNet(nursery, [host]), max_connections=64)
            await nursery.start(manager.run)
            first = await probe(manager, "acme.test", [host])
            second = await probe(manager, "beta.test", [host])
            window = manager.pool(host.mx).window.statistics()
            manager.close()
    for result in (first, second):
        assert isinstance(result.result, Failed)
        assert result.result.code is FailureCode.NO_PATTERN
    rejected = host.times("RCPT")
    assert len(rejected) == 6
    assert all(b - a >= 60.0 for a, b in zip(rejected, rejected[4:], strict=False))
    assert max(sum(1 for t in rejected if s <= t < s + 60.0) for s in rejected) == 4
    assert window.rejected_peak == 4 and window.rejected_total == 6
    assert ("mx1.test", "session-ended") in visits(second)


async def test_broken_starttls_handshake_falls_back_to_plaintext_on_a_new_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Opportunistic TLS as MTAs do it: a handshake that fails costs the connection, not the
    # answer. The host is asked in plaintext at once, and skips STARTTLS for the next domain.
    host = MailHost("mx1.test", "192.0.2.1", mailboxes=frozenset({"info"}), tls_broken=True)
    settings = dataclasses.replace(SETTINGS, starttls="opportunistic")
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            manager = SmtpPoolManager(settings, MailHostNet(nursery, [host]), max_connections=64)
            await nursery.start(manager.run)
            first = await probe(manager, "acme.test", [host])
            await trio.sleep(10.0)  # the session idles out
            second = await probe(manager, "beta.test", [host])
            stats = manager.pool(host.mx).statistics()
            manager.close()
    for result in (first, second):
        assert isinstance(result.result, Passed) and result.result.method_type == "info"
    audit = first.result.evidence["visits"][0]
    assert audit["outcome"] == "concluded" and audit["tls"] is False
    assert audit["tls_note"].startswith("STARTTLS failed (tls: ")
    assert audit["tls_note"].endswith("plaintext on a new connection")
    assert "tls_note" not in second.result.evidence["visits"][0]
    assert host.commands(1) == [EHLO, "STARTTLS"]
    assert host.commands(2)[:2] == [EHLO, MAIL]
    assert host.commands(3)[:2] == [EHLO, MAIL]  # no STARTTLS tried again for a while
    assert stats.tls_fallbacks == 1


async def test_overlong_sample_name_is_skipped_recorded_and_never_sent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A 10 kB last name: the candidates using it are not valid RFC 5321 local parts (over 64
    # octets); they are recorded in the evidence and never reach the server, and the healthy
    # domain still concludes (here on contact@).
    host = MailHost("mx1.test", "192.0.2.1", mailboxes=frozenset({"contact"}))
    people = [("Ann", "L" * 10_000)]
    with trio.fail_after(BOUND):
        async with network(host) as manager:
            result = await probe(manager, "acme.test", [host], people)
    assert isinstance(result.result, Passed)
    assert result.result.method_type == "contact"
    sent = [c for c in host.commands() if c.startswith("RCPT")]
    assert sent == rcpts("acme.test", "ct-probe-X", "ann.l", "ann", "info", "contact")
    skipped = result.result.evidence["skipped_candidates"]
    assert [(s["method_type"], s["person"]) for s in skipped] == [
        ("first.last", 0),
        ("firstlast", 0),
        ("f.last", 0),
        ("last", 0),
    ]
    assert [s["reason"] for s in skipped] == [
        f"local part longer than 64 octets ({n})" for n in (10_004, 10_003, 10_002, 10_000)
    ]
    assert max(len(s["local_part"]) for s in skipped) == 65


async def test_mx_on_a_non_public_address_is_refused_without_a_connection(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Issue 10, item 4: an MX record pointing at loopback gets no conversation (no call, no
    # connection, no banner in the evidence) unless the operator allows the network.
    host = MailHost("mx1.test", "127.0.0.5", mailboxes=frozenset({"info"}))
    with trio.fail_after(BOUND):
        async with network(host) as manager:
            refused = await smtp_probe(
                lookup("acme.test", host), [], manager, POLICY, addresses=AddressPolicy()
            )
            assert host.connects == []
            allowed = await smtp_probe(
                lookup("beta.test", host),
                [],
                manager,
                POLICY,
                addresses=AddressPolicy(parse_networks(["127.0.0.0/8"])),
            )
    assert isinstance(refused.result, Failed)
    assert refused.result.code is FailureCode.SMTP_FAIL
    assert "MX address is not public: 127.0.0.5 is loopback" in refused.result.blocking_reason
    assert visits(refused) == [("mx1.test", "not-public")]
    assert refused.result.evidence["attempts"] == 1  # not a transient fault: no retries
    assert isinstance(allowed.result, Passed) and allowed.result.method_type == "info"
    assert host.connects == [0.0]


async def test_a_tarpit_cannot_hold_a_domain_past_its_time_budget(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Issue 10, item 3: every reply comes 29 s late (just inside command_timeout 30 s), every
    # RCPT is rejected. The first session spends 232 s at the host (banner, EHLO, MAIL, five
    # RCPTs), past the 200 s budget: the pass concludes CT-M-SMTP-FAIL with what it has, saying
    # why, instead of running into the watchdog's one-hour record rule.
    host = MailHost("mx1.test", "192.0.2.1", latency=29.0)
    policy = dataclasses.replace(POLICY, time_budget=200.0)
    with trio.fail_after(BOUND):
        async with network(host) as manager:
            result = await probe(manager, "acme.test", [host], ANN, policy)
            assert now() == 8 * 29.0
    assert isinstance(result.result, Failed)
    assert result.result.code is FailureCode.SMTP_FAIL
    assert result.result.blocking_reason.startswith("time budget of 200s spent without an answer")
    assert result.result.evidence["time_budget_spent"] == 200.0
    assert visits(result) == [("mx1.test", "session-ended")]


async def test_politeness_is_per_ip_address_not_per_mx_name(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Issue 10, item 5: twelve tenants' MX names on one IP (as providers do). The per-host
    # window (2 here) bounds the sessions to that IP, whatever the names; each visit is still
    # reported under the MX name the domain's record gave.
    host = MailHost("shared.mx.test", "192.0.2.9", mailboxes=frozenset({"info"}))
    results: dict[str, DomainResult] = {}

    async def one(i: int) -> None:
        name = f"mx.tenant{i}.test"
        mx = MxLookup(
            f"tenant{i}.test", MxStatus.FOUND, (MxHost(name, 10, (host.address,)),), "ns:53"
        )
        results[name] = await smtp_probe(mx, [], manager, POLICY)

    with trio.fail_after(BOUND):
        async with network(host) as manager, trio.open_nursery() as nursery:
            for i in range(12):
                nursery.start_soon(one, i)
    assert host.max_active <= SETTINGS.max_connections_per_host == 2
    assert len(results) == 12
    for name, result in results.items():
        assert isinstance(result.result, Passed) and result.result.method_type == "info"
        assert result.mx_host == name
        assert {v["host"] for v in result.result.evidence["visits"]} == {name}


async def test_a_host_that_drops_every_new_session_is_retried_with_backoff_not_reconnected(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # A session opened for this domain and closed by the host before any answer is the host's
    # doing, not our reuse of a session: no instant reconnects (Postfix after "lost
    # connection ... while sending MAIL FROM" defers and retries after its back-off). The pass
    # retries after SMTPCheck's back-off (2 s, 4 s): three sessions in all, then SMTP-FAIL.
    host = MailHost("mx1.test", "192.0.2.1", drop={n: "MAIL" for n in range(1, 10)})
    with trio.fail_after(BOUND):
        async with network(host) as manager:
            result = await smtp_probe(
                lookup("acme.test", host), ANN, manager, POLICY, reachable_recently=lambda: True
            )
            assert now() == 0.5 + 2.0 + 0.5 + 4.0 + 0.5
    assert host.connects == [0.0, 2.5, 7.0]  # before: [0.0, 0.5, 1.0, 3.5, 8.0]
    assert isinstance(result.result, Failed)
    assert result.result.code is FailureCode.SMTP_FAIL
    assert visits(result) == [("mx1.test", "session-ended")] * 3
    assert [v["attempt"] for v in result.result.evidence["visits"]] == [1, 2, 3]
