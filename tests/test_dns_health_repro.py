"""Reproduction (issue 10 item 2): twenty domains whose zones hold a CNAME loop trip
dns_resolver_failure although the resolver answers everything else."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from ct_actors.actors.resolver_stage import RESOLVER_FAILURE, ResolverSettings, ResolverStage
from ct_actors.dns.mx import DnsMxResolver
from ct_actors.dns.types import DnsUnavailable
from ct_actors.testing import FakeDnsClient

pytestmark = pytest.mark.timeout(60)

LOOPS = {f"loop{i}.example": [("CNAME", f"back{i}.example.")] for i in range(20)}
BACKS = {f"back{i}.example": [("CNAME", f"loop{i}.example.")] for i in range(20)}
RECORDS = {
    **LOOPS,
    **BACKS,
    "good.example": [("MX", "10 mx.good.example.")],
    "mx.good.example": [("A", "192.0.2.25")],
    ".": [("NS", "a.root-servers.net.")],
    "a.root-servers.net": [("A", "198.41.0.4")],
}


async def test_twenty_cname_loops_do_not_trip_the_resolver_switch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client = FakeDnsClient(RECORDS, delay=0.01)
    stage = ResolverStage(DnsMxResolver(client), ResolverSettings(workers=4))
    with trio.fail_after(600):
        async with trio.open_nursery() as nursery:
            await nursery.start(stage.run)
            for name in LOOPS:
                with pytest.raises(DnsUnavailable, match="CNAME loop"):
                    await stage.lookup(name)
            tripped = stage.switches.is_tripped(RESOLVER_FAILURE)
            good = await stage.lookup("good.example")
            stage.close()
    assert not tripped
    assert good.hosts[0].addresses == ("192.0.2.25",)
