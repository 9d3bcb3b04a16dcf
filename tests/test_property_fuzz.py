"""The fuzzers of the issue 10 review, kept as property tests (hypothesis, bounded, seeded with
`derandomize=True`, so every run tries the same inputs): the SMTP reply parser against arbitrary
bytes in arbitrary chunks, and the DNS fast parser against dnspython on mutated replies. (The
normaliser's idempotence property lives in test_normalise.py.)"""

from __future__ import annotations

import random
import struct

import dns.message
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ct_actors.dns import wire
from ct_actors.smtp.errors import SmtpProtocolError
from ct_actors.smtp.reply import ReplyParser
from ct_actors.smtp.types import Reply
from tests.test_dns_fastparse import (
    outcome,
    random_response,
    reference_interpret_a,
    reference_interpret_mx,
)

pytestmark = pytest.mark.timeout(120)

# ─── SMTP replies ───────────────────────────────────────────────────────────────────────────

_line = st.one_of(
    st.builds(
        lambda code, sep, text, end: f"{code}{sep}{text}".encode("utf-8", "surrogatepass")
        + end,
        st.sampled_from(["220", "250", "421", "450", "452", "550", "554", "199", "25", "2x0"]),
        st.sampled_from([" ", "-", "", "\t"]),
        st.text(max_size=60).map(lambda t: t.replace("\n", " ")),
        st.sampled_from([b"\r\n", b"\n", b"\r", b""]),
    ),
    st.binary(max_size=40),
)


def _parse(chunks: list[bytes]) -> list[Reply] | str:
    parser = ReplyParser(max_line_length=120, max_lines=8)
    out: list[Reply] = []
    try:
        for chunk in chunks:
            out.extend(parser.feed(chunk))
    except SmtpProtocolError:
        return "error"
    return out


@settings(max_examples=500, derandomize=True, deadline=None)
@given(st.lists(_line, max_size=12), st.lists(st.integers(0, 2000), max_size=6))
def test_property_reply_parser_is_total_and_chunking_invariant(
    lines: list[bytes], cuts: list[int]
) -> None:
    data = b"".join(lines)
    whole = _parse([data])  # only Reply objects or SmtpProtocolError, never anything else
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    chunked = _parse(chunks)
    # However the bytes arrive, the same replies, or the same refusal.
    assert chunked == whole
    if whole != "error":
        for reply in whole:
            assert 200 <= reply.code <= 599 and len(reply.lines) <= 8


# ─── DNS fast parser versus dnspython ───────────────────────────────────────────────────────


@settings(max_examples=400, derandomize=True, deadline=None)
@given(
    st.integers(0, 2**32 - 1),
    st.lists(
        st.tuples(st.sampled_from(["set", "del", "ins", "count"]), st.integers(0, 2**16)),
        min_size=1,
        max_size=3,
    ),
)
def test_property_dns_fast_parser_agrees_with_dnspython(
    seed: int, mutations: list[tuple[str, int]]
) -> None:
    rng = random.Random(seed)
    response, domain, _ = random_response(rng)
    data = bytearray(response.to_wire())
    for op, n in mutations:
        at = n % len(data)
        if op == "set":
            data[at] = n % 256
        elif op == "del" and len(data) > 1:
            del data[at]
        elif op == "ins":
            data.insert(at, n % 256)
        else:
            field = (4, 6, 8, 10)[n % 4]
            data[field : field + 2] = struct.pack("!H", n % 8)
    mutated = bytes(data)
    try:
        message: dns.message.Message | None = dns.message.from_wire(mutated)
    except Exception:
        message = None
    try:
        reply = wire.decode_reply(mutated)
    except wire.MalformedReply:
        assert message is None  # never stricter than dnspython
        return
    if message is not None:
        assert outcome(wire.interpret_mx, domain, reply) == outcome(
            reference_interpret_mx, domain, message
        )
        assert outcome(wire.interpret_a, domain, reply) == outcome(
            reference_interpret_a, domain, message
        )
