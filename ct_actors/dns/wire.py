"""DNS wire format for the UDP client: building queries, matching replies, reading verdicts.

Pure and synchronous, so every rule about what an answer *means* is testable without sockets.

Queries are assembled by hand instead of through `dns.message.make_query(...).to_wire()`: the
bytes are identical (a test pins that) and it costs ~10 µs instead of ~90 µs, which matters at
thousands of queries per second. Replies are parsed with `dns.message.from_wire`, but only after a
cheap byte-level check (`reply_matches`) so stray or spoofed datagrams are never parsed.
"""

from __future__ import annotations

import ipaddress
import random
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
import dns.rrset
from dns.rdtypes.ANY.CNAME import CNAME
from dns.rdtypes.ANY.MX import MX
from dns.rdtypes.IN.A import A

from ct_actors.dns.types import DnsUnavailable, MxLookup, MxStatus

EDNS_PAYLOAD = 1232  # the DNS-flag-day 2020 value: avoids IP fragmentation on common paths
MAX_CNAME_HOPS = 8  # resolvers give up well before this; a longer chain is a broken answer

_HEADER = struct.Struct("!HHHHHH")
_RD = 0x0100
_QR = 0x8000
_OPCODE_MASK = 0x7800
_TC = 0x0200
# Root owner, type OPT, class = our UDP payload size, TTL 0 (ext-rcode 0, version 0, no DO), no
# options. Equal to what dnspython emits for use_edns=0, payload=1232.
_OPT_RR = b"\x00" + struct.pack("!HHIH", dns.rdatatype.OPT, EDNS_PAYLOAD, 0, 0)

# Only these two rcodes are statements about the domain; anything else is our resolver's problem.
_VERDICT_RCODES = frozenset({dns.rcode.NOERROR, dns.rcode.NXDOMAIN})

_id_source = random.SystemRandom()


class MalformedReply(Exception):
    """A datagram passed the cheap match but is not a well-formed reply to our query."""


def new_query_id() -> int:
    """A query id from the OS CSPRNG: ids are half of what stops off-path answer spoofing."""
    return _id_source.getrandbits(16)


def to_name(name: str | dns.name.Name) -> dns.name.Name:
    """Absolute DNS name for `name`; raises ValueError when it cannot be a DNS name at all."""
    if isinstance(name, dns.name.Name):
        return name
    try:
        return dns.name.from_text(name)
    except (dns.exception.DNSException, UnicodeError) as exc:
        raise ValueError(f"not a valid DNS name: {name!r} ({exc.__class__.__name__})") from exc


@dataclass(frozen=True, slots=True)
class WireQuery:
    qid: int
    qname: dns.name.Name
    rdtype: dns.rdatatype.RdataType
    rdclass: dns.rdataclass.RdataClass
    wire: bytes
    question: bytes  # the question section, lower-cased, for byte-level matching of replies


def make_query(
    name: str | dns.name.Name,
    rdtype: dns.rdatatype.RdataType | str,
    *,
    qid: int | None = None,
) -> WireQuery:
    """A recursive (RD) query with EDNS0 advertising a 1232-byte UDP payload."""
    qname = to_name(name)
    rtype = dns.rdatatype.RdataType.make(rdtype)
    rclass = dns.rdataclass.IN
    if qid is None:
        qid = new_query_id()
    name_wire = qname.to_wire()
    assert name_wire is not None  # None only when writing into a file
    question = name_wire + struct.pack("!HH", rtype, rclass)
    header = _HEADER.pack(qid, _RD, 1, 0, 0, 1)
    return WireQuery(
        qid=qid,
        qname=qname,
        rdtype=rtype,
        rdclass=rclass,
        wire=header + question + _OPT_RR,
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
    if qid != query.qid or not flags & _QR or flags & _OPCODE_MASK or qdcount != 1:
        return False
    end = _HEADER.size + len(query.question)
    return data[_HEADER.size : end].lower() == query.question


def is_truncated(data: bytes) -> bool:
    return len(data) >= 4 and bool(int.from_bytes(data[2:4], "big") & _TC)


def parse_reply(query: WireQuery, data: bytes) -> dns.message.Message:
    """Parse a datagram that `reply_matches` accepted; raises MalformedReply."""
    try:
        response = dns.message.from_wire(data)
    except (dns.exception.DNSException, ValueError, UnicodeError) as exc:
        raise MalformedReply(f"unparsable reply: {exc.__class__.__name__}: {exc}") from exc
    check_response(query, response)
    return response


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


# ---------------------------------------------------------------------------------------------
# Interpretation


def interpret_mx(domain: str, response: dns.message.Message) -> MxLookup | list[tuple[int, str]]:
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
    qname = _question_name(domain, response)
    _require_verdict(domain, response)
    owner, rrset = _follow_cnames(domain, response, qname, dns.rdatatype.MX)
    via = f" (via CNAME to {_host_text(owner)})" if owner != qname else ""
    if response.rcode() == dns.rcode.NXDOMAIN:
        return MxLookup(domain=domain, status=MxStatus.NXDOMAIN, detail=f"NXDOMAIN{via}")
    if rrset is None:
        return MxLookup(
            domain=domain,
            status=MxStatus.NO_MX,
            detail=f"no MX records{via}; implicit MX (A record fallback) not checked",
        )
    best: dict[str, int] = {}
    null_mx = False
    for rdata in rrset:
        if not isinstance(rdata, MX):
            continue
        if rdata.exchange == dns.name.root:
            null_mx = True
            continue
        host = _host_text(rdata.exchange)
        if host not in best or rdata.preference < best[host]:
            best[host] = rdata.preference
    if not best:
        if null_mx:
            detail = f"null MX (RFC 7505){via}"
            return MxLookup(domain=domain, status=MxStatus.NULL_MX, detail=detail)
        # Only possible in a hand-built message: the parser never yields an empty rrset.
        return MxLookup(domain=domain, status=MxStatus.NO_MX, detail=f"empty MX set{via}")
    return sorted((pref, host) for host, pref in best.items())


def interpret_a(host: str, response: dns.message.Message) -> tuple[str, ...]:
    """IPv4 addresses of `host`, sorted and de-duplicated; () for NXDOMAIN or no A records."""
    qname = _question_name(host, response)
    _require_verdict(host, response)
    if response.rcode() == dns.rcode.NXDOMAIN:
        return ()
    _, rrset = _follow_cnames(host, response, qname, dns.rdatatype.A)
    if rrset is None:
        return ()
    addresses = {ipaddress.IPv4Address(rdata.address) for rdata in rrset if isinstance(rdata, A)}
    return tuple(str(a) for a in sorted(addresses))


def _question_name(name: str, response: dns.message.Message) -> dns.name.Name:
    # The reply's own question (already checked against the query by the client) spares
    # re-parsing the text name, a noticeable cost at thousands of lookups per second.
    if len(response.question) == 1:
        return response.question[0].name
    try:
        return to_name(name)
    except ValueError as exc:
        raise DnsUnavailable(name, str(exc)) from exc


def _require_verdict(name: str, response: dns.message.Message) -> None:
    rcode = response.rcode()
    if rcode not in _VERDICT_RCODES:
        raise DnsUnavailable(name, f"nameserver answered {dns.rcode.to_text(rcode)}")
    if response.flags & dns.flags.TC:
        raise DnsUnavailable(name, "reply truncated (TC) and not retried over TCP")
    if rcode == dns.rcode.NOERROR and not response.answer and _is_referral(response):
        # An empty NOERROR from a non-recursive server is a delegation, not "no records":
        # reading it as NO_MX would condemn a healthy domain.
        raise DnsUnavailable(name, "got a referral: the nameserver does not recurse")


def _is_referral(response: dns.message.Message) -> bool:
    types = {rrset.rdtype for rrset in response.authority}
    return dns.rdatatype.NS in types and dns.rdatatype.SOA not in types


def _follow_cnames(
    name: str,
    response: dns.message.Message,
    qname: dns.name.Name,
    rdtype: dns.rdatatype.RdataType,
) -> tuple[dns.name.Name, dns.rrset.RRset | None]:
    """Follow the CNAME chain inside the answer section from qname to the rrset of `rdtype`."""
    owner = qname
    seen = {owner}
    for _ in range(MAX_CNAME_HOPS + 1):
        rrset = _find(response, owner, rdtype)
        if rrset is not None:
            return owner, rrset
        cname = _find(response, owner, dns.rdatatype.CNAME)
        if cname is None:
            return owner, None
        target = next(iter(cname))
        assert isinstance(target, CNAME)
        owner = target.target
        if owner in seen:
            raise DnsUnavailable(name, f"CNAME loop at {_host_text(owner)}")
        seen.add(owner)
    raise DnsUnavailable(name, f"CNAME chain longer than {MAX_CNAME_HOPS}")


def _find(
    response: dns.message.Message, owner: dns.name.Name, rdtype: dns.rdatatype.RdataType
) -> dns.rrset.RRset | None:
    # A linear scan rather than Message.get_rrset: the index behind get_rrset is only filled by
    # the parser, so messages assembled in code (fakes, tests) would look empty.
    for rrset in response.answer:
        if rrset.rdtype == rdtype and rrset.rdclass == dns.rdataclass.IN and rrset.name == owner:
            return rrset
    return None


def _host_text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()
