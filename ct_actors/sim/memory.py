"""The simulated world without sockets: a `Connector` and an `MxResolver` backed by the tables.

Everything waits with `trio.sleep` only, so whole probe runs can execute under
`trio.testing.MockClock(autojump_threshold=0)` with exact virtual timelines.
"""

from __future__ import annotations

import errno
from collections.abc import AsyncIterator, Collection
from contextlib import asynccontextmanager

import trio
import trio.testing

from ct_actors.dns.types import DnsUnavailable, MxHost, MxLookup, MxStatus
from ct_actors.sim.smtp_server import DEFAULT_IDLE_TIMEOUT, handle_session
from ct_actors.sim.stats import SimStats
from ct_actors.sim.world import World
from ct_actors.sim.world_types import Behaviour


class SimConnector:
    """Connector whose streams lead to `handle_session` tasks in a nursery the caller owns."""

    def __init__(
        self,
        world: World,
        stats: SimStats,
        nursery: trio.Nursery,
        *,
        peer: str = "127.0.0.1",
        connect_latency: float = 0.0,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ) -> None:
        self.world = world
        self.stats = stats
        self.peer = peer
        self.connect_latency = connect_latency
        self.idle_timeout = idle_timeout
        self.attempts: list[tuple[float, str, int]] = []  # (time, address, port), refused too
        self._nursery = nursery
        self._closed = False

    async def connect(self, address: str, port: int) -> trio.abc.Stream:
        self.attempts.append((trio.current_time(), address, port))
        if self.connect_latency:
            await trio.sleep(self.connect_latency)
        else:
            await trio.lowlevel.checkpoint()
        host = self.world.host_by_ip(address)
        if self._closed or host is None or not host.listening or port != self.world.smtp_port:
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"Connection refused: {address}")
        client, server = trio.testing.memory_stream_pair()
        self._nursery.start_soon(self._serve, server, host.name)
        return client

    async def _serve(self, stream: trio.abc.Stream, host_name: str) -> None:
        host = self.world.hosts[host_name]
        await handle_session(
            stream, host, self.world, self.stats, peer=self.peer, idle_timeout=self.idle_timeout
        )

    def close(self) -> None:
        self._closed = True


@asynccontextmanager
async def open_sim_connector(
    world: World,
    stats: SimStats | None = None,
    *,
    peer: str = "127.0.0.1",
    connect_latency: float = 0.0,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
) -> AsyncIterator[SimConnector]:
    """Yield a `SimConnector`; on exit, sessions still open are cancelled."""
    async with trio.open_nursery() as nursery:
        connector = SimConnector(
            world,
            stats if stats is not None else SimStats(),
            nursery,
            peer=peer,
            connect_latency=connect_latency,
            idle_timeout=idle_timeout,
        )
        try:
            yield connector
        finally:
            connector.close()
            nursery.cancel_scope.cancel()


class SimResolver:
    """`MxResolver` answering from the world's tables, optionally after `latency` seconds."""

    def __init__(
        self,
        world: World,
        *,
        latency: float = 0.0,
        unavailable: Collection[str] = (),
        stats: SimStats | None = None,
    ) -> None:
        self.world = world
        self.latency = latency
        self.unavailable = frozenset(d.lower() for d in unavailable)  # -> DnsUnavailable
        self.stats = stats
        self.nameserver = f"{world.dns_address}:{world.dns_port}"

    async def lookup(self, domain: str) -> MxLookup:
        if self.latency:
            await trio.sleep(self.latency)
        else:
            await trio.lowlevel.checkpoint()
        name = domain.lower().rstrip(".")
        if self.stats is not None:
            self.stats.dns_queries["MX"] += 1
        if name in self.unavailable:
            raise DnsUnavailable(name, "simulated resolver failure", self.nameserver)
        d = self.world.domains.get(name)
        ns = self.nameserver
        if d is None or d.behaviour is Behaviour.NXDOMAIN:
            return MxLookup(name, MxStatus.NXDOMAIN, detail="NXDOMAIN", nameserver=ns)
        if d.null_mx:
            return MxLookup(name, MxStatus.NULL_MX, detail="null MX (RFC 7505)", nameserver=ns)
        if not d.has_mx:
            return MxLookup(name, MxStatus.NO_MX, detail="no MX records", nameserver=ns)
        hosts = tuple(
            MxHost(host, pref, (self.world.hosts[host].ip,) if host in self.world.hosts else ())
            for pref, host in sorted(d.mx)
        )
        return MxLookup(name, MxStatus.FOUND, hosts, nameserver=ns)
