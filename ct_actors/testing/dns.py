"""DNS doubles: a resolver look-alike on loopback, the same table without sockets, and the
simulated world's MX answers.

* `FakeDnsServer`: a small recursive-resolver look-alike on loopback, for the UDP client's tests
  and the DNS benchmark (`ct_actors.demo.dns_bench`). It answers from an in-memory record table
  over UDP and TCP on the same port, follows CNAMEs within the table, returns NXDOMAIN/NODATA
  with an SOA in the authority section like a real resolver, and truncates (TC) UDP replies
  larger than the query's EDNS payload. Tests subclass it and override `handle_udp` to drop,
  delay, reorder or forge datagrams.
* `FakeDnsClient`: a `DnsClient` answering from the same kind of table without sockets (the
  replies still go through the wire format and our parser), for the MX resolver and the DNSBL
  checker under MockClock.
* `SimResolver`: an `MxResolver` answering from the simulated world's tables (the pipeline
  tests' resolver, beside `SimConnector`).
"""

from __future__ import annotations

import ipaddress
import socket
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from functools import partial
from typing import Any

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import trio

from ct_actors.dns import wire
from ct_actors.dns.client import DnsReply
from ct_actors.dns.types import DnsUnavailable, MxHost, MxLookup, MxStatus
from ct_actors.sim.stats import SimStats
from ct_actors.sim.world import World
from ct_actors.sim.world_types import Behaviour

# owner name -> [(type, rdata text)], e.g. {"example.com": [("MX", "10 mx.example.com.")]}
Records = Mapping[str, Sequence[tuple[str, str]]]

_SOA = "ns.fake.invalid. hostmaster.fake.invalid. 1 3600 600 86400 60"


class FakeDnsServer:
    def __init__(
        self,
        records: Records | None = None,
        *,
        host: str = "127.0.77.1",
        port: int = 0,
        ttl: int = 300,
        rcodes: Mapping[str, str] | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._family = (
            socket.AF_INET if ipaddress.ip_address(host).version == 4 else socket.AF_INET6
        )
        self._zone: dict[dns.name.Name, dict[dns.rdatatype.RdataType, dns.rrset.RRset]] = {}
        by_owner: dict[tuple[dns.name.Name, dns.rdatatype.RdataType], list[str]] = {}
        for owner, rrs in (records or {}).items():
            name = dns.name.from_text(owner)
            self._zone.setdefault(name, {})
            for type_text, rdata in rrs:
                key = (name, dns.rdatatype.from_text(type_text))
                by_owner.setdefault(key, []).append(rdata)
        for (name, rtype), texts in by_owner.items():
            self._zone[name][rtype] = dns.rrset.from_text_list(name, ttl, "IN", rtype, texts)
        self._rcodes = {
            dns.name.from_text(n): dns.rcode.from_text(r) for n, r in (rcodes or {}).items()
        }
        self._soa = dns.rrset.from_text(dns.name.root, ttl, "IN", "SOA", _SOA)
        self.udp_queries = 0
        self.tcp_queries = 0
        self.udp_socket: trio.socket.SocketType | None = None
        self.nursery: trio.Nursery | None = None

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        """Bind UDP and TCP on one port and answer until cancelled; `started()` gets the port."""
        udp, listeners = await self._bind()
        self.udp_socket = udp
        with udp:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                nursery.start_soon(partial(trio.serve_listeners, self._handle_tcp, listeners))
                task_status.started(self.port)
                while True:
                    data, address = await udp.recvfrom(65535)
                    self.udp_queries += 1
                    await self.handle_udp(data, address)

    async def handle_udp(self, data: bytes, address: Any) -> None:
        """Answer one datagram. Override to misbehave."""
        try:
            query = dns.message.from_wire(data)
        except dns.exception.DNSException:
            return
        await self.send(self.udp_reply(query), address)

    async def send(self, data: bytes, address: Any) -> None:
        assert self.udp_socket is not None
        await self.udp_socket.sendto(data, address)

    def udp_reply(self, query: dns.message.Message) -> bytes:
        """The reply as sent over UDP: truncated with TC when over the client's payload size."""
        response = self.build_response(query)
        limit = max(query.payload, 512) if query.edns >= 0 else 512
        try:
            return response.to_wire(max_size=limit)
        except dns.exception.TooBig:
            truncated = dns.message.make_response(query, recursion_available=True)
            truncated.set_rcode(response.rcode())
            truncated.flags |= dns.flags.TC
            return truncated.to_wire()

    def build_response(self, query: dns.message.Message) -> dns.message.Message:
        response = dns.message.make_response(
            query, recursion_available=True, our_payload=wire.EDNS_PAYLOAD
        )
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return response
        question = query.question[0]
        name = question.name
        if name in self._rcodes:
            response.set_rcode(self._rcodes[name])
            return response
        for _ in range(wire.MAX_CNAME_HOPS + 1):
            node = self._zone.get(name)
            if node is None:
                response.set_rcode(dns.rcode.NXDOMAIN)
                break
            if question.rdtype in node:
                response.answer.append(node[question.rdtype])
                return response
            cname = node.get(dns.rdatatype.CNAME)
            if cname is None:
                break  # NODATA
            response.answer.append(cname)
            name = next(iter(cname)).target
        response.authority.append(self._soa)
        return response

    async def _bind(self) -> tuple[trio.socket.SocketType, list[trio.SocketListener]]:
        # With port 0 the kernel picks the UDP port; TCP must then get the same number, which
        # can (rarely) be taken, so try a few times.
        for _ in range(20):
            udp = trio.socket.socket(self._family, socket.SOCK_DGRAM)
            udp.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
            await udp.bind((self.host, self.port))
            port = udp.getsockname()[1]
            try:
                listeners = await trio.open_tcp_listeners(port, host=self.host)
            except OSError:
                udp.close()
                if self.port:
                    raise
                continue
            self.port = port
            return udp, listeners
        raise OSError(f"could not bind UDP and TCP to one port on {self.host}")

    async def _handle_tcp(self, stream: trio.SocketStream) -> None:
        async with stream:
            try:
                while True:
                    header = await _receive_exactly(stream, 2)
                    if header is None:
                        return
                    data = await _receive_exactly(stream, int.from_bytes(header, "big"))
                    if data is None:
                        return
                    self.tcp_queries += 1
                    response = self.build_response(dns.message.from_wire(data))
                    reply = response.to_wire(max_size=65535)
                    await stream.send_all(len(reply).to_bytes(2, "big") + reply)
            except (trio.BrokenResourceError, dns.exception.DNSException):
                return


async def _receive_exactly(stream: trio.abc.ReceiveStream, size: int) -> bytes | None:
    buf = bytearray()
    while len(buf) < size:
        chunk = await stream.receive_some(size - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


class FakeDnsClient:
    """Answers from a FakeDnsServer's table without sockets; can delay and fail names."""

    def __init__(
        self, records: Records, *, delay: float = 0.0, unavailable: frozenset[str] = frozenset()
    ) -> None:
        self.server = FakeDnsServer(records, rcodes={n: "SERVFAIL" for n in unavailable})
        self.delay = delay
        self.asked: Counter[tuple[str, str]] = Counter()

    async def exchange(
        self, name: str | dns.name.Name, rdtype: dns.rdatatype.RdataType | str
    ) -> DnsReply:
        query = dns.message.make_query(name, rdtype)
        question = query.question[0]
        key = (
            question.name.to_text(omit_final_dot=True).lower(),
            dns.rdatatype.to_text(question.rdtype),
        )
        self.asked[key] += 1
        await trio.sleep(self.delay)
        # Through the wire format and the client's own parser, as a real reply would go.
        data = self.server.build_response(query).to_wire()
        return DnsReply(wire.decode_reply(data), "192.0.2.53", False, data)


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
