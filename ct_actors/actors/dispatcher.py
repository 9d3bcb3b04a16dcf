"""The dispatcher actor: input stage, per-domain de-duplication and the domain tasks.

Jobs arrive from the loader one record at a time. The input stage (probe/input_stage.py)
normalises the domain (CT-I-NO-DOMAIN if it cannot); then the dispatcher groups records by
domain: the first record of a domain starts a domain task (MX lookup through the resolver
stage, then the SMTP probe through the gate and the pools: actors/stages.py); records of the
same domain that arrive while it runs join it; a recent verdict from the cache answers at once.
So a domain shared by many outreach_ids costs one probe.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Literal

import structlog
import trio

from ct_actors.actors.stages import ProbeStages
from ct_actors.config import DnsConfig, ProbeConfig
from ct_actors.dns.domain_failures import (
    DnsAttempt,
    DomainDnsFailures,
    DomainFailuresStatistics,
)
from ct_actors.dns.types import DnsUnavailable, DomainDnsFailure
from ct_actors.log import fields_as_log
from ct_actors.net.address_policy import AddressPolicy
from ct_actors.outcome import Deferred, Failed, FailureCode, Outcome, Result
from ct_actors.probe.domain_probe import (
    GREYLISTED_KEY,
    DomainResult,
    GreylistState,
    RetryPolicy,
    greylist_deferral,
)
from ct_actors.probe.input_stage import Unusable, accept, input_evidence
from ct_actors.probe.normalise import NormalisedDomain
from ct_actors.ttl_cache import TtlCache
from ct_actors.verify.policy import AddressVerifier, verify_weak_pass

log = structlog.get_logger("ct_actors.dispatcher")

# How long a greylisted domain's state (its catch-all address) is kept after its retry time,
# for a record that comes back late (a paused claim, a busy pipeline).
_KEEP = 3600.0

@dataclass(frozen=True, slots=True)
class NamesFailed:
    """In a NamesSource answer: this record's own names query failed (timeout, data error);
    the loader defers the record instead of probing it without its names."""

    reason: str


# Sample names per record (a record missing from the answer has none), or NamesFailed.
NamesSource = Callable[
    [Sequence[uuid.UUID]],
    Awaitable[Mapping[uuid.UUID, list[tuple[str, str]] | NamesFailed]],
]


@dataclass(frozen=True, slots=True)
class Job:
    outreach_id: uuid.UUID
    raw_domain: str | None
    started_at: float = 0.0
    people: tuple[tuple[str, str], ...] = ()  # sample names for pattern candidates
    # Set when this record's names query failed: probing without its names would give a
    # different (role-only) answer, so the record is deferred instead.
    names_error: str | None = None


# Defaults are the config's (ct_actors/config/sections.py): defaults live in one place.
_PROBE = ProbeConfig()
_DNS = DnsConfig()


@dataclass(frozen=True, slots=True)
class DispatchSettings:
    mode: Literal["smtp", "mx-only"] = _PROBE.mode
    verdict_ttl: float = 168 * 3600.0  # SMTPCheck cache_ttl_hours
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    # Which MX addresses may be connected to; None: no check (tests on documentation
    # addresses). The daemon always sets it (smtp.allow_networks).
    addresses: AddressPolicy | None = None
    # A domain whose own DNS is broken (lookups fail while our resolver is healthy): deferred
    # this many times, the first wait doubling each time, then CT-M-NO-MX (dns/domain_failures).
    dns_failure_retries: int = _DNS.domain_failure_retries
    dns_failure_delay: float = _DNS.domain_failure_delay


@dataclass(frozen=True, slots=True)
class DispatcherStatistics:
    jobs: int
    domains_probed: int
    joined: int  # jobs that joined a domain already being probed
    cache_hits: int  # verdicts reused
    greylist_deferrals: int
    greylist_given_up: int
    domains_in_flight: int
    greylist_waiting: int
    dns_broken: DomainFailuresStatistics  # domains whose own DNS is broken

    def as_log(self) -> dict[str, Any]:
        """The broken-DNS counters flat, `dns_broken_<counter>`, as the dashboards read them."""
        line = fields_as_log(self)
        line.update((f"dns_broken_{k}", v) for k, v in line.pop("dns_broken").items())
        return line


@dataclass(slots=True)
class _DomainGroup:
    domain: NormalisedDomain
    jobs: list[Job] = field(default_factory=list)


class Dispatcher:
    def __init__(
        self,
        receive: trio.MemoryReceiveChannel[Job],
        send: trio.MemorySendChannel[Outcome],
        *,
        stages: ProbeStages,
        settings: DispatchSettings,
    ) -> None:
        self._stages = stages
        self._verifier: AddressVerifier | None = stages.verifier
        self._receive = receive
        self._send = send
        self.settings = settings
        self._groups: dict[str, _DomainGroup] = {}
        self._verdicts: TtlCache[str, DomainResult] = TtlCache(settings.verdict_ttl)
        # Domains waiting out greylisting between their passes (see _greylisted). Kept in
        # memory: a restarted daemon starts a domain's greylisting over, bounded again.
        self._greylist: dict[str, tuple[GreylistState, float]] = {}
        # Domains whose own DNS is broken, between their lookups (see _domain_dns_broken).
        self._dns_broken = DomainDnsFailures(
            settings.dns_failure_retries, settings.dns_failure_delay
        )
        self._stats = {
            "jobs": 0,
            "domains_probed": 0,
            "joined": 0,
            "cache_hits": 0,
            "greylist_deferrals": 0,
            "greylist_given_up": 0,
        }

    def reconfigure(self, settings: DispatchSettings) -> None:
        """Reload: retry policy and verdict TTL from the next domain on (mode is restart-only)."""
        self.settings = dataclasses.replace(settings, mode=self.settings.mode)
        self._verdicts.ttl = settings.verdict_ttl
        self._dns_broken.configure(settings.dns_failure_retries, settings.dns_failure_delay)

    def statistics(self) -> DispatcherStatistics:
        return DispatcherStatistics(
            **self._stats,
            domains_in_flight=len(self._groups),
            greylist_waiting=self.greylist_waiting(),
            dns_broken=self._dns_broken.statistics(),
        )

    def greylist_waiting(self) -> int:
        """Domains whose greylisting retry is still in the future: `run --drain` waits for
        them (once a retry's time has come the record is pending in the database again, and
        the drain's own check covers it)."""
        now = trio.current_time()
        stale = [d for d, (_, retry_at) in self._greylist.items() if retry_at + _KEEP < now]
        for domain in stale:
            # Never claimed back here (another daemon took it): forget the state, so memory
            # stays bounded by the domains greylisted in the last hours.
            del self._greylist[domain]
        return sum(1 for _, retry_at in self._greylist.values() if retry_at > now)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with self._send, trio.open_nursery() as nursery:
            task_status.started()
            async with self._receive:
                async for job in self._receive:
                    await self._accept(job, nursery)
            # Falling out of the nursery means every domain task has finished; closing our
            # send side then tells the writer to flush and stop.

    async def _accept(self, job: Job, nursery: trio.Nursery) -> None:
        # Never waits for the writer: a record answered at once (cached verdict, unusable
        # domain) is handed over by a task of its own, so it cannot hold up the records behind
        # it while the writer flushes. The loader's in-flight credits bound those tasks.
        self._stats["jobs"] += 1
        if job.names_error is not None:
            reason = f"sample names unavailable: {job.names_error}"
            deferred = Deferred(reason, self.settings.retry.defer_seconds, {})
            nursery.start_soon(self._emit, job, None, deferred, None)
            return
        domain = accept(job.raw_domain)
        if isinstance(domain, Unusable):
            nursery.start_soon(self._emit, job, None, domain.failed(), None)
            return
        group = self._groups.get(domain.domain)
        if group is not None:
            self._stats["joined"] += 1
            group.jobs.append(job)
            return
        cached = self._verdicts.get(domain.domain)
        if cached is not None:
            self._stats["cache_hits"] += 1
            nursery.start_soon(partial(self._emit_result, job, domain, cached, cached=True))
            return
        group = _DomainGroup(domain, [job])
        self._groups[domain.domain] = group
        nursery.start_soon(self._probe_domain, group)

    async def _probe_domain(self, group: _DomainGroup) -> None:
        name = group.domain.domain
        try:
            result = await self._decide(group)
        finally:
            # Records that joined while we worked get the same answer; none can join now.
            del self._groups[name]
        if result.result.kind != "deferred":
            self._verdicts.put(name, result)
        for job in group.jobs:
            await self._emit_result(job, group.domain, result, cached=False)

    async def _decide(self, group: _DomainGroup) -> DomainResult:
        self._stats["domains_probed"] += 1
        name = group.domain.domain
        now = trio.current_time()
        dns_retry_at = self._dns_broken.waiting_until(name, now)
        if dns_retry_at is not None:
            # Its DNS was found broken and its retry time has not come: no lookup before then.
            await trio.lowlevel.checkpoint()
            return DomainResult(self._dns_deferral(dns_retry_at - now), None)
        try:
            mx = await self._stages.resolver.lookup(name)
        except DomainDnsFailure as exc:
            return DomainResult(self._domain_dns_broken(name, exc), None)
        except DnsUnavailable as exc:
            # Our resolver's trouble (or not proven otherwise): a plain deferral, never counted
            # against the domain.
            deferred = Deferred(
                f"our resolver could not answer: {exc.reason}",
                self.settings.retry.defer_seconds,
                {"nameserver": exc.nameserver},
            )
            return DomainResult(deferred, None)
        self._dns_broken.resolved(name)
        # Names were fetched by the loader for the whole claim batch; every record that joined
        # the domain contributes, in arrival order, up to the contract's three.
        people = [person for job in group.jobs for person in job.people][:3]
        # A greylisted domain comes back with the same catch-all address (the same triplet).
        waiting = self._greylist.pop(name, None) if self.settings.mode == "smtp" else None
        state = waiting[0] if waiting is not None else None
        result = await self._stages.probe(
            mx,
            people,
            mode=self.settings.mode,
            retry=self.settings.retry,
            addresses=self.settings.addresses,
            catchall_address=state.catchall_address if state is not None else "",
        )
        if self.settings.mode == "smtp":
            result = self._greylisted(name, result, state)
        if self._verifier is not None:
            # Tier 2: a weak PASS (catch-all, mx-only) is checked with the vendor, once per
            # address ever; the verdict cache then serves the domain's other records.
            result = await verify_weak_pass(self._verifier, result, name, people)
        return result

    def _domain_dns_broken(self, name: str, exc: DomainDnsFailure) -> Result:
        """A lookup failed while our resolver answered its health check: deferred a bounded
        number of times, then CT-M-NO-MX with every attempt listed."""
        verdict = self._dns_broken.failed(
            name, DnsAttempt(trio.current_time(), exc.reason, exc.nameserver)
        )
        evidence: dict[str, object] = {
            "dns_broken": verdict.evidence(),
            "resolver_health": exc.health,
            "nameserver": exc.nameserver,
        }
        if verdict.retry_after is None:
            reason = (
                f"DNS for the domain is broken: {exc.reason} (every one of "
                f"{len(verdict.attempts)} lookups failed while our resolver answered its "
                f"health check: {verdict.history()})"
            )
            return Failed(FailureCode.NO_MX, reason[:2000], evidence=evidence)
        reason = (
            f"DNS for the domain is broken: {exc.reason} (lookup {len(verdict.attempts)} of "
            f"{verdict.allowed}; our resolver answered its health check)"
        )
        return Deferred(reason[:2000], verdict.retry_after, evidence)

    def _dns_deferral(self, retry_after: float) -> Deferred:
        return Deferred(
            "DNS for the domain is broken: waiting for its next lookup",
            retry_after,
            {"dns_broken_retry_in": round(retry_after, 3)},
        )

    def _greylisted(
        self, name: str, result: DomainResult, state: GreylistState | None
    ) -> DomainResult:
        """A greylisted pass comes back later with the same catch-all address, a bounded
        number of times (`greylist_deferral`); then the domain concludes CT-M-SMTP-FAIL."""
        deferred = result.result
        if not isinstance(deferred, Deferred) or not deferred.evidence.get(GREYLISTED_KEY):
            return result
        policy = self.settings.retry
        attempts = 1 if state is None else state.attempts + 1
        history = (*(state.history if state is not None else ()), deferred.reason)
        catchall = str(deferred.evidence.get("catchall_probe", ""))
        evidence = {**deferred.evidence, "greylisted_passes": list(history)}
        delay = greylist_deferral(attempts, policy)
        if delay is None:
            self._stats["greylist_given_up"] += 1
            reason = (
                f"still greylisted after {attempts} passes over "
                f"{sum(greylist_deferral(n, policy) or 0.0 for n in range(1, attempts)):g}s: "
                f"{deferred.reason}"
            )
            return DomainResult(
                Failed(FailureCode.SMTP_FAIL, reason[:2000], evidence=evidence), result.mx_host
            )
        self._stats["greylist_deferrals"] += 1
        retry_at = trio.current_time() + delay + 1.0
        self._greylist[name] = (GreylistState(catchall, attempts, history), retry_at)
        return DomainResult(
            dataclasses.replace(deferred, retry_after=delay, evidence=evidence), result.mx_host
        )

    async def _emit_result(
        self, job: Job, domain: NormalisedDomain, result: DomainResult, *, cached: bool
    ) -> None:
        outcome_result = _with_normalisation(result.result, job.raw_domain, domain, cached)
        await self._emit(job, domain.domain, outcome_result, result.mx_host)

    async def _emit(self, job: Job, domain: str | None, result: Result, mx: str | None) -> None:
        duration = trio.current_time() - job.started_at
        await self._send.send(Outcome(job.outreach_id, domain, result, mx, duration))


def _with_normalisation(
    result: Result, raw: str | None, domain: NormalisedDomain, cached: bool
) -> Result:
    """Every row says what was normalised, and whether the verdict came from the cache."""
    extra = {"raw_domain": raw, "domain": domain.domain, **input_evidence(raw, domain)}
    if cached:
        extra["verdict_cache"] = True
    return dataclasses.replace(result, evidence={**result.evidence, **extra})
