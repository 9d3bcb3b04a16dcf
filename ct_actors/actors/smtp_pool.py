"""The per-MX-host SMTP actor pool.

One `HostPool` per MX host address (the pool manager keys pools by IP: providers put many
tenants' MX names on one address; the MX name stays in each visit). Its workers each own at
most one SMTP session and take probe requests from the pool's unbuffered channel, so a request
waits until a worker is free: that is the per-host concurrency limit, and the back-pressure
towards the domain tasks. A worker
reuses its session for several domains (RSET between them) for `session_reuse_seconds`, then
says QUIT; an idle worker retires after `pool_idle_seconds`, and the manager retires a pool
with no workers left.

How many sessions a host gets is its `HostWindow` (throttle/host_window.py), adapted the way
Postfix's scheduler adapts per destination: it starts small, grows with successful visits,
halves on 421 / 4.7.x throttling answers, and drops to one when the host cannot be reached. A
host that refuses connections or times out before its greeting is marked dead for a backoff
that doubles while it stays unreachable: every domain on that host skips it at once instead of
paying the connect timeout again.

Slow hosts (tarpits) must not starve the global connection cap. Every session holds a token of
the manager's `connections` limiter while it is open. A greeting or reply that keeps us waiting
past `slow_reply_seconds` marks the host slow (`HostWindow.on_slow_reply`), at that moment,
not when the reply finally comes: the session must then also hold a token of the smaller
`slow` limiter (the slow share) and the host's one slow-session slot. If both are free it takes
them and carries on; if not, the connection is closed at once and the worker waits for the
share, then goes on with the same domain, from the same question, on a fresh session (never a
wrong answer, and no "lost session" for the domain to count). Sessions to a host already known
slow take the slow share before they connect. So slow hosts together hold at most the share,
and the rest of the cap is always there for healthy hosts (docs/throttles.md, "Slow hosts").
"""

from __future__ import annotations

import contextlib
import math
import ssl
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import structlog
import trio

from ct_actors.actors.slow_hosts import SlowLease, SlowWatch, WatchingConnector
from ct_actors.config import SmtpConfig
from ct_actors.dns.types import MxHost
from ct_actors.net.connector import Connector
from ct_actors.probe.conversation import (
    ConversationResult,
    HostOutcome,
    about_pace,
    converse,
    is_error_limit_reply,
)
from ct_actors.probe.visit import (
    CONNECT_FAILED,
    DISCONNECTED,
    GREETING_REJECTED,
    HOST_DEAD,
    PROTOCOL_ERROR,
    TIMEOUT,
    HostVisit,
    ProbeRequest,
)
from ct_actors.smtp.classify import SessionVerdict, classify_ehlo, classify_greeting
from ct_actors.smtp.client import (
    SmtpConnectError,
    SmtpDisconnected,
    SmtpError,
    SmtpRejected,
    SmtpSession,
    SmtpTimeout,
    SmtpTlsError,
    open_session,
)
from ct_actors.smtp.types import Reply
from ct_actors.throttle.host_window import HostWindow, HostWindowSettings

log = structlog.get_logger("ct_actors.smtp_pool")

# Defaults are the config's (ct_actors/config/sections.py): defaults live in one place.
_SMTP = SmtpConfig()

# After a failed STARTTLS handshake, the host is asked in plaintext for this long.
_PLAINTEXT_FOR = 3600.0

class PoolClosed(Exception):
    """The pool shut down (or was replaced) before a worker took the request; the caller may
    retry on the manager's current pool for the host."""


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
        # The slow share (shared by every pool), and this host's slow-session slot(s).
        self._slow = slow_connections if slow_connections is not None else trio.CapacityLimiter(
            math.inf
        )
        self._slow_slot = trio.CapacityLimiter(self.window.settings.slow_sessions)
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

    def statistics(self) -> dict[str, object]:
        return {
            "host": self.host.name,
            "workers": self.workers,
            "idle_workers": self.idle_workers,
            "open_sessions": self.open_sessions,
            "window": self.window.limit,
            "rcpt_limit": self.rcpt_limit,
            "dead": self.is_dead(),
            "slow": self.is_slow(),
            "slow_sessions": self._slow_slot.borrowed_tokens,
            **self._stats,
        }

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
        conn: _Conn | None = None
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

    def _slot_wanted(self, conn: _Conn) -> bool:
        if self._connections.statistics().tasks_waiting > 0:
            return True
        # A session in the slow share hands over to another slow host's waiting session too.
        return conn.lease.slow and (
            self._slow.statistics().tasks_waiting > 0
            or self._slow_slot.statistics().tasks_waiting > 0
        )

    async def _idle_receive(self, conn: _Conn | None) -> ProbeRequest | None:
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

    async def _handle(self, request: ProbeRequest, conn: _Conn | None) -> _Conn | None:
        """Serve one request; returns the connection to keep for the next one, if any."""
        started = trio.current_time()
        waited = 0.0  # for our own connection limits: not time spent at the host
        reused = conn is not None
        # After a session was cut for the slow share, the next one waits for the share first.
        slow = False
        if conn is not None and not self._in_slow_share(conn.lease):
            # The host turned slow since this session went idle and the share is full.
            await self._close(conn)
            conn, reused, slow = None, False, True
        if conn is not None:
            try:
                # RSET between domains on a reused session. Anything but 250 (a 421 queued
                # while the session idled, say) means the session is over, not the domain.
                usable = self._rset_usable(conn, await conn.session.rset())
            except SmtpError:
                usable = False
            if not usable:
                slow = conn.lease.evicted
                await self._close(conn)
                conn, reused = None, False
        while True:
            if conn is None:
                if self.is_dead():
                    # Another worker found the host dead while this request was queued.
                    request.reply.set(_timed(self._dead_visit(), started, waited))
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
                    request.reply.set(_timed(visit, started, waited))
                    return None
                waited += lease.waited
            visit = await self._serve(conn, request, reused)
            visit.slow = conn.lease.slow
            if not conn.lease.evicted:
                break
            # Cut mid-conversation for the slow share: the domain goes on from the same
            # question on a fresh session that waits for the share (no lost session for it).
            await self._close(conn)
            conn, reused, slow = None, False, True
        request.reply.set(_timed(visit, started, waited))
        if visit.outcome not in (HostOutcome.CONCLUDED, HostOutcome.GREYLISTED):
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

    def _rset_usable(self, conn: _Conn, reply: Reply) -> bool:
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

    async def _open(self, lease: SlowLease) -> _Conn:
        if not self.host.addresses:
            raise SmtpConnectError("connect", "MX host has no address")
        stack = contextlib.AsyncExitStack()
        asked = trio.current_time()
        try:
            if lease.require_slow or self.is_slow():
                await self._wait_for_slow_share(lease)
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
            watch = SlowWatch(self.settings.slow_reply_seconds, lambda: self._on_slow_reply(lease))
            try:
                session = await stack.enter_async_context(self._session(starttls, watch))
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
                session = await stack.enter_async_context(self._session("never", watch))
        except BaseException:
            lease.closing = True
            with trio.CancelScope(shield=True):
                await stack.aclose()
            lease.release()
            raise
        self.open_sessions += 1
        self._stats["sessions_opened"] += 1
        self._counters["sessions_opened"] += 1
        return _Conn(stack, session, trio.current_time(), tls_note=tls_note, lease=lease)

    async def _wait_for_slow_share(self, lease: SlowLease) -> None:
        """Before connecting to a slow host. Nothing else is held meanwhile, so a waiting slow
        host keeps no connection from anyone."""

        def share_taken() -> None:
            # Ask idle sessions in the share to QUIT (a healthy host's idle sessions stay:
            # they do not hold the share).
            self._counters["slow_share_waits"] += 1
            if self._on_pressure is not None:
                self._on_pressure(True)

        await lease.wait(self._slow_slot, self._slow, share_taken)

    def _take_slow_share_now(self, lease: SlowLease) -> bool:
        if not lease.take_now(self._slow_slot, self._slow):
            return False
        self._counters["slow_moves"] += 1
        return True

    def _in_slow_share(self, lease: SlowLease) -> bool:
        """Whether a session may serve the next domain: a session to a host marked slow since it
        opened must move into the slow share first."""
        return lease.slow or not self.is_slow() or self._take_slow_share_now(lease)

    def _on_slow_reply(self, lease: SlowLease) -> bool:
        """The host has kept this session waiting past slow_reply_seconds (SlowWatch): mark the
        host slow; may the session go on? Only inside the slow share."""
        if self.window.on_slow_reply(trio.current_time()):
            log.info(
                "smtp_host_slow",
                host=self.host.name,
                address=self.host.addresses[0] if self.host.addresses else None,
                waited_over=self.settings.slow_reply_seconds,
                slow_for=self.window.settings.slow_for,
            )
        if lease.slow:
            return True
        if lease.closing:
            return False  # a QUIT is not worth a slow-share token
        if self._take_slow_share_now(lease):
            return True
        lease.evicted = True
        self._counters["slow_evictions"] += 1
        return False

    def _session(
        self, starttls: Literal["opportunistic", "never"], watch: SlowWatch
    ) -> contextlib.AbstractAsyncContextManager[SmtpSession]:
        return open_session(
            WatchingConnector(self._connector, watch),
            self.host.addresses[0],
            self.settings.port,
            helo_name=self.settings.helo_name,
            connect_timeout=self.settings.connect_timeout,
            command_timeout=self.settings.command_timeout,
            quit_timeout=self.settings.quit_timeout,
            starttls=starttls,
            ssl_context=self._ssl_context,
        )

    async def _close(self, conn: _Conn) -> None:
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
        return HostVisit(self.host.name, None, HOST_DEAD, "marked dead by an earlier visit")

    def _failed_open(self, exc: SmtpError) -> HostVisit:
        self._stats["failures"] += 1
        address = self.host.addresses[0] if self.host.addresses else None
        if isinstance(exc, SmtpRejected) and exc.stage in ("greeting", "ehlo"):
            classify = classify_greeting if exc.stage == "greeting" else classify_ehlo
            verdict = classify(exc.reply)
            # A refusal of *us* (blocklist, 5.7.x) must never read as an answer about the host.
            outcome = {
                SessionVerdict.POLICY_BLOCKED: HostOutcome.POLICY_BLOCKED,
                SessionVerdict.THROTTLED: HostOutcome.THROTTLED,
            }.get(verdict, GREETING_REJECTED)
            if outcome == HostOutcome.THROTTLED:
                self.window.on_throttled(trio.current_time())
            # "421 4.7.0 Too many connections from your IP" is about our pace; "421 4.3.2
            # Service not available" is about the server (docs/design.md, "Whose fault").
            return HostVisit(
                self.host.name,
                address,
                outcome,
                f"{exc.stage}: {exc.reason}",
                pace=outcome == HostOutcome.THROTTLED and about_pace(exc.reply),
            )
        if isinstance(exc, SmtpConnectError | SmtpTimeout):
            # The host cannot be reached: every domain on it should skip it for a while.
            self.window.on_connect_failure(trio.current_time())
            kind = TIMEOUT if isinstance(exc, SmtpTimeout) else CONNECT_FAILED
            return HostVisit(self.host.name, address, kind, f"{exc.stage}: {exc.reason}")
        return HostVisit(self.host.name, address, _error_kind(exc), f"{exc.stage}: {exc.reason}")

    async def _serve(self, conn: _Conn, request: ProbeRequest, reused: bool) -> HostVisit:
        address = self.host.addresses[0]
        session = conn.session
        answered = len(request.plan.answers) + len(request.plan.greylisted)
        try:
            result: ConversationResult = await converse(
                session,
                request.plan,
                mail_from=self.settings.mail_from,
                rcpt_limit=self.rcpt_limit,
                error_budget=self.error_budget() - conn.errors,
                rejections=_WindowRejections(self.window),
            )
        except (SmtpDisconnected, SmtpTimeout) as exc:
            # The session died under us (dropped, or stopped answering) after it was greeted:
            # that is about this session; the domain goes on from the same question. (Or we
            # cut it for the slow share: not the host's failure.)
            self._stats["failures"] += not conn.lease.evicted
            progress = len(request.plan.answers) + len(request.plan.greylisted) - answered
            return HostVisit(
                self.host.name,
                address,
                HostOutcome.SESSION_ENDED,
                f"{exc.stage}: {exc.reason}",
                _transcript_lines(session),
                tls=session.tls,
                reused_session=reused,
                progress=max(0, progress),
            )
        except SmtpError as exc:
            self._stats["failures"] += 1
            return HostVisit(
                self.host.name,
                address,
                _error_kind(exc),
                f"{exc.stage}: {exc.reason}",
                reused_session=reused,
            )
        conn.errors += result.errors
        if result.error_limit_after is not None:
            # The server's limit is below our budget: remember it for every session to it.
            self.window.learn_error_limit(conn.errors - result.errors + result.error_limit_after)
            self._stats["error_limits_hit"] += 1
        self._stats["rcpts"] += result.rcpts_sent
        if result.outcome in (HostOutcome.CONCLUDED, HostOutcome.GREYLISTED):
            self.window.on_success(trio.current_time())
        elif result.outcome == HostOutcome.THROTTLED or result.pace:
            self.window.on_throttled(trio.current_time())
        if result.rcpt_limit is not None:
            self.rcpt_limit = min(self.rcpt_limit, result.rcpt_limit)
        return HostVisit(
            self.host.name,
            address,
            result.outcome,
            result.detail,
            result.replies,
            tls=session.tls,
            reused_session=reused,
            progress=result.progress,
            pace=result.pace,
            budget_spent=result.budget_spent,
            dha_paused=result.dha_paused,
            tls_note=conn.tls_note,
            retry_in=self.window.rejection_wait(trio.current_time()) if result.dha_paused else 0.0,
        )


@dataclass(slots=True)
class _Conn:
    """One open SMTP session and the exit stack that QUITs it and frees its connection slot."""

    stack: contextlib.AsyncExitStack
    session: SmtpSession
    opened_at: float
    errors: int = 0  # rejected commands on this session (servers count them per connection)
    tls_note: str = ""  # what happened to STARTTLS, when it did not simply work
    lease: SlowLease = field(default_factory=SlowLease)


@dataclass(slots=True)
class _WindowRejections:
    """The conversation's view of the host's rejected-RCPT budget."""

    window: HostWindow

    def reserve(self) -> float | None:
        now = trio.current_time()
        return now if self.window.reserve_rejection(now) else None

    def settle(self, token: float, rejected: bool) -> None:
        self.window.settle_rejection(token, rejected)


def _timed(visit: HostVisit, started: float, waited: float = 0.0) -> HostVisit:
    """Time at the host: since the worker took the request, less our own limits' waits."""
    visit.elapsed = trio.current_time() - started - waited
    return visit


def _transcript_lines(session: SmtpSession, last: int = 4) -> list[str]:
    """The last exchanges of a session that died mid-conversation, for the audit trail."""
    lines = []
    for entry in session.transcript[-last:]:
        code = "" if entry.code is None else f"{entry.code} "
        lines.append(f"{entry.command or entry.stage} -> {code}{entry.text[:100]}".rstrip())
    return lines


def _error_kind(exc: SmtpError) -> str:
    if isinstance(exc, SmtpTimeout):
        return TIMEOUT
    if isinstance(exc, SmtpDisconnected):
        return DISCONNECTED
    if isinstance(exc, SmtpConnectError):
        return CONNECT_FAILED
    return PROTOCOL_ERROR
