"""TrioConnector: MX addresses are IP literals, connected without a name lookup (loopback only)."""

from __future__ import annotations

import socket
import struct
from functools import partial

import pytest
import trio
import trio.testing

from ct_actors.net.connector import TrioConnector
from ct_actors.net.tcp_stream import TcpStream

pytestmark = pytest.mark.timeout(10)


async def _echo_listener(nursery: trio.Nursery, host: str) -> tuple[int, list[str]]:
    peers: list[str] = []

    async def handler(stream: trio.SocketStream) -> None:
        peers.append(stream.socket.getpeername()[0])
        async with stream:
            await stream.send_all(b"220 ready\r\n")

    listeners = await nursery.start(partial(trio.serve_tcp, handler, 0, host=host))
    return listeners[0].socket.getsockname()[1], peers


async def test_connects_to_an_ip_literal_and_binds_the_source_address() -> None:
    async with trio.open_nursery() as nursery:
        port, peers = await _echo_listener(nursery, "127.0.3.7")
        stream = await TrioConnector(source_address="127.0.9.9").connect("127.0.3.7", port)
        async with stream:
            assert await stream.receive_some(100) == b"220 ready\r\n"
        assert peers == ["127.0.9.9"]
        nursery.cancel_scope.cancel()


async def test_a_refused_connection_raises_oserror() -> None:
    # A port nothing listens on, on loopback: the kernel refuses at once.
    probe = trio.socket.socket()
    await probe.bind(("127.0.3.8", 0))
    port = probe.getsockname()[1]
    probe.close()
    with pytest.raises(OSError):
        await TrioConnector().connect("127.0.3.8", port)


async def test_a_host_name_still_goes_through_name_resolution() -> None:
    async with trio.open_nursery() as nursery:
        port, _ = await _echo_listener(nursery, "127.0.0.1")
        stream = await TrioConnector().connect("localhost", port)
        async with stream:
            assert await stream.receive_some(100) == b"220 ready\r\n"
        nursery.cancel_scope.cancel()


async def test_the_stream_is_a_plain_tcp_stream_with_nodelay() -> None:
    async with trio.open_nursery() as nursery:
        port, _ = await _echo_listener(nursery, "127.0.3.7")
        stream = await TrioConnector().connect("127.0.3.7", port)
        assert isinstance(stream, TcpStream)
        assert stream.socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        await stream.aclose()
        nursery.cancel_scope.cancel()


def _pair() -> tuple[TcpStream, socket.socket]:
    ours, theirs = socket.socketpair()
    return TcpStream(ours), theirs


async def test_send_receive_end_of_stream_and_close() -> None:
    stream, peer = _pair()
    with peer:
        await stream.send_all(b"EHLO probe.example\r\n")
        assert peer.recv(100) == b"EHLO probe.example\r\n"
        peer.sendall(b"250 hi\r\n")
        assert await stream.receive_some(100) == b"250 hi\r\n"
        peer.shutdown(socket.SHUT_WR)
        assert await stream.receive_some(100) == b""  # end of stream, as trio's streams say it
    await stream.aclose()
    await stream.aclose()  # idempotent
    with pytest.raises(trio.ClosedResourceError):
        await stream.receive_some(100)
    with pytest.raises(trio.ClosedResourceError):
        await stream.send_all(b"QUIT\r\n")


async def test_a_reset_is_a_broken_resource_with_the_os_error_as_cause() -> None:
    stream, peer = _pair()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()  # linger 0: the peer resets
    with pytest.raises(trio.BrokenResourceError) as caught:
        for _ in range(3):  # the first send may still be taken by the kernel
            await stream.send_all(b"RSET\r\n")
            await stream.receive_some(100)
    assert isinstance(caught.value.__cause__, OSError)
    stream.close()


async def test_a_cancelled_read_consumes_nothing(autojump_clock: trio.testing.MockClock) -> None:
    stream, peer = _pair()
    with peer:
        with trio.move_on_after(5) as scope:
            await stream.receive_some(100)
        assert scope.cancelled_caught
        peer.sendall(b"220 late\r\n")
        assert await stream.receive_some(100) == b"220 late\r\n"
    stream.close()


async def test_a_large_write_waits_for_the_peer_to_read() -> None:
    stream, peer = _pair()
    peer.setblocking(False)
    payload = b"x" * (4 << 20)  # more than both socket buffers hold
    received = bytearray()

    async def drain() -> None:
        while len(received) < len(payload):
            await trio.lowlevel.wait_readable(peer)
            received.extend(peer.recv(1 << 16))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(drain)
        await stream.send_all(payload)
    assert bytes(received) == payload
    stream.close()
    peer.close()


async def test_a_closed_stream_wakes_a_blocked_reader_in_another_task() -> None:
    stream, peer = _pair()
    with peer:
        async with trio.open_nursery() as nursery:

            async def reader() -> None:
                with pytest.raises(trio.ClosedResourceError):
                    await stream.receive_some(100)

            nursery.start_soon(reader)
            await trio.testing.wait_all_tasks_blocked()
            await stream.aclose()
