"""What the work queue (`ct_actors.db.work_queue`) hands out and reports: plain data, and the
conversions of its rows into it."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from uuid import UUID

from ct_actors.outcome import Failed, FailureCode, Outcome, Passed

__all__ = [
    "SPINE_DUPLICATES_LISTED",
    "ClaimedRecord",
    "SpineAnomalies",
    "SpineRecord",
    "UnloggedOutcome",
    "WriteReport",
    "claimed_record",
    "unlogged_outcome",
]


@dataclass(frozen=True, slots=True)
class ClaimedRecord:
    outreach_id: UUID
    domain: str | None
    # How many times this record has been claimed, this claim included (deferrals and crashes
    # make it grow); lets the caller notice a record that keeps coming back.
    attempts: int = 1
    # Spine rows seen with this id by the claim: more than 1 means upstream duplicated it (one
    # record is processed; the caller reports the rest as skipped).
    spine_rows: int = 1


@dataclass(frozen=True, slots=True)
class SpineAnomalies:
    """Spine rows the claim cannot treat as records of their own (a spine without a primary
    key): rows with a NULL outreach_id are never claimed; an id carried by several rows is
    processed once. `duplicated` lists at most SPINE_DUPLICATES_LISTED ids."""

    null_ids: int
    duplicated: dict[UUID, int]

    @property
    def skipped_rows(self) -> int:
        return self.null_ids + sum(n - 1 for n in self.duplicated.values())


# How many duplicated ids `spine_anomalies` lists (and counts) at most.
SPINE_DUPLICATES_LISTED = 1000


@dataclass(frozen=True, slots=True)
class SpineRecord:
    outreach_id: UUID
    domain: str | None


@dataclass(frozen=True, slots=True)
class WriteReport:
    written: list[UUID]
    # Already PASS/FAIL before this write (another daemon, an earlier run, a re-sent batch), or
    # CT-I-ALREADY-PROCESSED outcomes: nothing was changed for them.
    already_terminal: list[UUID]
    deferred: list[UUID]
    # PASS/FAIL outcomes whose spine row disappeared since the claim: nothing written.
    not_in_spine: list[UUID] = field(default_factory=list)
    # Written under a claim that is no longer the writer's (the lease expired, or was taken over
    # by another claim): nothing written, the lease left alone (queries.WRITE_OUTCOMES' fence).
    fenced: list[UUID] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class UnloggedOutcome:
    """A committed outcome whose canonical log line may be missing (sql/006_outcome_log.sql),
    rebuilt from its outcome row; `outcome` is None when that row is gone (resolved or deleted
    by an operator since)."""

    outreach_id: UUID
    owner: str
    committed_at: dt.datetime
    outcome: Outcome | None


def claimed_record(row: Any) -> ClaimedRecord:
    return ClaimedRecord(
        outreach_id=row["outreach_id"],
        domain=row["domain"],
        attempts=int(row["attempts"]),
        spine_rows=int(row["spine_rows"]),
    )


def unlogged_outcome(r: Any) -> UnloggedOutcome:
    """An UNLOGGED row back into the Outcome the writer committed (what its line needs)."""
    visits = r["visits"]
    if isinstance(visits, str):  # jsonb comes back as text without a type codec
        visits = json.loads(visits)
    evidence: dict[str, Any] = {"visits": visits} if isinstance(visits, list) else {}
    result: Passed | Failed | None = None
    if r["failure_code"] is not None:
        try:
            code = FailureCode(r["failure_code"])
        except ValueError:
            code = None
        if code is not None:
            result = Failed(
                code,
                r["blocking_reason"] or "",
                "warning" if r["severity"] == "warning" else "error",
                evidence,
            )
    elif r["execution_status"] == "ready":
        result = Passed(
            r["email_method"] or "",
            r["method_type"] or "",
            Decimal(r["confidence_score"] if r["confidence_score"] is not None else 0),
            bool(r["is_catchall"]),
            evidence,
        )
    outcome = None
    if result is not None:
        outcome = Outcome(
            r["outreach_id"],
            r["domain_normalised"],
            result,
            r["mx_host"],
            float(r["duration"]) if r["duration"] is not None else 0.0,
        )
    return UnloggedOutcome(r["outreach_id"], r["owner"], r["committed_at"], outcome)
