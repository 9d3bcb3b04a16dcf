"""A small, strict parser for the DNS replies the client asks for: one question, MX/A/CNAME.

`dns.message.from_wire` builds a full object model (Name, Rdata and RRset objects, enum
conversions) and costs ~240 µs for a two-MX reply; this reads the same bytes in ~15 µs and keeps
only what `wire.interpret_mx` / `wire.interpret_a` look at:

* header: id, flags (TC/AA/RA...), the rcode including the EDNS extended bits;
* the question (name, type, class);
* answer records of class IN and type MX, A or CNAME, as `Record(name, rdtype, ttl, data)` with
  `data` = (preference, exchange) for MX, the dotted IPv4 address for A, the target for CNAME;
  other answer records are counted (`answer_count`) and skipped;
* whether the authority section holds an SOA and/or an NS record (a NODATA/NXDOMAIN versus a
  referral); their rdata is checked but not kept;
* the OPT record in the additional section; other additional records are skipped.

Names are returned as text the way `Name.to_text(omit_final_dot=True).lower()` writes them
(escapes included), "." for the root, so equal names are equal strings.

Strictness follows dnspython's own checks so that the two parsers agree on every reply either
accepts: compression pointers must point strictly backwards and the labels they lead to must
end before the name that pointed there (so loops and pointers beyond the end are impossible),
at most 16 pointers per name, labels of 1..63 bytes (label types 0x40/0x80 are refused), names
of at most 255 bytes, every record within the datagram, rdata of MX/A/CNAME/SOA/NS exactly
filling RDLENGTH, at most one OPT (root owner, additional section only), and no byte after the
last record. Anything else wrong raises `MalformedReply`.

What the parser does not handle it declines with `Unsupported`, and the caller falls back to
dnspython: an opcode other than QUERY, a question count other than 1, TSIG records, and EDNS
options other than NSID and padding (dnspython validates the contents of the others; deferring
to it keeps "malformed" meaning the same on both paths). Records this parser skips (AAAA, DNAME,
RRSIG, glue in the additional section, MX/A/CNAME of a class other than IN...) are only checked
for framing, not for their rdata contents: a reply with, say, a three-byte AAAA record next to
our MX records is read here although dnspython would refuse it.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass
from typing import NamedTuple

# Numbers from RFC 1035 / 6891 / 8945; this module deliberately does not import dnspython.
TYPE_A = 1
TYPE_NS = 2
TYPE_CNAME = 5
TYPE_SOA = 6
TYPE_MX = 15
TYPE_OPT = 41
TYPE_TSIG = 250
CLASS_IN = 1

FLAG_QR = 0x8000
FLAG_AA = 0x0400
FLAG_TC = 0x0200
FLAG_RD = 0x0100
FLAG_RA = 0x0080
_OPCODE_MASK = 0x7800

MAX_NAME_LENGTH = 255  # wire bytes, root label included (RFC 1035 §3.1)
MAX_POINTER_HOPS = 16  # as dnspython: no real name needs more than a couple
_KEPT_TYPES = frozenset({TYPE_MX, TYPE_A, TYPE_CNAME})
_EDNS_OPTIONS_OK = frozenset({3, 12})  # NSID, padding: opaque bytes to dnspython as well

_HEADER = struct.Struct("!HHHHHH")
_RR_HEADER = struct.Struct("!HHIH")
_TYPE_CLASS = struct.Struct("!HH")
_U16 = struct.Struct("!H")
# Bytes a label can contain and still be written as they are by Name.to_text(): printable ASCII
# other than the characters dnspython escapes. "." stands for the separators of a joined name.
_PLAIN = bytes(c for c in range(0x21, 0x7F) if c not in b'"().;\\@$') + b"."
_ESCAPED = frozenset(b'"().;\\@$')


class MalformedReply(Exception):
    """A datagram is not a well-formed reply (or not a reply to our query)."""


class Unsupported(Exception):
    """Possibly well-formed, but outside what `parse` handles: parse it with dnspython."""


class Record(NamedTuple):
    name: str  # lower-case text, no trailing dot
    rdtype: int  # TYPE_MX, TYPE_A or TYPE_CNAME
    ttl: int  # 0 when the wire value has the top bit set (RFC 2181 §8), as dnspython does
    data: tuple[int, str] | str  # MX: (preference, exchange); A: "192.0.2.1"; CNAME: target


@dataclass(slots=True)
class Reply:
    """The parts of a DNS reply that MX and A lookups need. Read-only by convention: a frozen
    dataclass costs 3 µs to build, a fifth of the whole parse."""

    qid: int
    flags: int  # the 16-bit header flags word, opcode and rcode bits included
    rcode: int  # 12-bit: header rcode plus the OPT record's extended rcode bits
    question: tuple[str, int, int] | None  # (name, type, class); None if not exactly one
    answer: tuple[Record, ...]  # IN-class MX, A and CNAME records, in wire order
    answer_count: int  # records in the answer section, the skipped ones included
    authority_soa: bool = False
    authority_ns: bool = False
    edns: bool = False  # an OPT record was present

    @property
    def truncated(self) -> bool:
        return bool(self.flags & FLAG_TC)

    @property
    def authoritative(self) -> bool:
        return bool(self.flags & FLAG_AA)

    @property
    def recursion_available(self) -> bool:
        return bool(self.flags & FLAG_RA)


def parse(data: bytes) -> Reply:
    """Parse a reply datagram. Raises MalformedReply, or Unsupported to ask for dnspython."""
    size = len(data)
    if size < 12:
        raise MalformedReply(f"{size} bytes, shorter than a DNS header")
    qid, flags, qdcount, ancount, nscount, arcount = _HEADER.unpack_from(data)
    if flags & _OPCODE_MASK:
        raise Unsupported(f"opcode {(flags & _OPCODE_MASK) >> 11}")
    if qdcount != 1:
        raise Unsupported(f"{qdcount} questions")
    labels, pos = _labels(data, 12, size)
    if pos + 4 > size:
        raise MalformedReply("question cut short")
    qtype, qclass = _TYPE_CLASS.unpack_from(data, pos)
    qtext = _text(labels)
    question = (qtext, qtype, qclass)
    # Owner names are nearly always a bare pointer to the question name. When that name is
    # written out in full (no pointer of its own), such a pointer is valid wherever it appears
    # after the question and means the question's name: no need to walk it again.
    question_plain = pos - 12 == sum(map(len, labels)) + len(labels) + 1
    pos += 4

    answer: list[Record] = []
    for _ in range(ancount):
        if question_plain and data[pos : pos + 2] == b"\xc0\x0c":
            owner = qtext
            pos += 2
        else:
            labels, pos = _labels(data, pos, size)
            owner = _text(labels)
        rtype, rclass, ttl, end = _record_header(data, pos, size)
        pos += 10
        if rclass == CLASS_IN and rtype in _KEPT_TYPES:
            if ttl > 0x7FFFFFFF:
                ttl = 0
            rdata: tuple[int, str] | str
            if rtype == TYPE_MX:
                if end - pos < 3:
                    raise MalformedReply("MX rdata too short")
                exchange, after = _labels(data, pos + 2, end)
                rdata = (_U16.unpack_from(data, pos)[0], _text(exchange))
            elif rtype == TYPE_A:
                if end - pos != 4:
                    raise MalformedReply(f"A rdata of {end - pos} bytes")
                after = end
                rdata = socket.inet_ntoa(data[pos:end])
            else:
                target, after = _labels(data, pos, end)
                rdata = _text(target)
            if after != end:
                raise MalformedReply("rdata longer than its contents")
            answer.append(Record(owner, rtype, ttl, rdata))
        else:
            _check_special(rtype, "answer")
        pos = end

    soa = ns = False
    for _ in range(nscount):
        _, pos = _labels(data, pos, size)
        rtype, _, _, end = _record_header(data, pos, size)
        pos += 10
        if rtype == TYPE_SOA:
            soa = True
            _, after = _labels(data, pos, end)
            _, after = _labels(data, after, end)
            if after + 20 != end:
                raise MalformedReply("SOA rdata does not end with its five numbers")
        elif rtype == TYPE_NS:
            ns = True
            _, after = _labels(data, pos, end)
            if after != end:
                raise MalformedReply("rdata longer than its contents")
        else:
            _check_special(rtype, "authority")
        pos = end

    opt_ttl = -1
    for i in range(arcount):
        if data[pos : pos + 1] == b"\x00":  # the root, the OPT record's owner
            root = True
            pos += 1
        else:
            labels, pos = _labels(data, pos, size)
            root = not labels
        rtype, _, ttl, end = _record_header(data, pos, size)
        pos += 10
        if rtype == TYPE_OPT:
            if opt_ttl >= 0 or not root:
                raise MalformedReply("second OPT record" if opt_ttl >= 0 else "OPT not at root")
            opt_ttl = ttl
            _check_options(data, pos, end)
        elif rtype == TYPE_TSIG:
            raise Unsupported(f"TSIG record {i + 1} of {arcount}")
        pos = end
    if pos != size:
        raise MalformedReply(f"{size - pos} bytes after the last record")

    rcode = flags & 0xF
    if opt_ttl >= 0:
        rcode |= (opt_ttl >> 20) & 0xFF0
    # Positional: keywords would cost a microsecond.
    return Reply(qid, flags, rcode, question, tuple(answer), ancount, soa, ns, opt_ttl >= 0)


def _record_header(data: bytes, pos: int, size: int) -> tuple[int, int, int, int]:
    """(type, class, ttl, end of rdata) of the record whose owner name ended at `pos`."""
    if pos + 10 > size:
        raise MalformedReply(f"record header cut short at offset {pos}")
    rtype, rclass, ttl, rdlength = _RR_HEADER.unpack_from(data, pos)
    end = pos + 10 + rdlength
    if end > size:
        raise MalformedReply(f"rdata at offset {pos + 10} runs {end - size} bytes past the end")
    return rtype, rclass, ttl, end


def _check_special(rtype: int, section: str) -> None:
    if rtype == TYPE_OPT:
        raise MalformedReply(f"OPT record in the {section} section")
    if rtype == TYPE_TSIG:
        raise Unsupported(f"TSIG record in the {section} section")


def _check_options(data: bytes, pos: int, end: int) -> None:
    while pos < end:
        if pos + 4 > end:
            raise MalformedReply("EDNS option header cut short")
        code, length = _TYPE_CLASS.unpack_from(data, pos)
        pos += 4 + length
        if pos > end:
            raise MalformedReply("EDNS option runs past the OPT record")
        if code not in _EDNS_OPTIONS_OK:
            raise Unsupported(f"EDNS option {code}")


def _labels(data: bytes, pos: int, limit: int) -> tuple[list[bytes], int]:
    """The labels of the (possibly compressed) name at `pos` and the offset just after it.

    `limit` bounds the name's own bytes (the datagram, or the rdata holding the name). A pointer
    must point before the start of the run of labels it ends, and the run it leads to must end
    before that start too: each jump goes strictly backwards into a shrinking window, which
    rules out loops and pointers past the end.
    """
    labels: list[bytes] = []
    length = 1  # the root label
    after = -1
    hops = 0
    run_start = pos
    while True:
        if pos >= limit:
            raise MalformedReply(f"name at offset {run_start} runs past its bounds")
        n = data[pos]
        if n == 0:
            pos += 1
            break
        if n < 64:
            pos += 1
            end = pos + n
            if end > limit:
                raise MalformedReply(f"label at offset {pos - 1} runs past its bounds")
            labels.append(data[pos:end])
            length += n + 1
            pos = end
        elif n >= 0xC0:
            if pos + 1 >= limit:
                raise MalformedReply(f"compression pointer at offset {pos} cut short")
            target = ((n & 0x3F) << 8) | data[pos + 1]
            if after < 0:
                after = pos + 2
            if target >= run_start:
                raise MalformedReply(f"compression pointer at offset {pos} does not point back")
            hops += 1
            if hops > MAX_POINTER_HOPS:
                raise MalformedReply(f"more than {MAX_POINTER_HOPS} compression pointers")
            limit = run_start
            pos = run_start = target
        else:
            raise MalformedReply(f"label type {n & 0xC0:#x} at offset {pos}")
    if length > MAX_NAME_LENGTH:
        raise MalformedReply(f"name of {length} bytes, longer than {MAX_NAME_LENGTH}")
    return labels, (pos if after < 0 else after)


def _text(labels: list[bytes]) -> str:
    """`Name.to_text(omit_final_dot=True).lower()` of an absolute name, without the Name."""
    if not labels:
        return "."
    joined = b".".join(labels)
    # One C-level pass each: no byte that needs escaping, and no "." inside a label.
    if not joined.translate(None, _PLAIN) and joined.count(b".") == len(labels) - 1:
        return joined.lower().decode("ascii")
    return ".".join(_escape(label.lower()) for label in labels)


def _escape(label: bytes) -> str:
    return "".join(
        "\\" + chr(c) if c in _ESCAPED else chr(c) if 0x20 < c < 0x7F else f"\\{c:03d}"
        for c in label
    )
