"""Wiring: from a validated `Config` and `Toolbox` to running components.

The CLI commands (`run`, `once`, `probe`, `demo`, `bench`) all build their parts here, so the
daemon, the one-shot commands and the demo exercise exactly the same pipeline.
"""

from __future__ import annotations

import signal
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any, TextIO

import httpx
import structlog
import trio

from ct_actors.actors.dispatcher import NamesFailed, NamesSource
from ct_actors.actors.loader import report_spine_anomalies
from ct_actors.actors.pool_manager import SmtpPoolManager
from ct_actors.actors.settings import (
    Settings,
    guard_settings,
    pool_settings,
    resolver_settings,
    retry_policy,
)
from ct_actors.actors.stages import ProbeStages
from ct_actors.actors.supervisor import Supervisor
from ct_actors.config import Config, ConfigError
from ct_actors.db.driver import Database
from ct_actors.db.errors import DatabaseUnavailable
from ct_actors.db.names_query import NamesQuery
from ct_actors.db.usage import UsageBook
from ct_actors.db.work_queue import WorkQueue
from ct_actors.dns.client import UdpDnsClient
from ct_actors.dns.dnsbl import AddressLookup, ClientAddressLookup, DnsblChecker
from ct_actors.dns.mx import DnsMxResolver
from ct_actors.dns.types import DnsUnavailable, DomainDnsFailure, MxResolver
from ct_actors.log import set_level
from ct_actors.net.address_policy import AddressPolicy
from ct_actors.net.connector import Connector, TrioConnector
from ct_actors.net.local_address import LocalAddressConnector
from ct_actors.outcome import Deferred
from ct_actors.probe.domain_probe import DomainResult
from ct_actors.progress import progress_loop
from ct_actors.service import SystemdService, WatchdogPolicy
from ct_actors.throttle.budget import UsageStore
from ct_actors.throttle.calendar import UtcClock
from ct_actors.throttle.killswitch import KillSwitches
from ct_actors.throttle.limiter import ToolThrottles
from ct_actors.toolbox import EMAIL_VERIFIER, Toolbox, ToolboxError
from ct_actors.verify.factory import api_key_from_environment, make_email_verifier
from ct_actors.verify.gate import EmailVerifier
from ct_actors.verify.ledger import VerifierLedger
from ct_actors.verify.pg_ledger import PgVerifierLedger
from ct_actors.verify.policy import verify_weak_pass

log = structlog.get_logger("ct_actors.app")

TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (DatabaseUnavailable,)


def make_throttles(
    cfg: Config, toolbox: Toolbox, usage: UsageStore | None, clock: UtcClock | None = None
) -> ToolThrottles:
    """The registry's limits for our three tools. Must be called inside trio (the UTC clock is
    anchored to trio's clock at that moment)."""
    return ToolThrottles(
        dict(toolbox.tools),
        clock=clock or UtcClock.from_wall(),
        usage=usage,
        budget_block=cfg.throttle.budget_block,
        transient_errors=TRANSIENT_DB_ERRORS,
    )


def tls_context() -> ssl.SSLContext:
    # Opportunistic STARTTLS as MTAs do it: encrypt when offered, never verify certificates
    # (RFC 7435); a failed handshake is a failed conversation, not a downgrade we hide.
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def make_pools(cfg: Config, connector: Connector | None = None) -> SmtpPoolManager:
    return SmtpPoolManager(
        pool_settings(cfg),
        connector or TrioConnector(cfg.smtp.source_address),
        ssl_context=tls_context() if cfg.smtp.starttls == "opportunistic" else None,
    )


@asynccontextmanager
async def open_resolver(cfg: Config) -> AsyncIterator[tuple[MxResolver, UdpDnsClient]]:
    """The MX resolver, and the DNS client under it (the part SIGHUP reconfigures)."""
    async with UdpDnsClient(
        list(cfg.dns.nameservers),
        port=cfg.dns.port,
        timeout=cfg.dns.timeout,
        attempts=cfg.dns.attempts,
    ) as client:
        yield DnsMxResolver(client), client


@asynccontextmanager
async def open_dnsbl(
    cfg: Config, lookup: AddressLookup | None = None
) -> AsyncIterator[DnsblChecker]:
    """The DNSBL checker for the ip_blacklist_detected switch. Its queries go to the
    configured resolver (dns.nameservers) on a client of their own; with no zone configured
    nothing is opened and the switch decides on the network evidence alone."""
    zones = cfg.killswitch.dnsbl_zones
    cache, timeout = cfg.killswitch.dnsbl_cache, cfg.dns.timeout * cfg.dns.attempts
    if lookup is not None or not zones:
        yield DnsblChecker(lookup, zones, cache_ttl=cache, timeout=timeout)
        return
    async with UdpDnsClient(
        list(cfg.dns.nameservers),
        port=cfg.dns.port,
        timeout=cfg.dns.timeout,
        attempts=cfg.dns.attempts,
        max_in_flight=16,
    ) as client:
        yield DnsblChecker(ClientAddressLookup(client), zones, cache_ttl=cache, timeout=timeout)


def names_source(cfg: Config, names: NamesQuery) -> NamesSource | None:
    query = cfg.probe.names_query
    if not query:
        return None

    timeout = cfg.probe.names_timeout
    failed = NamesFailed(f"the names query timed out or failed for this record ({timeout:g} s)")

    async def fetch(ids: Sequence[Any]) -> dict[Any, list[tuple[str, str]] | NamesFailed]:
        found = await names.fetch_names_batch(query, list(ids), statement_timeout=timeout)
        # The names query leaves out a record whose own query failed (see fetch_names_batch).
        return {oid: found.get(oid, failed) for oid in ids}

    return fetch


async def run_pipeline(
    cfg: Config,
    toolbox: Toolbox,
    database: Database,
    *,
    drain: bool,
    queue: WorkQueue | None = None,
    resolver: MxResolver | None = None,
    connector: Connector | None = None,
    handle_signals: bool = True,
    load: Callable[[], tuple[Config, Toolbox]] | None = None,
    clock: UtcClock | None = None,
    service: SystemdService | None = None,
    progress: TextIO | None = None,
    dnsbl_lookup: AddressLookup | None = None,
    on_ready: Callable[[Supervisor], None] | None = None,
) -> Supervisor:
    """Run the daemon's pipeline until drained (with `drain`) or stopped by a signal.
    `on_ready` is handed the running supervisor (the bench's sampler reads its counters).
    `queue`: the work queue (default: the whole spine's, on `database`).
    `progress`: a terminal to draw the progress bar on (`run --drain` on a TTY).
    `load` re-reads the config and the registry on SIGHUP (see `Reloader`). `service` speaks
    sd_notify to systemd (default: from $NOTIFY_SOCKET / $WATCHDOG_USEC; a no-op without)."""
    # systemd integration (ct_actors/service): READY/RELOADING/STOPPING, STATUS, watchdog.
    if service is None:
        service = SystemdService.from_environment(policy=WatchdogPolicy.for_config(cfg))
    service.starting()
    clock = clock or UtcClock.from_wall()
    database.set_secrets(cfg.secrets())  # never stored, even when a vendor echoes one back
    queue = queue or WorkQueue(database)
    names = NamesQuery(database)
    if cfg.probe.names_query:
        # Raises ConfigurationError (exit 2) before anything is claimed.
        await names.check_names_query(cfg.probe.names_query)
    await report_spine_anomalies(queue, TRANSIENT_DB_ERRORS)
    throttles = make_throttles(cfg, toolbox, UsageBook(database), clock)
    # The local address of our connections is our sending IP for the DNSBL lookups.
    local = LocalAddressConnector(connector or TrioConnector(cfg.smtp.source_address))
    settings = Settings.from_config(cfg, toolbox)
    async with (
        _maybe_resolver(cfg, resolver) as (mx_resolver, dns_client),
        open_dnsbl(cfg, dnsbl_lookup) as dnsbl,
    ):
        supervisor = Supervisor(
            settings.pipeline,
            store=queue,
            resolver=mx_resolver,
            dns=dns_client,
            pools=make_pools(cfg, local),
            dnsbl=dnsbl,
            local_address=local.current,
            transient_db_errors=TRANSIENT_DB_ERRORS,
            names=names_source(cfg, names),
            drain=drain,
            throttles=throttles,
            verifier=verifier_factory(
                cfg, toolbox, PgVerifierLedger(database), throttles, clock
            ),
        )
        reloader = (
            Reloader(supervisor, cfg, toolbox, load, service=service) if load is not None else None
        )
        async with trio.open_nursery() as nursery:
            if handle_signals:
                nursery.start_soon(_signal_loop, supervisor, nursery.cancel_scope, reloader)
            await nursery.start(supervisor.run)
            log.info("ready", owner=cfg.daemon.owner, mode=cfg.probe.mode)
            if on_ready is not None:
                on_ready(supervisor)
            # systemd integration: READY=1 only now that the database, resolver, registry and
            # pipeline are all running; then STATUS/WATCHDOG, and STOPPING=1 when a stop begins.
            await nursery.start(service.run, supervisor)
            if progress is not None:
                total = await queue.pending_count() if drain else None
                nursery.start_soon(progress_loop, _progress_reader(supervisor), total, progress)
            await supervisor.finished.wait()
            nursery.cancel_scope.cancel()  # the signal loop (and the systemd service task)
    return supervisor


def verifier_factory(
    cfg: Config,
    toolbox: Toolbox,
    ledger: VerifierLedger,
    throttles: ToolThrottles,
    clock: UtcClock,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Callable[[KillSwitches], EmailVerifier] | None:
    """The Tier-2 EmailVerifier, when `verifier.enabled` (off by default). The key comes from
    the registry's api_key_source variable; config loading refused a missing one already."""
    if not cfg.verifier.enabled:
        return None
    spec = toolbox.email_verifier
    key = api_key_from_environment(spec)
    if key is None:
        raise ConfigError(f"verifier.enabled is true but {spec.api_key_source} is not set")

    def build(switches: KillSwitches) -> EmailVerifier:
        return make_email_verifier(
            spec,
            api_key=key,
            ledger=ledger,
            switches=switches,
            clock=clock,
            owner=cfg.daemon.owner,
            limiter=throttles[EMAIL_VERIFIER],
            base_url=cfg.verifier.base_url,
            timeout=cfg.verifier.timeout,
            vendor_timeout=cfg.verifier.vendor_timeout,
            transport=transport,
        )

    return build


def _progress_reader(supervisor: Supervisor) -> Callable[[], tuple[int, str]]:
    def read() -> tuple[int, str]:
        tripped = [state.name for state in supervisor.switches.tripped()]
        note = f"paused: {', '.join(tripped)}" if tripped else ""
        if supervisor.stop_requested:
            note = "draining"
        return sum(supervisor.writer.outcomes.values()), note

    return read


@asynccontextmanager
async def _maybe_resolver(
    cfg: Config, resolver: MxResolver | None
) -> AsyncIterator[tuple[MxResolver, UdpDnsClient | None]]:
    """The given resolver (tests: nothing for SIGHUP to reconfigure), or the configured one."""
    if resolver is not None:
        yield resolver, None
        return
    async with open_resolver(cfg) as real:
        yield real


class Reloader:
    """SIGHUP: re-read the config file and the registry, validate both, build the new
    `Settings` from them and hand it to `Supervisor.reconfigure`, in one synchronous step (no
    other task runs in between): limits apply from the next call, work in flight carries on,
    counters and per-host state carry over. Restart-only keys keep their running values
    (`Config.reloaded`). A refused file changes nothing. SIGHUP also clears tripped kill
    switches: it is how the operator says "fixed"."""

    def __init__(
        self,
        supervisor: Supervisor,
        cfg: Config,
        toolbox: Toolbox,
        load: Callable[[], tuple[Config, Toolbox]],
        service: SystemdService | None = None,
    ) -> None:
        self.supervisor = supervisor
        self.config = cfg
        self.toolbox = toolbox
        self._load = load
        self.service = service

    def __call__(self) -> bool:
        # systemd integration (ct_actors/service): RELOADING=1 (with MONOTONIC_USEC) before the
        # reload, READY=1 after it however it ends, applied or refused.
        applied = False
        if self.service is not None:
            self.service.reloading()
        try:
            applied = self._reload()
            return applied
        finally:
            if self.service is not None:
                self.service.reloaded(self.config, applied=applied)

    def _reload(self) -> bool:
        log.info("reload_requested")
        try:
            new_cfg, new_toolbox = self._load()
        except (ConfigError, ToolboxError) as exc:
            log.error("reload_failed", error=str(exc), note="running configuration unchanged")
            return False
        running = self.config.reloaded(new_cfg)
        settings = Settings.from_config(running, new_toolbox)
        # From here on nothing awaits: the swap is atomic for every other task.
        self.supervisor.reconfigure(settings)
        if settings.log_level != self.config.log.level:
            set_level(settings.log_level)
        cleared = self.supervisor.clear_kill_switches()
        log.info(
            "reloaded",
            config_changes=self.config.reloadable_diff(new_cfg),
            toolbox_changes=self.toolbox.diff(new_toolbox),
            kill_switches_cleared=cleared,
        )
        self.config, self.toolbox = running, new_toolbox
        return True


async def _signal_loop(
    supervisor: Supervisor, cancel_scope: trio.CancelScope, reload: Reloader | None
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                if reload is not None:
                    reload()
                continue
            if supervisor.stop_requested:
                log.warning("second_stop_signal", signal=signal.Signals(signum).name)
                cancel_scope.cancel()
                return
            log.info("stop_signal", signal=signal.Signals(signum).name)
            supervisor.request_stop()


def resolver_deferral(exc: DnsUnavailable, cfg: Config, toolbox: Toolbox) -> Deferred:
    if isinstance(exc, DomainDnsFailure):
        # One pass cannot count the domain's attempts (run keeps them in memory): the record
        # comes back when the daemon's first broken-DNS wait would have ended.
        return Deferred(
            f"DNS for the domain is broken: {exc.reason} (our resolver answered its health "
            "check; `run` concludes CT-M-NO-MX after dns.domain_failure_retries deferrals)",
            cfg.dns.domain_failure_delay,
            {"nameserver": exc.nameserver, "resolver_health": exc.health},
        )
    return Deferred(
        f"our resolver could not answer: {exc.reason}",
        retry_policy(cfg, toolbox).defer_seconds,
        {"nameserver": exc.nameserver},
    )


async def probe_domain(
    cfg: Config,
    toolbox: Toolbox,
    domain: str,
    people: Sequence[tuple[str, str]] = (),
    *,
    resolver: MxResolver | None = None,
    connector: Connector | None = None,
    usage: UsageStore | None = None,
    ledger: VerifierLedger | None = None,
) -> DomainResult:
    """The decision for one (already normalised) domain through the daemon's own stages,
    throttles and guard. With `usage` (a UsageBook, for `once`) the calls count against the
    registry's day/month budgets; without (`probe`) nothing touches the database. A single
    probe has no evidence that our port 25 works, so "no MX host reachable" is deferred.
    With `ledger` (a PgVerifierLedger, for `once`) an enabled Tier-2 verifier applies as in
    `run`; `probe` has no ledger, so never verifies (one attempt per address must be recorded)."""
    clock = UtcClock.from_wall()
    throttles = make_throttles(cfg, toolbox, usage, clock)
    factory = (
        verifier_factory(cfg, toolbox, ledger, throttles, clock) if ledger is not None else None
    )
    async with _maybe_resolver(cfg, resolver) as (mx_resolver, _):
        stages = ProbeStages(
            resolver=mx_resolver,
            resolver_settings=resolver_settings(cfg, toolbox),
            pools=make_pools(cfg, connector),
            guard_settings=guard_settings(cfg),
            throttles=throttles,
            verifier=factory,
        )
        async with trio.open_nursery() as nursery:
            await stages.start(nursery)
            try:
                try:
                    mx = await stages.resolver.lookup(domain)
                except DnsUnavailable as exc:
                    # Our resolver's trouble, not a verdict: the same Deferred as in `run`
                    # (dispatcher), returned, never raised out of the nursery.
                    return DomainResult(resolver_deferral(exc, cfg, toolbox), None)
                result = await stages.probe(
                    mx,
                    people,
                    mode=cfg.probe.mode,
                    retry=retry_policy(cfg, toolbox),
                    addresses=AddressPolicy.allowing(cfg.smtp.allow_networks),
                )
                if stages.verifier is not None:
                    result = await verify_weak_pass(stages.verifier, result, domain, people)
                return result
            finally:
                stages.close()
                await throttles.release()
                if stages.verifier is not None:
                    await stages.verifier.aclose()
