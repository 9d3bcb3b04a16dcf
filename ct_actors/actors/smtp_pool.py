"""The per-MX-host SMTP actor pool.

One `HostPool` per MX host address (the pool manager keys pools by IP: providers put many
tenants' MX names on one address; the MX name stays in each visit). Its workers each own at
most one SMTP session (smtp_session.py) and take probe requests from the pool's unbuffered
channel, so a request waits until a worker is free: that is the per-host concurrency limit, and
the back-pressure towards the domain tasks. A worker reuses its session for several domains
(RSET between them) for `session_reuse_seconds`, then says QUIT; an idle worker retires after
`pool_idle_seconds`, and the manager retires a pool with no workers left.

How many sessions a host gets is its `HostWindow` (throttle/host_window.py), adapted the way
Postfix's scheduler adapts per destination: it starts small, grows with successful visits,
halves on 421 / 4.7.x throttling answers, and drops to one when the host cannot be reached. A
host that refuses connections or times out before its greeting is marked dead for a backoff
that doubles while it stays unreachable: every domain on that host skips it at once instead of
paying the connect timeout again.

Slow hosts (tarpits) must not starve the global connection cap: see slow_hosts.py.
"""

from __future__ import annotations

import contextlib
import functools
import math
import ssl
from collections import Counter
from collections.abc import Callable

import structlog
import trio

from ct_actors.actors.pool_settings import PoolSettings
from ct_actors.actors.pool_statistics import PoolStatistics
from ct_actors.actors.slow_hosts import HostSlowShare, SlowLease, SlowWatch
from ct_actors.actors.smtp_session import (
    PooledSession,
    WindowRejections,
    broken_visit,
    conversation_visit,
    open_failure_visit,
    open_pool_session,
    run_conversation,
    timed,
)
from ct_actors.actors.visit_request import ProbeRequest
from ct_actors.dns.types import MxHost
from ct_actors.net.connector import Connector
from ct_actors.probe.conversation import Conversation, is_error_limit_reply
from ct_actors.probe.visit import HostVisit, VisitOutcome, dead_host_visit
from ct_actors.smtp.client import (
    SmtpConnectError,
    SmtpDisconnected,
    SmtpError,
    SmtpTimeout,
    SmtpTlsError,
)
from ct_actors.smtp.types import Reply
from ct_actors.throttle.host_window import HostWindow

log = structlog.get_logger("ct_actors.smtp_pool")

# After a failed STARTTLS handshake, the host is asked in plaintext for this long.
_PLAINTEXT_FOR = 3600.0


class PoolClosed(Exception):
    """The pool shut down (or was replaced) before a worker took the request; the caller may
    retry on the manager's current pool for the host."""


class HostPool:
    def __init__(
        self,
        host: MxHost,
        *,
        settings: PoolSettings,
        connector: Connector,
        connections: trio.CapacityLimiter,
        ssl_context: ssl.SSLContext | None = None,
        counters: Counter[str] | None = None,
        on_pressure: Callable[[bool], None] | None = None,
        window: HostWindow | None = None,
        slow_connections: trio.CapacityLimiter | None = None,
    ) -> None:
        self.host = host
        # Kept by the manager across pool retirement, so a host's learnt limit and its dead
        # backoff streak outlive an idle minute.
        self.window = window if window is not None else HostWindow(settings.window())
        self._on_pressure = on_pressure
        self._counters = counters if counters is not None else Counter()
        self.settings = settings
        self._connector = connector
        self._connections = connections
        self._slow = HostSlowShare(
            host,
            self.window,
            slow_connections if slow_connections is not None else trio.CapacityLimiter(math.inf),
            self._counters,
            on_pressure,
        )
        self._ssl_context = ssl_context
        self._send, self._recv = trio.open_memory_channel[ProbeRequest](0)
        self._nursery: trio.Nursery | None = None
        self._running = trio.Event()
        self._closed = trio.Event()
        self.rcpt_limit = settings.max_recipients_per_session
        self.workers = 0
        self.idle_workers = 0
        self.open_sessions = 0
        self._waiting = 0
        # Idle sessions' waits, and whether the session holds a slow-share token.
        self._idle_sessions: dict[trio.CancelScope, bool] = {}
        self.last_used = trio.current_time()
        self._stats = {
            "requests": 0,
            "sessions_opened": 0,
            "rcpts": 0,
            "failures": 0,
            "error_limits_hit": 0,
            "tls_fallbacks": 0,
        }

    @property
    def name(self) -> str:
        return self.host.name

    def statistics(self) -> PoolStatistics:
        return PoolStatistics(
            host=self.host.name, workers=self.workers, idle_workers=self.idle_workers,
            open_sessions=self.open_sessions, window=self.window.limit, rcpt_limit=self.rcpt_limit,
            dead=self.is_dead(), slow=self.is_slow(), slow_sessions=self._slow.sessions,
            **self._stats,
        )

    def reconfigure(self, settings: PoolSettings) -> None:
        """Reload: timeouts and session limits from the next session on; the learnt window
        and dead marking carry over. A smaller max_recipients_per_session applies at once."""
        self.settings = settings
        self.window.reconfigure(settings.window())
        self.rcpt_limit = min(self.rcpt_limit, settings.max_recipients_per_session)

    def reclaim_idle(self, slow_only: bool = False) -> int:
        """Make workers holding idle sessions (only those in the slow share, with `slow_only`)
        QUIT them now; returns how many were asked."""
        scopes = [s for s, slow in self._idle_sessions.items() if slow or not slow_only]
        for scope in scopes:
            scope.cancel()
        return len(scopes)

    def is_dead(self) -> bool:
        return self.window.is_dead(trio.current_time())

    def is_slow(self) -> bool:
        return self.window.is_slow(trio.current_time())

    def _limit(self) -> int:
        return self.window.limit_at(trio.current_time())

    @property
    def dead_until(self) -> float:
        return self.window.dead_until

    def retirable(self, idle_for: float) -> bool:
        return (
            self.workers == 0
            and self._waiting == 0
            and trio.current_time() - self.last_used >= idle_for
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            self._running.set()
            task_status.started()
            await self._closed.wait()
            # Closing the channel is the workers' shutdown signal; they QUIT their sessions.
            await self._send.aclose()

    def close(self) -> None:
        self._closed.set()

    async def visit(self, request: ProbeRequest) -> HostVisit:
        """Run `request`'s plan on this host; returns when a worker has finished with it."""
        self.last_used = trio.current_time()
        self._stats["requests"] += 1
        if self.is_dead():
            return self._as_asked(request, self._dead_visit())
        await self._running.wait()
        if self._nursery is None or self._closed.is_set():
            raise PoolClosed(self.host.name)
        if self.idle_workers == 0 and self.workers < self._limit():
            self.workers += 1
            self._nursery.start_soon(self._worker)
        self._waiting += 1
        try:
            await self._send.send(request)
        except trio.ClosedResourceError:
            raise PoolClosed(self.host.name) from None
        finally:
            self._waiting -= 1
        visit = await request.reply.wait()
        self.last_used = trio.current_time()
        return self._as_asked(request, visit)

    def _as_asked(self, request: ProbeRequest, visit: HostVisit) -> HostVisit:
        if request.mx_name:
            visit.host = request.mx_name
        return visit

    async def _worker(self) -> None:
        conn: PooledSession | None = None
        try:
            while True:
                if conn is not None and self._slot_wanted(conn):
                    # Another host waits for a connection slot: hand ours over rather than
                    # idle on it, unless a request for this host is already queued.
                    try:
                        request: ProbeRequest | None = self._recv.receive_nowait()
                    except trio.WouldBlock:
                        await self._close(conn)
                        conn = None
                        continue
                    except trio.EndOfChannel:
                        return
                else:
                    request = None
                if request is None:
                    try:
                        request = await self._idle_receive(conn)
                    except trio.EndOfChannel:
                        return
                if request is None:
                    if conn is None:
                        if self._waiting:
                            continue  # a sender is mid-handoff: retiring now would strand it
                        return  # idle long enough: retire
                    await self._close(conn)
                    conn = None
                    continue
                conn = await self._handle(request, conn)
                self._grow_for_waiting()
                if self.workers > self._limit():
                    # The window shrank (421, 4.7.x, a slow host): this worker is one too
                    # many. At least `limit` others remain to serve whoever is waiting.
                    return
        finally:
            self.workers -= 1
            if conn is not None:
                await self._close(conn)

    def _grow_for_waiting(self) -> None:
        """After the window grew, start workers for requests already queued: a sender that
        arrived while the window was smaller would otherwise wait for the existing workers."""
        if self._nursery is None or self._closed.is_set():
            return
        # This worker is about to take one queued request itself.
        unserved = self._waiting - self.idle_workers - 1
        while unserved > 0 and self.workers < self._limit():
            self.workers += 1
            unserved -= 1
            self._nursery.start_soon(self._worker)

    def _slot_wanted(self, conn: PooledSession) -> bool:
        if self._connections.statistics().tasks_waiting > 0:
            return True
        # A session in the slow share hands over to another slow host's waiting session too.
        return conn.lease.slow and self._slow.wanted()

    async def _idle_receive(self, conn: PooledSession | None) -> ProbeRequest | None:
        """Wait for the next request; None when the idle (or session reuse) time ran out."""
        if conn is not None:
            reuse_left = conn.opened_at + self.settings.session_reuse_seconds
            wait = min(self.settings.session_idle_seconds, reuse_left - trio.current_time())
        else:
            wait = self.settings.pool_idle_seconds
        self.idle_workers += 1
        try:
            with trio.move_on_after(max(0.0, wait)) as idle_scope:
                if conn is not None:
                    # reclaim_idle() may cancel this wait to free the connection.
                    self._idle_sessions[idle_scope] = conn.lease.slow
                return await self._recv.receive()
            return None
        finally:
            self.idle_workers -= 1
            self._idle_sessions.pop(idle_scope, None)

    async def _handle(
        self, request: ProbeRequest, conn: PooledSession | None
    ) -> PooledSession | None:
        """Serve one request; returns the connection to keep for the next one, if any."""
        started = trio.current_time()
        waited = 0.0  # for our own connection limits: not time spent at the host
        reused = conn is not None
        # After a session was cut for the slow share, the next one waits for the share first.
        slow = False
        if conn is not None and not self._slow.admits(conn.lease):
            # The host turned slow since this session went idle and the share is full.
            await self._close(conn)
            conn, reused, slow = None, False, True
        while True:
            if conn is None:
                if self.is_dead():
                    # Another worker found the host dead while this request was queued.
                    request.reply.set(timed(self._dead_visit(), started, waited))
                    return None
                lease = SlowLease(require_slow=slow)
                try:
                    conn = await self._open(lease)
                except SmtpError as exc:
                    waited += lease.waited
                    if lease.evicted:
                        slow = True  # the greeting was slow and the share full: wait for it
                        continue
                    visit = self._failed_open(exc)
                    visit.slow = lease.slow
                    request.reply.set(timed(visit, started, waited))
                    return None
                waited += lease.waited
            served = await self._serve(conn, request, reused)
            if served is None:
                # The reused session's RSET (sent with the domain's first transaction) was
                # refused or went unanswered: a 421 queued while the session idled, say. The
                # session was over before the domain began; the domain starts on a fresh one.
                slow = conn.lease.evicted
                await self._close(conn)
                conn, reused = None, False
                continue
            visit = served
            visit.slow = conn.lease.slow
            if not conn.lease.evicted:
                break
            # Cut mid-conversation for the slow share: the domain goes on from the same
            # question on a fresh session that waits for the share (no lost session for it).
            await self._close(conn)
            conn, reused, slow = None, False, True
        request.reply.set(timed(visit, started, waited))
        if visit.outcome not in (VisitOutcome.CONCLUDED, VisitOutcome.GREYLISTED):
            # After anything unusual, start the next domain on a fresh connection.
            await self._close(conn)
            return None
        budget = self.error_budget()
        if budget - conn.errors < (budget + 1) // 2:
            # Retire the session before the server's own error limit is near, and before a
            # next domain would have to split its questions over two sessions (each one more
            # SMTPCheck call, 2 s apart): a session is reused only with half its budget left.
            # RSET and QUIT in one write: the RSET reply still shows a limit the host reached.
            if (reply := await conn.session.retire()) is not None:
                self._rset_usable(conn, reply)
            await self._close(conn)
            return None
        return conn

    def _rset_usable(self, conn: PooledSession, reply: Reply) -> bool:
        """Whether the session can go on after this RSET reply. Stock Postfix answers the
        command after its hard limit with 421 "too many errors": the host tolerates fewer
        errors than our budget, so the pool learns its limit."""
        if is_error_limit_reply(reply):
            self.window.learn_error_limit(conn.errors)
            self._stats["error_limits_hit"] += 1
        return reply.is_positive

    def error_budget(self) -> int:
        """Rejected commands a session to this host may take: ours, or the host's lower one."""
        learnt = self.window.error_limit
        budget = self.settings.max_errors_per_session
        return max(1, budget if learnt is None else min(budget, learnt))

    async def _open(self, lease: SlowLease) -> PooledSession:
        if not self.host.addresses:
            raise SmtpConnectError("connect", "MX host has no address")
        stack = contextlib.AsyncExitStack()
        asked = trio.current_time()
        try:
            if lease.require_slow or self.is_slow():
                await self._slow.wait(lease)
            try:
                self._connections.acquire_nowait()
            except trio.WouldBlock:
                # Every connection slot is taken: ask idle sessions everywhere to QUIT.
                if self._on_pressure is not None:
                    self._on_pressure(False)
                await self._connections.acquire()
            stack.callback(self._connections.release)
            lease.waited = trio.current_time() - asked
            starttls = self.settings.starttls
            if trio.current_time() < self.window.plaintext_until:
                starttls = "never"
            tls_note = ""
            threshold = self.settings.slow_reply_seconds
            watch = SlowWatch(threshold, lambda: self._slow.on_slow_reply(lease, threshold))
            address, ssl_context = self.host.addresses[0], self._ssl_context
            opening = functools.partial(
                open_pool_session, self._connector, address, self.settings
            )
            try:
                session = await stack.enter_async_context(opening(starttls, ssl_context, watch))
            except SmtpTlsError as exc:
                if lease.evicted:
                    raise  # we cut a slow handshake for the slow share: not a broken TLS stack
                # Opportunistic TLS, as MTAs do it (Postfix's smtp_tls_security_level=may
                # falls back to plaintext delivery after a failed handshake): a broken
                # handshake costs this connection, not the answer. Reconnect in plaintext and
                # skip STARTTLS on this host for a while.
                self.window.plaintext_until = trio.current_time() + _PLAINTEXT_FOR
                self._stats["tls_fallbacks"] += 1
                tls_note = f"STARTTLS failed ({exc.reason}); plaintext on a new connection"
                session = await stack.enter_async_context(opening("never", ssl_context, watch))
        except BaseException:
            lease.closing = True
            with trio.CancelScope(shield=True):
                await stack.aclose()
            lease.release()
            raise
        self.open_sessions += 1
        self._stats["sessions_opened"] += 1
        self._counters["sessions_opened"] += 1
        return PooledSession(stack, session, trio.current_time(), tls_note=tls_note, lease=lease)

    async def _close(self, conn: PooledSession) -> None:
        self.open_sessions -= 1
        conn.lease.closing = True
        # Bounded cleanup: the session's own QUIT is under move_on_after(shield=True).
        with (
            trio.CancelScope(shield=True),
            contextlib.suppress(SmtpError, OSError, trio.BrokenResourceError),
        ):
            await conn.stack.aclose()
        # After the connection is closed, so the share never counts fewer than are open.
        conn.lease.release()

    def _dead_visit(self) -> HostVisit:
        return dead_host_visit(self.host.name)

    def _failed_open(self, exc: SmtpError) -> HostVisit:
        self._stats["failures"] += 1
        address = self.host.addresses[0] if self.host.addresses else None
        visit = open_failure_visit(self.host.name, address, exc)
        if visit.outcome is VisitOutcome.THROTTLED:
            self.window.on_throttled(trio.current_time())
        elif isinstance(exc, SmtpConnectError | SmtpTimeout):
            # The host cannot be reached: every domain on it should skip it for a while.
            self.window.on_connect_failure(trio.current_time())
        return visit

    async def _serve(
        self, conn: PooledSession, request: ProbeRequest, reused: bool
    ) -> HostVisit | None:
        """The visit on this session; None when a reused session turned out to be over before
        the domain's first question (its opening RSET refused or unanswered)."""
        address = self.host.addresses[0]
        session = conn.session
        answered = len(request.plan.answers) + len(request.plan.greylisted)
        conversation = Conversation(
            request.plan,
            mail_from=self.settings.mail_from,
            rcpt_limit=self.rcpt_limit,
            error_budget=self.error_budget() - conn.errors,
            pipelining=session.pipelining,
            rejections=WindowRejections(self.window),
            reset_first=reused,
        )
        try:
            result = await run_conversation(session, conversation)
        except SmtpError as exc:
            if conversation.reset_pending:
                return None

            # Dropped or silent after the greeting: the session's end, not the domain's. (Or we
            # cut it for the slow share: not the host's failure.)
            cut = conn.lease.evicted and isinstance(exc, SmtpDisconnected | SmtpTimeout)
            self._stats["failures"] += not cut
            progress = len(request.plan.answers) + len(request.plan.greylisted) - answered
            return broken_visit(self.host.name, address, exc, session, reused, progress)
        conn.errors += result.errors
        if result.error_limit_after is not None:
            # The server's limit is below our budget: remember it for every session to it.
            self.window.learn_error_limit(conn.errors - result.errors + result.error_limit_after)
            self._stats["error_limits_hit"] += 1
        if result.reset_failed:
            return None
        self._stats["rcpts"] += result.rcpts_sent
        now = trio.current_time()
        if result.outcome in (VisitOutcome.CONCLUDED, VisitOutcome.GREYLISTED):
            self.window.on_success(now)
        elif result.outcome is VisitOutcome.THROTTLED or result.pace:
            self.window.on_throttled(now)
        if result.rcpt_limit is not None:
            self.rcpt_limit = min(self.rcpt_limit, result.rcpt_limit)
        retry_in = self.window.rejection_wait(now) if result.dha_paused else 0.0
        return conversation_visit(
            self.host.name, address, result, conn, reused=reused, retry_in=retry_in
        )
