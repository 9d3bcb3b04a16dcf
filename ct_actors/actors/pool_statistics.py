"""The SMTP pools' statistics as values: one host's pool (`PoolStatistics`) and the manager's
(`PoolManagerStatistics`, the stats line's `smtp` object). Apart from the pools themselves so
that smtp_pool.py stays a connection-handling module."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["PoolManagerStatistics", "PoolStatistics"]


@dataclass(frozen=True, slots=True)
class PoolStatistics:
    host: str  # the MX host's name
    workers: int
    idle_workers: int
    open_sessions: int
    window: int  # the host window's concurrency limit now
    rcpt_limit: int  # RCPTs per session
    dead: bool
    slow: bool
    slow_sessions: int  # sessions holding a slow-share token
    requests: int
    sessions_opened: int
    rcpts: int
    failures: int
    error_limits_hit: int
    tls_fallbacks: int


@dataclass(frozen=True, slots=True)
class PoolManagerStatistics:
    rejected_rcpts_peak: int  # most rejected RCPTs of one host in one window
    rejected_rcpts_peak_host: str | None
    rejection_budget_waits: int
    pools: int
    pools_created: int
    pools_retired: int
    sessions_opened_total: int
    open_sessions: int
    connections_in_use: int
    dead_hosts: int
    slow_hosts: int  # marked slow now, pools retired or not
    slow_connections_in_use: int
    slow_connections_max: int
    slow_share_waits: int
    slow_moves: int
    slow_evictions: int
    top_pools: tuple[PoolStatistics, ...]  # the busiest, by workers
