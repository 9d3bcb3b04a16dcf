"""Every component's settings, built in one place from a validated `Config` and the tool
registry: `Settings.from_config(config, toolbox)`.

At start the wiring (ct_actors/app.py) builds the components from a `Settings`; on SIGHUP the
`Reloader` builds a new one from the reloaded files and hands it to `Supervisor.reconfigure`,
the one entry point, which gives each component its part through one protocol,
`Reconfigurable.reconfigure(settings)`. Restart-only keys keep their running values: the
reloaded `Config` carries them over (`Config.reloaded`), so a `Settings` built from it differs
from the running one only in what SIGHUP may change.

Defaults live in the config's sections (ct_actors/config/sections.py): a component's settings
dataclass takes its defaults from there, never a number of its own, so a component built
without a config behaves as a daemon with an empty config file (tests/test_reloadable_keys.py
proves it). Values from the registry (backoffs, cache TTLs, rate limits) have no config key;
their defaults mirror the shipped registry, and the same test pins them to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from ct_actors.actors.dispatcher import DispatchSettings
from ct_actors.actors.loader import LoaderSettings
from ct_actors.actors.pool_settings import PoolSettings
from ct_actors.actors.resolver_stage import ResolverSettings
from ct_actors.actors.smtp_gate import GuardSettings
from ct_actors.actors.writer import WriterSettings
from ct_actors.config import Config, DaemonConfig, LogConfig, ProbeConfig
from ct_actors.dns.nameservers import QuerySettings
from ct_actors.net.address_policy import AddressPolicy
from ct_actors.probe.domain_probe import RetryPolicy
from ct_actors.throttle.limiter import ThrottleSettings
from ct_actors.toolbox import Toolbox, ToolSpec

__all__ = ["PipelineSettings", "Reconfigurable", "Settings"]

S_contra = TypeVar("S_contra", contravariant=True)

_PROBE, _DAEMON, _LOG = ProbeConfig(), DaemonConfig(), LogConfig()


class Reconfigurable(Protocol[S_contra]):
    """A component whose settings SIGHUP may change. `reconfigure` applies them from the next
    unit of work (claim, lookup, visit, call, flush) in one synchronous step; work in flight
    carries on, and counters and learnt state carry over."""

    def reconfigure(self, settings: S_contra, /) -> None: ...


@dataclass(frozen=True, slots=True)
class PipelineSettings:
    """The supervisor's: its own limits and the settings of the stages it builds."""

    owner: str
    max_in_flight: int = _PROBE.max_in_flight
    drain_deadline: float = _DAEMON.drain_deadline
    stats_interval: float = _LOG.stats_interval
    # daemon.stop_timeout: the lease release at a stop gets all of it, the budget refunds half.
    release_timeout: float = _DAEMON.stop_timeout
    refund_timeout: float = _DAEMON.stop_timeout / 2
    loader: LoaderSettings = field(default_factory=LoaderSettings)
    resolver: ResolverSettings = field(default_factory=ResolverSettings)
    dispatch: DispatchSettings = field(default_factory=DispatchSettings)
    writer: WriterSettings = field(default_factory=WriterSettings)
    guard: GuardSettings = field(default_factory=GuardSettings)


@dataclass(frozen=True, slots=True)
class Settings:
    """Everything the running daemon reads from the config and the registry."""

    pipeline: PipelineSettings
    pools: PoolSettings
    dns: QuerySettings
    throttles: ThrottleSettings
    verifier: ToolSpec  # the registry's EmailVerifier entry
    log_level: str

    @classmethod
    def from_config(cls, config: Config, toolbox: Toolbox) -> Settings:
        return cls(
            pipeline=pipeline_settings(config, toolbox),
            pools=pool_settings(config),
            dns=QuerySettings(timeout=config.dns.timeout, attempts=config.dns.attempts),
            throttles=ThrottleSettings(
                tools=dict(toolbox.tools), budget_block=config.throttle.budget_block
            ),
            verifier=toolbox.email_verifier,
            log_level=config.log.level,
        )


def pool_settings(cfg: Config) -> PoolSettings:
    smtp = cfg.smtp
    return PoolSettings(
        port=smtp.port,
        helo_name=smtp.helo_name or "localhost",
        mail_from=smtp.mail_from or "",
        connect_timeout=smtp.connect_timeout,
        command_timeout=smtp.command_timeout,
        quit_timeout=smtp.quit_timeout,
        starttls=smtp.starttls,
        max_connections=smtp.max_connections,
        initial_connections_per_host=smtp.initial_connections_per_host,
        max_connections_per_host=smtp.max_connections_per_host,
        max_recipients_per_session=smtp.max_recipients_per_session,
        max_errors_per_session=smtp.max_errors_per_session,
        max_rejected_rcpts_per_host=smtp.max_rejected_rcpts_per_host,
        rejected_rcpts_window=smtp.rejected_rcpts_window,
        session_reuse_seconds=float(smtp.session_reuse_seconds),
        session_idle_seconds=smtp.session_idle_seconds,
        pool_idle_seconds=float(smtp.pool_idle_seconds),
        dead_host_backoff=smtp.dead_host_backoff,
        dead_host_backoff_max=smtp.dead_host_backoff_max,
        slow_reply_seconds=smtp.slow_reply_seconds,
        slow_host_seconds=smtp.slow_host_seconds,
        slow_connections_share=smtp.slow_connections_share,
    )


def retry_policy(cfg: Config, toolbox: Toolbox) -> RetryPolicy:
    backoff = toolbox.smtp_check.backoff
    return RetryPolicy(
        greylist_delay=cfg.smtp.greylist_retry_delay,
        greylist_retries=cfg.smtp.greylist_max_retries,
        fresh_sessions=cfg.smtp.max_fresh_sessions,
        remote_attempts=cfg.smtp.remote_attempts,
        time_budget=cfg.smtp.domain_time_budget,
        throttle_delay=backoff.initial_delay,
        throttle_retries=backoff.max_retries,
        throttle_strategy=backoff.strategy,
        defer_seconds=float(cfg.probe.defer_seconds),
    )


def resolver_settings(cfg: Config, toolbox: Toolbox) -> ResolverSettings:
    mx = toolbox.mx_lookup
    return ResolverSettings(
        workers=cfg.dns.max_in_flight,
        cache_ttl=mx.cache_ttl or 0.0,
        retry_delay=mx.backoff.initial_delay,
        max_retries=mx.backoff.max_retries,
        retry_strategy=mx.backoff.strategy,
        failure_domains=cfg.killswitch.resolver_failure_domains,
        health_check_name=cfg.dns.health_check_name,
        health_check_interval=cfg.dns.health_check_interval,
    )


def guard_settings(cfg: Config) -> GuardSettings:
    ks = cfg.killswitch
    return GuardSettings(
        blocklist_networks=ks.blocklist_networks,
        blocklist_fraction=ks.blocklist_fraction,
        blocklist_networks_alone=ks.blocklist_networks_alone,
        blocklist_window=ks.blocklist_window,
        refusal_give_up=ks.refusal_give_up,
        dnsbl_address=ks.dnsbl_address,
        port_blocked_hosts=ks.port_blocked_hosts,
        reachability_window=ks.reachability_window,
    )


def dispatch_settings(cfg: Config, toolbox: Toolbox) -> DispatchSettings:
    return DispatchSettings(
        mode=cfg.probe.mode,
        verdict_ttl=toolbox.smtp_check.cache_ttl or 0.0,
        retry=retry_policy(cfg, toolbox),
        addresses=AddressPolicy.allowing(cfg.smtp.allow_networks),
        dns_failure_retries=cfg.dns.domain_failure_retries,
        dns_failure_delay=cfg.dns.domain_failure_delay,
    )


def pipeline_settings(cfg: Config, toolbox: Toolbox) -> PipelineSettings:
    return PipelineSettings(
        owner=cfg.daemon.owner,
        max_in_flight=cfg.probe.max_in_flight,
        drain_deadline=cfg.daemon.drain_deadline,
        stats_interval=cfg.log.stats_interval,
        release_timeout=cfg.daemon.stop_timeout,
        refund_timeout=cfg.daemon.stop_timeout / 2,
        loader=LoaderSettings(
            claim_batch=cfg.probe.claim_batch,
            lease_seconds=float(cfg.database.lease_seconds),
            names_failures=cfg.probe.names_failures,
            names_pause=cfg.probe.names_pause,
        ),
        resolver=resolver_settings(cfg, toolbox),
        dispatch=dispatch_settings(cfg, toolbox),
        writer=WriterSettings(
            batch_size=cfg.writer.batch_size,
            flush_interval=cfg.writer.flush_interval,
            final_flush_timeout=cfg.daemon.stop_timeout,
        ),
        guard=guard_settings(cfg),
    )
