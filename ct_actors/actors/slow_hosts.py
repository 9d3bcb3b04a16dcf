"""Slow hosts (tarpits): notice them while we wait, and the slow share their sessions hold.

Noticing. A tarpit answers each command just inside our command timeout (30 s); waiting for
the reply to know it was slow would let every newly met tarpit hold a connection of the global
cap for the whole of its first reply. So the watch (`SlowWatch`, a `StepWatch` the SMTP session
judges inside its per-step deadline, `ct_actors.smtp.step_watch`) times each *step*: one starts
when the connection opens (the greeting) and each time we send (a command, a TLS record), and
when a read for the current step is still waiting `threshold` seconds after the step started,
`on_slow` decides at that moment whether the session may go on (True: keep reading) or must end
now (False: the session ends as a disconnect, "closed by us", which the pool knows it caused).

The watch measures waiting for the host only: a read is what waits for it, and nothing is timed
while the session idles between domains. Dribbling a reply byte by byte does not restart the
step (only our next send does).

The share. Every session holds a token of the manager's `connections` limiter while it is open.
A greeting or reply that keeps us waiting past `slow_reply_seconds` marks the host slow
(`HostWindow.on_slow_reply`), at that moment, not when the reply finally comes: the session must
then also hold a token of the smaller `slow` limiter (the slow share) and the host's one
slow-session slot (`SlowLease`, `HostSlowShare`). If both are free it takes them and carries on;
if not, the connection is closed at once and the worker waits for the share, then goes on with
the same domain, from the same question, on a fresh session (never a wrong answer, and no "lost
session" for the domain to count). Sessions to a host already known slow take the slow share
before they connect. So slow hosts together hold at most the share, and the rest of the cap is
always there for healthy hosts (docs/throttles.md, "Slow hosts").
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import structlog
import trio

from ct_actors.dns.types import MxHost
from ct_actors.throttle.host_window import HostWindow

# The pool's logger: a slow host is news about the pool's host.
log = structlog.get_logger("ct_actors.smtp_pool")


class SlowWatch:
    """The steps of one connection (across a plaintext fallback's reconnect)."""

    __slots__ = ("_judged", "_on_slow", "_step_started", "threshold")

    def __init__(self, threshold: float, on_slow: Callable[[], bool]) -> None:
        self.threshold = threshold
        self._on_slow = on_slow
        self._step_started = math.inf
        self._judged = False  # on_slow was asked about the current step already

    def step(self) -> None:
        self._step_started = trio.current_time()
        self._judged = False

    def progress(self) -> None:
        """Bytes arrived: the wait for the next reply of a pipelined group counts from here,
        not from the write (a server answering each pipelined command in turn is as slow as
        its slowest reply, not as the sum of them)."""
        self._step_started = trio.current_time()

    def deadline(self) -> float:
        """When the current step becomes slow (inf: not timed)."""
        if self._judged or not math.isfinite(self.threshold):
            return math.inf
        return self._step_started + self.threshold

    def judge(self) -> bool:
        """The step is slow: may the session go on?"""
        self._judged = True
        return self._on_slow()


@dataclass(eq=False, slots=True)
class SlowLease:
    """What one connection holds beyond its global-cap token: the slow share, once its host
    is slow (the host's slow-session slot and a token of the shared slow limiter). The lease
    itself is the limiters' borrower, so it can be released from any task."""

    require_slow: bool = False  # take the slow share before connecting, whatever the marking
    slot: trio.CapacityLimiter | None = None
    token: trio.CapacityLimiter | None = None
    evicted: bool = False  # closed by us: slow, and no room in the slow share
    closing: bool = False
    waited: float = 0.0  # seconds spent waiting for our own limits before connecting

    @property
    def slow(self) -> bool:
        return self.token is not None

    def take_now(self, slot: trio.CapacityLimiter, share: trio.CapacityLimiter) -> bool:
        """The slot and a share token without waiting, or neither."""
        try:
            slot.acquire_on_behalf_of_nowait(self)
        except trio.WouldBlock:
            return False
        try:
            share.acquire_on_behalf_of_nowait(self)
        except trio.WouldBlock:
            slot.release_on_behalf_of(self)
            return False
        self.slot, self.token = slot, share
        return True

    async def wait(
        self,
        slot: trio.CapacityLimiter,
        share: trio.CapacityLimiter,
        share_taken: Callable[[], None],
    ) -> None:
        """The slot, then a share token (`share_taken()` first when there is none free). On
        cancellation whatever was taken stays on the lease: `release` gives it back."""
        await slot.acquire_on_behalf_of(self)
        self.slot = slot
        try:
            share.acquire_on_behalf_of_nowait(self)
        except trio.WouldBlock:
            share_taken()
            await share.acquire_on_behalf_of(self)
        self.token = share

    def release(self) -> None:
        if self.token is not None:
            self.token.release_on_behalf_of(self)
            self.token = None
        if self.slot is not None:
            self.slot.release_on_behalf_of(self)
            self.slot = None


class HostSlowShare:
    """One host's way into the slow share: its own slow-session slot(s), and the share itself
    (the manager's slow limiter, which every host's pool shares)."""

    def __init__(
        self,
        host: MxHost,
        window: HostWindow,
        share: trio.CapacityLimiter,
        counters: Counter[str],
        on_pressure: Callable[[bool], None] | None,
    ) -> None:
        self.host = host
        self.window = window
        self._share = share
        self._slot = trio.CapacityLimiter(window.settings.slow_sessions)
        self._counters = counters
        self._on_pressure = on_pressure

    @property
    def sessions(self) -> int:
        """This host's sessions in the share."""
        return int(self._slot.borrowed_tokens)

    def wanted(self) -> bool:
        """Another slow session waits for the share or for this host's slot."""
        return (
            self._share.statistics().tasks_waiting > 0
            or self._slot.statistics().tasks_waiting > 0
        )

    async def wait(self, lease: SlowLease) -> None:
        """Before connecting to a slow host. Nothing else is held meanwhile, so a waiting slow
        host keeps no connection from anyone."""

        def share_taken() -> None:
            # Ask idle sessions in the share to QUIT (a healthy host's idle sessions stay:
            # they do not hold the share).
            self._counters["slow_share_waits"] += 1
            if self._on_pressure is not None:
                self._on_pressure(True)

        await lease.wait(self._slot, self._share, share_taken)

    def take_now(self, lease: SlowLease) -> bool:
        if not lease.take_now(self._slot, self._share):
            return False
        self._counters["slow_moves"] += 1
        return True

    def admits(self, lease: SlowLease) -> bool:
        """Whether a session may serve the next domain: a session to a host marked slow since it
        opened must move into the slow share first."""
        return lease.slow or not self.window.is_slow(trio.current_time()) or self.take_now(lease)

    def on_slow_reply(self, lease: SlowLease, threshold: float) -> bool:
        """The host has kept this session waiting past `threshold` (SlowWatch): mark the host
        slow; may the session go on? Only inside the slow share."""
        if self.window.on_slow_reply(trio.current_time()):
            log.info(
                "smtp_host_slow",
                host=self.host.name,
                address=self.host.addresses[0] if self.host.addresses else None,
                waited_over=threshold,
                slow_for=self.window.settings.slow_for,
            )
        if lease.slow:
            return True
        if lease.closing:
            return False  # a QUIT is not worth a slow-share token
        if self.take_now(lease):
            return True
        lease.evicted = True
        self._counters["slow_evictions"] += 1
        return False
