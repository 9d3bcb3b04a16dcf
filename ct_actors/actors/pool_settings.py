"""The settings of the SMTP pools (config `smtp.*`): one value for every pool, reloadable."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from ct_actors.throttle.host_window import HostWindowSettings


@dataclass(frozen=True, slots=True)
class PoolSettings:
    port: int = 25
    helo_name: str = "localhost"
    mail_from: str = ""
    connect_timeout: float = 10.0
    command_timeout: float = 30.0
    quit_timeout: float = 5.0  # smtp.quit_timeout: how long a QUIT may wait for its reply
    starttls: Literal["opportunistic", "never"] = "opportunistic"
    initial_connections_per_host: int = 1
    max_connections_per_host: int = 2
    max_recipients_per_session: int = 10
    # Rejected commands one session may take before we retire it (stock Postfix starts
    # tarpitting after 10 and disconnects at 20; see docs/throttles.md).
    max_errors_per_session: int = 8
    session_reuse_seconds: float = 30.0
    session_idle_seconds: float = 2.0
    pool_idle_seconds: float = 60.0
    dead_host_backoff: float = 300.0
    dead_host_backoff_max: float = 3600.0
    # Directory-harvest safety: rejected RCPTs per host in any window (docs/throttles.md).
    max_rejected_rcpts_per_host: int = 8
    rejected_rcpts_window: float = 60.0
    # Slow hosts (docs/throttles.md): a greeting or reply slower than this marks the host slow
    # for slow_host_seconds; their sessions share slow_connections_share of max_connections.
    slow_reply_seconds: float = 10.0
    slow_host_seconds: float = 3600.0
    slow_connections_share: float = 0.25

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
