"""DnsMxResolver over a socket-less fake client, under trio's MockClock where time matters."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from ct_actors.dns.mx import DnsMxResolver
from ct_actors.dns.types import DnsUnavailable, MxHost, MxResolver, MxStatus
from ct_actors.testing import FakeDnsClient, Records

RECORDS: Records = {
    "a.example": [("MX", "10 aspmx.l.google.com."), ("MX", "20 alt1.aspmx.l.google.com.")],
    "b.example": [("MX", "5 ASPMX.L.GOOGLE.COM.")],
    "aspmx.l.google.com": [("A", "192.0.2.26")],
    "alt1.aspmx.l.google.com": [("A", "192.0.2.27"), ("A", "192.0.2.1")],
    "dangling.example": [("MX", "10 gone.example."), ("MX", "20 mx.flaky.example.")],
    "flaky.example": [("MX", "10 mx.flaky.example.")],
    "half.example": [("MX", "10 mx.flaky.example."), ("MX", "20 aspmx.l.google.com.")],
    "nomx.example": [("A", "192.0.2.80")],
    "nullmx.example": [("MX", "0 .")],
    "many.example": [("MX", f"{i} mx{i}.many.example.") for i in range(15)],
    **{f"mx{i}.many.example": [("A", f"192.0.2.{100 + i}")] for i in range(15)},
}


async def test_found_with_addresses_and_protocol() -> None:
    resolver: MxResolver = DnsMxResolver(FakeDnsClient(RECORDS))
    result = await resolver.lookup("a.example")
    assert result.status is MxStatus.FOUND
    assert result.nameserver == "192.0.2.53"
    assert result.hosts == (
        MxHost("aspmx.l.google.com", 10, ("192.0.2.26",)),
        MxHost("alt1.aspmx.l.google.com", 20, ("192.0.2.1", "192.0.2.27")),
    )


async def test_terminal_verdicts_carry_the_nameserver() -> None:
    resolver = DnsMxResolver(FakeDnsClient(RECORDS))
    for domain, status in [
        ("missing.example", MxStatus.NXDOMAIN),
        ("nomx.example", MxStatus.NO_MX),
        ("nullmx.example", MxStatus.NULL_MX),
    ]:
        result = await resolver.lookup(domain)
        assert (result.domain, result.status, result.nameserver) == (domain, status, "192.0.2.53")


async def test_invalid_domain_is_not_queried() -> None:
    client = FakeDnsClient(RECORDS)
    result = await DnsMxResolver(client).lookup("bad..example")
    assert result.status is MxStatus.NXDOMAIN
    assert result.extra == {"invalid_name": "true"}
    assert not client.asked


async def test_mx_servfail_is_unavailable_with_nameserver() -> None:
    client = FakeDnsClient(RECORDS, unavailable=frozenset({"a.example"}))
    with pytest.raises(DnsUnavailable) as info:
        await DnsMxResolver(client).lookup("a.example")
    assert info.value.nameserver == "192.0.2.53"
    assert "SERVFAIL" in info.value.reason


async def test_host_addresses_are_cached_across_domains() -> None:
    client = FakeDnsClient(RECORDS)
    resolver = DnsMxResolver(client)
    await resolver.lookup("a.example")
    result = await resolver.lookup("b.example")
    assert result.hosts == (MxHost("aspmx.l.google.com", 5, ("192.0.2.26",)),)
    assert client.asked[("aspmx.l.google.com", "A")] == 1
    assert resolver.statistics().cache_hits == 1


async def test_concurrent_lookups_coalesce(autojump_clock: trio.testing.MockClock) -> None:
    client = FakeDnsClient(RECORDS, delay=0.5)
    resolver = DnsMxResolver(client)
    async with trio.open_nursery() as nursery:
        for _ in range(50):
            nursery.start_soon(resolver.lookup, "a.example")
            nursery.start_soon(resolver.lookup, "b.example")
    assert client.asked[("aspmx.l.google.com", "A")] == 1
    assert client.asked[("alt1.aspmx.l.google.com", "A")] == 1
    assert resolver.statistics().coalesced == 99 + 49


async def test_cache_expires(autojump_clock: trio.testing.MockClock) -> None:
    client = FakeDnsClient(RECORDS)
    resolver = DnsMxResolver(client, address_cache_ttl=300)
    await resolver.lookup("b.example")
    await trio.sleep(299)
    await resolver.lookup("b.example")
    assert client.asked[("aspmx.l.google.com", "A")] == 1
    await trio.sleep(2)
    await resolver.lookup("b.example")
    assert client.asked[("aspmx.l.google.com", "A")] == 2


async def test_cache_is_bounded(autojump_clock: trio.testing.MockClock) -> None:
    resolver = DnsMxResolver(FakeDnsClient(RECORDS), max_cached_hosts=5)
    for i in range(15):
        await resolver.host_addresses(f"mx{i}.many.example")
    assert resolver.statistics().cached_hosts == 5


async def test_unresolvable_host_has_no_addresses() -> None:
    client = FakeDnsClient(RECORDS)
    result = await DnsMxResolver(client).lookup("dangling.example")
    assert result.status is MxStatus.FOUND
    assert result.hosts[0] == MxHost("gone.example", 10, ())


async def test_partial_address_failure_is_reported() -> None:
    client = FakeDnsClient(RECORDS, unavailable=frozenset({"mx.flaky.example"}))
    result = await DnsMxResolver(client).lookup("half.example")
    assert result.status is MxStatus.FOUND
    assert result.hosts[0] == MxHost("mx.flaky.example", 10, ())
    assert result.hosts[1].addresses == ("192.0.2.26",)
    assert result.extra["address_lookup_unavailable"] == "mx.flaky.example"


async def test_no_host_resolved_and_one_unavailable_raises() -> None:
    client = FakeDnsClient(RECORDS, unavailable=frozenset({"mx.flaky.example"}))
    resolver = DnsMxResolver(client)
    with pytest.raises(DnsUnavailable, match=r"mx\.flaky\.example"):
        await resolver.lookup("flaky.example")
    # One unavailable host next to one that does not exist is still not a verdict.
    with pytest.raises(DnsUnavailable):
        await resolver.lookup("dangling.example")
    # Failures are not cached.
    assert client.asked[("mx.flaky.example", "A")] == 2


async def test_many_mx_hosts_are_capped() -> None:
    client = FakeDnsClient(RECORDS)
    result = await DnsMxResolver(client, max_mx_hosts=4).lookup("many.example")
    assert [h.name for h in result.hosts] == [f"mx{i}.many.example" for i in range(4)]
    assert result.extra["mx_hosts_dropped"] == "11"
    assert sum(n for (name, _), n in client.asked.items() if name.startswith("mx")) == 4


async def test_waiter_retries_when_owner_is_cancelled(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client = FakeDnsClient(RECORDS, delay=1.0)
    resolver = DnsMxResolver(client)
    results: list[tuple[str, ...]] = []

    async def late_waiter() -> None:
        await trio.sleep(0.1)
        results.append(await resolver.host_addresses("aspmx.l.google.com"))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(late_waiter)
        with trio.move_on_after(0.2):  # cancels the task that owns the query
            await resolver.host_addresses("aspmx.l.google.com")
    assert results == [("192.0.2.26",)]
    assert client.asked[("aspmx.l.google.com", "A")] == 2
    assert resolver.statistics().coalesced == 1
