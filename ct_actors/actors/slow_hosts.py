"""Slow hosts (tarpits): notice them while we wait, and the slow share their sessions hold.

Noticing. A tarpit answers each command just inside our command timeout (30 s); waiting for
the reply to know it was slow would let every newly met tarpit hold a connection of the global
cap for the whole of its first reply. So the watch sits under the SMTP client, on the
connection's byte stream: a *step* starts when the connection opens (the greeting) and each
time we send (a command, a TLS record), and when a read for the current step is still waiting
`threshold` seconds after the step started, `on_slow` decides at that moment whether the
session may go on (True: keep reading) or must end now (False: the read fails as a broken
connection, which the client reports as a disconnect and the pool knows it caused).

The watch measures waiting for the host only: a read is what waits for it, and nothing is timed
while the session idles between domains. Dribbling a reply byte by byte does not restart the
step (only our next send does).

The share. Once its host is slow, a session holds, besides its global-cap token, the host's
slow-session slot and a token of the manager's slow limiter (`SlowLease`); see smtp_pool.py.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import trio

from ct_actors.net.connector import Connector


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


class WatchedStream(trio.abc.Stream):
    def __init__(self, inner: trio.abc.Stream, watch: SlowWatch) -> None:
        self._inner = inner
        self._watch = watch

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._watch.step()
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        deadline = self._watch.deadline()
        if deadline == math.inf:
            data = await self._inner.receive_some(max_bytes)
        else:
            # A cancelled read of a trio stream consumes nothing, so it can be asked again.
            with trio.move_on_at(deadline):
                data = await self._inner.receive_some(max_bytes)
                self._watch.progress()
                return data
            if not self._watch.judge():
                raise trio.BrokenResourceError(
                    "closed by us: slow host, no room in the slow share"
                )
            data = await self._inner.receive_some(max_bytes)
        self._watch.progress()
        return data

    async def aclose(self) -> None:
        await self._inner.aclose()


class WatchingConnector:
    """Opens connections whose steps `watch` times; the greeting is the first step."""

    def __init__(self, inner: Connector, watch: SlowWatch) -> None:
        self._inner = inner
        self._watch = watch

    async def connect(self, address: str, port: int) -> trio.abc.Stream:
        stream = await self._inner.connect(address, port)
        self._watch.step()
        return WatchedStream(stream, self._watch)


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
