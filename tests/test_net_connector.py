"""TrioConnector: MX addresses are IP literals, connected without a name lookup (loopback only)."""

from __future__ import annotations

from functools import partial

import pytest
import trio

from ct_actors.net.connector import TrioConnector

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
