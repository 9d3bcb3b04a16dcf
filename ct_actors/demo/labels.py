"""One language for outcomes, so that a run can be compared with the simulated world's ground
truth: "PASS first.last 0.95", "PASS first.last 0.50 catchall", "FAIL CT-M-NO-MX", "PENDING".
The demo, the bench and the end-to-end tests all speak it, from whichever side they read: the
world's expectation, a row written to the database, or a result in memory."""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from ct_actors.demo.spine import SpineRow
from ct_actors.outcome import Deferred, Failed, FailureCode, Passed
from ct_actors.sim.world import SimDomain, World, expected_for

PENDING = "PENDING"


def pass_label(method_type: str | None, confidence: float | Decimal, is_catchall: bool) -> str:
    catchall = " catchall" if is_catchall else ""
    return f"PASS {method_type} {confidence:.2f}{catchall}"


def fail_label(code: str | FailureCode) -> str:
    return f"FAIL {code}"


def expected_label(world: World, record: SpineRow | str | None, mode: str = "smtp") -> str:
    """What a correct prober leaves for a spine row (or its normalised domain; None: no
    usable domain)."""
    domain = record.domain if isinstance(record, SpineRow) else record
    return domain_label(None if domain is None else world.domain(domain), mode)


def domain_label(domain: SimDomain | None, mode: str = "smtp") -> str:
    """`expected_label` from the world's domain itself (None: no usable domain), for a reader
    that streams the world instead of holding it."""
    if domain is None:
        return fail_label(FailureCode.NO_DOMAIN)
    exp = expected_for(domain, mx_only=mode == "mx-only")
    if exp.outcome == "DEFERRED":
        return PENDING
    if exp.outcome == "FAIL":
        return fail_label(str(exp.code))
    assert exp.confidence is not None
    return pass_label(exp.method_type, exp.confidence, exp.is_catchall)


def result_label(result: Passed | Failed | Deferred) -> str:
    """A decision in memory (the probe's `DomainResult.result`)."""
    if isinstance(result, Passed):
        return pass_label(result.method_type, result.confidence, result.is_catchall)
    if isinstance(result, Failed):
        return fail_label(result.code)
    return PENDING


def row_label(row: Mapping[str, Any] | None) -> str:
    """A record's terminal row as the demo reads it (company_target joined with its error), or
    None while it is pending."""
    if row is None:
        return PENDING
    if row["execution_status"] == "failed":
        return fail_label(row["failure_code"])
    return pass_label(row["method_type"], row["confidence_score"], row["is_catchall"])
