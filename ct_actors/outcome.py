"""The terminal outcomes of one pass, and the non-terminal deferral.

Everything downstream of the probe (writer, canonical log line, `probe` CLI) speaks these types,
so they carry the audit trail (`evidence`) with them rather than reconstructing it later.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal


class FailureCode(enum.StrEnum):
    NOT_FOUND = "CT-I-NOT-FOUND"
    NO_DOMAIN = "CT-I-NO-DOMAIN"
    ALREADY_PROCESSED = "CT-I-ALREADY-PROCESSED"
    NO_MX = "CT-M-NO-MX"
    NO_PATTERN = "CT-M-NO-PATTERN"
    SMTP_FAIL = "CT-M-SMTP-FAIL"
    VERIFY_FAIL = "CT-M-VERIFY-FAIL"

    @property
    def imo_stage(self) -> Literal["I", "M"]:
        return "I" if self.value.startswith("CT-I-") else "M"

    @property
    def pipeline_stage(self) -> str:
        return "input" if self.imo_stage == "I" else "middle"


ImoStage = Literal["I", "M"]


@dataclass(frozen=True, slots=True)
class Passed:
    """PASS: the company can be emailed with `email_method` (a template, never a person)."""

    email_method: str
    method_type: str
    confidence: Decimal
    is_catchall: bool
    evidence: dict[str, Any] = field(default_factory=dict)

    kind: Literal["pass"] = "pass"


@dataclass(frozen=True, slots=True)
class Failed:
    """Terminal FAIL with a runbook code. Written once, never retried."""

    code: FailureCode
    blocking_reason: str
    severity: Literal["error", "warning"] = "error"
    evidence: dict[str, Any] = field(default_factory=dict)

    kind: Literal["fail"] = "fail"


@dataclass(frozen=True, slots=True)
class Deferred:
    """Not an outcome: our own trouble (resolver down, blocklisted, budget). The record stays
    pending and is claimed again no earlier than `retry_after` seconds from now."""

    reason: str
    retry_after: float
    evidence: dict[str, Any] = field(default_factory=dict)

    kind: Literal["deferred"] = "deferred"


Result = Passed | Failed | Deferred


@dataclass(frozen=True, slots=True)
class Outcome:
    """One record's result, as handed to the writer."""

    outreach_id: uuid.UUID
    domain: str | None
    result: Result
    mx_host: str | None = None
    duration: float = 0.0

    @property
    def terminal(self) -> bool:
        return not isinstance(self.result, Deferred)


def result_fields(result: Result) -> dict[str, Any]:
    """The decision as plain JSON-friendly fields (for `probe`, `once` and logs)."""
    if isinstance(result, Passed):
        return {
            "outcome": "PASS",
            "execution_status": "ready",
            "email_method": result.email_method,
            "method_type": result.method_type,
            "confidence_score": str(result.confidence),
            "is_catchall": result.is_catchall,
        }
    if isinstance(result, Failed):
        return {
            "outcome": "FAIL",
            "failure_code": str(result.code),
            "imo_stage": result.code.imo_stage,
            "blocking_reason": result.blocking_reason,
        }
    return {"outcome": "DEFERRED", "reason": result.reason, "retry_after": result.retry_after}
