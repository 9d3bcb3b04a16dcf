"""The simulated internet's one SMTP listener (ct_actors/sim/server.py): hosts told apart by the
local address a client dialled, loopback only, dead hosts reset, a handful of descriptors for a
world of any size. Real loopback sockets, real time: each test bounded by `fail_after`."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
from e2e_support import free_port

from ct_actors.actors.domain_task import smtp_probe
from ct_actors.actors.pool_manager import SmtpPoolManager
from ct_actors.actors.pool_settings import PoolSettings
from ct_actors.dns.types import MxHost, MxLookup, MxStatus
from ct_actors.net.connector import TrioConnector
from ct_actors.outcome import Passed
from ct_actors.probe.domain_probe import RetryPolicy
from ct_actors.sim.server import connection_allowed, open_smtp_listener, serve_world
from ct_actors.sim.stats import SimStats
from ct_actors.sim.world import Behaviour, SimHost, World

pytestmark = pytest.mark.timeout(60)



def _world(seed: int, domains: int, **kw: object) -> World:
    return World.generate(
        seed,
        domains,
        smtp_port=free_port(socket.SOCK_STREAM),
        dns_port=free_port(socket.SOCK_DGRAM),
        latency_ms=1,
        jitter_ms=0,
        **kw,  # type: ignore[arg-type]
    )


@asynccontextmanager
async def served(world: World) -> AsyncIterator[SimStats]:
    async with trio.open_nursery() as nursery:
        stats = await nursery.start(serve_world, world)
        yield stats
        nursery.cancel_scope.cancel()


async def _banner(ip: str, port: int) -> bytes:
    stream = await trio.open_tcp_stream(ip, port)
    async with stream:
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = await stream.receive_some(4096)
            assert chunk, f"closed after {data!r}"
            data += chunk
        return data


def _greeting(host: SimHost) -> bytes:
    return f"220 {host.name} ESMTP ct-actors-sim\r\n".encode()


async def _reset_before_any_byte(ip: str, port: int) -> None:
    """The connect succeeds (the wildcard listener takes every address), then the first read
    finds the connection reset, not a byte of data and not a clean end."""
    stream = await trio.open_tcp_stream(ip, port)
    async with stream:
        with pytest.raises(trio.BrokenResourceError) as caught:
            await stream.receive_some(4096)
    assert isinstance(caught.value.__cause__, ConnectionResetError)


@pytest.mark.parametrize(
    ("peer", "local", "allowed"),
    [
        ("127.0.0.1", "127.0.0.1", True),
        ("127.0.0.1", "127.12.34.56", True),
        ("127.255.255.254", "127.0.0.1", True),
        ("127.0.0.1", "127.255.255.254", True),
        ("10.0.0.1", "127.0.0.1", False),  # a peer from a private network
        ("127.0.0.1", "10.0.0.1", False),  # dialled the machine's own private address
        ("192.168.1.5", "192.168.1.5", False),
        ("127.0.0.1", "192.168.1.5", False),
        ("203.0.113.9", "127.0.0.1", False),
        ("::1", "::1", False),  # IPv6 loopback: the simulated internet is IPv4 loopback only
        ("127.0.0.1", "::1", False),
        ("::ffff:127.0.0.1", "127.0.0.1", False),
        ("128.0.0.1", "127.0.0.1", False),  # just past 127.0.0.0/8
        ("0.0.0.0", "127.0.0.1", False),
        ("", "127.0.0.1", False),
        ("localhost", "127.0.0.1", False),
    ],
)
def test_connection_allowed_only_when_both_ends_are_in_127_8(
    peer: str, local: str, allowed: bool
) -> None:
    assert connection_allowed(peer, local) is allowed


async def test_the_listener_is_bound_to_lo_or_says_it_is_not(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    port = free_port(socket.SOCK_STREAM)
    listener, where = await open_smtp_listener(port)
    with listener:
        assert listener.getsockname() == ("0.0.0.0", port)
        device = listener.getsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, 16)
    # Unprivileged since Linux 5.7 (older kernels: CAP_NET_RAW), so the first fence is up.
    assert (where, device.rstrip(b"\0")) == (f"0.0.0.0:{port} on lo", b"lo")
    # A kernel that refuses the option: a plain wildcard, and the ready line says so.
    monkeypatch.delattr(socket, "SO_BINDTODEVICE")
    listener, where = await open_smtp_listener(port)
    with listener:
        assert where == f"0.0.0.0:{port} (any device: loopback-only by address check)"


async def test_one_listener_serves_many_hosts_told_apart_by_local_address() -> None:
    world = _world(21, 60)
    a, b = (world.mx_hosts(d.name)[0] for d in world.by_behaviour(Behaviour.VERIFIABLE)[:2])
    assert a.ip != b.ip
    with trio.fail_after(30):
        async with served(world) as stats:
            assert await _banner(a.ip, world.smtp_port) == _greeting(a)
            assert await _banner(b.ip, world.smtp_port) == _greeting(b)
            assert await _banner(a.ip, world.smtp_port) == _greeting(a)
    assert dict(stats.connections) == {a.name: 2, b.name: 1}
    assert stats.smtp_listener.startswith(f"0.0.0.0:{world.smtp_port}")


async def test_dead_and_unknown_addresses_accept_then_reset_and_are_counted() -> None:
    """As a TCP load balancer with no healthy backend answers (Envoy's TCP proxy closes with
    response flag UH, "no healthy upstream"; HAProxy in TCP mode accepts and closes): the
    connect succeeds and the connection is reset before any byte (sim/server.py)."""
    world = _world(21, 200)
    domain = world.by_behaviour(Behaviour.FIRST_MX_DEAD)[0]
    dead, live = world.mx_hosts(domain.name)
    assert not dead.listening and live.listening
    unknown = "127.99.0.1"
    assert world.host_by_ip(unknown) is None
    with trio.fail_after(30):
        async with served(world) as stats:
            await _reset_before_any_byte(dead.ip, world.smtp_port)
            await _reset_before_any_byte(unknown, world.smtp_port)
            await _reset_before_any_byte(unknown, world.smtp_port)
            # The live second MX of the same domain answers on the same listener.
            assert await _banner(live.ip, world.smtp_port) == _greeting(live)
    snap = stats.statistics()
    assert (snap.reset_dead_host, snap.reset_unknown_address) == (1, 2)
    assert stats.reset_dead_host == {dead.name: 1}
    assert snap.closed_not_loopback == 0
    # Reset connections are not sessions: the host's own counters saw only the live one.
    assert snap.connections_by_host == {live.name: 1}


async def test_the_prober_passes_a_first_mx_dead_domain_on_its_second_mx() -> None:
    # The real pools and domain walk over real sockets: the dead first MX accepts and resets,
    # the visit is a disconnect at the greeting, the walk moves on, the second MX concludes:
    # the world's expected outcome.
    world = _world(21, 200)
    domain = world.by_behaviour(Behaviour.FIRST_MX_DEAD)[0]
    dead, live = world.mx_hosts(domain.name)
    settings = PoolSettings(
        helo_name="probe.ct-actors.test",
        mail_from="bounce@ct-actors.test",
        port=world.smtp_port,
        starttls="never",
        connect_timeout=5.0,
        command_timeout=10.0,
    )
    # The world's MX answer, as its DNS server gives it.
    mx = tuple(MxHost(name, pref, (world.hosts[name].ip,)) for pref, name in sorted(domain.mx))
    assert [h.name for h in mx] == [dead.name, live.name]
    lookup = MxLookup(domain.name, MxStatus.FOUND, mx)
    with trio.fail_after(30):
        async with served(world) as stats, trio.open_nursery() as nursery:
            manager = SmtpPoolManager(settings, TrioConnector(), max_connections=8)
            await nursery.start(manager.run)
            result = await smtp_probe(lookup, world.people(domain.name), manager, RetryPolicy())
            manager.close()
            nursery.cancel_scope.cancel()
    expected = world.expected(domain.name)
    assert isinstance(result.result, Passed)
    assert (result.result.method_type, result.result.confidence) == (
        expected.method_type,
        expected.confidence,
    )
    visits = result.result.evidence["visits"]
    assert [(v["host"], v["outcome"]) for v in visits] == [
        (dead.name, "disconnected"),
        (live.name, "concluded"),
    ]
    assert visits[0]["detail"].startswith("greeting: ")
    assert stats.reset_dead_host == {dead.name: 1}


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_a_world_of_50000_hosts_costs_a_handful_of_descriptors() -> None:
    # One listener per host needed 50,000 descriptors here (the soft limit is often 1,024,
    # the hard limit of this machine 20,000). Hosts only: the listener does not care how many
    # domains point at them.
    n = 50_000
    hosts = {
        f"mx{i}.big.test": SimHost(
            f"mx{i}.big.test",
            f"127.{1 + i // 65536}.{i // 256 % 256}.{i % 256}",
            Behaviour.VERIFIABLE,
        )
        for i in range(n)
    }
    world = World(
        seed=1,
        domains={},
        hosts=hosts,
        latency_ms=1,
        jitter_ms=0,
        smtp_port=free_port(socket.SOCK_STREAM),
        dns_port=free_port(socket.SOCK_DGRAM),
    )
    first, last = hosts["mx0.big.test"], hosts[f"mx{n - 1}.big.test"]
    with trio.fail_after(30):
        before = _open_fds()
        async with served(world):
            serving = _open_fds()
            assert await _banner(first.ip, world.smtp_port) == _greeting(first)
            assert await _banner(last.ip, world.smtp_port) == _greeting(last)
        after = _open_fds()
    print(f"\nopen descriptors: {before} before, {serving} serving {n} hosts, {after} after")
    assert serving - before <= 4  # the SMTP listener, the DNS socket, trio's bookkeeping
    assert after <= before
