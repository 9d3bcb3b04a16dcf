"""Serve a simulated world on real loopback sockets: one DNS server, and ONE listening socket for
every simulated SMTP host.

The SMTP listener is bound to the wildcard address (0.0.0.0) on the world's SMTP port. Every
address in 127.0.0.0/8 is local on Linux, so a connection to any simulated host's IP reaches it;
the accepted socket's LOCAL address (`getsockname()`) is the IP the client dialled, and names the
simulated host (`World.host_by_ip`, one dict lookup: nothing per connection grows with the
world). A world of a million domains costs one SMTP listener, one DNS socket and one socket per
open connection, instead of one listener per host (which ran out of file descriptors above
~30,000 domains and took seconds to bind). `raise_nofile_limit` stays for the open connections:
the bench allows 2,048 at once, above the usual soft limit of 1,024.

Safety. A wildcard bind also listens on the machine's real interfaces. Two fences:
- The listener is bound to the loopback device (`SO_BINDTODEVICE` "lo", unprivileged since
  Linux 5.7, kernel commit c427bfec18f2), so packets arriving on eth0 and the like never reach
  it. This is the narrowest binding the kernel offers short of eBPF `sk_lookup` (needs
  CAP_BPF): a bind takes one address, not a prefix, and `IP_FREEBIND` / `IP_TRANSPARENT` only
  let a socket bind an address that is not (yet) local; they do not narrow a wildcard. Where
  `SO_BINDTODEVICE` is refused (older kernels without CAP_NET_RAW), the listener is a plain
  wildcard and the second fence alone holds.
- Every accepted connection whose peer or local address is outside 127.0.0.0/8 (a local
  process dialling the machine's own eth0 address also arrives over lo) is reset at once,
  before any byte is sent, and counted (`SimStats.closed_not_loopback`). The decision is the
  pure `connection_allowed`.

Hosts that are not listening (`SimHost.listening == False`). With one listener per host nothing
was bound on a dead host's IP and a connect was refused (ECONNREFUSED). A wildcard listener
holds the port for every address, and the kernel cannot refuse a SYN for one address while it
does (no per-address refusal without netfilter or eBPF, which CI does not have); a second port
for dead hosts would need the prober to be told a port the world's DNS does not give, i.e. a lie
to the prober; and ::1, which the IPv4 wildcard does not hold, would refuse faithfully but is one
address for every dead host (the prober keys its pools by address: the first refusal would mark
them all dead). So a dead host's address accepts and resets at once (`SO_LINGER` 0 sends an RST,
before any byte): what a TCP load balancer with no healthy backend does (Envoy's TCP proxy
closes the downstream connection with response flag UH, "no healthy upstream"; HAProxy in TCP
mode accepts and closes when no server is up). The prober sees its connect succeed and the
session "closed before any answer" at the greeting: a DISCONNECTED visit, the walk moves on to
the next MX (probe/domain_walk.py), so the world's expectation (`first_mx_dead` passes on its
second MX) holds; what changes is the visit's detail ("greeting: ..." instead of "connect:
ECONNREFUSED") and that such a host is not marked dead for the back-off (only connect failures
and timeouts are). The in-memory connector (`SimConnector`) still refuses, the faithful behaviour,
since it has no port to share. An address no simulated host has is treated the same way
(`SimStats.reset_unknown_address`).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import ipaddress
import resource
import socket
import struct
from collections.abc import Awaitable, Callable, Sequence

import trio

from ct_actors.net.tcp_stream import TcpStream
from ct_actors.sim.dns_server import BrokenDns, serve_dns
from ct_actors.sim.smtp_server import DEFAULT_IDLE_TIMEOUT, handle_session
from ct_actors.sim.stats import SimStats
from ct_actors.sim.world import World
from ct_actors.sim.world_types import SIM_NETWORK

_SIM_NETWORK = ipaddress.IPv4Network(SIM_NETWORK)
_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends an RST


def raise_nofile_limit() -> int:
    """Lift the soft RLIMIT_NOFILE to the hard limit (every open connection is a descriptor, and
    the bench allows more at once than the usual soft limit); returns it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass  # some kernels cap RLIM_INFINITY at nr_open; keep what we have
    return soft


def connection_allowed(peer: str, local: str) -> bool:
    """Whether an accepted connection may be served: both ends in 127.0.0.0/8 (IPv4 loopback).
    Anything else, ::1 included, is closed: the simulated internet lives on IPv4 loopback only."""
    for address in (peer, local):
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        if not isinstance(ip, ipaddress.IPv4Address) or ip not in _SIM_NETWORK:
            return False
    return True


def _reset(stream: TcpStream) -> None:
    """Close with an RST, before any byte is sent."""
    with contextlib.suppress(OSError):  # already reset by the peer: a plain close will do
        stream.socket.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)
    stream.close()


async def _dispatch(world: World, stats: SimStats, idle_timeout: float, stream: TcpStream) -> None:
    """One accepted connection: the simulated host its local address names, or a reset."""
    sock = stream.socket
    try:
        local = str(sock.getsockname()[0])
        peer = str(sock.getpeername()[0])
    except OSError:
        stream.close()  # reset by the peer before we looked
        return
    if not connection_allowed(peer, local):
        stats.closed_not_loopback += 1
        _reset(stream)
        return
    host = world.host_by_ip(local)
    if host is None:
        stats.reset_unknown_address += 1
        _reset(stream)
        return
    if not host.listening:
        stats.reset_dead_host[host.name] += 1
        _reset(stream)
        return
    await handle_session(stream, host, world, stats, peer=peer, idle_timeout=idle_timeout)


async def open_smtp_listener(port: int) -> tuple[socket.socket, str]:
    """The one SMTP listener: 0.0.0.0:`port`, on the loopback device where the kernel allows it.
    Returns it and a description of the binding (for the simulator's ready line)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM | socket.SOCK_NONBLOCK)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        where = f"0.0.0.0:{port} on lo"
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"lo")
        except (OSError, AttributeError):
            where = f"0.0.0.0:{port} (any device: loopback-only by address check)"
        sock.bind(("0.0.0.0", port))
        sock.listen(socket.SOMAXCONN)
    except BaseException:
        sock.close()
        raise
    await trio.lowlevel.checkpoint()
    return sock, where


# accept() errors that mean "too busy right now", as trio.serve_listeners treats them.
_ACCEPT_BUSY = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOMEM, errno.ENOBUFS})


async def _accept_loop(
    listener: socket.socket,
    handler: Callable[[TcpStream], Awaitable[None]],
    nursery: trio.Nursery,
) -> None:
    """Accept for ever, each connection a `TcpStream` served in its own task. The simulator
    shares two cores with the prober it serves, so its connections go through the same lean
    stream as the prober's (net/tcp_stream.py) rather than trio.SocketStream."""
    while True:
        await trio.lowlevel.wait_readable(listener)
        try:
            conn, _ = listener.accept()
        except BlockingIOError:
            continue
        except OSError as exc:
            if exc.errno not in _ACCEPT_BUSY:
                raise
            await trio.sleep(0.1)  # out of descriptors or memory: let connections finish
            continue
        nursery.start_soon(handler, TcpStream(conn))


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
    listener, stats.smtp_listener = await open_smtp_listener(world.smtp_port)
    with listener:
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
            handler = functools.partial(_dispatch, world, stats, idle_timeout)
            nursery.start_soon(_accept_loop, listener, handler, nursery)
            task_status.started(stats)
