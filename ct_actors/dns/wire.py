"""DNS wire format for the UDP client: building queries, matching and reading replies, verdicts.

Pure and synchronous, so every rule about what an answer *means* is testable without sockets.

Queries are assembled by hand instead of through `dns.message.make_query(...).to_wire()`: the
bytes are identical (a test pins that) and it costs ~10 µs instead of ~90 µs, which matters at
thousands of queries per second. Replies get a cheap byte-level check first (`reply_matches`),
so stray or spoofed datagrams are never parsed, and are then read by `fastparse.parse` into a
`Reply`, ~15 µs instead of ~240 µs for `dns.message.from_wire`. Replies the fast parser declines
(TSIG, unusual EDNS options, odd opcodes) go through dnspython and `from_message`, which yields
the same `Reply`; `interpret_mx` and `interpret_a` read a `Reply` (or a dnspython Message, which
they convert the same way, for tests and hand-built messages).
"""

from __future__ import annotations

import functools
import ipaddress
import os
import re
import socket
import struct
from dataclasses import dataclass

import dns.exception
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdataclass
import dns.rdatatype
from dns.rdtypes.ANY.CNAME import CNAME
from dns.rdtypes.ANY.MX import MX
from dns.rdtypes.IN.A import A

from ct_actors.dns import fastparse
from ct_actors.dns.fastparse import (
    FLAG_QR,
    FLAG_TC,
    TYPE_A,
    TYPE_CNAME,
    TYPE_MX,
    MalformedReply,
    Record,
    Reply,
)
from ct_actors.dns.types import DnsUnavailable, MxLookup, MxStatus

__all__ = [
    "EDNS_PAYLOAD",
    "MAX_CNAME_HOPS",
    "MalformedReply",
    "Record",
    "Reply",
    "WireQuery",
    "build_query",
    "check_response",
    "decode_reply",
    "from_message",
    "interpret_a",
    "interpret_mx",
    "is_truncated",
    "make_query",
    "name_to_wire",
    "new_query_id",
    "parse_reply",
    "reply_id",
    "reply_matches",
    "to_name",
    "to_rdtype",
]

EDNS_PAYLOAD = 1232  # the DNS-flag-day 2020 value: avoids IP fragmentation on common paths
MAX_CNAME_HOPS = 8  # resolvers give up well before this; a longer chain is a broken answer

_HEADER = struct.Struct("!HHHHHH")
_RD = 0x0100
_OPCODE_MASK = 0x7800
# Root owner, type OPT, class = our UDP payload size, TTL 0 (ext-rcode 0, version 0, no DO), no
# options. Equal to what dnspython emits for use_edns=0, payload=1232.
_OPT_RR = b"\x00" + struct.pack("!HHIH", dns.rdatatype.OPT, EDNS_PAYLOAD, 0, 0)

# Only these two rcodes are statements about the domain; anything else is our resolver's problem.
_NOERROR = int(dns.rcode.NOERROR)
_NXDOMAIN = int(dns.rcode.NXDOMAIN)
_VERDICT_RCODES = frozenset({_NOERROR, _NXDOMAIN})

_ID_BATCH = 512  # query ids drawn per os.urandom call
_ids: list[int] = []
# Names that `dns.name.from_text` takes character for character (no escapes, no IDNA, no "@"):
# `name_to_wire` encodes these without building a Name, ~1.5 µs instead of ~12 µs.
_PLAIN_NAME = re.compile(r"(?:[A-Za-z0-9_-]{1,63}\.)*[A-Za-z0-9_-]{1,63}\.?")


def new_query_id() -> int:
    """A query id from the OS CSPRNG: ids are half of what stops off-path answer spoofing.

    Drawn in batches: one getrandom() call per 512 ids rather than one per query.
    """
    if not _ids:
        _ids.extend(memoryview(os.urandom(2 * _ID_BATCH)).cast("H"))
    return _ids.pop()


def to_name(name: str | dns.name.Name) -> dns.name.Name:
    """Absolute DNS name for `name`; raises ValueError when it cannot be a DNS name at all."""
    if isinstance(name, dns.name.Name):
        return name
    try:
        return dns.name.from_text(name)
    except (dns.exception.DNSException, UnicodeError) as exc:
        raise ValueError(f"not a valid DNS name: {name!r} ({exc.__class__.__name__})") from exc


def name_to_wire(name: str | dns.name.Name) -> bytes:
    """`to_name(name).to_wire()`, without the Name for plain host names; raises ValueError."""
    if isinstance(name, str):
        return _text_to_wire(name)
    name_wire = name.to_wire()
    assert name_wire is not None  # None only when writing into a file
    return name_wire


# The resolver checks a domain and the client then encodes it for the query, and MX host names
# recur: a small cache answers both for the price of a dict lookup.
@functools.lru_cache(maxsize=1024)
def _text_to_wire(name: str) -> bytes:
    if len(name) <= 254 and _PLAIN_NAME.fullmatch(name):
        text = name[:-1] if name[-1] == "." else name
        # A 254-character name with a final dot is 253 without: 255 bytes on the wire at most.
        if len(text) <= 253:
            out = bytearray()
            for label in text.encode("ascii").split(b"."):
                out.append(len(label))
                out += label
            out.append(0)
            return bytes(out)
    name_wire = to_name(name).to_wire()
    assert name_wire is not None  # None only when writing into a file
    return name_wire


def to_rdtype(rdtype: dns.rdatatype.RdataType | str) -> dns.rdatatype.RdataType:
    if isinstance(rdtype, dns.rdatatype.RdataType):
        return rdtype
    return dns.rdatatype.RdataType.make(rdtype)


@dataclass(frozen=True, slots=True)
class WireQuery:
    qid: int
    rdtype: dns.rdatatype.RdataType
    rdclass: dns.rdataclass.RdataClass
    wire: bytes
    question: bytes  # the question section, lower-cased, for byte-level matching of replies

    @property
    def qname(self) -> dns.name.Name:
        """The name asked for, as written in the query (built on demand: ~10 µs)."""
        return dns.name.from_wire(self.wire, _HEADER.size)[0]


def make_query(
    name: str | dns.name.Name,
    rdtype: dns.rdatatype.RdataType | str,
    *,
    qid: int | None = None,
) -> WireQuery:
    """A recursive (RD) query with EDNS0 advertising a 1232-byte UDP payload.

    Raises ValueError for a name that cannot be put in a query.
    """
    return build_query(name_to_wire(name), to_rdtype(rdtype), qid=qid)


def build_query(
    name_wire: bytes, rdtype: dns.rdatatype.RdataType, *, qid: int | None = None
) -> WireQuery:
    """`make_query` for a name already in wire form (from `name_to_wire`)."""
    if qid is None:
        qid = new_query_id()
    question = name_wire + struct.pack("!HH", rdtype, dns.rdataclass.IN)
    return WireQuery(
        qid=qid,
        rdtype=rdtype,
        rdclass=dns.rdataclass.IN,
        wire=_HEADER.pack(qid, _RD, 1, 0, 0, 1) + question + _OPT_RR,
        question=question.lower(),
    )


def reply_id(data: bytes) -> int | None:
    """The id of a datagram, or None when it is too short to be a DNS message."""
    if len(data) < _HEADER.size:
        return None
    return int.from_bytes(data[:2], "big")


def reply_matches(query: WireQuery, data: bytes) -> bool:
    """Byte-level check that `data` answers `query`: id, QR set, opcode QUERY, same question.

    The question is compared case-insensitively because some servers echo a differently-cased
    name. A question written with a compression pointer fails the check; no sane server does
    that, and rejecting it only costs a retry.
    """
    if len(data) < _HEADER.size + len(query.question):
        return False
    qid, flags, qdcount = struct.unpack_from("!HHH", data)
    if qid != query.qid or not flags & FLAG_QR or flags & _OPCODE_MASK or qdcount != 1:
        return False
    end = _HEADER.size + len(query.question)
    return data[_HEADER.size : end].lower() == query.question


def is_truncated(data: bytes) -> bool:
    return len(data) >= 4 and bool(int.from_bytes(data[2:4], "big") & FLAG_TC)


def parse_reply(query: WireQuery, data: bytes, *, matched: bool = False) -> Reply:
    """Read a datagram that answers `query`; raises MalformedReply.

    The fast parser reads it unless it declines, in which case dnspython does (and the
    result is converted): either way the caller gets the same `Reply`. `matched=True` says
    the caller has just checked `reply_matches(query, data)`.
    """
    if not matched and not reply_matches(query, data):
        raise MalformedReply("not a reply to the query (id, flags or question differ)")
    try:
        return fastparse.parse(data)
    except fastparse.Unsupported:
        pass
    message = _from_wire(data)
    check_response(query, message)
    return from_message(message)


def decode_reply(data: bytes) -> Reply:
    """`parse_reply` without a query to match: for replies obtained some other way (tests)."""
    try:
        return fastparse.parse(data)
    except fastparse.Unsupported:
        return from_message(_from_wire(data))


def _from_wire(data: bytes) -> dns.message.Message:
    try:
        return dns.message.from_wire(data)
    except (dns.exception.DNSException, ValueError, UnicodeError) as exc:
        raise MalformedReply(f"unparsable reply: {exc.__class__.__name__}: {exc}") from exc


def check_response(query: WireQuery, response: dns.message.Message) -> None:
    """Semantic version of `reply_matches` on a parsed message; raises MalformedReply."""
    if response.id != query.qid:
        raise MalformedReply(f"id {response.id} does not match query id {query.qid}")
    if not response.flags & dns.flags.QR:
        raise MalformedReply("QR flag not set")
    if dns.opcode.from_flags(response.flags) != dns.opcode.QUERY:
        raise MalformedReply("opcode is not QUERY")
    if len(response.question) != 1:
        raise MalformedReply(f"{len(response.question)} questions in reply")
    q = response.question[0]
    # Name equality in dnspython is case-insensitive, as DNS requires.
    if (q.name, q.rdtype, q.rdclass) != (query.qname, query.rdtype, query.rdclass):
        raise MalformedReply(f"reply is for {q.name} {q.rdtype!r}, not {query.qname}")


def from_message(message: dns.message.Message) -> Reply:
    """The `Reply` for a dnspython Message, built to read exactly as the message does.

    The answer keeps the first RRset of each (owner, type), as a scan of `message.answer`
    would find it (a parsed message has one anyway), and only the first rdata of a CNAME RRset.
    """
    question = None
    if len(message.question) == 1:
        q = message.question[0]
        question = (_host_text(q.name), int(q.rdtype), int(q.rdclass))
    records: list[Record] = []
    seen: set[tuple[dns.name.Name, int]] = set()
    for rrset in message.answer:
        rtype = int(rrset.rdtype)
        if rrset.rdclass != dns.rdataclass.IN or rtype not in (TYPE_MX, TYPE_A, TYPE_CNAME):
            continue
        if (rrset.name, rtype) in seen:
            continue
        seen.add((rrset.name, rtype))
        owner, ttl = _host_text(rrset.name), rrset.ttl
        for rdata in rrset:
            if isinstance(rdata, MX):
                data = (rdata.preference, _host_text(rdata.exchange))
                records.append(Record(owner, rtype, ttl, data))
            elif isinstance(rdata, A):
                address = str(ipaddress.IPv4Address(rdata.address))
                records.append(Record(owner, rtype, ttl, address))
            elif isinstance(rdata, CNAME):
                records.append(Record(owner, rtype, ttl, _host_text(rdata.target)))
                break
    authority_types = {rrset.rdtype for rrset in message.authority}
    return Reply(
        qid=message.id,
        flags=int(message.flags),
        rcode=int(message.rcode()),
        question=question,
        answer=tuple(records),
        answer_count=sum(len(rrset) for rrset in message.answer),
        authority_soa=dns.rdatatype.SOA in authority_types,
        authority_ns=dns.rdatatype.NS in authority_types,
        edns=message.opt is not None,
    )


# ---------------------------------------------------------------------------------------------
# Interpretation


def interpret_mx(
    domain: str, response: Reply | dns.message.Message
) -> MxLookup | list[tuple[int, str]]:
    """Read an MX reply: a terminal verdict as an MxLookup, or the exchanges as (pref, host).

    Hosts come sorted by (preference, name), lower-cased without the trailing dot; a host listed
    twice keeps its best preference. Choices:

    * NOERROR without MX records is NO_MX. RFC 5321 §5.1 would have a sender fall back to the
      domain's A record as an implicit MX; this product's contract maps "no MX records" to
      CT-M-NO-MX, so we do not look up the A record (the detail says so).
    * A "." exchange next to real ones violates RFC 7505 §3; the real hosts win and "." is
      dropped. Only "."-only answers are NULL_MX.
    * NXDOMAIN at the end of a CNAME chain is NXDOMAIN (RFC 6604: the rcode describes the target).
    * SERVFAIL, REFUSED, FORMERR, NOTIMP and anything else, a truncated reply, a referral or a
      CNAME loop raise DnsUnavailable: not a fact about the domain, the record stays pending.
    """
    reply = response if isinstance(response, Reply) else from_message(response)
    qname = _question_name(domain, reply)
    _require_verdict(domain, reply)
    owner, records = _follow_cnames(domain, reply, qname, TYPE_MX)
    via = f" (via CNAME to {owner})" if owner != qname else ""
    if reply.rcode == _NXDOMAIN:
        return MxLookup(domain=domain, status=MxStatus.NXDOMAIN, detail=f"NXDOMAIN{via}")
    if not records:
        return MxLookup(
            domain=domain,
            status=MxStatus.NO_MX,
            detail=f"no MX records{via}; implicit MX (A record fallback) not checked",
        )
    best: dict[str, int] = {}
    for record in records:
        data = record.data
        if not isinstance(data, tuple):
            continue
        preference, host = data
        if host == ".":
            continue
        if host not in best or preference < best[host]:
            best[host] = preference
    if not best:
        # Every record was ".": the domain says it accepts no mail.
        return MxLookup(domain=domain, status=MxStatus.NULL_MX, detail=f"null MX (RFC 7505){via}")
    return sorted((pref, host) for host, pref in best.items())


def interpret_a(host: str, response: Reply | dns.message.Message) -> tuple[str, ...]:
    """IPv4 addresses of `host`, sorted and de-duplicated; () for NXDOMAIN or no A records."""
    reply = response if isinstance(response, Reply) else from_message(response)
    qname = _question_name(host, reply)
    _require_verdict(host, reply)
    if reply.rcode == _NXDOMAIN:
        return ()
    _, records = _follow_cnames(host, reply, qname, TYPE_A)
    addresses = {r.data for r in records if isinstance(r.data, str)}
    return tuple(sorted(addresses, key=socket.inet_aton))


def _question_name(name: str, reply: Reply) -> str:
    # The reply's own question (already checked against the query by the client) spares
    # re-parsing the text name, a noticeable cost at thousands of lookups per second.
    if reply.question is not None:
        return reply.question[0]
    try:
        return _host_text(to_name(name))
    except ValueError as exc:
        raise DnsUnavailable(name, str(exc)) from exc


def _require_verdict(name: str, reply: Reply) -> None:
    rcode = reply.rcode
    if rcode not in _VERDICT_RCODES:
        text = dns.rcode.to_text(dns.rcode.Rcode.make(rcode))
        raise DnsUnavailable(name, f"nameserver answered {text}")
    if reply.flags & FLAG_TC:
        raise DnsUnavailable(name, "reply truncated (TC) and not retried over TCP")
    if rcode == _NOERROR and not reply.answer_count and _is_referral(reply):
        # An empty NOERROR from a non-recursive server is a delegation, not "no records":
        # reading it as NO_MX would condemn a healthy domain.
        raise DnsUnavailable(name, "got a referral: the nameserver does not recurse")


def _is_referral(reply: Reply) -> bool:
    return reply.authority_ns and not reply.authority_soa


def _follow_cnames(name: str, reply: Reply, qname: str, rdtype: int) -> tuple[str, list[Record]]:
    """Follow the CNAME chain inside the answer section from qname to the records of `rdtype`."""
    owner = qname
    seen = {owner}
    answer = reply.answer
    for _ in range(MAX_CNAME_HOPS + 1):
        found = [r for r in answer if r.name == owner and r.rdtype == rdtype]
        if found:
            return owner, found
        target = None
        for r in answer:
            # The last one wins, as in dnspython's RRset: CNAME is a singleton type.
            if r.name == owner and r.rdtype == TYPE_CNAME and isinstance(r.data, str):
                target = r.data
        if target is None:
            return owner, []
        owner = target
        if owner in seen:
            raise DnsUnavailable(name, f"CNAME loop at {owner}")
        seen.add(owner)
    raise DnsUnavailable(name, f"CNAME chain longer than {MAX_CNAME_HOPS}")


def _host_text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()
