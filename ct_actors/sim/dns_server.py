"""Authoritative UDP DNS for a simulated world: MX, A, null MX, NODATA and NXDOMAIN.

One socket and one receive loop; answering is synchronous. dnspython (`from_wire` /
`make_response`) handles every query, but rendering through it costs ~0.2-0.4 ms, which would
make the simulator, not the prober, the bottleneck of an MX-only benchmark on two cores. So the
overwhelmingly common shape (one IN question, optional bare EDNS OPT) is answered by a small
hand-written encoder producing the same message; anything else, or a reply that would not fit,
goes through dnspython. Tests check the two agree.

A responder can also play a broken resolver (`fault`): "servfail" answers everything with
SERVFAIL, "silent" drops every query. A broken listener next to a healthy one lets tests exercise
the daemon's switch to its next configured resolver; `DnsResponder.fault` can be changed while
serving, to break or repair a resolver mid-run.
"""

from __future__ import annotations

import contextlib
import socket
import struct
from dataclasses import dataclass
from typing import Literal, get_args

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import trio

from ct_actors.sim.stats import SimStats
from ct_actors.sim.world import World
from ct_actors.sim.world_types import NULL_MX_HOST, Behaviour

TTL = 300
NEGATIVE_TTL = 300
RCVBUF = 4 * 1024 * 1024
FACTS_CACHE_LIMIT = 200_000
OUR_PAYLOAD = 8192  # what dns.message.make_response advertises; the fast path copies it
# The root's first server and its published address (IANA root hints, named.root).
ROOT_SERVERS = ("a.root-servers.net",)
ROOT_SERVER_A = "198.41.0.4"
_SOA_MNAME = "ns.sim.test"
_SOA_RNAME = "hostmaster.sim.test"
_SOA_TIMERS = (1, 3600, 600, 86400, NEGATIVE_TTL)  # serial refresh retry expire minimum

_IN = 1
_A = 1
_NS = 2
_SOA = 6
_MX = 15
_OPT = 41
_QR, _AA, _RD = 0x8000, 0x0400, 0x0100
_HEADER = struct.Struct("!HHHHHH")
_RR = struct.Struct("!HHIH")  # type class ttl rdlength

# "none": answer from the zone; "servfail": SERVFAIL to every query; "silent": never answer.
DnsFault = Literal["none", "servfail", "silent"]
DNS_FAULTS: tuple[DnsFault, ...] = get_args(DnsFault)


@dataclass(frozen=True, slots=True)
class Facts:
    """What the zone says about one (name, type): both renderers work from this."""

    rcode: int = 0
    mx: tuple[tuple[int, str], ...] = ()  # answer MX records; host "." is the null MX
    a: str | None = None  # answer A record
    glue: tuple[tuple[str, str], ...] = ()  # (host, ip) for the additional section
    zone: str | None = None  # SOA owner for the authority section of a negative answer
    ns: tuple[str, ...] = ()  # answer NS records (the root's, for resolver health checks)


def _name_wire(name: str) -> bytes:
    if name in ("", "."):
        return b"\x00"
    labels = (bytes((len(label),)) + label.encode("ascii") for label in name.split("."))
    return b"".join(labels) + b"\x00"


def _rr(owner: bytes, rdtype: int, ttl: int, rdata: bytes) -> bytes:
    return owner + _RR.pack(rdtype, _IN, ttl, len(rdata)) + rdata


class DnsResponder:
    """Turns one query datagram into one reply datagram, from the world's tables."""

    def __init__(
        self, world: World, stats: SimStats, *, fast: bool = True, fault: DnsFault = "none"
    ) -> None:
        self._stats = stats
        self._fast = fast  # False: dnspython only (tests compare the two)
        self.fault = fault
        self._domains = {
            d.name: d for d in world.domains.values() if d.behaviour is not Behaviour.NXDOMAIN
        }
        self._host_ips = {h.name: h.ip for h in world.hosts.values()}
        # Ancestors of existing names exist too (empty non-terminals): NODATA, not NXDOMAIN.
        self._ancestors: set[str] = set()
        for name in (*self._domains, *self._host_ips):
            labels = name.split(".")
            self._ancestors.update(".".join(labels[i:]) for i in range(1, len(labels)))
        self._facts: dict[tuple[str, int], Facts] = {}

    @property
    def fault(self) -> DnsFault:
        """What the responder plays: "none" (the zone's answers), "servfail" or "silent".
        Settable at any time; the next datagram is handled the new way."""
        return self._fault

    @fault.setter
    def fault(self, fault: DnsFault) -> None:
        # Checked here because a misspelt fault would otherwise quietly behave as "none".
        if fault not in DNS_FAULTS:
            raise ValueError(f"fault must be one of {', '.join(DNS_FAULTS)}, got {fault!r}")
        self._fault = fault

    # -- the zone ----------------------------------------------------------------------------

    def facts(self, name: str, rdtype: int) -> Facts:
        """Answer data for a lower-case name without trailing dot."""
        key = (name, rdtype)
        found = self._facts.get(key)
        if found is None:
            if len(self._facts) >= FACTS_CACHE_LIMIT:
                self._facts.clear()
            found = self._facts[key] = self._lookup(name, rdtype)
        return found

    def _lookup(self, name: str, rdtype: int) -> Facts:
        # What any recursive resolver answers, so the daemon's resolver health check (`. NS`
        # and `a.root-servers.net A`, ct_actors/dns/health.py) passes against the simulated
        # internet as it does against a real resolver. A DNS answer only: nothing connects.
        if name in ("", ".") and rdtype == _NS:
            return Facts(ns=ROOT_SERVERS)
        if name == ROOT_SERVERS[0]:
            return Facts(a=ROOT_SERVER_A) if rdtype == _A else Facts(zone="root-servers.net")
        domain = self._domains.get(name)
        host_ip = self._host_ips.get(name)
        if domain is None and host_ip is None:
            rcode = dns.rcode.NOERROR if name in self._ancestors else dns.rcode.NXDOMAIN
            return Facts(rcode=rcode, zone=self._zone_of(name))
        if rdtype == _MX and domain is not None and domain.mx:
            mx = tuple(sorted(domain.mx))
            glue = tuple((h, self._host_ips[h]) for _, h in mx if h in self._host_ips)
            return Facts(mx=mx, glue=glue)
        if rdtype == _A:
            ip = host_ip if host_ip is not None else domain.a if domain is not None else None
            if ip is not None:
                return Facts(a=ip)
        return Facts(zone=self._zone_of(name))

    def _zone_of(self, name: str) -> str:
        labels = name.split(".")
        for i in range(len(labels)):
            candidate = ".".join(labels[i:])
            if candidate in self._domains:
                return candidate
        if name.endswith(".co.uk") or name == "co.uk":
            return "co.uk"
        if name.endswith(".test") and len(labels) >= 2:
            return ".".join(labels[-2:])  # the shared hosts' provider zones
        return labels[-1]

    # -- the wire ----------------------------------------------------------------------------

    def respond(self, wire: bytes) -> bytes | None:
        """The reply to `wire`, or None when it is not worth answering (garbage, a response)
        or the responder plays a silent resolver."""
        if self._fault != "none":
            return self._respond_broken(wire)
        reply = self._respond_fast(wire) if self._fast else None
        if reply is None:
            reply = self._respond_dnspython(wire)
        return reply

    def _count(self, rdtype: int, rcode: int) -> None:
        self._stats.dns_queries[dns.rdatatype.to_text(dns.rdatatype.RdataType.make(rdtype))] += 1
        self._stats.dns_rcodes[dns.rcode.to_text(dns.rcode.Rcode.make(rcode))] += 1

    def _respond_fast(self, wire: bytes) -> bytes | None:
        """Plain queries only; None means "let dnspython handle it", never "drop"."""
        if len(wire) < 17:
            return None
        qid, flags, qd, an, ns, ar = _HEADER.unpack_from(wire)
        if flags & 0xF800 or qd != 1 or an or ns or ar > 1:  # QR or opcode set, odd counts
            return None
        labels: list[str] = []
        pos = 12
        while True:
            length = wire[pos]
            if length == 0:
                pos += 1
                break
            if length > 63 or pos + 1 + length > len(wire):  # compression or truncation
                return None
            label = wire[pos + 1 : pos + 1 + length]
            if not label.isascii() or b"." in label:
                return None
            labels.append(label.decode("ascii").lower())
            pos += 1 + length
        if pos + 4 > len(wire):
            return None
        question = wire[12 : pos + 4]
        qtype, qclass = struct.unpack_from("!HH", wire, pos)
        pos += 4
        limit = 512
        opt = b""
        if ar:
            # Only a bare OPT (root owner, no options) is copied here.
            if wire[pos : pos + 3] != b"\x00\x00\x29" or len(wire) != pos + 11:
                return None
            payload, _ttl, rdlen = struct.unpack_from("!HIH", wire, pos + 3)
            if rdlen:
                return None
            limit = max(payload, 512)
            opt = b"\x00" + _RR.pack(_OPT, OUR_PAYLOAD, 0, 0)
        if qclass != _IN:
            return None
        facts = self.facts(".".join(labels), qtype)
        if facts.ns:
            return None  # rare (health checks): dnspython renders NS answers
        answers = [
            _rr(b"\xc0\x0c", _MX, TTL, struct.pack("!H", pref) + _name_wire(host))
            for pref, host in facts.mx
        ]
        if facts.a is not None:
            answers.append(_rr(b"\xc0\x0c", _A, TTL, socket.inet_aton(facts.a)))
        authority = []
        if facts.zone is not None:
            soa = _name_wire(_SOA_MNAME) + _name_wire(_SOA_RNAME) + struct.pack("!5I", *_SOA_TIMERS)
            authority.append(_rr(_name_wire(facts.zone), _SOA, NEGATIVE_TTL, soa))
        additional = [_rr(_name_wire(h), _A, TTL, socket.inet_aton(ip)) for h, ip in facts.glue]
        if opt:
            additional.append(opt)
        header = _HEADER.pack(
            qid,
            _QR | _AA | (flags & _RD) | facts.rcode,
            1,
            len(answers),
            len(authority),
            len(additional),
        )
        reply = b"".join((header, question, *answers, *authority, *additional))
        if len(reply) > limit:
            return None  # dnspython sets TC properly
        self._count(qtype, facts.rcode)
        return reply

    def _respond_broken(self, wire: bytes) -> bytes | None:
        if self._fault == "silent":
            self._stats.dns_dropped += 1
            return None
        # SERVFAIL the way a recursive resolver that cannot reach the zone sends it: same id,
        # question and RD flag (make_response copies them, and EDNS), RA set, no AA, no
        # records. The slow dnspython path is fine: nobody benchmarks a broken resolver.
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            self._stats.dns_malformed += 1
            return None
        if query.flags & dns.flags.QR:
            self._stats.dns_malformed += 1
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.RA
        response.set_rcode(dns.rcode.SERVFAIL)
        self._count(int(query.question[0].rdtype) if query.question else 0, dns.rcode.SERVFAIL)
        return response.to_wire()

    def _respond_dnspython(self, wire: bytes) -> bytes | None:
        try:
            query = dns.message.from_wire(wire)
        except dns.exception.DNSException:
            self._stats.dns_malformed += 1
            return None
        if query.flags & dns.flags.QR:
            self._stats.dns_malformed += 1
            return None
        response = dns.message.make_response(query)
        response.flags |= dns.flags.AA
        qtype = self._answer(query, response)
        try:
            reply = response.to_wire(max_size=query.payload if query.edns >= 0 else 512)
        except dns.exception.TooBig:
            response.answer.clear()
            response.authority.clear()
            response.additional.clear()
            response.flags |= dns.flags.TC
            reply = response.to_wire()
        self._count(qtype, response.rcode())
        return reply

    def _answer(self, query: dns.message.Message, response: dns.message.Message) -> int:
        if query.opcode() != dns.opcode.QUERY:
            response.set_rcode(dns.rcode.NOTIMP)
            return 0
        if len(query.question) != 1:
            response.set_rcode(dns.rcode.FORMERR)
            return 0
        question = query.question[0]
        if question.rdclass != dns.rdataclass.IN:
            response.set_rcode(dns.rcode.REFUSED)
            return int(question.rdtype)
        qname = question.name
        facts = self.facts(qname.to_text(omit_final_dot=True).lower(), question.rdtype)
        response.set_rcode(dns.rcode.Rcode.make(facts.rcode))
        answers = [_rdata(dns.rdatatype.MX, f"{pref} {_fqdn(host)}") for pref, host in facts.mx]
        if facts.a is not None:
            answers.append(_rdata(dns.rdatatype.A, facts.a))
        answers.extend(_rdata(dns.rdatatype.NS, f"{host}.") for host in facts.ns)
        if answers:
            response.answer.append(dns.rrset.from_rdata_list(qname, TTL, answers))
        for host, ip in facts.glue:
            glue = [_rdata(dns.rdatatype.A, ip)]
            response.additional.append(dns.rrset.from_rdata_list(host + ".", TTL, glue))
        if facts.zone is not None:
            soa_text = f"{_SOA_MNAME}. {_SOA_RNAME}. " + " ".join(map(str, _SOA_TIMERS))
            soa = [_rdata(dns.rdatatype.SOA, soa_text)]
            owner = _fqdn(facts.zone)
            response.authority.append(dns.rrset.from_rdata_list(owner, NEGATIVE_TTL, soa))
        return int(question.rdtype)


def _fqdn(host: str) -> str:
    return "." if host == NULL_MX_HOST else host + "."


def _rdata(rdtype: dns.rdatatype.RdataType, text: str) -> dns.rdata.Rdata:
    return dns.rdata.from_text(dns.rdataclass.IN, rdtype, text)


def _raise_rcvbuf(sock: trio.socket.SocketType) -> None:
    # As root SO_RCVBUFFORCE ignores net.core.rmem_max; otherwise take what the kernel grants.
    force = getattr(socket, "SO_RCVBUFFORCE", None)
    if force is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, RCVBUF)
            return
        except OSError:
            pass
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RCVBUF)


@dataclass(frozen=True, slots=True)
class BrokenDns:
    """An extra DNS listener that plays a broken resolver, next to the world's healthy one."""

    address: str
    port: int
    fault: DnsFault

    def __str__(self) -> str:
        return f"{self.address}:{self.port}={self.fault}"


async def serve_dns(
    world: World,
    stats: SimStats,
    *,
    address: str | None = None,
    port: int | None = None,
    fault: DnsFault = "none",
    responder: DnsResponder | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Answer queries on `address`:`port` (default: world.dns_address:world.dns_port) until
    cancelled, with the given `fault`.

    Pass your own `responder` instead of `fault` to change its fault while it serves (the
    responder's own `fault` applies; combining it with `fault` is refused as ambiguous).
    `task_status.started` gets the bound (address, port), so port 0 works for tests.
    """
    if responder is None:
        responder = DnsResponder(world, stats, fault=fault)
    elif fault != "none":
        raise ValueError("pass either a responder or a fault, not both")
    bind_to = (
        world.dns_address if address is None else address,
        world.dns_port if port is None else port,
    )
    sock = trio.socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with sock:
        _raise_rcvbuf(sock)
        await sock.bind(bind_to)
        address, port = sock.getsockname()[:2]
        task_status.started((address, port))
        while True:
            try:
                data, peer = await sock.recvfrom(65535)
            except ConnectionResetError:
                continue  # a previous reply's ICMP port-unreachable, nothing to do
            reply = responder.respond(data)
            if reply is None:
                continue
            # A full buffer or a vanished client: UDP is allowed to lose the reply.
            with contextlib.suppress(OSError):
                await sock.sendto(reply, peer)
