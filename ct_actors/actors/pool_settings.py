"""The settings of the SMTP pools (config `smtp.*`): one value for every pool, reloadable."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ct_actors.config import SmtpConfig
from ct_actors.throttle.host_window import HostWindowSettings

# Defaults are the config's (ct_actors/config/sections.py): defaults live in one place.
_SMTP = SmtpConfig()


@dataclass(frozen=True, slots=True)
class PoolSettings:
    port: int = _SMTP.port
    helo_name: str = "localhost"
    mail_from: str = ""
    connect_timeout: float = _SMTP.connect_timeout
    command_timeout: float = _SMTP.command_timeout
    quit_timeout: float = _SMTP.quit_timeout  # how long a QUIT may wait for its reply
    starttls: Literal["opportunistic", "never"] = _SMTP.starttls
    # smtp.max_connections: the global cap every pool shares (the manager's).
    max_connections: int = _SMTP.max_connections
    initial_connections_per_host: int = _SMTP.initial_connections_per_host
    max_connections_per_host: int = _SMTP.max_connections_per_host
    max_recipients_per_session: int = _SMTP.max_recipients_per_session
    # Rejected commands one session may take before we retire it (stock Postfix starts
    # tarpitting after 10 and disconnects at 20; see docs/throttles.md).
    max_errors_per_session: int = _SMTP.max_errors_per_session
    session_reuse_seconds: float = float(_SMTP.session_reuse_seconds)
    session_idle_seconds: float = _SMTP.session_idle_seconds
    pool_idle_seconds: float = float(_SMTP.pool_idle_seconds)
    dead_host_backoff: float = _SMTP.dead_host_backoff
    dead_host_backoff_max: float = _SMTP.dead_host_backoff_max
    # Directory-harvest safety: rejected RCPTs per host in any window (docs/throttles.md).
    max_rejected_rcpts_per_host: int = _SMTP.max_rejected_rcpts_per_host
    rejected_rcpts_window: float = _SMTP.rejected_rcpts_window
    # Slow hosts (docs/throttles.md): a greeting or reply slower than this marks the host slow
    # for slow_host_seconds; their sessions share slow_connections_share of max_connections.
    slow_reply_seconds: float = _SMTP.slow_reply_seconds
    slow_host_seconds: float = _SMTP.slow_host_seconds
    slow_connections_share: float = _SMTP.slow_connections_share

    def window(self) -> HostWindowSettings:
        return HostWindowSettings(
            initial=min(self.initial_connections_per_host, self.max_connections_per_host),
            maximum=self.max_connections_per_host,
            dead_backoff=self.dead_host_backoff,
            dead_backoff_max=max(self.dead_host_backoff, self.dead_host_backoff_max),
            max_rejected=self.max_rejected_rcpts_per_host,
            rejected_window=self.rejected_rcpts_window,
            slow_for=self.slow_host_seconds,
        )

    def slow_connections(self, max_connections: int) -> int:
        """The slow share of a global cap: at least one connection, never more than the cap."""
        return min(max_connections, max(1, int(max_connections * self.slow_connections_share)))
