"""`ct-actors report`: what the database says about the gate's progress.

`gather_report` reads everything in one READ ONLY, REPEATABLE READ snapshot (so the figures
agree with each other and share one now()); `report_dict` and `format_report` are pure.

* pass rate: the runbook's query over the last `window_hours` (company_target rows by
  imo_completed_at; passed = 'ready', failed = 'failed', rate = passed / all rows in the window),
  with the runbook's division by zero guarded: no rows -> rate None ("no data");
* failure distribution: the runbook's query over the last `distribution_days`;
* recent failures: the last `recent` error rows, newest first;
* throughput: terminal outcomes per UTC hour or minute (company_target by imo_completed_at,
  which the daemon sets to the writing transaction's time; error rows without a company_target
  row, i.e. CT-I-NOT-FOUND, by created_at);
* pending: spine records without a terminal outcome (as `WorkQueue.pending_count`);
* spine rows skipped: NULL and duplicated outreach_ids (a spine without a primary key);
* estimate: pending / current rate, the rate being the outcomes of the last `rate_minutes`.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal

from ct_actors.ops import queries as oq
from ct_actors.ops.db import OpsDb
from ct_actors.ops.text import text_table

Bucket = Literal["hour", "minute"]


@dataclass(frozen=True, slots=True)
class ReportOptions:
    window_hours: float = 24.0
    distribution_days: float = 7.0
    recent: int = 20
    bucket: Bucket = "hour"
    buckets: int = 24
    rate_minutes: float = 60.0

    def __post_init__(self) -> None:
        if not self.window_hours > 0:
            raise ValueError("window_hours must be positive")
        if not self.distribution_days > 0:
            raise ValueError("distribution_days must be positive")
        if self.recent < 0:
            raise ValueError("recent must not be negative")
        if self.bucket not in ("hour", "minute"):
            raise ValueError("bucket must be 'hour' or 'minute'")
        if not 1 <= self.buckets <= 10_000:
            raise ValueError("buckets must be between 1 and 10000")
        if not self.rate_minutes > 0:
            raise ValueError("rate_minutes must be positive")


@dataclass(frozen=True, slots=True)
class PassRate:
    passed: int
    failed: int
    total: int
    pass_rate: Decimal | None  # percent, 2 decimals; None when the window has no rows


@dataclass(frozen=True, slots=True)
class RecentFailure:
    outreach_id: uuid.UUID
    failure_code: str | None
    blocking_reason: str | None
    created_at: dt.datetime


@dataclass(frozen=True, slots=True)
class ThroughputBucket:
    start: dt.datetime
    outcomes: int
    passed: int
    failed: int


@dataclass(frozen=True, slots=True)
class Estimate:
    pending: int
    window_minutes: float
    outcomes_in_window: int
    per_hour: float | None  # None: no outcome in the window, the rate is unknown
    hours: float | None  # None: unknown

    @property
    def text(self) -> str:
        if self.pending == 0:
            return "0 pending: nothing left to process"
        if self.hours is None or self.per_hour is None:
            return (
                f"{self.pending} pending, duration unknown: no outcomes in the last "
                f"{_minutes(self.window_minutes)}, so there is no current rate"
            )
        return (
            f"{self.pending} pending, about {self.hours:.1f} hours at the current rate "
            f"({self.per_hour:.1f} outcomes/hour over the last {_minutes(self.window_minutes)})"
        )


def _minutes(minutes: float) -> str:
    return f"{minutes:g} minutes"


def estimate(pending: int, outcomes: int, window_seconds: float) -> Estimate:
    """Pending records / current rate (outcomes in the window / window length)."""
    if window_seconds <= 0:
        raise ValueError("window_seconds must be positive")
    per_hour = outcomes * 3600.0 / window_seconds if outcomes > 0 else None
    hours = pending / per_hour if per_hour else None
    return Estimate(pending, window_seconds / 60.0, outcomes, per_hour, hours)


@dataclass(frozen=True, slots=True)
class Report:
    generated_at: dt.datetime
    options: ReportOptions
    pass_rate: PassRate
    failures: list[tuple[str | None, int]]
    recent: list[RecentFailure]
    throughput: list[ThroughputBucket]
    estimate: Estimate
    spine: SpineSkipped = field(default_factory=lambda: SpineSkipped(0, 0, 0))
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def pending(self) -> int:
        return self.estimate.pending


@dataclass(frozen=True, slots=True)
class SpineSkipped:
    """Spine rows the daemon does not process as records of their own (issue 10): NULL ids are
    never claimed; an id carried by several rows is processed once, its extra rows skipped."""

    null_ids: int
    duplicated_ids: int
    duplicate_rows: int

    @property
    def skipped_rows(self) -> int:
        return self.null_ids + self.duplicate_rows


async def gather_report(db: OpsDb, options: ReportOptions) -> Report:
    async def body(conn: Any) -> Report:
        now = await conn.fetchval(oq.NOW)
        rate = await conn.fetchrow(oq.PASS_RATE, options.window_hours * 3600.0)
        failures = await conn.fetch(oq.FAILURE_DISTRIBUTION, options.distribution_days * 86400.0)
        recent = await conn.fetch(oq.RECENT_FAILURES, options.recent)
        buckets = await conn.fetch(oq.THROUGHPUT, options.bucket, options.buckets)
        pending = await conn.fetchval(oq.PENDING_COUNT)
        window = options.rate_minutes * 60.0
        in_window = await conn.fetchrow(oq.RECENT_OUTCOMES, window)
        spine = await conn.fetchrow(oq.SPINE_SKIPPED)
        return Report(
            generated_at=now,
            options=options,
            pass_rate=PassRate(
                int(rate["passed"]), int(rate["failed"]), int(rate["total"]), rate["pass_rate"]
            ),
            failures=[(r["failure_code"], int(r["count"])) for r in failures],
            recent=[RecentFailure(**dict(r)) for r in recent],
            throughput=[
                ThroughputBucket(r["start"], int(r["outcomes"]), int(r["passed"]), int(r["failed"]))
                for r in buckets
            ],
            estimate=estimate(int(pending), int(in_window["outcomes"]), window),
            spine=SpineSkipped(
                int(spine["null_ids"]), int(spine["duplicated_ids"]), int(spine["duplicate_rows"])
            ),
        )

    return await db.snapshot("report", body)


# ---------------------------------------------------------------------------------------------
# Formatting (pure)
# ---------------------------------------------------------------------------------------------
def _iso(value: dt.datetime) -> str:
    return value.astimezone(dt.UTC).isoformat().replace("+00:00", "Z")


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def report_dict(report: Report) -> dict[str, Any]:
    """The report as one JSON-friendly object (`ct-actors report --json`)."""
    o = report.options
    e = report.estimate
    return {
        "generated_at": _iso(report.generated_at),
        "pass_rate": {
            "window_hours": o.window_hours,
            "passed": report.pass_rate.passed,
            "failed": report.pass_rate.failed,
            "total": report.pass_rate.total,
            "pass_rate": (
                float(report.pass_rate.pass_rate)
                if report.pass_rate.pass_rate is not None
                else None
            ),
        },
        "failure_distribution": {
            "window_days": o.distribution_days,
            "codes": [{"failure_code": code, "count": n} for code, n in report.failures],
        },
        "recent_failures": [
            {
                "outreach_id": str(f.outreach_id),
                "failure_code": f.failure_code,
                "blocking_reason": f.blocking_reason,
                "created_at": _iso(f.created_at),
            }
            for f in report.recent
        ],
        "throughput": {
            "bucket": o.bucket,
            "buckets": [
                {
                    "start": _iso(b.start),
                    "outcomes": b.outcomes,
                    "passed": b.passed,
                    "failed": b.failed,
                }
                for b in report.throughput
            ],
        },
        "pending": e.pending,
        "spine_skipped": {
            "rows": report.spine.skipped_rows,
            "null_ids": report.spine.null_ids,
            "duplicated_ids": report.spine.duplicated_ids,
            "duplicate_rows": report.spine.duplicate_rows,
        },
        "rate": {
            "window_minutes": e.window_minutes,
            "outcomes": e.outcomes_in_window,
            "per_hour": _round(e.per_hour, 3),
        },
        "estimate": {
            "pending": e.pending,
            "hours": _round(e.hours, 3),
            "text": e.text,
        },
        **report.extra,
    }


def report_json(report: Report) -> str:
    return json.dumps(report_dict(report), sort_keys=False)


def _shorten(text: str | None, width: int) -> str:
    if text is None:
        return ""
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= width else one_line[: width - 1] + "…"


def format_report(report: Report, *, reason_width: int = 60) -> str:
    """Readable tables for a terminal."""
    o = report.options
    pr = report.pass_rate
    rate = f"{pr.pass_rate:.2f} %" if pr.pass_rate is not None else "no data"
    parts = [
        f"ct-actors report — {_iso(report.generated_at)}",
        "",
        f"Pass rate (last {o.window_hours:g} h, runbook definition)",
        text_table(
            ["passed", "failed", "total", "pass rate"],
            [[pr.passed, pr.failed, pr.total, rate]],
            "rrrr",
        ),
        "",
        f"Failure distribution (last {o.distribution_days:g} days)",
        text_table(
            ["failure_code", "count"],
            [[code if code is not None else "(none)", n] for code, n in report.failures]
            or [["(no failures)", 0]],
            "lr",
        ),
        "",
        f"Recent failures (last {o.recent})",
        text_table(
            ["created_at", "outreach_id", "failure_code", "blocking_reason"],
            [
                [
                    _iso(f.created_at),
                    f.outreach_id,
                    f.failure_code or "",
                    _shorten(f.blocking_reason, reason_width),
                ]
                for f in report.recent
            ]
            or [["(none)", "", "", ""]],
        ),
        "",
        f"Throughput (outcomes per UTC {o.bucket}, last {o.buckets})",
        text_table(
            [f"{o.bucket} starting", "outcomes", "passed", "failed"],
            [[_iso(b.start), b.outcomes, b.passed, b.failed] for b in report.throughput],
            "lrrr",
        ),
        "",
        f"Pending: {report.pending}",
        f"Estimate: {report.estimate.text}",
    ]
    sp = report.spine
    if sp.skipped_rows:
        parts.append(
            f"Spine rows skipped: {sp.skipped_rows} ({sp.null_ids} with a NULL outreach_id, "
            f"{sp.duplicate_rows} extra rows of {sp.duplicated_ids} duplicated ids)"
        )
    return "\n".join(parts)
