"""The bounded life of a domain whose own DNS is broken.

A lookup that fails while our resolver answers its health check (`dns/health.py`) is the
domain's trouble: a CNAME loop, a lame or broken delegation, SERVFAIL for that one zone. Some of
these are repaired, most within hours or never, so such a domain is deferred a bounded number of
times (`dns.domain_failure_retries`, default 3) and then concludes CT-M-NO-MX with every attempt
in its evidence. The waits start at `dns.domain_failure_delay` (default 1800 s) and double:
30 min, 1 h, 2 h, the last lookup some 3.5 h after the first. The first wait is well past the
5 minutes for which a resolver may cache a resolution failure (RFC 2308 §7.1, RFC 9520 §3.2), so
every retry reaches the domain's servers again rather than our resolver's cached failure.

Only a failure after the domain's retry time counts as a new attempt: its other records, claimed
meanwhile, wait for the same retry time (and cost no lookup: `waiting_until`), so a domain with
many records cannot use up its attempts in minutes. Failures while our resolver is not proven
healthy never reach this class: they are about us, and stay plain deferrals.

State is in memory, like greylisting's: a restarted daemon starts a domain's count over, bounded
again; entries not seen for an hour after their retry time are dropped.
"""

from __future__ import annotations

from dataclasses import dataclass

_KEEP = 3600.0  # how long an entry outlives its retry time before it is dropped
_SWEEP_EVERY = 60.0


@dataclass(frozen=True, slots=True)
class DnsAttempt:
    at: float  # trio time of the failure
    reason: str  # "CNAME loop at x.example", "nameserver answered SERVFAIL", ...
    nameserver: str | None


@dataclass(frozen=True, slots=True)
class DomainVerdict:
    """What to do with a domain after a counted failure: wait `retry_after` seconds, or (None)
    conclude CT-M-NO-MX. `attempts` is every counted failure so far, oldest first."""

    attempts: tuple[DnsAttempt, ...]
    retry_after: float | None
    allowed: int  # lookups the domain gets in all (retries + 1)

    @property
    def concluded(self) -> bool:
        return self.retry_after is None

    def evidence(self) -> list[dict[str, object]]:
        first = self.attempts[0].at
        return [
            {
                "attempt": n,
                "after_seconds": round(a.at - first, 3),
                "reason": a.reason,
                "nameserver": a.nameserver,
            }
            for n, a in enumerate(self.attempts, 1)
        ]

    def history(self) -> str:
        """Every attempt on one line, for the FAIL's blocking_reason."""
        first = self.attempts[0].at
        return "; ".join(
            f"#{n} at +{a.at - first:g}s: {a.reason}" for n, a in enumerate(self.attempts, 1)
        )


@dataclass(slots=True)
class _State:
    attempts: tuple[DnsAttempt, ...]
    retry_at: float


@dataclass(frozen=True, slots=True)
class DomainFailuresStatistics:
    counted: int
    deferred: int
    concluded: int  # CT-M-NO-MX after the last retry
    early: int  # failed again before their retry time
    recovered: int
    domains: int  # waiting now


class DomainDnsFailures:
    def __init__(self, retries: int = 3, delay: float = 1800.0) -> None:
        self.retries = retries
        self.delay = delay
        self._state: dict[str, _State] = {}
        self._swept_at = 0.0
        self._stats = {"counted": 0, "deferred": 0, "concluded": 0, "early": 0, "recovered": 0}

    def configure(self, retries: int, delay: float) -> None:
        """Reload: applies from each domain's next counted failure."""
        self.retries, self.delay = retries, delay

    def waiting_until(self, domain: str, now: float) -> float | None:
        """The retry time of a domain still waiting out a deferral, else None."""
        state = self._state.get(domain)
        if state is None or state.retry_at <= now:
            return None
        return state.retry_at

    def failed(self, domain: str, attempt: DnsAttempt) -> DomainVerdict:
        """Count a failure of `domain` while the resolver was healthy."""
        now = attempt.at
        self._sweep(now)
        allowed = self.retries + 1
        state = self._state.get(domain)
        if state is not None and now < state.retry_at:
            # Before its retry time (a record claimed meanwhile): wait with the others.
            self._stats["early"] += 1
            return DomainVerdict(state.attempts, state.retry_at - now, allowed)
        attempts = (*(state.attempts if state is not None else ()), attempt)
        self._stats["counted"] += 1
        if len(attempts) > self.retries:
            self._state.pop(domain, None)
            self._stats["concluded"] += 1
            return DomainVerdict(attempts, None, allowed)
        delay = self.delay * 2.0 ** min(len(attempts) - 1, 20)
        self._state[domain] = _State(attempts, now + delay)
        self._stats["deferred"] += 1
        return DomainVerdict(attempts, delay, allowed)

    def resolved(self, domain: str) -> None:
        """The domain's lookup worked (repaired): its count starts over."""
        if self._state.pop(domain, None) is not None:
            self._stats["recovered"] += 1

    def statistics(self) -> DomainFailuresStatistics:
        return DomainFailuresStatistics(**self._stats, domains=len(self._state))

    def _sweep(self, now: float) -> None:
        if now - self._swept_at < _SWEEP_EVERY:
            return
        self._swept_at = now
        stale = [d for d, s in self._state.items() if s.retry_at + _KEEP < now]
        for domain in stale:
            # Never came back here (claimed by another daemon, or the record was removed).
            del self._state[domain]
