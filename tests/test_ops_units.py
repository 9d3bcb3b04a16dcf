"""`ct_actors.ops` without a database: the canary's selection arithmetic, the eight checks on
synthetic facts, the report's and the canary report's formatting, the role's grants and
password verifier, the static scan."""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import hashlib
import hmac
import json
import random
import types
import uuid
from decimal import Decimal
from pathlib import Path

import pytest

from ct_actors.ops.canary_facts import (
    CanaryFacts,
    ErrorRow,
    ForeignWrites,
    LeaseRow,
    RoleProof,
    SovereignProof,
    StaticScan,
    TargetRow,
)
from ct_actors.ops.canary_run import CanaryRun
from ct_actors.ops.checks import CHECK_NAMES, evaluate, expected_confidence
from ct_actors.ops.isolation import (
    IsolationError,
    Relation,
    grant_statements,
    scan_statements,
    scram_sha256_verifier,
    with_credentials,
)
from ct_actors.ops.markdown import render_canary_report
from ct_actors.ops.report import (
    Estimate,
    PassRate,
    RecentFailure,
    Report,
    ReportOptions,
    ThroughputBucket,
    estimate,
    format_report,
    report_dict,
)
from ct_actors.ops.selection import (
    OTHER,
    STRATA,
    StratifiedSampler,
    select_canary,
    stratum_of,
    stratum_targets,
)
from ct_actors.ops.text import markdown_table, parse_markdown_table, text_table

pytestmark = pytest.mark.timeout(30)

T0 = dt.datetime(2026, 1, 7, 12, 0, tzinfo=dt.UTC)


# ─── selection arithmetic ───────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("size", "want"),
    [
        (100, (40, 20, 20, 20)),
        (20, (8, 4, 4, 4)),
        (10, (4, 2, 2, 2)),
        (7, (3, 2, 1, 1)),  # 2.8/1.4/1.4/1.4: floors 2/1/1/1, two left over -> .com, then .io
        (3, (1, 1, 1, 0)),  # 1.2/0.6/0.6/0.6: floors 1/0/0/0, two left -> .io, .org (a tie)
        (1, (1, 0, 0, 0)),
        (0, (0, 0, 0, 0)),
        (101, (41, 20, 20, 20)),
        (13, (5, 3, 3, 2)),  # 5.2/2.6/2.6/2.6: floors 5/2/2/2, two left -> .io, .org
    ],
)
def test_targets_are_largest_remainder_and_add_up(size: int, want: tuple[int, ...]) -> None:
    targets = stratum_targets(size)
    assert tuple(targets[s] for s in STRATA) == want
    assert sum(targets.values()) == size


def test_targets_for_every_size_add_up_and_stay_within_one_of_the_quota() -> None:
    for size in range(0, 500):
        targets = stratum_targets(size)
        assert sum(targets.values()) == size
        for stratum, weight in zip(STRATA, (40, 20, 20, 20), strict=True):
            assert abs(targets[stratum] - size * weight / 100) < 1
    with pytest.raises(ValueError):
        stratum_targets(-1)


def test_targets_of_the_seed_report() -> None:
    # The seed report's 100-record canary: 40 / 20 / 20 / 20.
    assert stratum_targets(100) == {".com": 40, ".io": 20, ".org": 20, OTHER: 20}


@pytest.mark.parametrize(
    ("raw", "stratum", "domain"),
    [
        ("acme.com", ".com", "acme.com"),
        ("https://www.Acme.IO/about?x=1", ".io", "acme.io"),
        ("ACME.ORG.", ".org", "acme.org"),
        ("acme.org:443", ".org", "acme.org"),
        ("acme.co.uk", OTHER, "acme.co.uk"),
        ("acme.net", OTHER, "acme.net"),
        ("acme.community", OTHER, "acme.community"),  # .com is the TLD, not a prefix
        ("acme.iot", OTHER, "acme.iot"),
        ("bücher.de", OTHER, "xn--bcher-kva.de"),
        (None, OTHER, None),
        ("", OTHER, None),
        ("bob@acme.com", OTHER, None),  # an e-mail address is unusable, whatever its TLD
        ("192.0.2.10", OTHER, None),
    ],
)
def test_stratum_is_the_normalised_domains_tld(
    raw: str | None, stratum: str, domain: str | None
) -> None:
    assert stratum_of(raw) == (stratum, domain)


def _population(n_per: dict[str, int], rng: random.Random) -> list[tuple[uuid.UUID, str | None]]:
    rows: list[tuple[uuid.UUID, str | None]] = []
    for tld, n in n_per.items():
        for i in range(n):
            rows.append((uuid.UUID(int=rng.getrandbits(128)), f"d{i}-{rng.randrange(10**6)}{tld}"))
    return rows


def test_selection_is_deterministic_and_independent_of_row_order() -> None:
    rng = random.Random(1)
    rows = _population({".com": 90, ".io": 40, ".org": 35, ".net": 20, ".de": 15}, rng)
    first = select_canary(rows, 20, seed=42)
    shuffled = rows[:]
    random.Random(2).shuffle(shuffled)
    again = select_canary(shuffled, 20, seed=42)
    assert first == again
    assert first.actual == {".com": 8, ".io": 4, ".org": 4, OTHER: 4}
    assert first.available == {".com": 90, ".io": 40, ".org": 35, OTHER: 35}
    assert first.shortfalls == {}
    assert len(set(first.ids)) == 20
    other_seed = select_canary(rows, 20, seed=43)
    assert set(other_seed.ids) != set(first.ids)
    # Within a stratum: exactly the records with the smallest SHA-256(seed:id).
    com = sorted(
        (i for i, d in rows if d and d.endswith(".com")),
        key=lambda i: hashlib.sha256(f"42:{i}".encode()).digest(),
    )[:8]
    assert sorted(p.outreach_id for p in first.picked if p.stratum == ".com") == sorted(com)
    # Ordered by stratum, then id.
    assert [p.stratum for p in first.picked] == [".com"] * 8 + [".io"] * 4 + [".org"] * 4 + [
        OTHER
    ] * 4


def test_a_short_stratum_is_reported_not_filled() -> None:
    rng = random.Random(3)
    rows = _population({".com": 50, ".io": 2, ".org": 10, ".net": 10}, rng)
    rows.append((uuid.uuid4(), None))  # unusable -> other
    sel = select_canary(rows, 20, seed=1)
    assert sel.targets == {".com": 8, ".io": 4, ".org": 4, OTHER: 4}
    assert sel.actual == {".com": 8, ".io": 2, ".org": 4, OTHER: 4}
    assert sel.shortfalls == {".io": 2}
    assert len(sel.picked) == 18


def test_sampler_keeps_only_the_targets_in_memory() -> None:
    sampler = StratifiedSampler(size=10, seed=9)
    for i in range(5000):
        sampler.add(uuid.UUID(int=i + 1), f"x{i}.com")
    assert max(len(h) for h in sampler._heaps.values()) <= 4
    assert sampler.selection().actual[".com"] == 4


def test_unusable_records_are_counted_in_other() -> None:
    rows = [(uuid.UUID(int=i + 1), None) for i in range(10)]
    sel = select_canary(rows, 5, seed=0)
    assert sel.actual == {".com": 0, ".io": 0, ".org": 0, OTHER: 1}
    assert sel.unusable == 1
    assert sel.shortfalls == {".com": 2, ".io": 1, ".org": 1}


# ─── estimate and the report's formatting ───────────────────────────────────────────────────


def test_estimate_and_unknown_rate() -> None:
    e = estimate(pending=45_609, outcomes=5_400, window_seconds=3600)
    assert e.per_hour == 5400.0
    assert e.hours == pytest.approx(45_609 / 5400)
    assert e.text.startswith("45609 pending, about 8.4 hours at the current rate")
    unknown = estimate(pending=12, outcomes=0, window_seconds=3600)
    assert (unknown.per_hour, unknown.hours) == (None, None)
    assert "12 pending" in unknown.text and "unknown" in unknown.text
    assert estimate(0, 0, 60).text == "0 pending: nothing left to process"
    half = estimate(pending=10, outcomes=10, window_seconds=1800)
    assert half.per_hour == 20.0 and half.hours == 0.5
    with pytest.raises(ValueError):
        estimate(1, 1, 0)


def _report(pass_rate: Decimal | None = Decimal("75.00")) -> Report:
    oid = uuid.UUID(int=5)
    return Report(
        generated_at=T0,
        options=ReportOptions(bucket="minute", buckets=2, recent=1),
        pass_rate=(
            PassRate(3, 1, 4, pass_rate) if pass_rate is not None else PassRate(0, 0, 0, None)
        ),
        failures=[("CT-M-NO-MX", 2), (None, 1)],
        recent=[RecentFailure(oid, "CT-M-NO-MX", "no MX records | published\nat all", T0)],
        throughput=[
            ThroughputBucket(T0 - dt.timedelta(minutes=1), 0, 0, 0),
            ThroughputBucket(T0, 4, 3, 1),
        ],
        estimate=Estimate(10, 60.0, 4, 4.0, 2.5),
    )


def test_report_json_shape() -> None:
    d = report_dict(_report())
    assert json.loads(json.dumps(d)) == d  # plain JSON types only
    assert d["pass_rate"] == {
        "window_hours": 24.0,
        "passed": 3,
        "failed": 1,
        "total": 4,
        "pass_rate": 75.0,
    }
    assert d["failure_distribution"]["codes"] == [
        {"failure_code": "CT-M-NO-MX", "count": 2},
        {"failure_code": None, "count": 1},
    ]
    assert d["recent_failures"][0]["outreach_id"] == str(uuid.UUID(int=5))
    assert d["recent_failures"][0]["created_at"] == "2026-01-07T12:00:00Z"
    assert [b["outcomes"] for b in d["throughput"]["buckets"]] == [0, 4]
    assert d["throughput"]["bucket"] == "minute"
    assert d["pending"] == 10
    assert d["rate"] == {"window_minutes": 60.0, "outcomes": 4, "per_hour": 4.0}
    assert d["estimate"]["hours"] == 2.5
    assert (
        d["estimate"]["text"] == "10 pending, about 2.5 hours at the current rate (4.0 "
        "outcomes/hour over the last 60 minutes)"
    )
    assert report_dict(_report(None))["pass_rate"]["pass_rate"] is None


def test_report_text_tables() -> None:
    text = format_report(_report(), reason_width=20)
    assert "75.00 %" in text
    assert "CT-M-NO-MX" in text and "(none)" in text
    assert "no MX records | pub…" in text  # one line, shortened
    assert "2026-01-07T12:00:00Z" in text
    assert "Estimate: 10 pending, about 2.5 hours" in text
    assert "no data" in format_report(_report(None))


def test_report_options_are_validated() -> None:
    with pytest.raises(ValueError):
        ReportOptions(window_hours=0)
    with pytest.raises(ValueError):
        ReportOptions(buckets=0)
    with pytest.raises(ValueError):
        ReportOptions(recent=-1)


def test_tables() -> None:
    text = text_table(["a", "count"], [["x", 1], ["longer", 22]], "lr")
    assert text.splitlines() == ["a       count", "------  -----", "x           1", "longer     22"]
    md = markdown_table(["Code", "Description"], [["A|B", "pipe | inside"]], "lr")
    assert md.splitlines()[1] == "|---|---:|"
    assert parse_markdown_table("intro\n\n" + md + "\n\nafter") == [
        ["Code", "Description"],
        ["A|B", "pipe | inside"],
    ]


# ─── the eight checks on synthetic facts ────────────────────────────────────────────────────

START, END = T0, T0 + dt.timedelta(minutes=5)
DONE = T0 + dt.timedelta(minutes=1)


def _pass(
    oid: uuid.UUID, method: str = "first.last", conf: str = "0.95", **kw: object
) -> TargetRow:
    fields: dict[str, object] = {
        "outreach_id": oid,
        "execution_status": "ready",
        "email_method": "{first}.{last}@x.com",
        "method_type": method,
        "confidence_score": Decimal(conf),
        "is_catchall": False,
        "imo_completed_at": DONE,
        "company_unique_id": None,
        "probe_mode": "smtp",
    }
    fields.update(kw)
    return TargetRow(**fields)  # type: ignore[arg-type]


def _failed_target(oid: uuid.UUID) -> TargetRow:
    return TargetRow(oid, "failed", None, None, None, None, DONE, None, "smtp")


def _error(oid: uuid.UUID, code: str = "CT-M-NO-MX", stage: str = "M", **kw: object) -> ErrorRow:
    fields: dict[str, object] = {
        "error_id": 1,
        "outreach_id": oid,
        "failure_code": code,
        "imo_stage": stage,
        "pipeline_stage": "middle" if stage == "M" else "input",
        "blocking_reason": "because",
        "retry_allowed": False,
        "created_at": DONE,
        "resolved_at": None,
    }
    fields.update(kw)
    return ErrorRow(**fields)  # type: ignore[arg-type]


GOOD_PROOF = SovereignProof(
    StaticScan(("m",), 10, ()),
    RoleProof("ct_canary_x", 1, 0, True, False, False, 0, 2),
)


def _facts(
    targets: list[TargetRow], errors: list[ErrorRow], leases: list[LeaseRow] | None = None
) -> CanaryFacts:
    by_error: dict[uuid.UUID, list[ErrorRow]] = {}
    for e in errors:
        by_error.setdefault(e.outreach_id, []).append(e)
    return CanaryFacts(
        targets={t.outreach_id: t for t in targets},
        errors=by_error,
        leases={lease.outreach_id: lease for lease in leases or []},
        run_started=START,
        run_finished=END,
        foreign=ForeignWrites(),
    )


IDS = [uuid.UUID(int=i) for i in range(1, 7)]


def _good() -> tuple[list[TargetRow], list[ErrorRow]]:
    a, b, c, d, e, f = IDS
    targets = [
        _pass(a),
        _pass(b, "f.last", "0.90"),
        _pass(c, "first.last", "0.50", is_catchall=True),
        _pass(d, "info", "0.70"),
        _failed_target(e),
        _failed_target(f),
    ]
    errors = [_error(e), _error(f, "CT-I-NO-DOMAIN", "I", error_id=2)]
    return targets, errors


def _verdicts(results: list[object]) -> list[bool]:
    return [r.passed for r in results]  # type: ignore[attr-defined]


def test_all_checks_pass_on_good_facts() -> None:
    targets, errors = _good()
    results = evaluate(IDS, _facts(targets, errors), "smtp", GOOD_PROOF)
    assert [r.name for r in results] == list(CHECK_NAMES)
    assert _verdicts(results) == [True] * 8
    assert [r.summary for r in results[:6]] == ["6/6", "4/4", "2/2", "2/2", "6/6", "4/4"]
    assert results[6].summary == "4/4 in model, range 0.50-0.95"


def test_unprocessed_records_fail_checks_1_and_5_with_their_reason() -> None:
    targets, errors = _good()
    extra = uuid.UUID(int=99)
    lease = LeaseRow(extra, "me:canary", 1, END + dt.timedelta(minutes=10), "blocked by mx", False)
    results = evaluate([*IDS, extra], _facts(targets, errors, [lease]), "smtp", GOOD_PROOF)
    assert _verdicts(results) == [False, True, True, True, False, True, True, True]
    assert results[0].summary == "6/7"
    assert "deferred until" in results[0].details[0] and "blocked by mx" in results[0].details[0]
    assert results[4].details == (f"{extra}: still pending (no outcome)",)
    never = evaluate([*IDS, extra], _facts(targets, errors), "smtp", GOOD_PROOF)
    assert "never claimed" in never[0].details[0]


def test_check_2_incomplete_pass_row() -> None:
    targets, errors = _good()
    targets[0] = dataclasses.replace(targets[0], is_catchall=None, email_method="")
    results = evaluate(IDS, _facts(targets, errors), "smtp", GOOD_PROOF)
    assert _verdicts(results)[1] is False
    assert results[1].summary == "3/4"
    assert "email_method, is_catchall" in results[1].details[0]


def test_check_3_failed_without_error_row_and_ready_with_error_row() -> None:
    targets, errors = _good()
    results = evaluate(IDS, _facts(targets, errors[:1]), "smtp", GOOD_PROOF)
    assert _verdicts(results)[2] is False
    assert results[2].summary == "1/2"
    assert "without an open error row" in results[2].details[0]
    # A PASS row plus an open error row is two outcomes: check 1 fails too.
    conflict = evaluate(
        IDS, _facts(targets, [*errors, _error(IDS[0], error_id=3)]), "smtp", GOOD_PROOF
    )
    assert _verdicts(conflict)[0] is False and _verdicts(conflict)[2] is False
    # A resolved error row is history, not an outcome.
    resolved = _error(IDS[4], error_id=9, resolved_at=DONE)
    assert evaluate(IDS, _facts(targets, [*errors, resolved]), "smtp", GOOD_PROOF)[2].passed


def test_check_4_unknown_code_and_stage_mismatch() -> None:
    targets, errors = _good()
    errors[0] = _error(IDS[4], "CT-M-NO-MX", "I")
    errors[1] = _error(IDS[5], "CT-X-MADE-UP", "I", error_id=2)
    results = evaluate(IDS, _facts(targets, errors), "smtp", GOOD_PROOF)
    assert _verdicts(results)[3] is False
    assert results[3].summary == "0/2"
    assert any("imo_stage 'I' (expected 'M')" in d for d in results[3].details)
    assert any("unknown failure_code 'CT-X-MADE-UP'" in d for d in results[3].details)


def test_check_5_outcome_outside_the_run_or_lease_left() -> None:
    targets, errors = _good()
    targets[0] = dataclasses.replace(targets[0], imo_completed_at=START - dt.timedelta(days=1))
    lease = LeaseRow(IDS[1], "x", 1, None, None, False)
    results = evaluate(IDS, _facts(targets, errors, [lease]), "smtp", GOOD_PROOF)
    assert _verdicts(results)[4] is False
    assert results[4].summary == "4/6"
    assert "outside this run" in results[4].details[0]
    assert "still holds a lease" in results[4].details[1]


def test_checks_6_and_7_method_type_and_confidence_model() -> None:
    targets, errors = _good()
    targets[1] = dataclasses.replace(targets[1], method_type="guess")
    targets[3] = dataclasses.replace(targets[3], confidence_score=Decimal("0.99"))
    results = evaluate(IDS, _facts(targets, errors), "smtp", GOOD_PROOF)
    assert _verdicts(results) == [True, True, True, True, True, False, False, True]
    assert results[5].details == (f"{IDS[1]}: method_type 'guess'",)
    assert len(results[6].details) == 2
    assert "confidence 0.99 (model: 0.70)" in results[6].details[1]
    assert "outside 0.50-0.95" in results[6].details[1]


def test_check_7_mx_only_model() -> None:
    oid = IDS[0]
    ok = _pass(oid, "first.last", "0.70", probe_mode="mx-only")
    assert evaluate([oid], _facts([ok], []), "mx-only", GOOD_PROOF)[6].passed
    # The smtp model's value for first.last is wrong in an mx-only run, and vice versa.
    wrong = _pass(oid, "first.last", "0.95", probe_mode="mx-only")
    assert not evaluate([oid], _facts([wrong], []), "mx-only", GOOD_PROOF)[6].passed
    assert not evaluate([oid], _facts([ok], []), "smtp", GOOD_PROOF)[6].passed
    assert expected_confidence("smtp", "first", False) == Decimal("0.85")
    assert expected_confidence("smtp", "first", True) == Decimal("0.50")
    assert expected_confidence("mx-only", None, None) == Decimal("0.70")


@pytest.mark.parametrize(
    ("proof", "why"),
    [
        (
            SovereignProof(
                StaticScan(("m",), 10, ("m.CLAIM names sovereign_id",)), GOOD_PROOF.role
            ),
            "static: m.CLAIM names sovereign_id",
        ),
        (SovereignProof(GOOD_PROOF.static, None, "could not connect"), "could not connect"),
        (
            dataclasses.replace(GOOD_PROOF, role=RoleProof("r", 1, 1, True, False, False, 0, 1)),
            "can read 1 sovereign_id column",
        ),
        (
            dataclasses.replace(GOOD_PROOF, role=RoleProof("r", 1, 0, True, True, False, 0, 1)),
            "superuser",
        ),
        (
            dataclasses.replace(GOOD_PROOF, role=RoleProof("r", 1, 0, True, False, False, 0, 0)),
            "did not run under it",
        ),
        (
            dataclasses.replace(GOOD_PROOF, permission_denied="permission denied for table x"),
            "was refused: permission denied",
        ),
        (SovereignProof(StaticScan(("m",), 0, ()), GOOD_PROOF.role), "0 SQL constants"),
    ],
    ids=["static", "no-role", "readable", "superuser", "no-session", "refused", "no-sql"],
)
def test_check_8_needs_both_proofs(proof: SovereignProof, why: str) -> None:
    targets, errors = _good()
    result = evaluate(IDS, _facts(targets, errors), "smtp", proof)[7]
    assert result.passed is False
    assert any(why in d for d in result.details), result.details


def test_an_empty_canary_validates_nothing() -> None:
    results = evaluate([], _facts([], []), "smtp", GOOD_PROOF)
    assert not results[0].passed and not results[4].passed


# ─── the canary report ──────────────────────────────────────────────────────────────────────


def _canary_run(**kw: object) -> CanaryRun:
    targets, errors = _good()
    # 6 -> targets 3/1/1/1: the three .com PASSes, the .io role PASS, the .org NO_MX FAIL and
    # an unusable spine value (CT-I-NO-DOMAIN) as "other".
    tlds = [".com", ".com", ".com", ".io", ".org"]
    rows: list[tuple[uuid.UUID, str | None]] = [
        (i, f"d{n}{tld}") for n, (i, tld) in enumerate(zip(IDS, tlds, strict=False))
    ]
    rows.append((IDS[5], None))
    selection = select_canary(rows, 6, seed=1)
    facts = _facts(targets, errors)
    fields: dict[str, object] = {
        "started_at": T0,
        "version": "0.1.0",
        "database": "postgresql://ct:***@db/outreach",
        "mode": "smtp",
        "owner": "host:1:canary",
        "selection": selection,
        "facts": facts,
        "checks": evaluate(selection.ids, facts, "smtp", GOOD_PROOF),
        "proof": GOOD_PROOF,
        "duration": 4.0,
        "pending_after": 36_000,
        "claim_batch": 200,
        "max_in_flight": 512,
        "timeout": 3600.0,
        "output": Path("/tmp/r.md"),
    }
    fields.update(kw)
    return CanaryRun(**fields)  # type: ignore[arg-type]


def _section(text: str, title: str) -> str:
    start = text.index(title)
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def test_canary_report_sections_and_figures() -> None:
    run = _canary_run()
    assert run.validated and run.processed == 6 and run.rate == 1.5
    text = render_canary_report(run)
    for title in (
        "# Company Target IMO Canary Run Report",
        "## Executive Summary",
        "## Canary Selection Criteria",
        "## Validation Checklist",
        "## Results Distribution",
        "### Waterfall State",
        "### Error Codes (for FAILs)",
        "### Method Type Distribution",
        "### Confidence Score",
        "## Pipeline Flow Verified",
        "## Doctrine Compliance",
        "## Production Run Estimates",
        "## Canary IDs",
    ):
        assert title in text, title
    summary = dict(parse_markdown_table(_section(text, "## Executive Summary"))[1:])
    assert summary["**PASS**"] == "4 (67%)"
    assert summary["**FAIL**"] == "2 (33%)"
    assert summary["**Validation**"] == "**8/8 PASS**"
    assert summary["**Rate**"] == "1.50 records/sec"
    assert "CANARY VALIDATED - Ready for production run" in text
    selection = parse_markdown_table(_section(text, "## Canary Selection Criteria"))
    assert selection[1:] == [
        [".com", "3", "3", "3"],
        [".io", "1", "1", "1"],
        [".org", "1", "1", "1"],
        ["Other", "1", "1", "1"],
        ["**Total**", "6", "6", "6"],
    ]
    checks = parse_markdown_table(_section(text, "## Validation Checklist"))
    assert [row[2].split()[0] for row in checks[1:]] == ["PASS"] * 8
    codes = parse_markdown_table(_section(text, "### Error Codes"))
    assert codes[1:] == [
        ["CT-I-NO-DOMAIN", "1", "No domain in spine record"],
        ["CT-M-NO-MX", "1", "No MX records for domain"],
    ]
    confidence = dict(parse_markdown_table(_section(text, "### Confidence Score"))[1:])
    assert confidence == {"Min": "0.50", "Max": "0.95", "Avg": "0.76"}
    estimates = dict(parse_markdown_table(_section(text, "## Production Run Estimates"))[1:])
    assert estimates["Records to process"] == "36,000 (pending after this canary)"
    assert estimates["Estimated duration"] == "~6.7 hours at 1.50/sec"
    ids = parse_markdown_table(_section(text, "## Canary IDs"))
    assert len(ids) == 7 and {r[3] for r in ids[1:]} == {"PASS", "FAIL"}


def test_canary_report_when_checks_fail() -> None:
    run = _canary_run(
        proof=SovereignProof(StaticScan(("m",), 3, ("m.X names sovereign_id",)), None, "nope")
    )
    run = dataclasses.replace(
        run,
        checks=evaluate(run.ids, run.facts, "smtp", run.proof),
        timed_out=True,
        pipeline_error="QueryError: boom",
    )
    assert not run.validated
    text = render_canary_report(run)
    assert "CANARY FAILED - 1 of 8 checks failed (#8)" in text
    assert "| 8 | No sovereign_id leakage | FAIL (see details) |" in text
    assert "**Pipeline error**: QueryError: boom" in text
    assert "**Timeout**" in text


# ─── role set-up and the static scan ────────────────────────────────────────────────────────


def test_scram_verifier_matches_rfc_7677() -> None:
    # RFC 7677 section 3: user "user", password "pencil".
    salt = base64.b64decode("W22ZaJ0SNY7soEsUEjb6gQ==")
    verifier = scram_sha256_verifier("pencil", salt=salt, iterations=4096)
    head, keys = verifier.split("$", 1)[1].split("$")
    assert head == "4096:W22ZaJ0SNY7soEsUEjb6gQ=="
    stored_key, server_key = (base64.b64decode(k) for k in keys.split(":"))
    auth_message = (
        b"n=user,r=rOprNGfwEbeRWgbNEkqO,"
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096,"
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0"
    )
    server_signature = hmac.new(server_key, auth_message, hashlib.sha256).digest()
    assert base64.b64encode(server_signature).decode() == (
        "6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
    )
    proof = base64.b64decode("dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
    client_signature = hmac.new(stored_key, auth_message, hashlib.sha256).digest()
    client_key = bytes(a ^ b for a, b in zip(proof, client_signature, strict=True))
    assert hashlib.sha256(client_key).digest() == stored_key
    assert verifier.startswith("SCRAM-SHA-256$4096:")
    with pytest.raises(ValueError):
        scram_sha256_verifier("pässword")


def test_with_credentials_keeps_host_database_and_options() -> None:
    url = "postgresql://admin:s3cret@db.internal:6432/outreach?sslmode=require&user=x"
    assert with_credentials(url, "ct_canary_ab", "p/w") == (
        "postgresql://ct_canary_ab:p%2Fw@db.internal:6432/outreach?sslmode=require"
    )
    assert (
        with_credentials("postgresql://127.0.0.1/db", "r", "p") == "postgresql://r:p@127.0.0.1/db"
    )


def _relations() -> list[Relation]:
    return [
        Relation(
            "outreach",
            "outreach",
            "r",
            ("outreach_id", "sovereign_id", "domain", "created_at", "updated_at"),
            True,
        ),
        Relation("outreach", "v_context_current", "v", ("outreach_id", "sovereign_id"), True),
        Relation("outreach", "only_secret", "v", ("sovereign_id",), True),
        Relation("outreach", "company_target", "r", ("outreach_id",), False),
        Relation("outreach", "company_target_errors", "r", ("error_id",), False),
        Relation("ct_actors", "lease", "r", ("outreach_id",), False),
        Relation("ct_actors", "tool_usage", "r", ("tool_id",), False),
        Relation("ct_actors", "outcome_log", "r", ("outreach_id",), False),
        Relation("ct_demo", "people", "r", ("outreach_id",), False),
    ]


def test_grants_exclude_the_guarded_column_everywhere() -> None:
    statements = grant_statements("ct_canary_1", _relations(), database="db", grant_connect=True)
    assert statements[0] == 'GRANT CONNECT ON DATABASE "db" TO "ct_canary_1"'
    text = "\n".join(statements)
    assert 'GRANT USAGE ON SCHEMA "ct_demo" TO "ct_canary_1"' in text
    assert (
        'GRANT SELECT ("outreach_id", "domain", "created_at", "updated_at") '
        'ON "outreach"."outreach" TO "ct_canary_1"'
    ) in statements
    assert 'GRANT SELECT ("outreach_id") ON "outreach"."v_context_current" TO "ct_canary_1"' in (
        statements
    )
    assert "only_secret" not in text  # nothing readable there
    assert 'GRANT SELECT ON "ct_demo"."people" TO "ct_canary_1"' in statements
    assert 'GRANT UPDATE ("updated_at") ON "outreach"."outreach" TO "ct_canary_1"' in statements
    assert 'GRANT INSERT, UPDATE, DELETE ON "ct_actors"."lease" TO "ct_canary_1"' in statements
    # No statement grants the guarded column or table-level SELECT on a guarded relation.
    assert "sovereign_id" not in text
    assert 'GRANT SELECT ON "outreach"."outreach"' not in text
    assert "CONNECT" not in "\n".join(
        grant_statements("r", _relations(), database="db", grant_connect=False)
    )


def test_grants_refuse_when_a_needed_table_is_not_grantable() -> None:
    relations = [r for r in _relations() if r.name != "lease"]
    with pytest.raises(IsolationError, match=r"ct_actors\.lease"):
        grant_statements("r", relations, database="db", grant_connect=True)


def test_static_scan() -> None:
    clean = types.ModuleType("clean")
    clean.CLAIM = "SELECT o.outreach_id, count(*) FROM outreach.outreach o"  # type: ignore[attr-defined]
    clean.NOT_SQL = "hello"  # type: ignore[attr-defined]
    clean._FRAGMENT = "WHERE x"  # type: ignore[attr-defined]
    clean.lower_case = "SELECT sovereign_id FROM t"  # type: ignore[attr-defined]  # not a constant
    bad = types.ModuleType("bad")
    bad.A = "SELECT o.outreach_id, o.Sovereign_Id FROM outreach.outreach o"  # type: ignore[attr-defined]
    bad.B = "SELECT * FROM outreach.outreach"  # type: ignore[attr-defined]
    bad.C = "SELECT o.* FROM outreach.outreach o"  # type: ignore[attr-defined]
    scan = scan_statements([clean, bad])
    assert scan.modules == ("clean", "bad")
    assert scan.statements == 4
    assert scan.offending == (
        "bad.A names sovereign_id",
        "bad.B selects a wildcard",
        "bad.C selects a wildcard",
    )
    assert not scan.ok
    assert scan_statements([clean]).ok


def test_static_scan_of_the_real_queries_is_clean() -> None:
    from ct_actors.db import queries as daemon_queries
    from ct_actors.ops import queries as ops_queries

    scan = scan_statements([daemon_queries, ops_queries])
    assert scan.ok, scan.offending
    assert scan.statements >= 40
