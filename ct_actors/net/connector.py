"""The network seam: everything that opens a TCP connection goes through a `Connector`.

Production uses `TrioConnector`; tests inject an in-memory connector (see `ct_actors.sim.memory`)
so that SMTP conversations run under `trio.testing.MockClock` with exact virtual timelines.
Timeouts are the caller's job (`trio.fail_after`), which keeps fakes trivial.
"""

from __future__ import annotations

from typing import Protocol

import trio


class Connector(Protocol):
    async def connect(self, address: str, port: int) -> trio.abc.Stream:
        """Open a byte stream to address:port or raise OSError."""
        ...


class TrioConnector:
    """Real TCP via trio, optionally bound to one local source address (the prober's IP)."""

    def __init__(self, source_address: str | None = None) -> None:
        self._source_address = source_address

    async def connect(self, address: str, port: int) -> trio.abc.Stream:
        stream = await trio.open_tcp_stream(
            address, port, local_address=self._source_address, happy_eyeballs_delay=None
        )
        return stream
