"""What a domain task sends to a host's pool, and who takes it: the request (with the one-shot
slot its worker answers in) and the `HostVisitor` protocol that the gate and the pool manager
implement. The domain's plan travels in the request; the pool's worker moves it on."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from ct_actors.dns.types import MxHost
from ct_actors.probe.plan import ProbePlan
from ct_actors.probe.visit import HostVisit
from ct_actors.reply_slot import ReplySlot


@dataclass(slots=True)
class ProbeRequest:
    domain: str
    plan: ProbePlan
    reply: ReplySlot[HostVisit] = field(default_factory=ReplySlot)
    # The MX name the domain asked for: a pool serves one IP address, which several tenants'
    # MX names may share; visits are reported under the name the domain's MX record gave.
    mx_name: str = ""


class HostVisitor(Protocol):
    async def visit(self, host: MxHost, request: ProbeRequest) -> HostVisit: ...
