"""A TCP byte stream on a plain non-blocking socket, for the SMTP client's connections.

`trio.SocketStream` over `trio.socket` is general: every receive first tries the socket inside
an async context manager that checkpoints (a full trip through the scheduler), then raises and
catches `BlockingIOError`, then waits for readability and tries again. A prober's read always
follows a command it has just sent, so the reply is never there yet: `TcpStream` waits for
readability first and reads once (one scheduler trip, no exception), and sends without a
scheduler trip when the kernel takes the bytes at once (it still raises if the caller is already
cancelled). Measured on the smtp bench: docs/performance.md.

Semantics kept from `trio.SocketStream`: TCP_NODELAY on (pipelined command groups and short
commands must not wait for Nagle), OS errors surface as `trio.BrokenResourceError` with the
`OSError` as its cause, end of stream is `b""`, `aclose` is a checkpoint and idempotent, and
the IO manager is told before the descriptor is closed (`notify_closing`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import socket
from collections.abc import Awaitable, Callable

import trio

DEFAULT_RECEIVE_SIZE = 65536


class TcpStream(trio.abc.HalfCloseableStream):
    """A connected TCP socket as a trio stream; `socket` is the stdlib socket (for addresses)."""

    def __init__(self, sock: socket.socket) -> None:
        sock.setblocking(False)
        with contextlib.suppress(OSError):  # not every socket family has it (e.g. AF_UNIX)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.socket = sock
        self._closed = False

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        await trio.lowlevel.checkpoint_if_cancelled()
        sock = self.socket
        with memoryview(data) as view:
            sent = 0
            total = len(view)
            while sent < total:
                try:
                    sent += sock.send(view[sent:])
                except BlockingIOError:
                    await self._wait(trio.lowlevel.wait_writable)
                except OSError as exc:
                    raise trio.BrokenResourceError(str(exc)) from exc

    async def wait_send_all_might_not_block(self) -> None:
        await self._wait(trio.lowlevel.wait_writable)

    async def send_eof(self) -> None:
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        await trio.lowlevel.checkpoint()
        with contextlib.suppress(OSError):  # already disconnected: nothing to half-close
            self.socket.shutdown(socket.SHUT_WR)

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        size = DEFAULT_RECEIVE_SIZE if max_bytes is None else max_bytes
        if size < 1:
            raise ValueError("max_bytes must be >= 1")
        while True:
            await self._wait(trio.lowlevel.wait_readable)
            try:
                return self.socket.recv(size)
            except BlockingIOError:
                continue  # woken without data (rare): wait again
            except OSError as exc:
                raise trio.BrokenResourceError(str(exc)) from exc

    async def _wait(self, wait: Callable[[socket.socket], Awaitable[None]]) -> None:
        # trio raises ClosedResourceError itself when another task closes us meanwhile.
        if self._closed:
            raise trio.ClosedResourceError("the stream is closed")
        await wait(self.socket)

    def close(self) -> None:
        """Close now, without a checkpoint (for bounded clean-up paths)."""
        if not self._closed:
            self._closed = True
            trio.lowlevel.notify_closing(self.socket)
            self.socket.close()

    async def aclose(self) -> None:
        self.close()
        await trio.lowlevel.checkpoint()


async def connect_tcp(
    family: socket.AddressFamily, address: str, port: int, source_address: str | None
) -> TcpStream:
    """Connect to an IP literal without a name lookup (see `TrioConnector`). Raises OSError as
    `trio.socket`'s connect does: refused, unreachable, or an address we cannot bind."""
    sock = socket.socket(family, socket.SOCK_STREAM | socket.SOCK_NONBLOCK | socket.SOCK_CLOEXEC)
    try:
        if source_address is not None:
            # As open_tcp_stream does: pick the port at connect time, not at bind time, so
            # many connections from one source address do not exhaust ephemeral ports.
            no_port = getattr(socket, "IP_BIND_ADDRESS_NO_PORT", None)
            if no_port is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.IPPROTO_IP, no_port, 1)
            sock.bind((source_address, 0))
        await trio.lowlevel.checkpoint_if_cancelled()
        code = sock.connect_ex((address, port))
        if code == errno.EINPROGRESS:
            await trio.lowlevel.wait_writable(sock)
            code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        else:
            await trio.lowlevel.cancel_shielded_checkpoint()
        if code:
            raise OSError(code, f"Error connecting to {(address, port)}: {os.strerror(code)}")
    except BaseException:
        trio.lowlevel.notify_closing(sock)
        sock.close()
        raise
    return TcpStream(sock)
