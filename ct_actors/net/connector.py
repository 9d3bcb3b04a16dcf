"""The network seam: everything that opens a TCP connection goes through a `Connector`.

Production uses `TrioConnector`; tests inject an in-memory connector (`ct_actors.testing`) so
that SMTP conversations run under `trio.testing.MockClock` with exact virtual timelines.
Timeouts are the caller's job (`trio.fail_after`), which keeps fakes trivial.
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Protocol

import trio

from ct_actors.net.tcp_stream import TcpStream, connect_tcp


class Connector(Protocol):
    async def connect(self, address: str, port: int) -> trio.abc.Stream:
        """Open a byte stream to address:port or raise OSError."""
        ...


class TrioConnector:
    """Real TCP via trio, optionally bound to one local source address (the prober's IP)."""

    def __init__(self, source_address: str | None = None) -> None:
        self._source_address = source_address

    async def connect(self, address: str, port: int) -> trio.abc.Stream:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return await trio.open_tcp_stream(
                address, port, local_address=self._source_address, happy_eyeballs_delay=None
            )
        return await self._connect_ip(ip, port)

    async def _connect_ip(
        self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int
    ) -> TcpStream:
        # MX addresses are always IP literals here: a plain socket connect, without the name
        # resolution and happy-eyeballs machinery of open_tcp_stream (a thread hop for
        # getaddrinfo and a nursery per connection, measured at ~5% of the daemon's CPU), and
        # a stream without trio.socket's per-call overhead (net/tcp_stream.py).
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        return await connect_tcp(family, str(ip), port, self._source_address)
