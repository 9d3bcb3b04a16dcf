"""`smtp_probe` through the real SMTP pools on a fake mail network, under the autojump MockClock.

Each fake host answers 0.25 s after every command (greeting: 0.25 s after the connection), so
times are exact binary fractions and compared exactly. The random catch-all local part is shown
as `ct-probe-X` in recorded commands.
"""

from __future__ import annotations

import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from decimal import Decimal

import trio
import trio.testing

from ct_actors.actors.pool_manager import SmtpPoolManager
from ct_actors.actors.smtp_pool import PoolSettings
from ct_actors.dns.types import MxLookup, MxStatus
from ct_actors.outcome import Deferred, Failed, FailureCode, Passed
from ct_actors.probe.domain_probe import DomainResult, RetryPolicy, smtp_probe
from tests.actor_support import EHLO, HELO, MAIL, MAIL_FROM, FakeNet, MailHost, anon, now, rcpt

BOUND = 3600.0

SETTINGS = PoolSettings(
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
        manager = SmtpPoolManager(SETTINGS, FakeNet(nursery, hosts), max_connections=64)
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


async def test_greylisting_costs_the_domain_exactly_one_wait(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Every address is greylisted for 120 s from its first RCPT. The first visit asks all nine
    # questions (each greylisted) and returns at 3.0; one 120 s wait; the second visit on a
    # fresh session finds a.lee@ after three rejections.
    host = MailHost("mx1.test", "192.0.2.1", mailboxes=frozenset({"a.lee"}), greylist=120.0)
    with trio.fail_after(BOUND):
        async with network(host) as manager:
            result = await probe(manager, "acme.test", [host], ANN)
            assert now() == 3.0 + 120.0 + 1.75
    assert isinstance(result.result, Passed)
    assert (result.result.method_type, result.result.confidence) == ("f.last", Decimal("0.90"))
    assert result.result.email_method == "{f}.{last}@acme.test"
    assert result.mx_host == "mx1.test"
    assert visits(result) == [("mx1.test", "greylisted"), ("mx1.test", "concluded")]
    assert host.connects == [0.0, 123.0]
    everything = rcpts("acme.test", "ct-probe-X", *ANN_ADDRESSES, "info", "contact")
    assert host.commands(1) == [EHLO, MAIL, *everything, "QUIT"]
    assert host.times("RCPT") == [0.75 + 0.25 * i for i in range(9)] + [
        123.75,
        124.0,
        124.25,
        124.5,
    ]
    assert host.commands(2) == [
        EHLO,
        MAIL,
        *rcpts("acme.test", "ct-probe-X", "ann.lee", "annlee", "a.lee"),
        "QUIT",
    ]


async def test_greylist_retries_exhausted_is_smtp_fail(
    autojump_clock: trio.testing.MockClock,
) -> None:
    host = MailHost("mx1.test", "192.0.2.1", greylist=math.inf)
    with trio.fail_after(BOUND):
        async with network(host) as manager:
            result = await probe(manager, "acme.test", [host])
            # Three visits of 1.5 s (greeting, EHLO, MAIL, 3 RCPT) and two 120 s waits.
            assert now() == 1.5 + 120.0 + 1.5 + 120.0 + 1.5
    assert isinstance(result.result, Failed)
    assert result.result.code is FailureCode.SMTP_FAIL
    one = "mx1.test: greylisted (3 address(es) greylisted)"
    assert result.result.blocking_reason == f"no MX host gave an answer: {one}; {one}; {one}"
    assert host.connects == [0.0, 121.5, 243.0]
    assert visits(result) == [("mx1.test", "greylisted")] * 3


async def test_452_after_first_rcpt_reasks_after_rset_and_pool_learns_the_limit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    host = MailHost("mx1.test", "192.0.2.1", mailboxes=frozenset({"info"}), rcpt_limit=1)
    with trio.fail_after(BOUND):
        async with network(host) as manager:
            first = await probe(manager, "acme.test", [host])
            assert now() == 2.0
            assert manager.pool(host.mx).statistics()["rcpt_limit"] == 1
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
        "QUIT",
    ]
    assert [anon(r) for r in first.result.evidence["visits"][0]["replies"]] == [
        f"MAIL FROM:<{MAIL_FROM}> -> 250 2.1.0 Ok",
        "RCPT ct-probe-X@acme.test -> 550 5.1.1 User unknown",
        "RCPT info@acme.test -> 452 4.5.3 Too many recipients",
        f"MAIL FROM:<{MAIL_FROM}> -> 250 2.1.0 Ok",
        "RCPT info@acme.test -> 250 2.1.5 Ok",
    ]


async def throttle_timeline(code: int, text: str) -> None:
    mx1 = MailHost("mx1.test", "192.0.2.1", rcpt_rule=lambda local: (code, text))
    mx2 = MailHost("mx2.test", "192.0.2.2", mailboxes=frozenset({"info"}))
    with trio.fail_after(BOUND):
        async with network(mx1, mx2) as manager:
            result = await probe(manager, "acme.test", [mx1, mx2])
            # Visits of 1.0 s (greeting, EHLO, MAIL, RCPT) at 0, 3 and 8; then mx2 at 9.
            assert now() == 9.0 + 1.25
    # Retries after 2 s then 4 s: exponential from the registry's 2000 ms.
    assert mx1.connects == [0.0, 3.0, 8.0]
    assert mx1.times("RCPT") == [0.75, 3.75, 8.75]
    assert mx2.connects == [9.0]
    assert isinstance(result.result, Passed) and result.mx_host == "mx2.test"
    assert visits(result) == [("mx1.test", "throttled")] * 3 + [("mx2.test", "concluded")]


async def test_421_throttling_backs_off_exponentially_then_next_host(
    autojump_clock: trio.testing.MockClock,
) -> None:
    await throttle_timeline(421, "4.7.0 mx1.test Service not available, closing channel")


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
            assert now() == 1.0
    assert isinstance(result.result, Deferred)
    assert result.result.retry_after == 600.0
    assert anon(result.result.reason) == (
        "our address is blocked by mx1.test: RCPT ct-probe-X@acme.test: 554 Service "
        "unavailable; Client host [198.51.100.7] blocked using zen.spamhaus.org"
    )
    assert result.mx_host == "mx1.test"
    assert visits(result) == [("mx1.test", "policy-blocked"), ("mx2.test", "connect-failed")]
    # The block ended the host visit: no further candidate was asked.
    assert mx1.commands() == [EHLO, MAIL, rcpt("ct-probe-X", "acme.test"), "QUIT"]


async def test_every_candidate_rejected_is_no_pattern(
    autojump_clock: trio.testing.MockClock,
) -> None:
    host = MailHost("mx1.test", "192.0.2.1")
    with trio.fail_after(BOUND):
        async with network(host) as manager:
            result = await probe(manager, "acme.test", [host], ANN)
            assert now() == 0.75 + 9 * 0.25
    assert isinstance(result.result, Failed)
    assert result.result.code is FailureCode.NO_PATTERN
    assert result.result.blocking_reason == "all 8 candidate addresses rejected"
    assert result.mx_host == "mx1.test"
    assert host.commands() == [
        EHLO,
        MAIL,
        *rcpts("acme.test", "ct-probe-X", *ANN_ADDRESSES, "info", "contact"),
        "QUIT",
    ]


async def test_catchall_is_pass_first_last_050(autojump_clock: trio.testing.MockClock) -> None:
    host = MailHost("mx1.test", "192.0.2.1", catchall=True)
    with trio.fail_after(BOUND):
        async with network(host) as manager:
            result = await probe(manager, "acme.test", [host], ANN)
            assert now() == 1.0
    assert result.result == Passed(
        "{first}.{last}@acme.test",
        "first.last",
        Decimal("0.50"),
        True,
        result.result.evidence,
    )
    probe_address = result.result.evidence["catchall_probe"]
    assert anon(probe_address) == "ct-probe-X@acme.test"
    # Only the catch-all question was asked: a server accepting it says nothing about people.
    assert host.events[2].line == f"RCPT TO:<{probe_address}>"
    assert host.commands() == [EHLO, MAIL, rcpt("ct-probe-X", "acme.test"), "QUIT"]
    assert host.times("RCPT") == [0.75]


async def test_candidates_are_asked_in_contract_order_with_people(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # Two people, six patterns each, then the role addresses; only contact@ exists. Ten RCPTs
    # per transaction (max_recipients_per_session), then RSET + MAIL FROM.
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
    assert host.commands() == [EHLO, MAIL, *expected[:10], "RSET", MAIL, *expected[10:], "QUIT"]


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
