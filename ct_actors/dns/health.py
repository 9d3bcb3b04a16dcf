"""Is our resolver healthy? The evidence the `dns_resolver_failure` kill switch needs before it
blames our side for failed MX lookups.

A lookup can fail because of the domain (a CNAME loop, a lame or broken delegation, SERVFAIL
for one zone) or because of our resolver (down, unreachable, unable to recurse). Many failing
domains in a row do not tell these apart: a hostile or careless upstream can feed twenty broken
zones in a row. So before the switch moves to another resolver or pauses, the active resolver is
asked two questions that must work on any healthy recursive resolver:

* `dns.health_check_name` IN A (default `a.root-servers.net`, dnsdist's default health-check
  query: answered by the root server operators' own zone, reached through the root and `net.`
  delegations, so it exercises recursion through three levels of anycast servers);
* `.` IN NS, the root's name servers (RFC 1034 §5.3.3: every resolver starts from them; RFC 8109
  priming).

Both must be answered NOERROR with records, by the nameserver that was asked. Limit: a resolver
that has lost its upstream but still serves both from its cache passes; the domains it fails are
then charged to themselves, which is why a domain gets several deferrals spread over hours before
it concludes (`DomainDnsFailures`), and why the operator may point `dns.health_check_name` at a
name with a short TTL in a zone of their own.

Checks are rate-limited: one in flight at a time (concurrent callers share it) and a result
stands for `interval` seconds, so a flood of broken domains costs at most two queries per
interval. Time is read only through trio (MockClock in tests).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import trio

# A resolver's own health probe: the answers of the active nameserver to the health-check name
# and to `. NS` (DnsMxResolver.check_health).
HealthProbe = Callable[[str], Awaitable[tuple["HealthAnswer", ...]]]

DEFAULT_HEALTH_CHECK_NAME = "a.root-servers.net"
ROOT_NS = ". NS"


@dataclass(frozen=True, slots=True)
class HealthAnswer:
    """One health-check question and what became of it."""

    question: str  # "a.root-servers.net A", ". NS"
    ok: bool
    detail: str  # "NOERROR, 198.41.0.4" / "timeout after 2s" / "answered by 10.0.0.2 instead"

    def text(self) -> str:
        return f"{self.question}: {'answered' if self.ok else 'FAILED'} ({self.detail})"


@dataclass(frozen=True, slots=True)
class HealthReport:
    nameserver: str | None  # the active nameserver the questions were put to
    answers: tuple[HealthAnswer, ...]
    checked_at: float  # trio time the answers were in
    note: str = ""  # why there are no answers

    @property
    def healthy(self) -> bool:
        return bool(self.answers) and all(a.ok for a in self.answers)

    def summary(self) -> str:
        if not self.answers:
            return self.note or "no health check"
        return "; ".join(a.text() for a in self.answers)

    def evidence(self) -> dict[str, object]:
        return {
            "nameserver": self.nameserver,
            "healthy": self.healthy,
            "answers": [a.text() for a in self.answers] or [self.note],
        }


@dataclass(eq=False, slots=True)
class _Running:
    nameserver: str | None
    done: trio.Event = field(default_factory=trio.Event)
    report: HealthReport | None = None


@dataclass(frozen=True, slots=True)
class HealthStatistics:
    checks: int  # asked the nameserver
    healthy: int
    unhealthy: int
    shared: int  # waited for a check in flight
    cached: int  # answered by the last result
    name: str  # the name asked (dns.health_check_name)
    last_healthy: bool | None
    last_checked_at: float | None  # trio time


class ResolverHealth:
    """Cached, coalesced health checks of the active nameserver (see the module docstring)."""

    def __init__(self, name: str = DEFAULT_HEALTH_CHECK_NAME, interval: float = 30.0) -> None:
        self.name = name
        self.interval = interval
        self._last: HealthReport | None = None
        self._running: _Running | None = None
        self._stats = {"checks": 0, "healthy": 0, "unhealthy": 0, "shared": 0, "cached": 0}

    def configure(self, name: str, interval: float) -> None:
        """Reload: a new name invalidates the last result; a new interval applies at once."""
        if name != self.name:
            self._last = None
        self.name, self.interval = name, interval

    def forget(self) -> None:
        """The nameserver changed (switch, clear): nothing known about it yet."""
        self._last = None

    def statistics(self) -> HealthStatistics:
        last = self._last
        return HealthStatistics(
            **self._stats,
            name=self.name,
            last_healthy=None if last is None else last.healthy,
            last_checked_at=None if last is None else last.checked_at,
        )

    async def check(
        self, probe: HealthProbe | None, nameserver: str | None, *, max_age: float
    ) -> HealthReport:
        """A report on `nameserver` at most `max_age` seconds old (0: one that is in flight now
        or finishes now), asking when there is none. Without a probe there is no evidence."""
        if probe is None:
            await trio.lowlevel.checkpoint()
            return HealthReport(
                nameserver, (), trio.current_time(), "the resolver offers no health check"
            )
        while True:
            last = self._last
            if (
                last is not None
                and last.nameserver == nameserver
                and trio.current_time() - last.checked_at <= max_age
            ):
                self._stats["cached"] += 1
                await trio.lowlevel.checkpoint()
                return last
            running = self._running
            if running is None:
                break
            # One check at a time: its answers describe the resolver now, whoever asked.
            self._stats["shared"] += 1
            await running.done.wait()
            if running.report is not None and running.nameserver == nameserver:
                return running.report
            # Cancelled without a report, or about another nameserver: look again.
        running = _Running(nameserver)
        self._running = running
        try:
            self._stats["checks"] += 1
            answers = await probe(self.name)
            report = HealthReport(nameserver, answers, trio.current_time())
            self._stats["healthy" if report.healthy else "unhealthy"] += 1
            running.report = report
            self._last = report
            return report
        finally:
            self._running = None
            running.done.set()
