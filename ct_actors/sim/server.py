"""Serve a simulated world on real loopback sockets: one DNS server plus one SMTP listener per
live MX host IP (every address in 127.0.0.0/8 is local on Linux, so no setup is needed)."""

from __future__ import annotations

import functools
import resource
from collections.abc import Sequence

import trio

from ct_actors.sim.dns_server import BrokenDns, serve_dns
from ct_actors.sim.smtp_server import DEFAULT_IDLE_TIMEOUT, handle_session
from ct_actors.sim.stats import SimStats
from ct_actors.sim.world import World
from ct_actors.sim.world_types import SimHost


def raise_nofile_limit() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard limit (a listener per host adds up); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass  # some kernels cap RLIM_INFINITY at nr_open; keep what we have
    return soft


async def _handler(
    host: SimHost,
    world: World,
    stats: SimStats,
    idle_timeout: float,
    stream: trio.SocketStream,
) -> None:
    try:
        peer = str(stream.socket.getpeername()[0])
    except OSError:
        peer = "0.0.0.0"  # reset before we looked
    await handle_session(stream, host, world, stats, peer=peer, idle_timeout=idle_timeout)


async def serve_world(
    world: World,
    *,
    stats: SimStats | None = None,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    broken_dns: Sequence[BrokenDns] = (),
    task_status: trio.TaskStatus[SimStats] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `world` until cancelled; `task_status.started(stats)` once every socket is bound.

    `broken_dns` adds DNS listeners playing broken resolvers (same zone, same stats), e.g. to
    give the prober a failing first nameserver and a healthy second one.
    """
    raise_nofile_limit()
    stats = stats if stats is not None else SimStats()
    # serve_listeners does not close its listeners when cancelled; a failed bind half-way
    # through must not leave thousands of bound ports behind in a test process.
    opened: list[trio.SocketListener] = []
    try:
        async with trio.open_nursery() as nursery:
            await nursery.start(serve_dns, world, stats)
            for broken in broken_dns:
                await nursery.start(
                    functools.partial(
                        serve_dns,
                        world,
                        stats,
                        address=broken.address,
                        port=broken.port,
                        fault=broken.fault,
                    )
                )
            for host in world.live_hosts():
                listeners = await trio.open_tcp_listeners(world.smtp_port, host=host.ip)
                opened.extend(listeners)
                handler = functools.partial(_handler, host, world, stats, idle_timeout)
                nursery.start_soon(
                    functools.partial(
                        trio.serve_listeners, handler, listeners, handler_nursery=nursery
                    )
                )
            task_status.started(stats)
    finally:
        for listener in opened:
            listener.socket.close()
