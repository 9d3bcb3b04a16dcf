"""The three in-memory networks: `Connector`s whose streams lead to server tasks in a nursery.

They differ in what answers behind them, so pick by what the test is about:

* `ScriptedConnector`: each connection plays the next `ScriptedServer` script, whatever the
  address. The exact dialogue of one session: the SMTP client and session.
* `MailHostNet`: `MailHost`s keyed by address, answering by rules (mailboxes, greylisting,
  limits, drops) and recording every command with its time. A few hosts written out in the
  test: the pools, the probe, slow hosts.
* `SimConnector` (`open_sim_connector`): the simulated world (`ct_actors.sim`), its hosts
  played by the same session code that serves the simulator's sockets. The whole pipeline on a
  generated world, as the e2e tests see it over TCP, but under MockClock.

Each records its connection attempts, can delay a connect, and refuses where nothing would
answer (`ConnectionRefusedError`, as a real stack does). Everything waits with `trio.sleep`
only, so they run under `trio.testing.MockClock(autojump_threshold=0)` with exact virtual
timelines.
"""

from __future__ import annotations

import errno
import math
from collections import deque
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager

import trio
import trio.testing

from ct_actors.sim.smtp_server import DEFAULT_IDLE_TIMEOUT, handle_session
from ct_actors.sim.stats import SimStats
from ct_actors.sim.world import World
from ct_actors.testing.smtp import MailHost, ScriptedServer, Step


class ScriptedConnector:
    """A `Connector` whose every connect starts the next script's server in `nursery`.

    `connect_delay` (seconds, may be `math.inf`) models a slow or black-holed SYN;
    `connect_error` a refused connection. With no script left, connect is refused.
    """

    def __init__(
        self,
        nursery: trio.Nursery,
        *scripts: Sequence[Step],
        connect_delay: float = 0.0,
        connect_error: OSError | None = None,
    ) -> None:
        self._nursery = nursery
        self._scripts: deque[Sequence[Step]] = deque(scripts)
        self.connect_delay = connect_delay
        self.connect_error = connect_error
        self.attempts: list[tuple[str, int]] = []
        self.servers: list[ScriptedServer] = []

    async def connect(self, address: str, port: int) -> trio.abc.Stream:
        self.attempts.append((address, port))
        if self.connect_delay > 0:
            await trio.sleep(self.connect_delay)
        else:
            await trio.lowlevel.checkpoint()
        if self.connect_error is not None:
            raise self.connect_error
        if not self._scripts:
            raise OSError(errno.ECONNREFUSED, "no scripted server left")
        server = ScriptedServer(self._scripts.popleft())
        self.servers.append(server)
        client_stream, server_stream = trio.testing.memory_stream_pair()
        self._nursery.start_soon(server.run, server_stream)
        return client_stream


class MailHostNet:
    """A `Connector` over a set of `MailHost`s, keyed by address; unknown addresses refuse."""

    def __init__(self, nursery: trio.Nursery, hosts: Iterable[MailHost]) -> None:
        self._nursery = nursery
        self.hosts = {h.address: h for h in hosts}
        self.attempts: list[tuple[float, str]] = []
        self.active = 0
        self.max_active = 0

    async def connect(self, address: str, port: int) -> trio.abc.Stream:
        self.attempts.append((trio.current_time(), address))
        host = self.hosts.get(address)
        if host is not None:
            host.connects.append(trio.current_time())
        delay = host.connect_delay if host is not None else 0.0
        if delay == math.inf:
            await trio.sleep_forever()
        if delay:
            await trio.sleep(delay)
        else:
            await trio.lowlevel.checkpoint()
        if host is None or host.refuse:
            raise ConnectionRefusedError(errno.ECONNREFUSED, f"Connection refused: {address}")
        client, server = trio.testing.memory_stream_pair()
        self._nursery.start_soon(host.serve, server, self)
        return client


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
