"""What the simulated servers saw, plus the little server-side state shared across sessions.

One `SimStats` is shared by every SMTP session and the DNS server of a world, so tests and the
benchmark can check the prober's manners (pacing, concurrency, no DATA) from the far side.
Greylist triplets and per-host session counts live here too: they must outlive a session, and
`handle_session` has no other object that does.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass
from typing import NamedTuple

from ct_actors.sim.behaviours import DhaGuard, DhaLimits


class RcptEvent(NamedTuple):
    time: float  # trio.current_time() when the RCPT command arrived
    host: str
    domain: str  # recipient domain, lower-case


@dataclass(frozen=True, slots=True)
class SimStatistics:
    """What the simulated servers saw, as a value; the sim's `sim_stopped` line carries it as
    `stats` (rendered by `ct_actors.log.as_log`)."""

    connections: int
    connections_by_host: Mapping[str, int]
    peak_concurrent_by_host: Mapping[str, int]
    open_connections: int
    commands: Mapping[str, int]  # by verb
    replies: Mapping[str, int]  # by reply code
    rejected_421: int
    rejected_421_by_host: Mapping[str, int]
    dropped: int
    idle_timeouts: int
    data_attempts: int
    rcpts: int
    rcpt_domains: int
    greylist_entries: int
    dha_blocks: int
    dha_refusals: int
    error_limit_hits: int
    error_delays: int
    greet_421: int
    tls_broken: int
    closed_not_loopback: int  # the listener refused a connection not on 127.0.0.0/8
    reset_dead_host: int  # connections to a non-listening host, reset before any byte
    reset_unknown_address: int  # connections to an address no simulated host has
    dns_queries: Mapping[str, int]  # by query type
    dns_rcodes: Mapping[str, int]
    dns_malformed: int
    dns_dropped: int


class SimStats:
    def __init__(self) -> None:
        self.connections: Counter[str] = Counter()  # accepted TCP connections per host
        self.open: Counter[str] = Counter()  # connections open right now per host
        self.peak_concurrent: Counter[str] = Counter()  # max of `open`, 421-ed ones included
        self.admitted: Counter[str] = Counter()  # sessions past the conn-limit check, now
        self.commands: Counter[str] = Counter()  # by verb
        self.replies: Counter[str] = Counter()  # by reply code
        self.rejected_421: Counter[str] = Counter()  # per host, conn-limit refusals
        self.dropped: Counter[str] = Counter()  # per host, drop_mid hang-ups
        self.idle_timeouts = 0
        self.data_attempts = 0
        self.rcpts: list[RcptEvent] = []
        self.dns_queries: Counter[str] = Counter()  # by query type
        self.dns_rcodes: Counter[str] = Counter()
        self.dns_malformed = 0
        self.dns_dropped = 0  # queries a "silent" broken resolver ignored on purpose
        # (host, postgrey triplet key) -> virtual time of the first attempt
        self.greylist: dict[tuple[str, str], float] = {}
        # (host, client IP) -> that client's directory-harvest state on that host
        self.dha: dict[tuple[str, str], DhaGuard] = {}
        self.dha_refusals: Counter[str] = Counter()  # per host, RCPTs refused while blocked
        self.error_limit_hits: Counter[str] = Counter()  # per host, "too many errors" hang-ups
        self.error_delays: Counter[str] = Counter()  # per host, replies slowed by the soft limit
        self.greet_421: Counter[str] = Counter()  # per host, banner refusals
        self.tls_broken: Counter[str] = Counter()  # per host, failed TLS handshakes
        # The one SMTP listener (server.py): how it is bound, and the connections it reset
        # before any byte instead of serving them.
        self.smtp_listener = ""
        self.closed_not_loopback = 0  # peer or local address outside 127.0.0.0/8
        self.reset_dead_host: Counter[str] = Counter()  # per host with listening=False
        self.reset_unknown_address = 0  # a local address no simulated host has

    def connection_opened(self, host: str) -> int:
        """Count a new connection and return its 0-based sequence number on that host."""
        seq = self.connections[host]
        self.connections[host] += 1
        self.open[host] += 1
        if self.open[host] > self.peak_concurrent[host]:
            self.peak_concurrent[host] = self.open[host]
        return seq

    def connection_closed(self, host: str) -> None:
        self.open[host] -= 1

    def dha_guard(self, host: str, peer: str, limits: DhaLimits) -> DhaGuard:
        key = (host, peer)
        guard = self.dha.get(key)
        if guard is None:
            guard = self.dha[key] = DhaGuard(limits)
        return guard

    def rcpt_times(self, domain: str) -> list[float]:
        return [e.time for e in self.rcpts if e.domain == domain]

    def statistics(self) -> SimStatistics:
        return SimStatistics(
            connections=sum(self.connections.values()),
            connections_by_host=dict(self.connections),
            peak_concurrent_by_host=dict(self.peak_concurrent),
            open_connections=sum(self.open.values()),
            commands=dict(self.commands),
            replies=dict(self.replies),
            rejected_421=sum(self.rejected_421.values()),
            rejected_421_by_host=dict(self.rejected_421),
            dropped=sum(self.dropped.values()),
            idle_timeouts=self.idle_timeouts,
            data_attempts=self.data_attempts,
            rcpts=len(self.rcpts),
            rcpt_domains=len({e.domain for e in self.rcpts}),
            greylist_entries=len(self.greylist),
            dha_blocks=sum(g.blocks for g in self.dha.values()),
            dha_refusals=sum(self.dha_refusals.values()),
            error_limit_hits=sum(self.error_limit_hits.values()),
            error_delays=sum(self.error_delays.values()),
            greet_421=sum(self.greet_421.values()),
            tls_broken=sum(self.tls_broken.values()),
            closed_not_loopback=self.closed_not_loopback,
            reset_dead_host=sum(self.reset_dead_host.values()),
            reset_unknown_address=self.reset_unknown_address,
            dns_queries=dict(self.dns_queries),
            dns_rcodes=dict(self.dns_rcodes),
            dns_malformed=self.dns_malformed,
            dns_dropped=self.dns_dropped,
        )
