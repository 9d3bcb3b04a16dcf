"""The canary report as Markdown, shaped like the users' canary-run-report.md (pure)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from ct_actors.ops.canary_run import CanaryRun
from ct_actors.ops.checks import (
    CONFIDENCE_MAX,
    CONFIDENCE_MIN,
    confidence_stats,
    distribution,
)
from ct_actors.ops.selection import OTHER, STRATA
from ct_actors.ops.text import markdown_table
from ct_actors.outcome import FailureCode

TITLE = "Company Target IMO Canary Run Report"

# The runbook's "Common Failure Codes" meanings.
CODE_MEANINGS: Mapping[str, str] = {
    FailureCode.NOT_FOUND.value: "outreach_id not in spine",
    FailureCode.NO_DOMAIN.value: "No domain in spine record",
    FailureCode.ALREADY_PROCESSED.value: "Already PASS/FAIL",
    FailureCode.NO_MX.value: "No MX records for domain",
    FailureCode.NO_PATTERN.value: "All SMTP patterns rejected",
    FailureCode.SMTP_FAIL.value: "SMTP connection failure",
    FailureCode.VERIFY_FAIL.value: "Tier-2 verification failed",
}

OK, NO, SKIP = "✓", "✗", "—"


def percent(n: int, total: int) -> str:
    return f"{100.0 * n / total:.0f}%" if total else "—"


def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def human_hours(hours: float) -> str:
    """'8.4 hours', or minutes below a tenth of an hour."""
    return f"{hours:.1f} hours" if hours >= 0.1 else f"{hours * 60:.1f} minutes"


def estimate_hours(pending: int, rate: float | None) -> float | None:
    if rate is None or rate <= 0:
        return None
    return pending / rate / 3600.0


# ---------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------
def _header(run: CanaryRun) -> list[str]:
    return [
        f"# {TITLE}",
        "",
        f"**Date**: {_iso(run.started_at)}",
        f"**Version**: ct-actors {run.version}",
        f"**Mode**: {run.mode}",
        f"**Database**: `{run.database}`",
        f"**Seed**: {run.selection.seed} (the same seed selects the same records while they "
        "are pending)",
        f"**Lease owner**: `{run.owner}`",
    ]


def _summary(run: CanaryRun) -> list[str]:
    n = len(run.ids)
    passed, failed = run.count("PASS"), run.count("FAIL")
    not_processed = n - passed - failed
    rate = run.rate
    good = sum(1 for c in run.checks if c.passed)
    rows = [
        ["**Canary Size**", f"{n} IDs (requested {run.selection.size})"],
        ["**PASS**", f"{passed} ({percent(passed, n)})"],
        ["**FAIL**", f"{failed} ({percent(failed, n)})"],
        ["**Not processed**", f"{not_processed} ({percent(not_processed, n)})"],
        ["**Duration**", f"{run.duration:.1f} seconds"],
        ["**Rate**", f"{rate:.2f} records/sec" if rate is not None else "unknown"],
        ["**Validation**", f"**{good}/{len(run.checks)} PASS**"],
    ]
    if run.validated:
        status = "**Status**: CANARY VALIDATED - Ready for production run"
    else:
        numbers = ", ".join(f"#{c.number}" for c in run.failed_checks)
        status = (
            f"**Status**: CANARY FAILED - {len(run.failed_checks)} of {len(run.checks)} "
            f"checks failed ({numbers}); not ready for production"
        )
    return ["## Executive Summary", "", markdown_table(["Metric", "Value"], rows), "", status]


def _selection(run: CanaryRun) -> list[str]:
    sel = run.selection
    actual = sel.actual
    rows: list[list[object]] = [
        [s if s != OTHER else "Other", sel.targets[s], actual[s], sel.available[s]] for s in STRATA
    ]
    rows.append(
        ["**Total**", sum(sel.targets.values()), sum(actual.values()), sum(sel.available.values())]
    )
    lines = [
        "## Canary Selection Criteria",
        "",
        markdown_table(["Domain Type", "Target", "Actual", "Available"], rows, "lrrr"),
        "",
        "- Strata: .com 40 %, .io 20 %, .org 20 %, other 20 % of `--size`, by the top-level "
        "label of the domain as the daemon normalises it; spine values it cannot use are "
        '"other". Targets are the largest-remainder apportionment (they add up to the size; '
        "leftover records go to the largest remainders, ties in the order .com, .io, .org, "
        "other).",
        "- Population: pending records claimable now (no PASS/FAIL, no live lease, not "
        "deferred). Within a stratum the records with the smallest SHA-256(seed:outreach_id) "
        "are taken.",
    ]
    if sel.shortfalls:
        short = ", ".join(
            f"{s if s != OTHER else 'other'} {sel.actual[s]}/{sel.targets[s]} (short by {m})"
            for s, m in sel.shortfalls.items()
        )
        lines.append(
            f"- **Shortfall**: {short}. Not filled from another stratum: the canary is "
            f"{len(sel.picked)} records instead of {sel.size}."
        )
    else:
        lines.append("- Every stratum met its target.")
    if sel.unusable:
        lines.append(
            f'- {sel.unusable} of the "other" records have a spine value the daemon cannot use '
            "(expected CT-I-NO-DOMAIN)."
        )
    return lines


def _checklist(run: CanaryRun) -> list[str]:
    rows = [[c.number, c.name, c.result] for c in run.checks]
    lines = [
        "## Validation Checklist",
        "",
        markdown_table(["#", "Check", "Result"], rows, "rll"),
        "",
        "### Check Details",
        "",
    ]
    for c in run.checks:
        if c.passed and c.number != 8:
            continue
        lines.append(f"**#{c.number} {c.name}**: {c.result}")
        lines.append("")
        lines.extend(f"- {d}" for d in c.details)
        lines.append("")
    if all(c.passed for c in run.checks if c.number != 8):
        lines.append("Checks 1-7 passed without findings.")
        lines.append("")
    return lines[:-1] if lines[-1] == "" else lines


def _distribution(run: CanaryRun) -> list[str]:
    n = len(run.ids)
    passed, failed = run.count("PASS"), run.count("FAIL")
    other = n - passed - failed
    waterfall = [
        ["ready (PASS: proceeds to DOL, People, Blog)", passed, percent(passed, n)],
        ["failed (FAIL: terminal, blocked)", failed, percent(failed, n)],
        ["pending (not processed)", other, percent(other, n)],
    ]
    codes = distribution(run.facts.failure_code(i) for i, o in run.outcomes.items() if o == "FAIL")
    pass_rows = [run.facts.targets[i] for i, o in run.outcomes.items() if o == "PASS"]
    methods = distribution(
        f"{t.method_type} (catch-all)" if t.is_catchall else t.method_type for t in pass_rows
    )
    conf = confidence_stats(t.confidence_score for t in pass_rows if t.confidence_score is not None)
    lines = [
        "## Results Distribution",
        "",
        "### Waterfall State",
        markdown_table(["State", "Count", "Percentage"], waterfall, "lrr"),
        "",
        "### Error Codes (for FAILs)",
        markdown_table(
            ["Code", "Count", "Description"],
            [[c, k, CODE_MEANINGS.get(c, "unknown code")] for c, k in codes]
            or [["(none)", 0, "no FAILs in this canary"]],
            "lrl",
        ),
        "",
        "### Method Type Distribution",
        markdown_table(["Type", "Count"], methods or [["(none)", 0]], "lr"),
        "",
        "### Confidence Score",
        markdown_table(
            ["Metric", "Value"],
            [[k.capitalize(), f"{v:.2f}"] for k, v in conf.items()]
            if conf
            else [["Min", "—"], ["Max", "—"], ["Avg", "—"]],
            "lr",
        ),
    ]
    if run.mode == "mx-only":
        lines += [
            "",
            "> Note: an mx-only run writes confidence 0.70 (`first.last`, no SMTP) for every "
            "PASS; smtp runs score by the accepted pattern (0.95 first.last ... 0.70 role "
            f"address, 0.50 catch-all; model range {CONFIDENCE_MIN}-{CONFIDENCE_MAX}).",
        ]
    return lines


def _flow(run: CanaryRun) -> list[str]:
    stats = run.pipeline
    n = len(run.ids)
    # Unknown (None) when the pipeline did not run to its end.
    claimed = stats.loader.claimed if stats else None
    already = stats.writer.already_terminal if stats else None
    lookups = stats.resolver.lookups if stats else None
    cache_hits = stats.resolver.cache_hits if stats else None
    sessions = stats.smtp.sessions_opened_total if stats else None
    deferred = stats.outcomes.get("DEFERRED", 0) if stats else 0
    passes = [run.facts.targets[i] for i, o in run.outcomes.items() if o == "PASS"]
    fails = [i for i, o in run.outcomes.items() if o == "FAIL"]
    no_domain = sum(1 for i in fails if run.facts.failure_code(i) == FailureCode.NO_DOMAIN.value)
    check = {c.number: c for c in run.checks}

    def mark(ok: bool | None) -> str:
        return SKIP if ok is None else (OK if ok else NO)

    def known(value: Any) -> str:
        return "?" if value is None else str(value)

    usable = n - run.selection.unusable
    rows: list[tuple[str, str, str]] = [
        ("INPUT STAGE (I)", "", ""),
        (
            "├── Load from outreach.outreach spine",
            mark(claimed == n if claimed is not None else None),
            f"{known(claimed)}/{n} claimed",
        ),
        (
            "├── Validate domain present",
            mark(no_domain == run.selection.unusable),
            f"{run.selection.unusable} unusable -> {no_domain} CT-I-NO-DOMAIN",
        ),
        (
            "└── Check not already processed",
            mark(already == 0 if already is not None else None),
            f"{known(already)} already terminal",
        ),
        ("", "", ""),
        ("MIDDLE STAGE (M)", "", ""),
        (
            "├── MX Lookup (TOOL-004)",
            mark(
                (lookups or 0) + (cache_hits or 0) > 0 if usable and lookups is not None else None
            ),
            f"{known(lookups)} lookups, {known(cache_hits)} cache hits",
        ),
    ]
    if run.mode == "smtp":
        patterns = distribution(t.method_type for t in passes)
        rows += [
            (
                "├── Pattern Generation",
                mark(bool(passes) or not usable),
                ", ".join(f"{m} {k}" for m, k in patterns) or "no PASS",
            ),
            (
                "└── SMTP Validation (TOOL-005)",
                mark(bool(sessions) if sessions is not None else None),
                f"{known(sessions)} SMTP sessions, {deferred} deferred",
            ),
        ]
    else:
        rows += [
            ("├── Pattern Generation", SKIP, "mx-only: default first.last template"),
            ("└── SMTP Validation (TOOL-005)", SKIP, "mx-only mode: not run"),
        ]
    rows += [
        ("", "", ""),
        ("OUTPUT STAGE (O)", "", ""),
        (
            "├── PASS → outreach.company_target",
            mark(check[2].passed),
            f"{len(passes)} rows 'ready'",
        ),
        (
            "└── FAIL → outreach.company_target_errors",
            mark(check[3].passed),
            f"{len(fails)} open error rows",
        ),
    ]
    width = max(len(r[0]) for r in rows) + 2
    body = [
        (f"{label:<{width}}{m}  {detail}".rstrip() if m else label) for label, m, detail in rows
    ]
    lines = ["## Pipeline Flow Verified", "", "```", *body, "```"]
    if run.pipeline_error:
        lines += ["", f"**Pipeline error**: {run.pipeline_error}"]
    if run.timed_out:
        lines += [
            "",
            f"**Timeout**: the pipeline was stopped after {run.timeout:g} s; records in "
            "flight were released (pending again).",
        ]
    return lines


def _doctrine(run: CanaryRun) -> list[str]:
    facts = run.facts
    check = {c.number: c for c in run.checks}
    targets = [facts.targets[i] for i in run.ids if i in facts.targets]
    with_cuid = sum(1 for t in targets if t.company_unique_id is not None)
    open_rows = [e for i in run.ids for e in facts.open_errors(i)]
    retryable = sum(1 for e in open_rows if e.retry_allowed)
    foreign = facts.foreign
    others = foreign.other_targets + foreign.other_errors
    mint_ok = foreign.targets_not_in_spine == 0
    rows = [
        [
            "Operates ONLY on outreach_id",
            OK if with_cuid == 0 else NO,
            f"{with_cuid}/{len(targets)} canary company_target rows carry a company_unique_id",
        ],
        [
            "NEVER references sovereign_id",
            OK if check[8].passed else NO,
            "check 8: no statement names it; the pipeline ran as a role that cannot read it",
        ],
        [
            "NEVER mints IDs",
            OK if mint_ok else NO,
            f"{foreign.targets_not_in_spine} outcome rows written during the run for ids not in "
            f"the spine; {others} for records outside the canary"
            + (" (another daemon at work?)" if others else ""),
        ],
        [
            "NO fuzzy matching",
            SKIP,
            "not checkable from data: records are keyed by exact outreach_id; domains are only "
            "normalised (scheme, www., path, port, case, trailing dot, IDNA)",
        ],
        [
            "NO retries",
            OK if retryable == 0 else NO,
            f"{retryable}/{len(open_rows)} FAIL rows have retry_allowed = true",
        ],
        [
            "FAIL is terminal",
            OK if check[3].passed else NO,
            "every FAIL is an open error row with company_target 'failed' (check 3)",
        ],
    ]
    return [
        "## Doctrine Compliance",
        "",
        markdown_table(["Rule", "Status", "Evidence"], rows, "lll"),
    ]


def _estimates(run: CanaryRun) -> list[str]:
    rate = run.rate
    hours = estimate_hours(run.pending_after, rate)
    duration = (
        f"~{human_hours(hours)} at {rate:.2f}/sec"
        if hours is not None and rate is not None
        else "unknown (no measured rate)"
    )
    rows = [
        ["Records to process", f"{run.pending_after:,} (pending after this canary)"],
        [
            "Measured rate",
            f"{rate:.2f} records/sec ({run.processed} outcomes in {run.duration:.1f} s)"
            if rate is not None
            else "unknown",
        ],
        ["Estimated duration", duration],
        ["Claim batch (probe.claim_batch)", f"{run.claim_batch:,}"],
        ["Records in flight (probe.max_in_flight)", f"{run.max_in_flight:,}"],
    ]
    lines = [
        "## Production Run Estimates",
        "",
        markdown_table(["Metric", "Value"], rows),
        "",
        "> The rate is this canary's: a small run pays start-up and drain time, and the "
        "production rate depends on the mode, the registry's throttles and the mail servers. "
        "`ct-actors report` gives the rate of a running daemon.",
    ]
    return lines


def _ids(run: CanaryRun) -> list[str]:
    by_id = run.selection.by_id()
    rows = []
    for i in run.ids:
        picked = by_id[i]
        outcome = run.facts.outcome(i)
        if outcome == "PASS":
            t = run.facts.targets[i]
            confidence = f"{t.confidence_score:.2f}" if t.confidence_score is not None else "?"
            detail = f"{t.method_type} {confidence}" + (" catch-all" if t.is_catchall else "")
        elif outcome == "FAIL":
            detail = run.facts.failure_code(i) or "failed"
        else:
            detail = ""
        rows.append(
            [
                i,
                picked.raw_domain if picked.raw_domain is not None else "(NULL)",
                picked.stratum,
                outcome,
                detail,
            ]
        )
    return [
        "## Canary IDs",
        "",
        markdown_table(["outreach_id", "Spine domain", "Stratum", "Outcome", "Detail"], rows),
    ]


def render_canary_report(run: CanaryRun) -> str:
    sections = [
        _header(run),
        _summary(run),
        _selection(run),
        _checklist(run),
        _distribution(run),
        _flow(run),
        _doctrine(run),
        _estimates(run),
    ]
    if run.notes:
        sections.append(["## Notes", "", *(f"- {n}" for n in run.notes)])
    sections.append(_ids(run))
    out: list[str] = []
    for section in sections:
        if out:
            out += ["", "---", ""]
        out += section
    footer = ["", "---", "", "**Prepared by**: `ct-actors canary`"]
    if run.output is not None:
        footer.append(f"**Report file**: `{run.output}`")
    footer += ["**Reviewed by**: Pending", "**Approved for Production**: Pending", ""]
    return "\n".join(out + footer)
