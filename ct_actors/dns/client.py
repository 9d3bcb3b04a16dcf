"""A stub DNS client multiplexing all queries over one UDP socket per address family.

dnspython's async resolver opens a socket per query, which costs ~0.5 ms of CPU per lookup
under trio. Here every query is a datagram on a shared socket; one receive loop hands each
reply to its waiter by query id, after checking the reply came from the nameserver we asked
and repeats our question (`wire.reply_matches`). Anything else is counted as stray and dropped
unparsed, so junk or spoofing attempts cost almost nothing.

Replies are read by `wire.parse_reply` (a small strict parser, dnspython only for what it
declines), and attempts wait parked on their task rather than on an Event inside a cancel scope:
one timer task expires them in deadline order. Together that took the client from ~0.5 ms to
~0.15-0.2 ms of CPU per MX lookup (see `ct_actors.demo.dns_bench`).

Trade-off of sharing: the source port is fixed for the client's lifetime, so off-path spoofing
resistance rests on the 16-bit random id, the question match and the source address check.
That is acceptable for a prober talking to a nearby recursive resolver, not for a resolver
facing the open internet.

All timing goes through trio, so the client runs under `trio.testing.MockClock`.
"""

from __future__ import annotations

import collections
import contextlib
import socket
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import Any, NamedTuple, Self

import dns.message
import dns.name
import dns.rcode
import dns.rdatatype
import trio

from ct_actors.config import DnsConfig
from ct_actors.dns import wire
from ct_actors.dns.nameservers import (
    Nameserver,
    QuerySettings,
    parse_nameserver,
    system_nameservers,
)
from ct_actors.dns.types import DnsUnavailable

# At hundreds of queries in flight the default (~200 KiB) buffer overflows in bursts and replies
# are dropped by the kernel, turning into timeouts and retries.
RECEIVE_BUFFER_BYTES = 4 * 1024 * 1024
_MAX_DATAGRAM = 65535
_RECEIVE_BATCH = 64
_MAX_IN_FLIGHT_LIMIT = 16384  # keeps random id selection cheap: at most 1/4 of ids taken
# These say something about one nameserver, not about the name: ask the next one if any.
_TRY_NEXT_SERVER = frozenset(
    {dns.rcode.SERVFAIL, dns.rcode.REFUSED, dns.rcode.NOTIMP, dns.rcode.FORMERR}
)


class DnsReply(NamedTuple):
    reply: wire.Reply  # what the lookups read, from the fast parser (or dnspython, converted)
    nameserver: str
    via_tcp: bool
    data: bytes  # the reply as received

    @property
    def message(self) -> dns.message.Message:
        """The reply parsed by dnspython, anew on each access (~0.25 ms): for tests and
        debugging, not for the lookup path."""
        return dns.message.from_wire(self.data)


@dataclass(eq=False, slots=True)
class _Waiter:
    """One attempt waiting for its reply, its timeout or the client's closing."""

    query: wire.WireQuery
    server: Nameserver
    deadline: float
    task: trio.lowlevel.Task | None = None  # set while the attempt is parked
    finished: bool = False  # woken, or about to be: reply, truncation, timeout or close
    reply: wire.Reply | None = None
    data: bytes = b""
    truncated: bool = False
    malformed: str = ""
    closed: bool = False

    def finish(self) -> None:
        self.finished = True
        if self.task is not None:
            trio.lowlevel.reschedule(self.task)
            self.task = None


_DNS = DnsConfig()


@dataclass(frozen=True, slots=True)
class DnsClientStatistics:
    """Counters since start. `received` counts every datagram read; `stray` those ignored
    (unknown or finished id, wrong source, wrong question); `malformed` those that matched
    but did not parse; `timeouts` attempts without a usable reply; `in_flight` queries in
    progress, including those queued behind `max_in_flight`."""

    sent: int
    received: int
    timeouts: int
    retries: int
    stray: int
    malformed: int
    tcp_fallbacks: int
    in_flight: int


class UdpDnsClient:
    """Shared-socket DNS client. Use as `async with UdpDnsClient([...]) as client:`.

    Each attempt goes to the next nameserver in order (the first attempt always to the active
    one, `primary`: the first configured until the resolver kill switch moves it on),
    waits up to `timeout` seconds and is retried on timeout; a truncated reply is re-asked over
    TCP. A SERVFAIL/REFUSED/NOTIMP/FORMERR moves on to the next nameserver when there is one.
    An empty `nameservers` list means the system's nameservers.
    """

    def __init__(
        self,
        nameservers: Sequence[str],
        port: int = _DNS.port,
        timeout: float = _DNS.timeout,
        attempts: int = _DNS.attempts,
        *,
        max_in_flight: int = 2048,
        receive_buffer: int = RECEIVE_BUFFER_BYTES,
    ) -> None:
        if attempts < 1:
            raise ValueError("attempts must be >= 1")
        if timeout <= 0:
            raise ValueError("timeout must be > 0")
        if not 1 <= max_in_flight <= _MAX_IN_FLIGHT_LIMIT:
            raise ValueError(f"max_in_flight must be in 1..{_MAX_IN_FLIGHT_LIMIT}")
        self._servers = [parse_nameserver(ns, port) for ns in (nameservers or system_nameservers())]
        self._timeout = timeout
        self._attempts = attempts
        self.primary = 0
        self._receive_buffer_request = receive_buffer
        self._receive_buffer = 0
        self._slots = trio.Semaphore(max_in_flight)
        # Plain non-blocking stdlib sockets driven by trio.lowlevel: trio's socket wrapper costs
        # a scheduler round and an address check per call, and the receive loop wants to drain
        # a burst of datagrams per wake-up.
        self._sockets: dict[int, socket.socket] = {}
        self._pending: dict[int, _Waiter] = {}
        # Parked attempts in deadline order (one timeout for all, so order of arrival): a single
        # timer task expires them, instead of a cancel scope per attempt (~13 µs each).
        self._deadlines: collections.deque[_Waiter] = collections.deque()
        self._timer_wakeup = trio.Event()
        self._timer_idle = False
        self._nursery_cm: AbstractAsyncContextManager[trio.Nursery] | None = None
        self._nursery: trio.Nursery | None = None
        self._closed = False
        self._in_flight = 0
        self._stats = dict.fromkeys(
            ("sent", "received", "timeouts", "retries", "stray", "malformed", "tcp_fallbacks"), 0
        )

    @property
    def nameservers(self) -> list[str]:
        return [s.host for s in self._servers]

    def reconfigure(self, settings: QuerySettings) -> None:
        """SIGHUP: new per-query timeout and attempts from the next query. (While attempts with
        the old timeout are still parked, a shorter new one may expire a little late: the
        deadline queue is ordered by arrival.)"""
        if settings.attempts < 1 or settings.timeout <= 0:
            raise ValueError("attempts must be >= 1 and timeout > 0")
        self._timeout, self._attempts = settings.timeout, settings.attempts

    @property
    def active_nameserver(self) -> str:
        return self._servers[self.primary].host

    def switch_nameserver(self) -> str | None:
        """Make the next configured nameserver the active one; None when there is no next
        (the kill switch then pauses the pipeline instead of going round in circles)."""
        if self.primary + 1 >= len(self._servers):
            return None
        self.primary += 1
        return self.active_nameserver

    def reset_nameserver(self) -> None:
        self.primary = 0

    @property
    def receive_buffer_bytes(self) -> int:
        """SO_RCVBUF as granted by the kernel (Linux reports twice the usable payload)."""
        return self._receive_buffer

    def statistics(self) -> DnsClientStatistics:
        return DnsClientStatistics(**self._stats, in_flight=self._in_flight)

    async def __aenter__(self) -> Self:
        if self._nursery_cm is not None or self._closed:
            raise RuntimeError("UdpDnsClient can be entered only once")
        try:
            for family in sorted({s.family for s in self._servers}):
                sock = socket.socket(family, socket.SOCK_DGRAM)
                self._sockets[family] = sock
                sock.setblocking(False)
                self._receive_buffer = _grow_receive_buffer(sock, self._receive_buffer_request)
                sock.bind(("0.0.0.0" if family == socket.AF_INET else "::", 0))
            await trio.lowlevel.checkpoint()
            self._nursery_cm = trio.open_nursery()
            self._nursery = await self._nursery_cm.__aenter__()
        except BaseException:
            self._close_sockets()
            raise
        for sock in self._sockets.values():
            self._nursery.start_soon(self._receive_loop, sock)
        self._nursery.start_soon(self._timer_loop)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._closed = True
        for waiter in self._pending.values():
            waiter.closed = True
            waiter.finish()
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()
        try:
            # The body's exception is not the nursery's business: handing it over would wrap it
            # in an ExceptionGroup. The children (receive loops, timer) were just cancelled.
            assert self._nursery_cm is not None
            await self._nursery_cm.__aexit__(None, None, None)
        finally:
            self._close_sockets()

    async def query(
        self, name: str | dns.name.Name, rdtype: dns.rdatatype.RdataType | str
    ) -> dns.message.Message:
        """The reply as a dnspython Message; raises DnsUnavailable when no nameserver answered
        in time. Parsing it costs ~0.25 ms: lookups use `exchange`, this is for tests."""
        return (await self.exchange(name, rdtype)).message

    async def exchange(
        self, name: str | dns.name.Name, rdtype: dns.rdatatype.RdataType | str
    ) -> DnsReply:
        """The reply as a `wire.Reply` (and its bytes), the nameserver that answered and
        whether over TCP; raises DnsUnavailable when no nameserver answered in time.

        Raises ValueError for a name that cannot be put in a query.
        """
        if self._nursery is None or self._closed:
            raise RuntimeError("UdpDnsClient is not running (use `async with`)")
        name_wire = wire.name_to_wire(name)
        rtype = wire.to_rdtype(rdtype)
        self._in_flight += 1
        try:
            # acquire_nowait when a slot is free (no one is queued then): `async with` costs a
            # checkpoint, and the wait for the reply is one anyway.
            if self._slots.value:
                self._slots.acquire_nowait()
            else:
                await self._slots.acquire()
            try:
                return await self._exchange(name_wire, rtype)
            finally:
                self._slots.release()
        finally:
            self._in_flight -= 1

    async def _exchange(self, name_wire: bytes, rdtype: dns.rdatatype.RdataType) -> DnsReply:
        reasons: list[str] = []
        failed_answer: DnsReply | None = None
        # Fixed for the whole query: a switch while it waits on the old resolver must not send
        # its next attempt back there ((new primary + attempt) would wrap round to it).
        primary = self.primary
        server = self._servers[primary]
        for attempt in range(self._attempts):
            if attempt:
                self._stats["retries"] += 1
            server = self._servers[(primary + attempt) % len(self._servers)]
            try:
                reply = await self._attempt(name_wire, rdtype, server)
            except (OSError, trio.TooSlowError, trio.BrokenResourceError, wire.MalformedReply) as e:
                reasons.append(f"{server.host}: {e.__class__.__name__}: {e}")
                continue
            if reply is None:
                reasons.append(f"{server.host}: timeout after {self._timeout:g}s")
                continue
            rcode = reply.reply.rcode
            if rcode in _TRY_NEXT_SERVER and len(self._servers) > 1:
                reasons.append(f"{server.host}: {dns.rcode.to_text(dns.rcode.Rcode.make(rcode))}")
                failed_answer = reply
                continue
            return reply
        if failed_answer is not None:
            # The caller's interpretation turns this rcode into DnsUnavailable with its name.
            return failed_answer
        raise DnsUnavailable(
            _name_text(name_wire),
            f"no reply after {self._attempts} attempt(s): " + "; ".join(reasons),
            nameserver=server.host,
        )

    async def _attempt(
        self, name_wire: bytes, rdtype: dns.rdatatype.RdataType, server: Nameserver
    ) -> DnsReply | None:
        if self._closed:
            raise DnsUnavailable(_name_text(name_wire), "client closed", server.host)
        qid = self._free_id()
        query = wire.build_query(name_wire, rdtype, qid=qid)
        waiter = _Waiter(query, server, trio.current_time() + self._timeout)
        self._pending[qid] = waiter
        try:
            # No checkpoint of its own: waiting for the reply right after is one.
            await _send(self._sockets[server.family], query.wire, server.sockaddr, checkpoint=False)
            self._stats["sent"] += 1
            await self._wait(waiter)
        finally:
            if self._pending.get(qid) is waiter:
                del self._pending[qid]
        if waiter.closed:
            raise DnsUnavailable(_name_text(name_wire), "client closed", server.host)
        if waiter.reply is not None:
            return DnsReply(waiter.reply, server.host, False, waiter.data)
        if waiter.truncated:
            self._stats["tcp_fallbacks"] += 1
            data = await self._tcp_exchange(query, server)
            return DnsReply(wire.parse_reply(query, data), server.host, True, data)
        self._stats["timeouts"] += 1
        if waiter.malformed:
            raise wire.MalformedReply(f"{waiter.malformed}, then no valid reply")
        return None

    async def _wait(self, waiter: _Waiter) -> None:
        """Park until `waiter.finish()`: called by the receive loop, the timer or the closing."""
        if waiter.finished:  # while a send waited for buffer space
            await trio.lowlevel.checkpoint()
            return
        waiter.task = trio.lowlevel.current_task()
        deadlines = self._deadlines
        # Drop finished attempts from the front here rather than only when the timer wakes,
        # so that the queue stays about as long as the number in flight.
        while deadlines and deadlines[0].task is None:
            deadlines.popleft()
        deadlines.append(waiter)
        if self._timer_idle:
            self._timer_wakeup.set()

        def abort(_: Any) -> trio.lowlevel.Abort:
            # Cancelled: nothing may reschedule the task after this.
            waiter.task = None
            return trio.lowlevel.Abort.SUCCEEDED

        await trio.lowlevel.wait_task_rescheduled(abort)

    async def _timer_loop(self) -> None:
        deadlines = self._deadlines
        while True:
            while deadlines:
                waiter = deadlines[0]
                if waiter.task is None:  # finished or cancelled
                    deadlines.popleft()
                elif waiter.deadline <= trio.current_time():
                    deadlines.popleft()
                    waiter.finish()  # with neither reply nor truncation: a timeout
                else:
                    break
            if deadlines:
                # Later arrivals have later deadlines: nothing to do before this one.
                await trio.sleep_until(deadlines[0].deadline)
            else:
                self._timer_wakeup = trio.Event()
                self._timer_idle = True
                await self._timer_wakeup.wait()
                self._timer_idle = False

    def _free_id(self) -> int:
        # Two pending queries must never share an id, or one would take the other's answer
        # (a question check alone does not suffice: the same name may be asked twice).
        while True:
            qid = wire.new_query_id()
            if qid not in self._pending:
                return qid

    async def _tcp_exchange(self, query: wire.WireQuery, server: Nameserver) -> bytes:
        with trio.fail_after(self._timeout):
            stream = await trio.open_tcp_stream(server.host, server.port)
            async with stream:
                await stream.send_all(len(query.wire).to_bytes(2, "big") + query.wire)
                size = int.from_bytes(await _receive_exactly(stream, 2), "big")
                data = await _receive_exactly(stream, size)
        if not wire.reply_matches(query, data):
            raise wire.MalformedReply("TCP reply does not answer the query")
        return data

    async def _receive_loop(self, sock: socket.socket) -> None:
        while True:
            await trio.lowlevel.wait_readable(sock)
            # Bounded so that a flood cannot starve the tasks the replies are meant to wake.
            # Once drained, straight back to wait_readable (itself a scheduling point); only a
            # full batch needs an extra checkpoint before reading on.
            while True:
                for _ in range(_RECEIVE_BATCH):
                    try:
                        data, address = sock.recvfrom(_MAX_DATAGRAM)
                    except BlockingIOError:
                        break
                    except OSError:
                        # Some platforms report ICMP errors for earlier sends here; they do
                        # not say which query failed, so that query's timeout handles it.
                        continue
                    self._dispatch(data, address)
                else:
                    await trio.lowlevel.checkpoint()
                    continue
                break

    def _dispatch(self, data: bytes, address: Any) -> None:
        stats = self._stats
        stats["received"] += 1
        qid = wire.reply_id(data)
        waiter = self._pending.get(qid) if qid is not None else None
        if (
            waiter is None
            or (address[0], address[1]) != waiter.server.sockaddr
            or not wire.reply_matches(waiter.query, data)
        ):
            stats["stray"] += 1
            return
        if wire.is_truncated(data):
            waiter.truncated = True
        else:
            try:
                waiter.reply = wire.parse_reply(waiter.query, data, matched=True)
                waiter.data = data
            except wire.MalformedReply as exc:
                # Keep waiting: a forged or damaged datagram must not end the query when the
                # genuine reply may still arrive.
                stats["malformed"] += 1
                waiter.malformed = str(exc)
                return
        del self._pending[waiter.query.qid]
        waiter.finish()

    def _close_sockets(self) -> None:
        for sock in self._sockets.values():
            trio.lowlevel.notify_closing(sock)
            sock.close()


async def _send(
    sock: socket.socket, data: bytes, address: tuple[str, int], *, checkpoint: bool = True
) -> None:
    while True:
        try:
            sock.sendto(data, address)
        except BlockingIOError:
            await trio.lowlevel.wait_writable(sock)
            continue
        if checkpoint:
            # Keep the trio contract that an async call is a checkpoint.
            await trio.lowlevel.checkpoint()
        return


def _name_text(name_wire: bytes) -> str:
    """A queried name for messages, as `Name.to_text(omit_final_dot=True)` writes it."""
    return dns.name.from_wire(name_wire, 0)[0].to_text(omit_final_dot=True)


def _grow_receive_buffer(sock: socket.socket, size: int) -> int:
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    granted = int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    force = getattr(socket, "SO_RCVBUFFORCE", None)
    if granted < size and force is not None:
        # SO_RCVBUF is capped by net.core.rmem_max; the FORCE variant is not, but needs
        # CAP_NET_ADMIN. Without it we live with the cap (raise rmem_max in deployment).
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, force, size)
        granted = int(sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF))
    return granted


async def _receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes:
    buf = bytearray()
    while len(buf) < size:
        chunk = await stream.receive_some(size - len(buf))
        if not chunk:
            raise wire.MalformedReply(f"TCP connection closed after {len(buf)} of {size} bytes")
        buf += chunk
    return bytes(buf)
