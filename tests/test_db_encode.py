"""The batch encoder (pure Python, no database)."""

from __future__ import annotations

import json
import math
import uuid
from decimal import Decimal
from typing import Any

import pytest

from ct_actors.db.encode import (
    EVIDENCE_LIMIT,
    EVIDENCE_STRING_LIMIT,
    FIELD_LIMITS,
    MAX_RETRY_AFTER,
    SecretMask,
    clean_text,
    encode_evidence,
    encode_outcomes,
)
from ct_actors.db.queries import WRITE_COLUMNS
from ct_actors.outcome import Deferred, Failed, FailureCode, Outcome, Passed


def test_columns_are_parallel_and_sorted() -> None:
    ids = [uuid.uuid4() for _ in range(6)]
    outcomes = [
        Outcome(ids[0], "a.example", Passed("m", "first.last", Decimal("0.7"), False)),
        Outcome(ids[1], None, Failed(FailureCode.NO_DOMAIN, "no domain")),
        Outcome(ids[2], None, Failed(FailureCode.NOT_FOUND, "not found")),
        Outcome(ids[3], None, Failed(FailureCode.ALREADY_PROCESSED, "done")),
        Outcome(ids[4], "b.example", Deferred("resolver down", 30.0)),
        Outcome(ids[5], "c.example", Failed(FailureCode.VERIFY_FAIL, "tier 2", "warning")),
    ]
    batch = encode_outcomes(outcomes)
    assert len(batch) == 6
    assert [len(col) for col in batch.args()] == [6] * len(WRITE_COLUMNS)
    cols = batch.columns
    assert cols["outreach_id"] == sorted(ids)
    row = {oid: i for i, oid in enumerate(cols["outreach_id"])}
    kinds = {oid: cols["kind"][row[oid]] for oid in ids}
    assert kinds == {
        ids[0]: "pass",
        ids[1]: "fail",
        ids[2]: "fail_error",
        ids[3]: "noop",
        ids[4]: "defer",
        ids[5]: "fail",
    }
    r = row[ids[5]]
    assert (cols["failure_code"][r], cols["imo_stage"][r], cols["pipeline_stage"][r]) == (
        "CT-M-VERIFY-FAIL",
        "M",
        "middle",
    )
    assert cols["severity"][r] == "warning" and cols["confidence_score"][r] is None
    r = row[ids[1]]
    assert (cols["imo_stage"][r], cols["pipeline_stage"][r]) == ("I", "input")
    r = row[ids[0]]
    assert cols["confidence_score"][r] == Decimal("0.7000") and cols["is_catchall"][r] is False
    r = row[ids[4]]
    assert (cols["retry_after"][r], cols["reason"][r]) == (30.0, "resolver down")


def test_duplicates_and_bad_confidence_are_refused() -> None:
    oid = uuid.uuid4()
    p = Outcome(oid, "a", Passed("m", "t", Decimal("0.5"), False))
    with pytest.raises(ValueError, match="more than once"):
        encode_outcomes([p, p])
    for bad in (Decimal("1.0001"), Decimal("-0.1"), Decimal("NaN"), float("inf")):
        with pytest.raises(ValueError, match=str(oid)):
            encode_outcomes([Outcome(oid, "a", Passed("m", "t", bad, False))])  # type: ignore[arg-type]
    ok = encode_outcomes([Outcome(oid, "a", Passed("m", "t", 0.123456, False))])  # type: ignore[arg-type]
    assert ok.columns["confidence_score"] == [Decimal("0.1235")]


def test_retry_after_is_clamped() -> None:
    oid = uuid.uuid4()
    for given, expected in ((-5.0, 0.0), (1e12, MAX_RETRY_AFTER), (math.inf, MAX_RETRY_AFTER)):
        batch = encode_outcomes([Outcome(oid, None, Deferred("x", given))])
        assert batch.columns["retry_after"] == [expected]
    with pytest.raises(ValueError, match="NaN"):
        encode_outcomes([Outcome(oid, None, Deferred("x", math.nan))])


def test_clean_text() -> None:
    assert clean_text(None) is None
    assert clean_text("plain") == "plain"
    assert clean_text("a\x00b") == "a\\x00b"
    assert clean_text("caf\u00e9 \u2603") == "caf\u00e9 \u2603"
    assert clean_text("bad \udcff byte\x00") == "bad \\udcff byte\\x00"
    assert clean_text(42) == "42"  # type: ignore[arg-type]


class Weird:
    def __repr__(self) -> str:
        return "<weird \x00>"


def test_evidence_always_encodes_to_valid_json_postgres_accepts() -> None:
    loop: dict[str, Any] = {}
    loop["self"] = loop
    evidence: dict[Any, Any] = {
        "ok": "plain",
        "nul": "a\x00b",
        "surrogate": "\udcff",
        "nan": float("nan"),
        "inf": -math.inf,
        "dec": Decimal("0.70"),
        "bytes": b"\xff\x00ok",
        "uuid": uuid.UUID(int=1),
        "tuple": (1, 2),
        "set": frozenset({"x"}),
        "enum": FailureCode.NO_MX,
        "obj": Weird(),
        "loop": loop,
        3: "int key",
    }
    text = encode_evidence(evidence)
    assert text is not None
    assert "\\u0000" not in text and "\x00" not in text
    text.encode("utf-8")  # no lone surrogates
    parsed = json.loads(text)
    assert parsed["ok"] == "plain" and parsed["nul"] == "a\\x00b"
    assert parsed["nan"] == "nan" and parsed["inf"] == "-inf" and parsed["dec"] == "0.70"
    assert parsed["enum"] == "CT-M-NO-MX" and parsed["3"] == "int key"
    assert parsed["uuid"] == str(uuid.UUID(int=1)) and parsed["tuple"] == [1, 2]
    assert "truncated" in json.dumps(parsed["loop"])
    assert encode_evidence(None) is None
    assert encode_evidence({}) == "{}"
    assert encode_evidence({"a": [1, "b"]}) == '{"a":[1,"b"]}'


# ─── issue 10: bounded, readable, secret-free stored text ───────────────────────────────────


def test_control_characters_are_never_stored_raw() -> None:
    # ESC/BEL from a hostile reply would drive an operator's terminal through psql; a bare CR
    # can overwrite a line; bidi overrides (Trojan Source) reorder text. Tab and LF are plain
    # whitespace and kept (the audit shows a spine value as it was).
    assert clean_text("550 \x1b[31mred\x07 bell") == "550 \\x1b[31mred\\x07 bell"
    assert clean_text("line1\r\nline2\tx") == "line1\\x0d\nline2\tx"
    assert clean_text("a\x9bb\x7fc") == "a\\x9bb\\x7fc"
    assert clean_text("abc\u202edcba") == "abc\\u202edcba"
    text = encode_evidence({"reply": "550 \x1b]0;pwned\x07", "ok": "fine\n"})
    assert text is not None
    parsed = json.loads(text)
    assert parsed == {"reply": "550 \\x1b]0;pwned\\x07", "ok": "fine\n"}


def test_free_text_fields_are_bounded() -> None:
    assert clean_text("x" * 50, 20) == "x" * 9 + "…[50 chars]"
    assert len(clean_text("y" * 100_000, 2000) or "") == 2000
    huge = "d" * 100_000
    outcome = Outcome(
        uuid.UUID(int=1),
        None,
        Failed(FailureCode.NO_DOMAIN, f"domain {huge!r} unusable", evidence={"raw_domain": huge}),
    )
    batch = encode_outcomes([outcome])
    reason = batch.columns["blocking_reason"][0]
    assert len(reason) == FIELD_LIMITS["blocking_reason"] and reason.endswith("…[100018 chars]")
    evidence = json.loads(batch.columns["evidence"][0])
    assert len(evidence["raw_domain"]) == EVIDENCE_STRING_LIMIT
    # Many strings, each within its bound, still cannot make the evidence unbounded.
    wide = encode_evidence({"visits": [{"reply": "r" * 1500} for _ in range(200)]})
    assert wide is not None and len(wide) < EVIDENCE_LIMIT
    cut = json.loads(wide)
    assert cut["evidence_truncated"] is True and cut["chars"] > EVIDENCE_LIMIT


def test_known_secrets_are_masked_in_everything_stored() -> None:
    key = "mv-KEY-0123456789"
    mask = SecretMask([key, "pa ss"])
    evidence = {"vendor": {"echo": f"api_key={key}&email=a@b.c"}, "url": "x?k=pa%20ss"}
    text = encode_evidence(evidence, mask)
    assert text is not None and key not in text and "pa%20ss" not in text
    assert json.loads(text)["vendor"]["echo"] == "api_key=***&email=a@b.c"
    outcome = Outcome(
        uuid.UUID(int=2), None, Deferred(f"vendor said {key}", 60.0, {"short": key})
    )
    batch = encode_outcomes([outcome], mask=mask)
    assert batch.columns["reason"][0] == "vendor said ***"
    assert key not in batch.columns["evidence"][0]
    # Without a mask nothing is guessed (shape-based masking belongs to the logs).
    assert encode_evidence({"a": key}) == f'{{"a":"{key}"}}'
