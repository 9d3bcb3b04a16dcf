"""Pure tests of query building, reply matching and MX/A interpretation (no sockets)."""

from __future__ import annotations

import dns.flags
import dns.message
import dns.rcode
import dns.rrset
import pytest

from ct_actors.dns import wire
from ct_actors.dns.types import DnsUnavailable, MxLookup, MxStatus


def reply(
    qname: str,
    rdtype: str,
    *answer: tuple[str, str, str],
    rcode: dns.rcode.Rcode = dns.rcode.NOERROR,
    authority: tuple[tuple[str, str, str], ...] = (),
    qid: int = 4242,
) -> dns.message.Message:
    """A reply to (qname, rdtype); answer entries are (owner, type, rdata)."""
    query = dns.message.make_query(qname, rdtype, id=qid)
    response = dns.message.make_response(query, recursion_available=True)
    response.set_rcode(rcode)
    for section, entries in ((response.answer, answer), (response.authority, authority)):
        for owner, rtype, rdata in entries:
            rrset = response.find_rrset(
                section, dns.name.from_text(owner), dns.rdataclass.IN,
                dns.rdatatype.from_text(rtype), create=True,
            )  # fmt: skip
            rrset.add(dns.rdata.from_text("IN", rtype, rdata), ttl=300)
    return response


def mx_hosts(result: MxLookup | list[tuple[int, str]]) -> list[tuple[int, str]]:
    assert isinstance(result, list), result
    return result


def mx_verdict(result: MxLookup | list[tuple[int, str]]) -> MxLookup:
    assert isinstance(result, MxLookup), result
    return result


SOA = ("example.com", "SOA", "ns1.example.com. host.example.com. 1 3600 600 86400 60")

# --- building queries -------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "rdtype"), [("example.com", "MX"), ("Mail.Example.ORG.", "A")])
def test_query_bytes_equal_dnspython(name: str, rdtype: str) -> None:
    ours = wire.make_query(name, rdtype, qid=0xBEEF)
    theirs = dns.message.make_query(name, rdtype, use_edns=0, payload=1232, id=0xBEEF)
    assert ours.wire == theirs.to_wire()
    parsed = dns.message.from_wire(ours.wire)
    assert parsed.flags & dns.flags.RD
    assert parsed.payload == wire.EDNS_PAYLOAD


def test_query_ids_are_random() -> None:
    ids = {wire.make_query("example.com", "MX").qid for _ in range(200)}
    assert len(ids) > 190
    assert all(0 <= i < 65536 for i in ids)


def test_invalid_names_are_value_errors() -> None:
    for bad in ("a..b", "x" * 64 + ".com", ("a" * 60 + ".") * 5):
        with pytest.raises(ValueError):
            wire.make_query(bad, "MX")


# --- matching replies -------------------------------------------------------------------------


def test_reply_matches_only_its_query() -> None:
    query = wire.make_query("example.com", "MX", qid=4242)
    good = reply("example.com", "MX", ("example.com", "MX", "10 mx.example.com.")).to_wire()
    assert wire.reply_matches(query, good)
    assert wire.parse_reply(query, good).answer
    # Servers may echo the name in another case.
    assert wire.reply_matches(query, reply("EXAMPLE.com", "MX").to_wire())

    assert not wire.reply_matches(query, reply("example.com", "MX", qid=4243).to_wire())
    assert not wire.reply_matches(query, reply("example.org", "MX").to_wire())
    assert not wire.reply_matches(query, reply("example.com", "A").to_wire())
    assert not wire.reply_matches(query, query.wire)  # QR flag clear: a query, not a reply
    assert not wire.reply_matches(query, good[:11])


def test_parse_reply_rejects_damaged_datagrams() -> None:
    query = wire.make_query("example.com", "MX", qid=4242)
    good = reply("example.com", "MX", ("example.com", "MX", "10 mx.example.com.")).to_wire()
    damaged = good[:-3]  # matches byte-wise (header + question) but the answer is cut
    assert wire.reply_matches(query, damaged)
    with pytest.raises(wire.MalformedReply):
        wire.parse_reply(query, damaged)


def test_check_response_mismatches() -> None:
    query = wire.make_query("example.com", "MX", qid=4242)
    wire.check_response(query, reply("Example.COM", "MX"))
    for bad in (
        reply("example.com", "MX", qid=1),
        reply("example.net", "MX"),
        reply("example.com", "A"),
    ):
        with pytest.raises(wire.MalformedReply):
            wire.check_response(query, bad)
    not_a_reply = reply("example.com", "MX")
    not_a_reply.flags &= ~dns.flags.QR
    with pytest.raises(wire.MalformedReply):
        wire.check_response(query, not_a_reply)


def test_truncation_flag() -> None:
    response = reply("example.com", "MX")
    assert not wire.is_truncated(response.to_wire())
    response.flags |= dns.flags.TC
    assert wire.is_truncated(response.to_wire())


# --- interpreting MX ----------------------------------------------------------------------------


def test_mx_sorted_by_preference_then_name_normalised() -> None:
    response = reply(
        "example.com",
        "MX",
        ("example.com", "MX", "20 b.example.net."),
        ("example.com", "MX", "10 Z.Example.NET."),
        ("example.com", "MX", "20 a.example.net."),
        ("example.com", "MX", "5 c.example.net."),
    )
    assert mx_hosts(wire.interpret_mx("example.com", response)) == [
        (5, "c.example.net"),
        (10, "z.example.net"),
        (20, "a.example.net"),
        (20, "b.example.net"),
    ]


def test_mx_duplicates_keep_best_preference() -> None:
    response = reply(
        "example.com",
        "MX",
        ("example.com", "MX", "30 mx.example.net."),
        ("example.com", "MX", "10 MX.example.net."),
        ("example.com", "MX", "20 other.example.net."),
    )
    assert mx_hosts(wire.interpret_mx("example.com", response)) == [
        (10, "mx.example.net"),
        (20, "other.example.net"),
    ]


def test_null_mx() -> None:
    response = reply("example.com", "MX", ("example.com", "MX", "0 ."))
    verdict = mx_verdict(wire.interpret_mx("example.com", response))
    assert verdict.status is MxStatus.NULL_MX
    assert verdict.domain == "example.com"


def test_null_mx_next_to_real_hosts_is_ignored() -> None:
    response = reply(
        "example.com",
        "MX",
        ("example.com", "MX", "0 ."),
        ("example.com", "MX", "10 mx.example.com."),
    )
    assert mx_hosts(wire.interpret_mx("example.com", response)) == [(10, "mx.example.com")]


def test_nxdomain() -> None:
    response = reply("nope.example", "MX", rcode=dns.rcode.NXDOMAIN, authority=(SOA,))
    assert mx_verdict(wire.interpret_mx("nope.example", response)).status is MxStatus.NXDOMAIN


def test_nodata_is_no_mx() -> None:
    response = reply("example.com", "MX", authority=(SOA,))
    verdict = mx_verdict(wire.interpret_mx("example.com", response))
    assert verdict.status is MxStatus.NO_MX
    assert "implicit MX" in verdict.detail


def test_mx_of_another_owner_is_not_ours() -> None:
    response = reply("example.com", "MX", ("elsewhere.com", "MX", "10 mx.elsewhere.com."))
    assert mx_verdict(wire.interpret_mx("example.com", response)).status is MxStatus.NO_MX


def test_cname_chain_is_followed() -> None:
    response = reply(
        "www.example.com",
        "MX",
        ("www.example.com", "CNAME", "alias.example.net."),
        ("alias.example.net", "CNAME", "final.example.org."),
        ("final.example.org", "MX", "10 mx.example.org."),
    )
    assert mx_hosts(wire.interpret_mx("www.example.com", response)) == [(10, "mx.example.org")]


def test_cname_without_mx_is_no_mx_and_to_nowhere_is_nxdomain() -> None:
    chain = ("www.example.com", "CNAME", "final.example.org.")
    nodata = reply("www.example.com", "MX", chain, authority=(SOA,))
    verdict = mx_verdict(wire.interpret_mx("www.example.com", nodata))
    assert verdict.status is MxStatus.NO_MX
    assert "final.example.org" in verdict.detail
    nx = reply("www.example.com", "MX", chain, rcode=dns.rcode.NXDOMAIN, authority=(SOA,))
    assert mx_verdict(wire.interpret_mx("www.example.com", nx)).status is MxStatus.NXDOMAIN


def test_cname_loop_is_unavailable() -> None:
    response = reply(
        "a.example.com",
        "MX",
        ("a.example.com", "CNAME", "b.example.com."),
        ("b.example.com", "CNAME", "a.example.com."),
    )
    with pytest.raises(DnsUnavailable, match="loop"):
        wire.interpret_mx("a.example.com", response)


@pytest.mark.parametrize(
    "rcode", [dns.rcode.SERVFAIL, dns.rcode.REFUSED, dns.rcode.FORMERR, dns.rcode.NOTIMP]
)
def test_error_rcodes_are_unavailable(rcode: dns.rcode.Rcode) -> None:
    response = reply("example.com", "MX", rcode=rcode)
    with pytest.raises(DnsUnavailable) as info:
        wire.interpret_mx("example.com", response)
    assert dns.rcode.to_text(rcode) in info.value.reason
    with pytest.raises(DnsUnavailable):
        wire.interpret_a("mx.example.com", reply("mx.example.com", "A", rcode=rcode))


def test_referral_is_not_no_mx() -> None:
    response = reply("example.com", "MX", authority=(("example.com", "NS", "ns1.example.com."),))
    with pytest.raises(DnsUnavailable, match="referral"):
        wire.interpret_mx("example.com", response)


def test_truncated_reply_is_unavailable() -> None:
    response = reply("example.com", "MX")
    response.flags |= dns.flags.TC
    with pytest.raises(DnsUnavailable, match="truncated"):
        wire.interpret_mx("example.com", response)


def test_interpretation_survives_wire_round_trip() -> None:
    response = reply("example.com", "MX", ("example.com", "MX", "10 mx.example.com."))
    parsed = dns.message.from_wire(response.to_wire())
    assert mx_hosts(wire.interpret_mx("example.com.", parsed)) == [(10, "mx.example.com")]


# --- interpreting A -------------------------------------------------------------------------------


def test_a_records_sorted_unique_via_cname() -> None:
    response = reply(
        "mx.example.com",
        "A",
        ("mx.example.com", "CNAME", "host.example.net."),
        ("host.example.net", "A", "192.0.2.10"),
        ("host.example.net", "A", "192.0.2.9"),
        ("host.example.net", "A", "10.0.0.1"),
    )
    assert wire.interpret_a("mx.example.com", response) == ("10.0.0.1", "192.0.2.9", "192.0.2.10")


def test_a_nxdomain_and_nodata_are_empty() -> None:
    nx = reply("gone.example.com", "A", rcode=dns.rcode.NXDOMAIN, authority=(SOA,))
    assert wire.interpret_a("gone.example.com", nx) == ()
    assert wire.interpret_a("v6only.example.com", reply("v6only.example.com", "A")) == ()
