"""DNSBL lookups of our own sending address (RFC 5782): query names, answers, the test entry,
Spamhaus's error codes, caching; the DNS goes through the wire format of a fake server."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from ct_actors.app import open_dnsbl
from ct_actors.config import ConfigError, load_config
from ct_actors.dns.dnsbl import (
    Answer,
    ClientAddressLookup,
    DnsblChecker,
    classify,
    query_name,
    usable_address,
)
from ct_actors.net.local_address import LocalAddressConnector
from ct_actors.testing import FakeDnsClient
from ct_actors.throttle.blocklist_evidence import DnsblStatus

pytestmark = pytest.mark.timeout(30)

OURS = "11.22.33.44"
ZONE = "bl.example.net"


def test_query_names_follow_rfc_5782() -> None:
    assert query_name("192.0.2.99", "zen.example.") == "99.2.0.192.zen.example"
    # IPv6: 32 nibbles, least significant first (RFC 5782 §2.4).
    name = query_name("2001:db8:1:2::ab", "BL.Example")
    assert name.endswith(".1.0.0.0.8.b.d.0.1.0.0.2.bl.example")
    assert name.startswith("b.a.0.0.0.0.0.0.0.0.0.0.0.0.0.0.2.0.0.0")
    assert len(name.split(".")) == 32 + 2


@pytest.mark.parametrize(
    ("codes", "answer"),
    [
        ((), Answer.NOT_LISTED),  # NXDOMAIN or no A record
        (("127.0.0.2",), Answer.LISTED),
        (("127.0.0.4", "127.0.0.10"), Answer.LISTED),  # Spamhaus XBL and PBL
        (("127.255.255.254",), Answer.REFUSED),  # Spamhaus: via a public/open resolver
        (("127.255.255.255",), Answer.REFUSED),  # Spamhaus: too many queries
        (("127.255.255.252",), Answer.REFUSED),  # Spamhaus: typo in the zone name
        (("127.0.0.2", "127.255.255.254"), Answer.REFUSED),
        (("203.0.113.7",), Answer.BROKEN),  # NXDOMAIN rewritten to an advert page
        (("not an address",), Answer.BROKEN),
    ],
)
def test_answers_are_classified(codes: tuple[str, ...], answer: Answer) -> None:
    assert classify(codes) is answer


def test_only_a_public_address_is_looked_up() -> None:
    assert usable_address(OURS) == OURS
    assert usable_address("::ffff:11.22.33.44") == OURS
    for private in ("10.0.0.7", "192.168.1.2", "127.0.0.1", "100.64.0.1", "fe80::1", "", None):
        assert usable_address(private) is None


def zone_records(
    *, listed: bool, test_entry: bool = True, code: str = "127.0.0.2"
) -> dict[str, list[tuple[str, str]]]:
    records: dict[str, list[tuple[str, str]]] = {}
    if test_entry:
        records[f"2.0.0.127.{ZONE}"] = [("A", "127.0.0.2")]
    if listed:
        records[f"44.33.22.11.{ZONE}"] = [("A", code)]
    return records


async def test_listed_through_the_wire_format(autojump_clock: trio.testing.MockClock) -> None:
    client = FakeDnsClient(zone_records(listed=True))
    checker = DnsblChecker(ClientAddressLookup(client), [ZONE])
    result = await checker.check(OURS)
    assert result.status is DnsblStatus.LISTED and result.listed_on == (ZONE,)
    assert result.audit()["zones"] == [{"zone": ZONE, "answer": "listed", "codes": ["127.0.0.2"]}]


async def test_not_listed_is_believed_only_from_a_zone_that_lists_its_test_entry(
    autojump_clock: trio.testing.MockClock,
) -> None:
    good = DnsblChecker(ClientAddressLookup(FakeDnsClient(zone_records(listed=False))), [ZONE])
    assert (await good.check(OURS)).status is DnsblStatus.NOT_LISTED
    # A zone that says NXDOMAIN to everything (shut down, misspelt, a resolver that lies).
    dead = FakeDnsClient(zone_records(listed=False, test_entry=False))
    result = await DnsblChecker(ClientAddressLookup(dead), [ZONE]).check(OURS)
    assert result.status is DnsblStatus.UNKNOWN
    assert result.answers[0].answer is Answer.BROKEN
    assert "test entry" in result.answers[0].detail


async def test_a_refused_query_is_not_a_listing(autojump_clock: trio.testing.MockClock) -> None:
    client = FakeDnsClient(zone_records(listed=True, code="127.255.255.254"))
    result = await DnsblChecker(ClientAddressLookup(client), [ZONE]).check(OURS)
    assert result.status is DnsblStatus.UNKNOWN
    assert result.answers[0].answer is Answer.REFUSED


async def test_a_failing_resolver_gives_no_verdict_and_is_asked_again(
    autojump_clock: trio.testing.MockClock,
) -> None:
    name = f"44.33.22.11.{ZONE}"
    client = FakeDnsClient(zone_records(listed=False), unavailable=frozenset({name}))
    checker = DnsblChecker(ClientAddressLookup(client), [ZONE])
    for _ in range(2):
        result = await checker.check(OURS)
        assert result.status is DnsblStatus.UNKNOWN
        assert result.answers[0].answer is Answer.FAILED
    assert client.asked[(name, "A")] == 2  # failures are not cached


async def test_a_slow_resolver_is_bounded_by_the_timeout(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client = FakeDnsClient(zone_records(listed=True), delay=60.0)
    checker = DnsblChecker(ClientAddressLookup(client), [ZONE], timeout=4.0)
    start = trio.current_time()
    result = await checker.check(OURS)
    assert trio.current_time() - start == pytest.approx(4.0)
    assert result.answers[0].answer is Answer.FAILED and result.answers[0].detail == "timeout"


async def test_answers_are_cached_for_the_cache_ttl(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client = FakeDnsClient(zone_records(listed=False))
    checker = DnsblChecker(ClientAddressLookup(client), [ZONE, "other.example.org"], cache_ttl=900)
    await checker.check(OURS)
    asked = sum(client.asked.values())
    assert asked == 4  # our address and the test entry, in each zone
    await trio.sleep(899.0)
    await checker.check(OURS)
    assert sum(client.asked.values()) == asked
    await trio.sleep(1.0)
    await checker.check(OURS)
    assert sum(client.asked.values()) == 2 * asked
    checker.clear()  # SIGHUP: ask again
    await checker.check(OURS)
    assert sum(client.asked.values()) == 3 * asked
    assert checker.statistics().cache_hits == 4


async def test_nothing_is_asked_without_zones_or_a_public_address(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client = FakeDnsClient(zone_records(listed=True))
    none = await DnsblChecker(ClientAddressLookup(client), []).check(OURS)
    assert none.status is DnsblStatus.UNKNOWN and "no DNSBL zone configured" in none.note
    nat = await DnsblChecker(ClientAddressLookup(client), [ZONE]).check("192.168.1.20")
    assert nat.status is DnsblStatus.UNKNOWN and "killswitch.dnsbl_address" in nat.note
    unknown = await DnsblChecker(ClientAddressLookup(client), [ZONE]).check(None)
    assert "not known yet" in unknown.note
    assert sum(client.asked.values()) == 0


class _Sock:
    def __init__(self, local: tuple[str, int] | None) -> None:
        self.local = local

    def getsockname(self) -> tuple[str, int]:
        if self.local is None:
            raise OSError("not connected")
        return self.local


class _Connector:
    def __init__(self, *locals_: tuple[str, int] | None) -> None:
        self.locals = list(locals_)

    async def connect(self, address: str, port: int) -> trio.abc.Stream:
        await trio.lowlevel.checkpoint()
        stream, _ = trio.testing.memory_stream_pair()
        local = self.locals.pop(0)
        if local != ("no socket", 0):
            stream.socket = _Sock(local)  # type: ignore[attr-defined]
        return stream


async def test_the_local_address_of_the_latest_connection_is_our_sending_address() -> None:
    connector = LocalAddressConnector(
        _Connector(("11.22.33.44", 40001), None, ("no socket", 0), ("11.22.33.45", 40002))
    )
    assert connector.current() is None
    await connector.connect("192.0.2.1", 25)
    assert connector.current() == OURS
    await connector.connect("192.0.2.2", 25)  # a socket that cannot say: keep what we knew
    await connector.connect("192.0.2.3", 25)  # no socket at all (the simulated internet)
    assert connector.current() == OURS
    await connector.connect("192.0.2.4", 25)
    assert connector.current() == "11.22.33.45"


async def test_the_daemon_builds_its_checker_from_the_config() -> None:
    cfg = load_config(
        None,
        env={},
        overrides={"killswitch.dnsbl_zones": "BL.Example.net., other.example.org"},
        probing=False,
    )
    lookup = ClientAddressLookup(FakeDnsClient(zone_records(listed=True)))
    async with open_dnsbl(cfg, lookup) as checker:
        assert checker.zones == ("bl.example.net", "other.example.org")
        assert checker.configured and checker.cache_ttl == 900.0
    async with open_dnsbl(load_config(None, env={}, probing=False)) as unconfigured:
        assert not unconfigured.configured  # no zone: no client is opened, nothing is asked
    with pytest.raises(ConfigError, match="not a DNS zone name"):
        load_config(None, env={}, overrides={"killswitch.dnsbl_zones": "bad zone"}, probing=False)
    with pytest.raises(ConfigError, match="not a public address"):
        load_config(None, env={}, overrides={"killswitch.dnsbl_address": "10.0.0.1"}, probing=False)
