"""The SMTP pool manager actor: one `HostPool` per MX host, created on first use and retired
when idle; a global cap on open SMTP connections shared by every pool, and within it the slow
share: the connections slow hosts (tarpits) may hold together (see smtp_pool.py)."""

from __future__ import annotations

import dataclasses
import ssl
from collections import Counter
from collections.abc import Callable

import structlog
import trio

from ct_actors.actors.pool_settings import PoolSettings
from ct_actors.actors.pool_statistics import PoolManagerStatistics
from ct_actors.actors.smtp_pool import HostPool, PoolClosed
from ct_actors.actors.visit_request import ProbeRequest
from ct_actors.dns.types import MxHost
from ct_actors.net.connector import Connector
from ct_actors.probe.visit import HostVisit
from ct_actors.throttle.host_window import HostWindow

log = structlog.get_logger("ct_actors.pool_manager")


class SmtpPoolManager:
    def __init__(
        self,
        settings: PoolSettings,
        connector: Connector,
        *,
        max_connections: int | None = None,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        # `max_connections` (tests): instead of the settings' global cap.
        if max_connections is not None:
            settings = dataclasses.replace(settings, max_connections=max_connections)
        self.settings = settings
        # Every TCP connection that opens is reported at once (see on_connected).
        self._connector = _ReportingConnector(connector, self)
        self._ssl_context = ssl_context
        self.connections = trio.CapacityLimiter(settings.max_connections)
        # Sessions to slow hosts hold a token of this as well as one of `connections`, so
        # healthy hosts always find the rest of the cap.
        self.slow_connections = trio.CapacityLimiter(
            settings.slow_connections(settings.max_connections)
        )
        self._pools: dict[str, HostPool] = {}
        # Per-host windows outlive their pools while they hold something learnt (a shrunk or
        # grown limit, a dead-host streak); see _reap.
        self._windows: dict[str, HostWindow] = {}
        self._nursery: trio.Nursery | None = None
        self._stop = trio.Event()
        # Shared with every pool, so totals survive pool retirement.
        self.counters: Counter[str] = Counter()
        self._created = 0
        self._retired = 0
        # Set by the supervisor: told whenever an SMTP session opens (see SmtpGuard.connected).
        self.on_connected: Callable[[], None] | None = None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                reap_every = max(1.0, self.settings.pool_idle_seconds / 2)
                while not self._stop.is_set():
                    with trio.move_on_after(reap_every):
                        await self._stop.wait()
                    self._reap()
                for pool in self._pools.values():
                    pool.close()
        finally:
            self._pools.clear()

    def close(self) -> None:
        """Shut down: every pool closes its channel and its workers QUIT their sessions."""
        self._stop.set()

    def pool(self, host: MxHost) -> HostPool:
        """The pool for `host`'s address. Politeness is per IP address, not per MX name:
        providers put many tenants' MX names on shared IPs, and it is the IP that counts our
        connections and our rejected recipients. The MX name stays in each visit."""
        key = pool_key(host)
        pool = self._pools.get(key)
        if pool is None:
            if self._nursery is None or self._stop.is_set():
                raise RuntimeError("SMTP pool manager is not running")
            pool = HostPool(
                MxHost(host.name, host.preference, host.addresses[:1]),
                settings=self.settings,
                connector=self._connector,
                connections=self.connections,
                ssl_context=self._ssl_context,
                counters=self.counters,
                on_pressure=self._reclaim_idle,
                window=self._window_for(key),
                slow_connections=self.slow_connections,
            )
            self._pools[key] = pool
            self._created += 1
            self._nursery.start_soon(pool.run)
        return pool

    def _window_for(self, name: str) -> HostWindow:
        window = self._windows.get(name)
        if window is None:
            window = self._windows[name] = HostWindow(self.settings.window())
        return window

    def reconfigure(self, settings: PoolSettings) -> None:
        """Reload: every pool (and every remembered host window) takes the new settings; a
        smaller cap applies as sessions close, nobody is cut off by a reload."""
        self.settings = settings
        for window in self._windows.values():
            window.reconfigure(settings.window())
        for pool in self._pools.values():
            pool.reconfigure(settings)
        self.connections.total_tokens = settings.max_connections
        self.slow_connections.total_tokens = settings.slow_connections(settings.max_connections)

    def revive_hosts(self) -> int:
        """After a kill switch is cleared: hosts marked dead while our own side was broken
        (port 25 blocked) get a fresh chance. Returns how many were dead."""
        dead = 0
        for window in self._windows.values():
            dead += window.is_dead(trio.current_time())
            window.revive()
        return dead

    async def visit(self, host: MxHost, request: ProbeRequest) -> HostVisit:
        while True:
            try:
                return await self.pool(host).visit(request)
            except PoolClosed:
                # The pool was replaced (new addresses) or retired while the request queued.
                if self._stop.is_set():
                    raise
                await trio.lowlevel.checkpoint()

    async def wait_for_rejection_room(self, host: MxHost) -> float:
        """Wait until the host's rejected-RCPT budget has room for one more RCPT (pacing its
        domains, never failing them); returns the seconds waited."""
        window = self._window_for(pool_key(host))
        waited = 0.0
        while (wait := window.rejection_wait(trio.current_time())) > 0:
            self.counters["rejection_budget_waits"] += 1
            await trio.sleep(wait)
            waited += wait
        return waited

    def _reclaim_idle(self, slow_only: bool) -> None:
        # Idle sessions must not starve hosts with work waiting for a connection slot (for a
        # slot in the slow share: only idle sessions holding one are asked).
        self.counters["idle_reclaims"] += sum(
            p.reclaim_idle(slow_only) for p in self._pools.values()
        )

    def is_dead(self, host: MxHost) -> bool:
        pool = self._pools.get(pool_key(host))
        return pool is not None and pool.is_dead()

    def _reap(self) -> None:
        for name, pool in list(self._pools.items()):
            if pool.retirable(self.settings.pool_idle_seconds) and not pool.is_dead():
                pool.close()
                del self._pools[name]
                self._retired += 1
                window = self._windows.get(name)
                if window is not None and _nothing_learnt(window, trio.current_time()):
                    del self._windows[name]

    def statistics(self, top: int = 5) -> PoolManagerStatistics:
        now = trio.current_time()
        busiest = sorted(self._pools.values(), key=lambda p: p.workers, reverse=True)[:top]
        # The busiest host by rejected RCPTs in one window (directory-harvest safety).
        peak_host, peak = "", 0
        for name, window in self._windows.items():
            if window.rejected_peak > peak:
                peak_host, peak = name, window.rejected_peak
        return PoolManagerStatistics(
            rejected_rcpts_peak=peak,
            rejected_rcpts_peak_host=peak_host or None,
            rejection_budget_waits=self.counters["rejection_budget_waits"],
            pools=len(self._pools),
            pools_created=self._created,
            pools_retired=self._retired,
            sessions_opened_total=self.counters["sessions_opened"],
            open_sessions=sum(p.open_sessions for p in self._pools.values()),
            connections_in_use=self.connections.borrowed_tokens,
            dead_hosts=sum(1 for p in self._pools.values() if p.is_dead()),
            slow_hosts=sum(1 for w in self._windows.values() if w.is_slow(now)),
            slow_connections_in_use=self.slow_connections.borrowed_tokens,
            slow_connections_max=int(self.slow_connections.total_tokens),
            slow_share_waits=self.counters["slow_share_waits"],
            slow_moves=self.counters["slow_moves"],
            slow_evictions=self.counters["slow_evictions"],
            top_pools=tuple(p.statistics() for p in busiest),
        )


def pool_key(host: MxHost) -> str:
    """Pools, windows and budgets are per IP address (the first one the MX name resolves to,
    the one the pool connects to); a name that does not resolve keys by name."""
    return host.addresses[0] if host.addresses else host.name


def _nothing_learnt(window: HostWindow, now: float) -> bool:
    stats = window.statistics()
    return (
        window.limit == window.settings.initial
        and stats.dead_streak == 0
        and window.error_limit is None
        and stats.rejected_in_window == 0
        and not window.is_slow(now)
    )


class _ReportingConnector:
    """Tells the manager's `on_connected` the moment a TCP connection opens: proof that our
    side can reach port 25. It must not wait for the conversation — a refusing host answers in
    milliseconds, a greeting and EHLO take hundreds — or the port-25 detector would count ten
    quick refusals before the first success."""

    def __init__(self, inner: Connector, manager: SmtpPoolManager) -> None:
        self._inner = inner
        self._manager = manager

    async def connect(self, address: str, port: int) -> trio.abc.Stream:
        stream = await self._inner.connect(address, port)
        if self._manager.on_connected is not None:
            self._manager.on_connected()
        return stream
