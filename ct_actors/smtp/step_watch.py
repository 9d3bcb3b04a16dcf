"""A watch on how long the host keeps us waiting, judged at the moment it becomes too long.

The pool's slow-host rule (`ct_actors.actors.slow_hosts.SlowWatch`, docs/throttles.md "Slow
hosts") must decide *while* a read is still waiting, not when the reply finally comes: a *step*
starts when the connection opens (the greeting) and each time we send; when the host has kept
the current step waiting past the watch's threshold, `judge()` says whether the session may go
on (keep reading) or must end now.

The session does this inside its own per-step cancel scope (one scope per step, its deadline the
earlier of the command timeout and the watch's moment), so a plaintext read costs no second
scope. Under TLS the session reads through `trio.SSLStream`, whose handshake and records the
session does not see one by one; there the watch sits under the TLS layer, on the transport
(`WatchedStream`), as it did for every connection before.
"""

from __future__ import annotations

import math
from typing import Protocol

import trio

SLOW_EVICTION = "closed by us: slow host, no room in the slow share"


class StepWatch(Protocol):
    def step(self) -> None:
        """We sent (or connected): a new wait for the host starts now."""

    def progress(self) -> None:
        """Bytes arrived: the wait for the next reply counts from now."""

    def deadline(self) -> float:
        """When the current wait becomes too long (inf: not timed, or already judged)."""

    def judge(self) -> bool:
        """The wait is too long now: may the session go on?"""


class WatchedStream(trio.abc.Stream):
    """The transport under a TLS layer, with the watch on its sends and reads."""

    def __init__(self, inner: trio.abc.Stream, watch: StepWatch) -> None:
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
                raise trio.BrokenResourceError(SLOW_EVICTION)
            data = await self._inner.receive_some(max_bytes)
        self._watch.progress()
        return data

    async def aclose(self) -> None:
        await self._inner.aclose()
