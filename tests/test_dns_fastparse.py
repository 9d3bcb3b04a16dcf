"""The fast reply parser against dnspython: same verdicts on valid replies, clean errors on junk.

The reference below is the dnspython-based interpretation the client used before the fast
parser, kept verbatim as the oracle: `wire.interpret_mx` / `wire.interpret_a` over
`fastparse.parse` must agree with it on every reply dnspython can build.
"""

from __future__ import annotations

import ipaddress
import random
import struct
from collections.abc import Callable
from typing import Any

import dns.edns
import dns.flags
import dns.message
import dns.name
import dns.opcode
import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
import dns.rrset
import dns.tsig
import dns.tsigkeyring
import pytest
from dns.rdtypes.ANY.CNAME import CNAME
from dns.rdtypes.ANY.MX import MX
from dns.rdtypes.IN.A import A

from ct_actors.dns import fastparse, wire
from ct_actors.dns.types import DnsUnavailable, MxLookup, MxStatus

# --- the reference: the interpretation before the fast parser, on dnspython Messages ---------


def reference_interpret_mx(
    domain: str, response: dns.message.Message
) -> MxLookup | list[tuple[int, str]]:
    qname = _ref_question_name(domain, response)
    _ref_require_verdict(domain, response)
    owner, rrset = _ref_follow_cnames(domain, response, qname, dns.rdatatype.MX)
    via = f" (via CNAME to {_ref_host_text(owner)})" if owner != qname else ""
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
        host = _ref_host_text(rdata.exchange)
        if host not in best or rdata.preference < best[host]:
            best[host] = rdata.preference
    if not best:
        if null_mx:
            detail = f"null MX (RFC 7505){via}"
            return MxLookup(domain=domain, status=MxStatus.NULL_MX, detail=detail)
        return MxLookup(domain=domain, status=MxStatus.NO_MX, detail=f"empty MX set{via}")
    return sorted((pref, host) for host, pref in best.items())


def reference_interpret_a(host: str, response: dns.message.Message) -> tuple[str, ...]:
    qname = _ref_question_name(host, response)
    _ref_require_verdict(host, response)
    if response.rcode() == dns.rcode.NXDOMAIN:
        return ()
    _, rrset = _ref_follow_cnames(host, response, qname, dns.rdatatype.A)
    if rrset is None:
        return ()
    addresses = {ipaddress.IPv4Address(rdata.address) for rdata in rrset if isinstance(rdata, A)}
    return tuple(str(a) for a in sorted(addresses))


def _ref_question_name(name: str, response: dns.message.Message) -> dns.name.Name:
    if len(response.question) == 1:
        return response.question[0].name
    try:
        return wire.to_name(name)
    except ValueError as exc:
        raise DnsUnavailable(name, str(exc)) from exc


def _ref_require_verdict(name: str, response: dns.message.Message) -> None:
    rcode = response.rcode()
    if rcode not in (dns.rcode.NOERROR, dns.rcode.NXDOMAIN):
        raise DnsUnavailable(name, f"nameserver answered {dns.rcode.to_text(rcode)}")
    if response.flags & dns.flags.TC:
        raise DnsUnavailable(name, "reply truncated (TC) and not retried over TCP")
    if rcode == dns.rcode.NOERROR and not response.answer and _ref_is_referral(response):
        raise DnsUnavailable(name, "got a referral: the nameserver does not recurse")


def _ref_is_referral(response: dns.message.Message) -> bool:
    types = {rrset.rdtype for rrset in response.authority}
    return dns.rdatatype.NS in types and dns.rdatatype.SOA not in types


def _ref_follow_cnames(
    name: str,
    response: dns.message.Message,
    qname: dns.name.Name,
    rdtype: dns.rdatatype.RdataType,
) -> tuple[dns.name.Name, dns.rrset.RRset | None]:
    owner = qname
    seen = {owner}
    for _ in range(wire.MAX_CNAME_HOPS + 1):
        rrset = _ref_find(response, owner, rdtype)
        if rrset is not None:
            return owner, rrset
        cname = _ref_find(response, owner, dns.rdatatype.CNAME)
        if cname is None:
            return owner, None
        target = next(iter(cname))
        assert isinstance(target, CNAME)
        owner = target.target
        if owner in seen:
            raise DnsUnavailable(name, f"CNAME loop at {_ref_host_text(owner)}")
        seen.add(owner)
    raise DnsUnavailable(name, f"CNAME chain longer than {wire.MAX_CNAME_HOPS}")


def _ref_find(
    response: dns.message.Message, owner: dns.name.Name, rdtype: dns.rdatatype.RdataType
) -> dns.rrset.RRset | None:
    for rrset in response.answer:
        if rrset.rdtype == rdtype and rrset.rdclass == dns.rdataclass.IN and rrset.name == owner:
            return rrset
    return None


def _ref_host_text(name: dns.name.Name) -> str:
    return name.to_text(omit_final_dot=True).lower()


# --- random replies built with dnspython ------------------------------------------------------

_LETTERS = "abcdefghijklmnopqrstuvwxyz0123456789-_"
# Bytes that make Name.to_text escape (or that look like separators), to pin the text form.
_ODD_BYTES = b'.\\ "();@$\x00\x7f\x80\xff\tAZ'


def rand_label(rng: random.Random) -> bytes:
    if rng.random() < 0.04:
        return bytes(rng.choice(_ODD_BYTES) for _ in range(rng.randint(1, 4)))
    label = "".join(rng.choice(_LETTERS) for _ in range(rng.randint(1, 10)))
    if rng.random() < 0.2:
        label = label.upper()
    return label.encode()


def rand_name(rng: random.Random, zones: list[dns.name.Name]) -> dns.name.Name:
    """A name under one of a few zones, so that suffixes repeat and compression kicks in."""
    zone = rng.choice(zones)
    labels = [rand_label(rng) for _ in range(rng.randint(0, 2))]
    return dns.name.Name([*labels, *zone.labels])


def recase(rng: random.Random, name: dns.name.Name) -> dns.name.Name:
    if rng.random() < 0.8:
        return name
    return dns.name.Name([label.upper() for label in name.labels])


def rand_ipv4(rng: random.Random) -> str:
    return str(ipaddress.IPv4Address(rng.choice([0x0A000001, 0xC0000201, rng.getrandbits(32)])))


def add_rrset(
    section: list[dns.rrset.RRset],
    name: dns.name.Name,
    rdtype: str,
    texts: list[str],
    rdclass: str = "IN",
    ttl: int = 300,
) -> None:
    section.append(dns.rrset.from_text_list(name, ttl, rdclass, rdtype, texts))


def random_response(rng: random.Random) -> tuple[dns.message.Message, str, str]:
    """(response, the domain text a caller would pass, "MX" or "A")."""
    zones = [dns.name.from_text(z) for z in ("example.com", "Mail.example.NET", "x.org")]
    zones.append(dns.name.Name([rand_label(rng), b"test", b""]))
    pool = [rand_name(rng, zones) for _ in range(6)]
    qname = pool[0]
    rdtype = rng.choice(["MX", "MX", "A"])
    use_edns = rng.random() < 0.6
    query = dns.message.make_query(
        qname, rdtype, use_edns=0 if use_edns else False, payload=1232, id=rng.getrandbits(16)
    )
    response = dns.message.make_response(query, recursion_available=rng.random() < 0.9)
    if use_edns and rng.random() < 0.3:
        response.use_edns(0, options=[dns.edns.GenericOption(dns.edns.OptionType.NSID, b"ns1")])
    rcode = rng.choices(
        [
            dns.rcode.NOERROR,
            dns.rcode.NXDOMAIN,
            dns.rcode.SERVFAIL,
            dns.rcode.REFUSED,
            dns.rcode.FORMERR,
            dns.rcode.NOTIMP,
            dns.rcode.YXDOMAIN,
            dns.rcode.BADVERS,
        ],
        [60, 20, 5, 4, 3, 2, 1, 2],
    )[0]
    response.set_rcode(rcode)
    if rng.random() < 0.05:
        response.flags |= dns.flags.TC
    if rng.random() < 0.3:
        response.flags |= dns.flags.AA

    answer: list[dns.rrset.RRset] = []
    # A CNAME chain from the question name, sometimes long, looping or dangling.
    owner = qname
    hops = rng.choices([0, 1, 2, 3, 9], [50, 20, 10, 5, 3])[0]
    chain = [qname]
    for _ in range(hops):
        target = rng.choice(pool) if rng.random() < 0.15 else rand_name(rng, zones)
        add_rrset(answer, recase(rng, owner), "CNAME", [target.to_text()])
        if rng.random() < 0.05:  # a second CNAME for the same owner: the last one wins
            other = rand_name(rng, zones)
            add_rrset(answer, owner, "CNAME", [other.to_text()])
            target = other
        owner = target
        chain.append(owner)
    final = owner
    if rng.random() < 0.8:
        data_owner = final if rng.random() < 0.9 else rng.choice(pool)
        if rdtype == "MX" or rng.random() < 0.1:
            for _ in range(rng.choice([1, 1, 1, 2])):  # split sets must merge
                texts = []
                for _ in range(rng.randint(1, 4)):
                    if rng.random() < 0.12:
                        texts.append(f"{rng.choice([0, 0, 10])} .")
                    else:
                        exchange = rng.choice(pool) if rng.random() < 0.5 else rand_name(rng, zones)
                        texts.append(f"{rng.choice([0, 5, 10, 10, 20])} {exchange.to_text()}")
                add_rrset(answer, recase(rng, data_owner), "MX", texts)
        if rdtype == "A" or rng.random() < 0.1:
            texts = [rand_ipv4(rng) for _ in range(rng.randint(1, 4))]
            add_rrset(answer, recase(rng, data_owner), "A", texts)
    if rng.random() < 0.2:
        add_rrset(answer, final, "AAAA", ["2001:db8::1"])
    if rng.random() < 0.1:
        add_rrset(answer, final, "TXT", ['"v=spf1 -all"'])
    if rng.random() < 0.05:
        add_rrset(answer, final, "TXT", ['"chaos"'], rdclass="CH")
    if rng.random() < 0.05:
        add_rrset(answer, final, "MX", ["10 ch.example."], rdclass="CH")
    if rng.random() < 0.05:
        add_rrset(answer, rand_name(rng, zones), "MX", ["10 elsewhere.example."])
    rng.shuffle(answer)
    response.answer.extend(answer)

    zone = rng.choice(zones)
    soa = f"ns1.{zone} hostmaster.{zone} 1 3600 600 86400 60"
    authority = rng.choice(["", "soa", "ns", "both", "ns+txt"])
    if "ns" in authority or authority == "both":
        add_rrset(response.authority, zone, "NS", [f"ns1.{zone}", f"ns2.{zone}"])
    if authority in ("soa", "both"):
        add_rrset(response.authority, zone, "SOA", [soa])
    if authority == "ns+txt":
        add_rrset(response.authority, zone, "TXT", ['"x"'])
    if rng.random() < 0.3:
        glue = rng.choice(pool)
        add_rrset(response.additional, glue, "A", [rand_ipv4(rng)])
        add_rrset(response.additional, glue, "AAAA", ["2001:db8::2"])
    domain = qname.to_text(omit_final_dot=rng.random() < 0.7)
    return response, domain, rdtype


Outcome = tuple[str, Any]


def outcome(read: Callable[..., Any], *args: Any) -> Outcome:
    try:
        return ("ok", read(*args))
    except DnsUnavailable as exc:
        return ("unavailable", (exc.domain, exc.reason))


def test_fast_path_matches_dnspython_on_random_replies() -> None:
    rng = random.Random(20240607)
    seen: set[str] = set()
    for i in range(1500):
        response, domain, rdtype = random_response(rng)
        data = response.to_wire()  # compressed, as servers write them
        message = dns.message.from_wire(data)
        fast = fastparse.parse(data)  # never declines on these
        converted = wire.from_message(message)
        for name, reference, ours in (
            ("mx", reference_interpret_mx, wire.interpret_mx),
            ("a", reference_interpret_a, wire.interpret_a),
        ):
            expected = outcome(reference, domain, message)
            assert outcome(ours, domain, fast) == expected, (i, name, message)
            assert outcome(ours, domain, converted) == expected, (i, name)
            assert outcome(ours, domain, message) == expected, (i, name)
            if name == rdtype.lower():
                kind, value = expected
                seen.add(kind if kind != "ok" else type(value).__name__ + str(bool(value)))
                if isinstance(value, MxLookup):
                    seen.add(value.status)
        # The client's own path: byte-level match, then the fast parser.
        query = wire.make_query(response.question[0].name, rdtype, qid=response.id)
        assert wire.parse_reply(query, data) == fast
        assert fast.question == converted.question
        assert (fast.qid, fast.flags, fast.rcode) == (message.id, message.flags, message.rcode())
        assert fast.edns == (message.opt is not None)
        assert bool(fast.answer_count) == bool(message.answer)
    # The generator reached every kind of verdict.
    assert {"unavailable", "listTrue", "tupleTrue", "tupleFalse"} <= seen
    assert {MxStatus.NXDOMAIN, MxStatus.NO_MX, MxStatus.NULL_MX} <= seen


def test_uncompressed_replies_read_the_same() -> None:
    rng = random.Random(7)
    for _ in range(200):
        response, domain, _ = random_response(rng)
        compressed = response.to_wire()
        data = _uncompressed(response)  # names written in full: the same reply, more bytes
        assert len(data) >= len(compressed)
        a, b = fastparse.parse(compressed), fastparse.parse(data)
        assert dns.message.from_wire(data) == dns.message.from_wire(compressed)
        for interpret in (wire.interpret_mx, wire.interpret_a):
            assert outcome(interpret, domain, a) == outcome(interpret, domain, b)


def _uncompressed(response: dns.message.Message) -> bytes:
    """The message's wire form without any compression pointer, written by hand."""
    sections = [response.answer, response.authority, response.additional]
    records: list[bytes] = []
    counts = []
    for section in sections:
        n = 0
        for rrset in section:
            for rdata in rrset:
                rd = rdata.to_wire()
                assert rd is not None
                owner = rrset.name.to_wire()
                assert owner is not None
                head = struct.pack("!HHIH", rrset.rdtype, rrset.rdclass, rrset.ttl, len(rd))
                records.append(owner + head + rd)
                n += 1
        counts.append(n)
    opt = b""
    if response.opt is not None:
        opt_rd = b"".join(
            struct.pack("!HH", o.otype, len(o.to_wire() or b"")) + (o.to_wire() or b"")
            for o in response.options
        )
        opt = b"\x00" + struct.pack("!HHIH", 41, response.payload, response.ednsflags, len(opt_rd))
        opt += opt_rd
        counts[2] += 1
    q = response.question[0]
    qwire = q.name.to_wire()
    assert qwire is not None
    header = struct.pack("!HHHHHH", response.id, response.flags, 1, *counts)
    return header + qwire + struct.pack("!HH", q.rdtype, q.rdclass) + b"".join(records) + opt


def test_text_of_odd_names_matches_dnspython() -> None:
    rng = random.Random(3)
    for _ in range(2000):
        labels = [
            bytes(rng.randrange(256) for _ in range(rng.randint(1, 5)))
            for _ in range(rng.randint(0, 4))
        ]
        name = dns.name.Name([*labels, b""])
        data = name.to_wire()
        assert data is not None
        parsed, end = fastparse._labels(data, 0, len(data))
        assert end == len(data)
        assert fastparse._text(parsed) == name.to_text(omit_final_dot=True).lower()


# --- replies the fast parser declines: dnspython reads them ------------------------------------


def mx_response(
    qname: str = "example.com",
    hosts: tuple[str, ...] = ("10 mx.example.com.",),
    **kwargs: Any,
) -> dns.message.Message:
    query = dns.message.make_query(qname, "MX", id=4242, **kwargs)
    response = dns.message.make_response(query, recursion_available=True)
    if hosts:
        add_rrset(response.answer, dns.name.from_text(qname), "MX", list(hosts))
    return response


def test_unusual_edns_options_go_to_dnspython() -> None:
    response = mx_response(use_edns=0)
    response.use_edns(0, options=[dns.edns.ECSOption("192.0.2.0", 24, 0)])
    data = response.to_wire()
    with pytest.raises(fastparse.Unsupported):
        fastparse.parse(data)
    query = wire.make_query("example.com", "MX", qid=4242)
    assert wire.interpret_mx("example.com", wire.parse_reply(query, data)) == [
        (10, "mx.example.com")
    ]
    # ... and what dnspython refuses is malformed, as before.
    bad_family = dns.edns.GenericOption(dns.edns.OptionType.ECS, b"\x00\x07\x18\x00\xc0\x00\x02")
    response.use_edns(0, options=[bad_family])
    with pytest.raises(wire.MalformedReply, match="family"):
        wire.parse_reply(query, response.to_wire())


def test_nsid_and_padding_stay_on_the_fast_path() -> None:
    response = mx_response(use_edns=0)
    response.use_edns(
        0,
        options=[
            dns.edns.GenericOption(dns.edns.OptionType.NSID, b"resolver-7"),
            dns.edns.GenericOption(dns.edns.OptionType.PADDING, b"\x00" * 20),
        ],
    )
    reply = fastparse.parse(response.to_wire())
    assert reply.edns
    assert wire.interpret_mx("example.com", reply) == [(10, "mx.example.com")]


def test_tsig_and_odd_messages_go_to_dnspython() -> None:
    keyring = dns.tsigkeyring.from_text({"key.": "c2VjcmV0c2VjcmV0c2VjcmV0"})
    signed = mx_response()
    signed.use_tsig(keyring, keyname="key.")
    data = signed.to_wire()
    with pytest.raises(fastparse.Unsupported, match="TSIG"):
        fastparse.parse(data)
    with pytest.raises(wire.MalformedReply, match="TSIG"):  # no keyring: dnspython refuses
        wire.decode_reply(data)

    update = bytearray(mx_response().to_wire())
    update[2] |= dns.opcode.NOTIFY << 3
    with pytest.raises(fastparse.Unsupported, match="opcode"):
        fastparse.parse(bytes(update))
    no_question = dns.message.Message(id=1)
    no_question.flags |= dns.flags.QR
    no_question.set_rcode(dns.rcode.SERVFAIL)
    data = no_question.to_wire()
    with pytest.raises(fastparse.Unsupported, match="0 questions"):
        fastparse.parse(data)
    with pytest.raises(DnsUnavailable, match="SERVFAIL"):
        wire.interpret_mx("example.com", wire.decode_reply(data))


def test_extended_rcode_is_read_from_opt() -> None:
    response = mx_response(hosts=(), use_edns=0)
    response.set_rcode(dns.rcode.BADVERS)  # 16: four bits in the header, the rest in OPT
    reply = fastparse.parse(response.to_wire())
    assert reply.rcode == dns.rcode.BADVERS
    with pytest.raises(DnsUnavailable, match="BADVERS"):
        wire.interpret_mx("example.com", reply)


def test_flags_are_exposed() -> None:
    response = mx_response()
    response.flags |= dns.flags.AA
    reply = fastparse.parse(response.to_wire())
    assert reply.authoritative and reply.recursion_available and not reply.truncated
    response.flags |= dns.flags.TC
    assert fastparse.parse(response.to_wire()).truncated


# --- malformed input ---------------------------------------------------------------------------

QUESTION = b"\x07example\x03com\x00" + struct.pack("!HH", 15, 1)  # at offset 12, 17 bytes
ANSWER_AT = 12 + len(QUESTION)  # 29
TO_QNAME = b"\xc0\x0c"


def header(an: int = 0, ns: int = 0, ar: int = 0, qd: int = 1, flags: int = 0x8180) -> bytes:
    return struct.pack("!HHHHHH", 4242, flags, qd, an, ns, ar)


def rr(owner: bytes, rtype: int, rdata: bytes, rclass: int = 1, ttl: int = 300) -> bytes:
    return owner + struct.pack("!HHIH", rtype, rclass, ttl, len(rdata)) + rdata


def mx_rdata(pref: int, exchange: bytes) -> bytes:
    return struct.pack("!H", pref) + exchange


def answer(*records: bytes) -> bytes:
    return header(an=len(records)) + QUESTION + b"".join(records)


A_RDATA = b"\x01\x02\x03\x04"


GOOD = header(an=1) + QUESTION + rr(TO_QNAME, 15, mx_rdata(10, b"\x02mx" + TO_QNAME))


def both_reject(data: bytes) -> None:
    """The fast parser raises MalformedReply, and dnspython refuses the datagram too."""
    with pytest.raises(fastparse.MalformedReply):
        fastparse.parse(data)
    with pytest.raises(Exception):  # noqa: B017 - any of dnspython's many errors
        dns.message.from_wire(data)


def both_accept(data: bytes) -> fastparse.Reply:
    dns.message.from_wire(data)
    return fastparse.parse(data)


def test_hand_built_reply_reads() -> None:
    reply = both_accept(GOOD)
    assert reply.answer == (fastparse.Record("example.com", 15, 300, (10, "mx.example.com")),)
    assert wire.interpret_mx("example.com", reply) == [(10, "mx.example.com")]
    # A TTL with the top bit set reads as 0 (RFC 2181 §8), as in dnspython.
    huge_ttl = answer(rr(TO_QNAME, 1, A_RDATA, ttl=0x80000000), rr(TO_QNAME, 1, A_RDATA, ttl=7))
    assert [r.ttl for r in both_accept(huge_ttl).answer] == [0, 7]
    assert dns.message.from_wire(huge_ttl).answer[0].ttl == 0


BAD_OWNERS = {
    "points-at-itself": b"\xc0" + bytes([ANSWER_AT]),
    "points-forward": b"\xc0" + bytes([ANSWER_AT + 2]),
    "beyond-the-end": b"\xff\xff",
    # 28 is the question class's low byte, 0x01: a label running into the pointer itself.
    "target-runs-into-the-pointer": b"\xc0\x1c",
    "back-into-own-labels": b"\x01a\xc0" + bytes([ANSWER_AT]),
    "label-type-0x40": b"\x40" + b"a" * 64 + b"\x00",
    "label-type-0x80": b"\x81a\x00",
    "name-over-255": b"".join(bytes([63]) + c * 63 for c in (b"a", b"b", b"c", b"d")) + TO_QNAME,
    "label-past-the-end": b"\x05ab",
    "half-a-pointer": b"\xc0",
}


@pytest.mark.parametrize("owner", BAD_OWNERS.values(), ids=BAD_OWNERS.keys())
def test_bad_owner_names(owner: bytes) -> None:
    both_reject(header(an=1) + QUESTION + rr(owner, 1, b"\x01\x02\x03\x04"))


def test_pointer_target_must_end_before_the_pointer() -> None:
    # From 28 (the question class's low byte, 0x01) the labels read [0xc0], then a 28-byte
    # label over the record header and rdata, then the rdata's zero byte: a well-formed name,
    # but one that overlaps the pointer leading to it. dnspython refuses that, and so do we.
    overlapping = rr(b"\xc0\x1c", 0xFF00, b"x" * 18 + b"\x00")
    both_reject(answer(overlapping))
    assert both_accept(answer(rr(b"\xc0\x1b", 0xFF00, b"x" * 18 + b"\x00"))).answer == ()


def test_pointer_loop_through_a_forward_pointer() -> None:
    # The question's name points forward to the answer's owner (offset 18), which points
    # back to the question's: 12 -> 18 -> 12 -> ...
    question = b"\xc0\x12" + QUESTION[-4:]
    both_reject(header(an=1) + question + rr(b"\xc0\x0c", 1, b"\x01\x02\x03\x04"))


def test_longest_valid_name_and_pointer_chains() -> None:
    # 255 bytes: three 63-byte labels, one 61-byte label, root.
    long_owner = b"".join(bytes([n]) + b"x" * n for n in (63, 63, 63, 61)) + b"\x00"
    assert len(long_owner) == 255
    reply = both_accept(header(an=1) + QUESTION + rr(long_owner, 1, b"\x01\x02\x03\x04"))
    assert len(reply.answer[0].name) == 253
    both_reject(header(an=1) + QUESTION + rr(b"\x01y" + long_owner, 1, b"\x01\x02\x03\x04"))

    def chained(pointers: int) -> bytes:
        # A skipped record holds a chain of pointers, each to the one before, the first to
        # the question name; the answer's owner points at the last one.
        start = ANSWER_AT + 10 + 1  # after the skipped record's root owner and header
        chain = TO_QNAME + b"".join(b"\xc0" + bytes([start + 2 * k]) for k in range(pointers - 2))
        skipped = rr(b"\x00", 0xFF00, chain)  # a private-use type: opaque bytes to both
        last = b"\xc0" + bytes([start + len(chain) - 2])
        return header(an=2) + QUESTION + skipped + rr(last, 1, b"\x01\x02\x03\x04")

    assert both_accept(chained(fastparse.MAX_POINTER_HOPS)).answer[0].name == "example.com"
    both_reject(chained(fastparse.MAX_POINTER_HOPS + 1))
    with pytest.raises(fastparse.MalformedReply, match="compression pointers"):
        fastparse.parse(chained(fastparse.MAX_POINTER_HOPS + 1))


MALFORMED = {
    "more-answers-than-sent": header(an=2) + GOOD[12:],
    "authority-count-too-high": header(an=1, ns=1) + GOOD[12:],
    "additional-count-too-high": header(an=1, ar=1) + GOOD[12:],
    "question-cut": header() + QUESTION[:-2],
    "header-only": header(),
    "shorter-than-a-header": b"\x10\x92\x81",
    "trailing-byte": GOOD + b"\x00",
    "rdlength-past-the-end": answer(TO_QNAME + struct.pack("!HHIH", 1, 1, 0, 40) + A_RDATA),
    "a-3-bytes": answer(rr(TO_QNAME, 1, A_RDATA[:3])),
    "a-5-bytes": answer(rr(TO_QNAME, 1, A_RDATA + b"\x05")),
    "mx-rdata-too-long": answer(rr(TO_QNAME, 15, mx_rdata(1, TO_QNAME) + b"\x00")),
    "mx-no-name": answer(rr(TO_QNAME, 15, b"\x00\x01")),
    "mx-name-runs-out-of-rdata": answer(rr(TO_QNAME, 15, mx_rdata(1, b"\x02mx"))),
    "cname-rdata-too-long": answer(rr(TO_QNAME, 5, TO_QNAME + b"\x00")),
    "soa-too-short": header(ns=1) + QUESTION + rr(TO_QNAME, 6, TO_QNAME * 2 + b"\x00" * 19),
    "ns-rdata-too-long": header(ns=1) + QUESTION + rr(TO_QNAME, 2, TO_QNAME + b"\x00"),
    "opt-in-answer": answer(rr(b"\x00", 41, b"")),
    "two-opts": header(ar=2) + QUESTION + rr(b"\x00", 41, b"") * 2,
    "opt-not-root": header(ar=1) + QUESTION + rr(TO_QNAME, 41, b""),
    "edns-option-past-opt": header(ar=1) + QUESTION + rr(b"\x00", 41, b"\x00\x03\x00\x05ab"),
    "edns-option-header-cut": header(ar=1) + QUESTION + rr(b"\x00", 41, b"\x00\x03\x00"),
}


@pytest.mark.parametrize("data", MALFORMED.values(), ids=MALFORMED.keys())
def test_malformed_replies(data: bytes) -> None:
    both_reject(data)


def test_bad_compression_pointers_in_rdata() -> None:
    # Beyond the end; at the start of the exchange itself; into the header's bytes.
    for exchange in (b"\x02mx\xff\xf0", b"\x02mx\xc0" + bytes([ANSWER_AT + 14]), b"\xc0\x00"):
        both_reject(header(an=1) + QUESTION + rr(TO_QNAME, 15, mx_rdata(10, exchange)))


def test_every_truncation_is_malformed() -> None:
    rng = random.Random(11)
    samples = [GOOD, mx_response(use_edns=0).to_wire()]
    for _ in range(30):
        response, _, _ = random_response(rng)
        samples.append(response.to_wire())
    for data in samples:
        message = dns.message.from_wire(data)
        question = message.question[0]
        query = wire.make_query(question.name, question.rdtype, qid=message.id)
        assert wire.parse_reply(query, data) == fastparse.parse(data)
        for cut in range(len(data)):
            with pytest.raises(wire.MalformedReply):
                wire.decode_reply(data[:cut])
            with pytest.raises(wire.MalformedReply):
                wire.parse_reply(query, data[:cut])


def test_mutated_replies_fail_cleanly_and_agree_with_dnspython() -> None:
    rng = random.Random(5)
    agreed = rejected = 0
    for _ in range(3000):
        response, domain, _ = random_response(rng)
        data = bytearray(response.to_wire())
        for _ in range(rng.randint(1, 3)):
            op = rng.random()
            at = rng.randrange(len(data))
            if op < 0.6:
                data[at] = rng.randrange(256)
            elif op < 0.75:
                del data[at]
            elif op < 0.9:
                data.insert(at, rng.randrange(256))
            else:  # a count field
                field = rng.choice([4, 6, 8, 10])
                data[field : field + 2] = struct.pack("!H", rng.randrange(8))
        mutated = bytes(data)
        try:
            message = dns.message.from_wire(mutated)
        except Exception:
            message = None
        try:
            reply = wire.decode_reply(mutated)
        except wire.MalformedReply:
            # The fast parser is never stricter than dnspython.
            assert message is None, mutated
            rejected += 1
            continue
        fast = outcome(wire.interpret_mx, domain, reply)
        fast_a = outcome(wire.interpret_a, domain, reply)
        if message is not None:
            assert fast == outcome(reference_interpret_mx, domain, message), mutated
            assert fast_a == outcome(reference_interpret_a, domain, message), mutated
            agreed += 1
    assert agreed > 300 and rejected > 300


# --- query names -------------------------------------------------------------------------------


def test_name_to_wire_matches_dnspython() -> None:
    rng = random.Random(9)
    cases = [
        "example.com",
        "Example.COM.",
        "a",
        ".",
        "",
        "@",
        "a..b",
        "-.x",
        "_dmarc.example.com",
        "a\\.b.example",
        "a b.example",
        "bücher.example",
        "x" * 63 + ".com",
        "x" * 64 + ".com",
        ".".join(["a" * 63] * 3 + ["a" * 61]),  # 253 characters: 255 bytes
        ".".join(["a" * 63] * 3 + ["a" * 61]) + ".",
        ".".join(["a" * 63] * 3 + ["a" * 62]),  # one too many
    ]
    for _ in range(500):
        labels = [
            "".join(rng.choice(_LETTERS + "A.") for _ in range(rng.randint(0, 70)))
            for _ in range(rng.randint(1, 5))
        ]
        cases.append(".".join(labels) + rng.choice(["", "."]))
    for text in cases:
        try:
            expected: bytes | type[Exception] = dns.name.from_text(text).to_wire() or b""
        except Exception:
            expected = ValueError
        if expected is ValueError:
            with pytest.raises(ValueError):
                wire.name_to_wire(text)
        else:
            assert wire.name_to_wire(text) == expected, text
            query = wire.make_query(text, "MX", qid=1)
            assert (
                query.wire
                == dns.message.make_query(text, "MX", use_edns=0, payload=1232, id=1).to_wire()
            )
