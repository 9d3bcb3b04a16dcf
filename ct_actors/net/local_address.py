"""Which local address do our SMTP connections leave from? The address a DNS blocklist would
list is the one the receiving host sees: the local address of a working connection (unless a
NAT rewrites it; then the operator says it: killswitch.dnsbl_address)."""

from __future__ import annotations

import contextlib

import trio

from ct_actors.net.connector import Connector


class LocalAddressConnector:
    """A `Connector` that remembers the local address of the latest connection it opened
    (streams without a socket, such as the simulated internet's, tell nothing)."""

    def __init__(self, inner: Connector) -> None:
        self._inner = inner
        self.local_address: str | None = None

    async def connect(self, address: str, port: int) -> trio.abc.Stream:
        stream = await self._inner.connect(address, port)
        sock = getattr(stream, "socket", None)
        if sock is not None:
            # A socket that cannot say keeps what we knew.
            with contextlib.suppress(OSError, IndexError, TypeError):
                self.local_address = str(sock.getsockname()[0])
        return stream

    def current(self) -> str | None:
        return self.local_address
