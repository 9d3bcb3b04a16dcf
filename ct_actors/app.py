"""Wiring: from a validated `Config` and `Toolbox` to running components.

The CLI commands (`run`, `once`, `probe`, `demo`, `bench`) all build their parts here, so the
daemon, the one-shot commands and the demo exercise exactly the same pipeline.
"""

from __future__ import annotations

import signal
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import structlog
import trio

from ct_actors.actors.dispatcher import DispatchSettings, NamesSource
from ct_actors.actors.loader import LoaderSettings
from ct_actors.actors.pool_manager import SmtpPoolManager
from ct_actors.actors.resolver_stage import ResolverSettings, ResolverStage
from ct_actors.actors.smtp_pool import PoolSettings
from ct_actors.actors.supervisor import PipelineSettings, Supervisor
from ct_actors.actors.writer import WriterSettings
from ct_actors.config import Config
from ct_actors.db.store import DatabaseUnavailable, Store
from ct_actors.dns.client import UdpDnsClient
from ct_actors.dns.mx import DnsMxResolver
from ct_actors.dns.types import MxResolver
from ct_actors.net.connector import Connector, TrioConnector
from ct_actors.probe.domain_probe import DomainResult, RetryPolicy, mx_only_result, smtp_probe
from ct_actors.toolbox import Toolbox

log = structlog.get_logger("ct_actors.app")

TRANSIENT_DB_ERRORS: tuple[type[BaseException], ...] = (DatabaseUnavailable,)


def pool_settings(cfg: Config) -> PoolSettings:
    smtp = cfg.smtp
    return PoolSettings(
        port=smtp.port,
        helo_name=smtp.helo_name or "localhost",
        mail_from=smtp.mail_from or "",
        connect_timeout=smtp.connect_timeout,
        command_timeout=smtp.command_timeout,
        starttls=smtp.starttls,
        max_connections_per_host=smtp.max_connections_per_host,
        max_recipients_per_session=smtp.max_recipients_per_session,
        session_reuse_seconds=float(smtp.session_reuse_seconds),
        session_idle_seconds=smtp.session_idle_seconds,
        pool_idle_seconds=float(smtp.pool_idle_seconds),
        dead_host_backoff=smtp.dead_host_backoff,
    )


def retry_policy(cfg: Config, toolbox: Toolbox) -> RetryPolicy:
    backoff = toolbox.smtp_check.backoff
    return RetryPolicy(
        greylist_delay=cfg.smtp.greylist_retry_delay,
        greylist_retries=cfg.smtp.greylist_max_retries,
        throttle_delay=backoff.initial_delay,
        throttle_retries=backoff.max_retries,
        defer_seconds=float(cfg.probe.defer_seconds),
    )


def resolver_settings(cfg: Config, toolbox: Toolbox) -> ResolverSettings:
    mx = toolbox.mx_lookup
    return ResolverSettings(
        workers=cfg.dns.max_in_flight,
        cache_ttl=mx.cache_ttl or 0.0,
        retry_delay=mx.backoff.initial_delay,
        max_retries=mx.backoff.max_retries,
    )


def pipeline_settings(cfg: Config, toolbox: Toolbox) -> PipelineSettings:
    return PipelineSettings(
        owner=cfg.daemon.owner,
        max_in_flight=cfg.probe.max_in_flight,
        drain_deadline=cfg.daemon.drain_deadline,
        stats_interval=cfg.log.stats_interval,
        loader=LoaderSettings(
            claim_batch=cfg.probe.claim_batch, lease_seconds=float(cfg.database.lease_seconds)
        ),
        resolver=resolver_settings(cfg, toolbox),
        dispatch=DispatchSettings(
            mode=cfg.probe.mode,
            verdict_ttl=toolbox.smtp_check.cache_ttl or 0.0,
            retry=retry_policy(cfg, toolbox),
        ),
        writer=WriterSettings(
            batch_size=cfg.writer.batch_size, flush_interval=cfg.writer.flush_interval
        ),
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
        max_connections=cfg.smtp.max_connections,
        ssl_context=tls_context() if cfg.smtp.starttls == "opportunistic" else None,
    )


@asynccontextmanager
async def open_resolver(cfg: Config) -> AsyncIterator[MxResolver]:
    async with UdpDnsClient(
        list(cfg.dns.nameservers),
        port=cfg.dns.port,
        timeout=cfg.dns.timeout,
        attempts=cfg.dns.attempts,
    ) as client:
        yield DnsMxResolver(client)


def names_source(cfg: Config, store: Store) -> NamesSource | None:
    query = cfg.probe.names_query
    if not query:
        return None

    async def fetch(ids: Sequence[Any]) -> dict[Any, list[tuple[str, str]]]:
        return await store.fetch_names_batch(query, list(ids))

    return fetch


async def run_pipeline(
    cfg: Config,
    toolbox: Toolbox,
    store: Store,
    *,
    drain: bool,
    resolver: MxResolver | None = None,
    connector: Connector | None = None,
    handle_signals: bool = True,
    reload: Callable[[], None] | None = None,
) -> Supervisor:
    """Run the daemon's pipeline until drained (with `drain`) or stopped by a signal."""
    async with _maybe_resolver(cfg, resolver) as mx_resolver:
        supervisor = Supervisor(
            pipeline_settings(cfg, toolbox),
            store=store,
            resolver=mx_resolver,
            pools=make_pools(cfg, connector),
            transient_db_errors=TRANSIENT_DB_ERRORS,
            names=names_source(cfg, store),
            drain=drain,
        )
        async with trio.open_nursery() as nursery:
            if handle_signals:
                nursery.start_soon(_signal_loop, supervisor, nursery.cancel_scope, reload)
            await nursery.start(supervisor.run)
            log.info("ready", owner=cfg.daemon.owner, mode=cfg.probe.mode)
            await supervisor.finished.wait()
            nursery.cancel_scope.cancel()  # the signal loop
    return supervisor


@asynccontextmanager
async def _maybe_resolver(cfg: Config, resolver: MxResolver | None) -> AsyncIterator[MxResolver]:
    if resolver is not None:
        yield resolver
        return
    async with open_resolver(cfg) as real:
        yield real


async def _signal_loop(
    supervisor: Supervisor, cancel_scope: trio.CancelScope, reload: Callable[[], None] | None
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


async def probe_domain(
    cfg: Config,
    toolbox: Toolbox,
    domain: str,
    people: Sequence[tuple[str, str]] = (),
    *,
    resolver: MxResolver | None = None,
    connector: Connector | None = None,
) -> DomainResult:
    """The decision for one (already normalised) domain, without touching the database."""
    async with _maybe_resolver(cfg, resolver) as mx_resolver:
        stage = ResolverStage(mx_resolver, resolver_settings(cfg, toolbox))
        pools = make_pools(cfg, connector)
        async with trio.open_nursery() as nursery:
            await nursery.start(stage.run)
            await nursery.start(pools.run)
            try:
                mx = await stage.lookup(domain)
                if cfg.probe.mode == "mx-only":
                    return mx_only_result(mx)
                return await smtp_probe(mx, people, pools, retry_policy(cfg, toolbox))
            finally:
                stage.close()
                pools.close()
