"""The SMTP pass of one domain's task: the thin async shell around `DomainWalk` (probe/).

The walk decides; this shell visits the hosts it names through the gate and the pools, and
waits where it says (greylist, throttle back-off, the host's rejected-RCPT budget). Waiting
happens here, in the domain's own task, so it never holds an SMTP worker or blocks other
domains.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import trio

from ct_actors.actors.visit_request import HostVisitor, ProbeRequest
from ct_actors.dns.types import MxLookup
from ct_actors.net.address_policy import AddressPolicy
from ct_actors.probe.domain_probe import DomainResult, RetryPolicy, no_mx_result
from ct_actors.probe.domain_walk import Decided, DomainWalk, Visit, Wait


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
    """The domain's SMTP pass: see `DomainWalk` for the arguments and `pass_verdict` for how
    the result is decided."""
    if (failed := no_mx_result(mx)) is not None:
        return failed
    walk = DomainWalk(
        mx,
        people,
        policy,
        reachable_recently=reachable_recently,
        catchall_address=catchall_address,
        addresses=addresses,
    )
    while True:
        match walk.next_action():
            case Visit(host, plan):
                request = ProbeRequest(mx.domain, plan, mx_name=host.name)
                walk.visited(await pools.visit(host, request))
            case Wait(seconds):
                await trio.sleep(seconds)
            case Decided(result):
                return result
