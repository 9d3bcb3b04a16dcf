"""The blocklist evidence rule, pure: networks, the sliding window, the weighing, streaks."""

from __future__ import annotations

import pytest

from ct_actors.throttle.blocklist_evidence import (
    MAX_NETWORKS,
    Assessment,
    BlocklistEvidence,
    BlocklistJudgement,
    DnsblStatus,
    Refusal,
    RefusalStreaks,
    Rule,
    decide,
    network_of,
)


@pytest.mark.parametrize(
    ("address", "network"),
    [
        ("203.0.113.7", "203.0.113.0/24"),
        ("203.0.113.250", "203.0.113.0/24"),
        ("2001:db8:aa:1::25", "2001:db8:aa::/48"),
        ("2001:db8:aa:ffff:1::1", "2001:db8:aa::/48"),
        ("::ffff:203.0.113.7", "203.0.113.0/24"),  # IPv4-mapped: the IPv4 network
        ("mx.example.test", None),  # never an MX name
        ("", None),
        (None, None),
    ],
)
def test_networks(address: str | None, network: str | None) -> None:
    assert network_of(address) == network


def assessment(refusing: int, working: int) -> Assessment:
    refusals = tuple(
        Refusal(f"203.0.{n}.0/24", f"203.0.{n}.1", f"mx{n}", "554", 0.0) for n in range(refusing)
    )
    return Assessment(refusals, working, 3600.0)


RULE = Rule(networks=3, fraction=0.5, networks_alone=10)


@pytest.mark.parametrize(
    ("refusing", "working", "dnsbl", "verdict"),
    [
        # too few networks, whatever the lists say
        (2, 0, DnsblStatus.LISTED, BlocklistJudgement.NONE),
        (3, 0, DnsblStatus.UNKNOWN, BlocklistJudgement.TRIP),  # network evidence alone
        (3, 0, DnsblStatus.LISTED, BlocklistJudgement.TRIP),
        (3, 0, DnsblStatus.NOT_LISTED, BlocklistJudgement.NOT_US),
        (3, 50, DnsblStatus.LISTED, BlocklistJudgement.TRIP),  # a listing is proof about us
        (3, 4, DnsblStatus.UNKNOWN, BlocklistJudgement.NOT_US),  # 3 of 7: the working sessions win
        (4, 4, DnsblStatus.UNKNOWN, BlocklistJudgement.TRIP),  # 4 of 8: half the networks refuse us
        (9, 0, DnsblStatus.NOT_LISTED, BlocklistJudgement.NOT_US),
        # overwhelming: a list we do not ask
        (10, 0, DnsblStatus.NOT_LISTED, BlocklistJudgement.TRIP),
        (10, 11, DnsblStatus.NOT_LISTED, BlocklistJudgement.NOT_US),
    ],
)
def test_the_rule(
    refusing: int, working: int, dnsbl: DnsblStatus, verdict: BlocklistJudgement
) -> None:
    listed_on = ("bl.example.net",) if dnsbl is DnsblStatus.LISTED else ()
    decision = decide(RULE, assessment(refusing, working), dnsbl, listed_on)
    assert decision.verdict is verdict
    if verdict is BlocklistJudgement.TRIP and dnsbl is DnsblStatus.LISTED:
        assert "listed on bl.example.net" in decision.basis


def test_rule_bounds() -> None:
    with pytest.raises(ValueError):
        Rule(networks=0)
    with pytest.raises(ValueError):
        Rule(fraction=0.0)


def test_evidence_counts_a_networks_latest_word_within_the_window() -> None:
    ev = BlocklistEvidence(100.0)
    assert ev.refused("203.0.1.1", "mx1", "554", 0.0) is True
    assert ev.refused("203.0.1.2", "mx2", "554", 1.0) is False  # same /24
    assert ev.refused(None, "mx3", "554", 1.0) is False  # no address: counts for nothing
    ev.worked("198.18.0.1", 2.0)
    a = ev.assess(2.0)
    assert (a.refusing_networks, a.working_networks) == (1, 1)
    assert a.refusing[0].host == "mx2"
    ev.worked("203.0.1.9", 3.0)  # the refusing network took a session: it is working now
    assert ev.assess(3.0).refusing_networks == 0
    assert ev.refused("203.0.1.1", "mx1", "554", 4.0) is True  # and refuses again: new word
    assert ev.assess(101.0).working_networks == 1
    assert ev.assess(103.0).working_networks == 0  # [3, 103) has passed
    assert ev.assess(104.0).refusing_networks == 0
    assert ev.statistics(104.0).refusals_without_address == 1


def test_evidence_memory_is_bounded() -> None:
    ev = BlocklistEvidence(1e9)
    for n in range(MAX_NETWORKS + 50):
        ev.worked(f"10.{n // 256 % 256}.{n % 256}.{n // 65536 + 1}", float(n))
    assert ev.assess(float(MAX_NETWORKS + 50)).working_networks == MAX_NETWORKS


def test_streaks_settle_after_give_up_and_reset_on_a_working_session() -> None:
    streaks = RefusalStreaks(100.0)
    s = streaks.refused("203.0.113.7", "554", 0.0)
    assert not streaks.settled(s)
    s = streaks.refused("203.0.113.7", "554", 99.0)
    assert not streaks.settled(s)
    s = streaks.refused("203.0.113.7", "554", 100.0)
    assert streaks.settled(s) and s is not None and s.refusals == 3
    streaks.worked("203.0.113.7")
    assert not streaks.settled(streaks.refused("203.0.113.7", "554", 150.0))
    # Asked rarely (defer_seconds above give_up), the streak still holds...
    assert streaks.settled(streaks.refused("203.0.113.7", "554", 250.0 + 3600.0))
    # ...but an address not asked for a day after it could have settled starts over.
    assert not streaks.settled(streaks.refused("203.0.113.7", "554", 3850.0 + 100.0 + 86_400.0))
    assert streaks.refused(None, "554", 300.0) is None
