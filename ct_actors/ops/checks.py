"""The canary report's eight validation checks.

`fetch_facts` (`ct_actors.ops.canary_facts`) reads what the database holds for the selected
records in one snapshot (SQL in `ct_actors.ops.queries`); `evaluate` is pure: facts in, eight
`CheckResult`s out.

A record's terminal outcome, per the store's definition: PASS is a company_target row
'ready'; FAIL is an open (resolved_at IS NULL) error row, with its company_target row 'failed'
(CT-I-NOT-FOUND alone has no company_target row: there is no spine row to hang it on). A
record that has neither (Deferred, still in flight when the canary stopped, never claimed) is
not processed.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal

from ct_actors.ops.canary_facts import (
    CanaryFacts,
    SovereignProof,
    TargetRow,
)
from ct_actors.outcome import FailureCode
from ct_actors.probe.patterns import (
    CATCHALL_CONFIDENCE,
    CONFIDENCE,
    DEFAULT_METHOD,
    MX_ONLY_CONFIDENCE,
    PERSON_PATTERNS,
    ROLE_PATTERNS,
)

KNOWN_METHOD_TYPES: tuple[str, ...] = (*PERSON_PATTERNS, *ROLE_PATTERNS)
VALID_CODES: frozenset[str] = frozenset(code.value for code in FailureCode)
MODEL_CONFIDENCES: tuple[Decimal, ...] = tuple(
    sorted({*CONFIDENCE.values(), CATCHALL_CONFIDENCE, MX_ONLY_CONFIDENCE})
)
CONFIDENCE_MIN, CONFIDENCE_MAX = MODEL_CONFIDENCES[0], MODEL_CONFIDENCES[-1]

CHECK_NAMES: tuple[str, ...] = (
    "All IDs processed",
    "PASS records have required fields",
    "FAILs in error table",
    "Error codes valid",
    "Waterfall progression",
    "Method types present",
    "Confidence range valid",
    "No sovereign_id leakage",
)

# Listed per check at most; the counts are always complete.
MAX_DETAILS = 25


@dataclass(frozen=True, slots=True)
class CheckResult:
    number: int
    name: str
    passed: bool
    summary: str  # "100/100", "0.50-0.95", ...
    details: tuple[str, ...] = ()

    @property
    def result(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        return f"{verdict} ({self.summary})" if self.summary else verdict


# ---------------------------------------------------------------------------------------------
# Evaluation (pure)
# ---------------------------------------------------------------------------------------------
def expected_confidence(mode: str, method_type: str | None, is_catchall: bool | None) -> Decimal:
    """The confidence model (ct_actors.probe.patterns) for one PASS."""
    if mode == "mx-only":
        return MX_ONLY_CONFIDENCE
    if is_catchall:
        return CATCHALL_CONFIDENCE
    return CONFIDENCE.get(method_type or "", Decimal(-1))


def _fraction(good: int, total: int) -> str:
    return f"{good}/{total}"


def _cap(items: Iterable[str]) -> tuple[str, ...]:
    out = list(items)
    if len(out) > MAX_DETAILS:
        out = [*out[:MAX_DETAILS], f"... and {len(out) - MAX_DETAILS} more"]
    return tuple(out)


def unprocessed_reason(facts: CanaryFacts, outreach_id: uuid.UUID) -> str:
    lease = facts.leases.get(outreach_id)
    if lease is None:
        return "never claimed (no lease)"
    if lease.not_before is not None and lease.not_before > facts.run_finished:
        return f"deferred until {lease.not_before.isoformat()}: {lease.last_reason or '?'}"
    if lease.live:
        return f"leased by {lease.owner} (in flight when the canary stopped)"
    return f"released by {lease.owner} after {lease.attempts} claim(s) without an outcome"


def evaluate(
    ids: Sequence[uuid.UUID],
    facts: CanaryFacts,
    mode: str,
    proof: SovereignProof,
) -> list[CheckResult]:
    outcomes = {i: facts.outcome(i) for i in ids}
    passes = [i for i in ids if outcomes[i] == "PASS"]
    fails = [i for i in ids if outcomes[i] in ("FAIL", "CONFLICT")]
    processed = [i for i in ids if outcomes[i] in ("PASS", "FAIL")]
    results: list[CheckResult] = []

    # 1. Every selected record has exactly one terminal outcome.
    missing = []
    for i in ids:
        if outcomes[i] == "CONFLICT":
            missing.append(f"{i}: both a PASS row and an open FAIL row")
        elif outcomes[i] == "NOT PROCESSED":
            missing.append(f"{i}: not processed: {unprocessed_reason(facts, i)}")
    results.append(
        CheckResult(
            1,
            CHECK_NAMES[0],
            bool(ids) and not missing,
            _fraction(len(processed), len(ids)),
            _cap(missing),
        )
    )

    # 2. PASS rows complete.
    incomplete = []
    for i in passes:
        t: TargetRow | None = facts.targets[i]
        assert t is not None
        absent = [
            name
            for name, bad in (
                ("email_method", not t.email_method),
                ("method_type", t.method_type is None),
                ("confidence_score", t.confidence_score is None),
                ("imo_completed_at", t.imo_completed_at is None),
                ("is_catchall", t.is_catchall is None),
            )
            if bad
        ]
        if t.execution_status != "ready":
            absent.append(f"execution_status={t.execution_status!r}")
        if absent:
            incomplete.append(f"{i}: missing {', '.join(absent)}")
    results.append(
        CheckResult(
            2,
            CHECK_NAMES[1],
            not incomplete,
            _fraction(len(passes) - len(incomplete), len(passes)),
            _cap(incomplete),
        )
    )

    # 3. company_target 'failed' <=> an open error row (CT-I-NOT-FOUND: error row only).
    unmatched: list[str] = []
    unmatched_ids: set[uuid.UUID] = set()
    for i in fails:
        t = facts.targets.get(i)
        errors = facts.open_errors(i)
        status = t.execution_status if t is not None else None
        problem = None
        if status == "failed" and not errors:
            problem = "company_target 'failed' without an open error row"
        elif errors and status != "failed":
            code = errors[0].failure_code
            if not (t is None and code == FailureCode.NOT_FOUND.value):
                problem = f"open {code} error row but company_target is {status!r}"
        elif len(errors) > 1:
            problem = f"{len(errors)} open error rows"
        if problem is not None:
            unmatched.append(f"{i}: {problem}")
            unmatched_ids.add(i)
    results.append(
        CheckResult(
            3,
            CHECK_NAMES[2],
            not unmatched,
            _fraction(len(fails) - len(unmatched_ids), len(fails)),
            _cap(unmatched),
        )
    )

    # 4. Error codes: one of the runbook's seven, stage consistent with the code.
    open_rows = [e for i in ids for e in facts.open_errors(i)]
    invalid = []
    for e in open_rows:
        if e.failure_code not in VALID_CODES:
            invalid.append(f"{e.outreach_id}: unknown failure_code {e.failure_code!r}")
            continue
        code = FailureCode(e.failure_code)
        if (e.imo_stage or "").strip() != code.imo_stage:
            invalid.append(
                f"{e.outreach_id}: {code.value} with imo_stage {e.imo_stage!r} "
                f"(expected {code.imo_stage!r})"
            )
        elif e.pipeline_stage != code.pipeline_stage:
            invalid.append(
                f"{e.outreach_id}: {code.value} with pipeline_stage {e.pipeline_stage!r} "
                f"(expected {code.pipeline_stage!r})"
            )
    results.append(
        CheckResult(
            4,
            CHECK_NAMES[3],
            not invalid,
            _fraction(len(open_rows) - len(invalid), len(open_rows)),
            _cap(invalid),
        )
    )

    # 5. Waterfall: every selected record went pending -> ready/failed during this run (its
    # imo_completed_at is inside the run) and holds no lease any more; none is still pending.
    stuck: list[str] = []
    not_moved: set[uuid.UUID] = set()
    for i in processed:
        t = facts.targets.get(i)
        problems = []
        if t is None:
            if facts.failure_code(i) != FailureCode.NOT_FOUND.value:
                problems.append("no company_target row")
        elif t.execution_status not in ("ready", "failed"):
            problems.append(f"company_target is {t.execution_status!r}")
        elif t.imo_completed_at is None or not (
            facts.run_started <= t.imo_completed_at <= facts.run_finished
        ):
            when = t.imo_completed_at.isoformat() if t.imo_completed_at else "never"
            problems.append(f"imo_completed_at {when} is outside this run")
        if i in facts.leases:
            problems.append("still holds a lease")
        if problems:
            stuck.append(f"{i}: " + "; ".join(problems))
            not_moved.add(i)
    processed_set = set(processed)
    for i in ids:
        if i in processed_set:
            continue
        t = facts.targets.get(i)
        state = f"company_target {t.execution_status!r}" if t is not None else "no outcome"
        stuck.append(f"{i}: still pending ({state})")
        not_moved.add(i)
    results.append(
        CheckResult(
            5,
            CHECK_NAMES[4],
            bool(ids) and not stuck,
            _fraction(len(ids) - len(not_moved), len(ids)),
            _cap(stuck),
        )
    )

    # 6. Method types.
    unknown = [
        f"{i}: method_type {facts.targets[i].method_type!r}"
        for i in passes
        if facts.targets[i].method_type not in KNOWN_METHOD_TYPES
    ]
    results.append(
        CheckResult(
            6,
            CHECK_NAMES[5],
            not unknown,
            _fraction(len(passes) - len(unknown), len(passes)),
            _cap(unknown),
        )
    )

    # 7. Confidence: the model's value for the record's method type / catch-all / mx-only, and
    # within the model's range.
    off_model = []
    for i in passes:
        t = facts.targets[i]
        want = expected_confidence(mode, t.method_type, t.is_catchall)
        got = t.confidence_score
        problems = []
        if got is None or got != want:
            problems.append(f"confidence {got} (model: {want})")
        if got is not None and not (CONFIDENCE_MIN <= got <= CONFIDENCE_MAX):
            problems.append(f"outside {CONFIDENCE_MIN}-{CONFIDENCE_MAX}")
        if t.probe_mode is not None and t.probe_mode != mode:
            problems.append(f"evidence mode {t.probe_mode!r} in a {mode} run")
        if mode == "mx-only" and (t.method_type != DEFAULT_METHOD or t.is_catchall):
            problems.append(f"mx-only PASS as {t.method_type!r}, catch-all {t.is_catchall}")
        if t.is_catchall and t.method_type != DEFAULT_METHOD:
            problems.append(f"catch-all PASS as {t.method_type!r}")
        if problems:
            off_model.append(f"{i}: " + "; ".join(problems))
    results.append(
        CheckResult(
            7,
            CHECK_NAMES[6],
            not off_model,
            f"{_fraction(len(passes) - len(off_model), len(passes))} in model, "
            f"range {CONFIDENCE_MIN}-{CONFIDENCE_MAX}",
            _cap(off_model),
        )
    )

    # 8. sovereign_id: statically absent from every statement, and unreadable at run time.
    results.append(sovereign_check(proof))
    return results


def sovereign_check(proof: SovereignProof) -> CheckResult:
    details = []
    static = proof.static
    details.append(
        f"static: {static.statements} SQL constants in {', '.join(static.modules)}; "
        f"{len(static.offending)} name sovereign_id or select a wildcard"
    )
    details.extend(f"static: {o}" for o in static.offending)
    if proof.role is not None:
        role = proof.role
        details.append(
            f"runtime: pipeline ran as role {role.role} ({role.sessions} session(s) seen), "
            f"SELECT on {role.guarded_readable}/{role.guarded_total} sovereign_id column(s), "
            f"superuser={role.is_superuser}, member of {role.memberships} role(s)"
        )
        details.extend(f"runtime: {p}" for p in role.problems)
    else:
        details.append(f"runtime: no restricted role ({proof.role_error or 'not set up'})")
    if proof.permission_denied:
        details.append(f"runtime: the pipeline was refused: {proof.permission_denied}")
    passed = (
        static.ok and proof.role is not None and proof.role.ok and proof.permission_denied is None
    )
    summary = f"static 0/{static.statements}, runtime denied" if passed else "see details"
    return CheckResult(8, CHECK_NAMES[7], passed, summary, tuple(details))


def distribution(values: Iterable[str | None]) -> list[tuple[str, int]]:
    counts: dict[str, int] = {}
    for v in values:
        key = v if v is not None else "(none)"
        counts[key] = counts.get(key, 0) + 1
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def confidence_stats(values: Iterable[Decimal]) -> Mapping[str, Decimal] | None:
    vals = list(values)
    if not vals:
        return None
    avg = (sum(vals, Decimal(0)) / len(vals)).quantize(Decimal("0.01"))
    return {"min": min(vals), "max": max(vals), "avg": avg}
