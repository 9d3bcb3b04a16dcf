"""The decision model: which PASSes are weak, which address is verified, and what each kind of
decision does to the pass (FAIL CT-M-VERIFY-FAIL, raised confidence, or unchanged)."""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

import pytest
import trio

from ct_actors.dns.types import MxHost, MxLookup, MxStatus
from ct_actors.outcome import Deferred, Failed, FailureCode, Passed
from ct_actors.probe.domain_probe import DomainResult, mx_only_result
from ct_actors.probe.patterns import CATCHALL_CONFIDENCE, MX_ONLY_CONFIDENCE, template
from ct_actors.verify.answer import VendorVerdict, VerifierAnswer
from ct_actors.verify.decision import DecisionKind, SkipReason, VerifyDecision
from ct_actors.verify.policy import (
    RAISED_CONFIDENCE,
    AddressKind,
    Basis,
    Target,
    apply_decision,
    choose_target,
    verify_weak_pass,
    weak_basis,
)

pytestmark = pytest.mark.timeout(30)

PEOPLE = [("Ann", "Lee"), ("Bob", "Ray")]
MX = MxLookup("acme.com", MxStatus.FOUND, (MxHost("mx.acme.com", 10, ("192.0.2.1",)),))


def catchall_pass() -> Passed:
    return Passed(
        template("first.last", "acme.com"), "first.last", CATCHALL_CONFIDENCE, True,
        {"mode": "smtp", "catchall_probe": "ct-probe-x@acme.com"},
    )


def mx_only_pass() -> Passed:
    result = mx_only_result(MX).result
    assert isinstance(result, Passed)
    return result


def pattern_pass() -> Passed:
    return Passed(
        template("f.last", "acme.com"), "f.last", Decimal("0.90"), False, {"mode": "smtp"}
    )


def decided(
    verdict: VendorVerdict | None, kind: DecisionKind = DecisionKind.VERIFIED
) -> VerifyDecision:
    return VerifyDecision(
        "ann.lee@acme.com", kind, verdict=verdict,
        checked_at=dt.datetime(2026, 11, 29, tzinfo=dt.UTC), detail="mailbox_not_found",
        requests=1,
    )


def skipped(reason: SkipReason) -> VerifyDecision:
    return VerifyDecision("ann.lee@acme.com", DecisionKind.SKIPPED, reason=reason, detail="x")


def test_weak_basis() -> None:
    assert weak_basis(catchall_pass()) is Basis.CATCH_ALL
    assert weak_basis(mx_only_pass()) is Basis.MX_ONLY
    assert weak_basis(pattern_pass()) is None


def test_target_is_the_concrete_address_of_the_pass() -> None:
    target = choose_target(catchall_pass(), "acme.com", PEOPLE)
    assert target == Target("ann.lee@acme.com", AddressKind.PERSON, Basis.CATCH_ALL)
    # A first name that folds to nothing is skipped; accents are folded like the candidates.
    target = choose_target(mx_only_pass(), "acme.com", [("—", "Lee"), ("Zoë", "Öhman")])
    assert target == Target("zoe.ohman@acme.com", AddressKind.PERSON, Basis.MX_ONLY)
    # No usable sample names (the names query is off by default): the role address.
    assert choose_target(catchall_pass(), "acme.com") == Target(
        "info@acme.com", AddressKind.ROLE, Basis.CATCH_ALL
    )
    assert choose_target(pattern_pass(), "acme.com", PEOPLE) is None


@pytest.mark.parametrize("verdict", [VendorVerdict.INVALID, VendorVerdict.DISPOSABLE])
@pytest.mark.parametrize("kind", [DecisionKind.VERIFIED, DecisionKind.CACHED])
def test_invalid_and_disposable_fail_the_pass(verdict: VendorVerdict, kind: DecisionKind) -> None:
    passed = catchall_pass()
    target = choose_target(passed, "acme.com", PEOPLE)
    assert target is not None
    result = apply_decision(passed, target, decided(verdict, kind))
    assert isinstance(result, Failed)
    assert result.code is FailureCode.VERIFY_FAIL and str(result.code) == "CT-M-VERIFY-FAIL"
    assert result.code.imo_stage == "M"
    assert f"ann.lee@acme.com is {verdict.value}" in result.blocking_reason
    record = result.evidence["verifier"]
    assert record["verdict"] == verdict.value and record["basis"] == "catch_all"
    assert result.evidence["catchall_probe"] == "ct-probe-x@acme.com"  # SMTP trail kept


@pytest.mark.parametrize(
    ("passed", "people", "expected"),
    [
        (catchall_pass(), PEOPLE, Decimal("0.80")),
        (catchall_pass(), [], Decimal("0.55")),
        (mx_only_pass(), PEOPLE, Decimal("0.85")),
        (mx_only_pass(), [], Decimal("0.75")),
    ],
)
def test_valid_raises_confidence(
    passed: Passed, people: list[tuple[str, str]], expected: Decimal
) -> None:
    target = choose_target(passed, "acme.com", people)
    assert target is not None
    result = apply_decision(passed, target, decided(VendorVerdict.VALID))
    assert isinstance(result, Passed)
    assert result.confidence == expected
    assert result.email_method == passed.email_method and result.method_type == "first.last"
    assert result.is_catchall == passed.is_catchall
    record = result.evidence["verifier"]
    assert record["confidence_before"] == str(passed.confidence)
    assert record["confidence_after"] == str(expected)


def test_the_raised_levels_stay_below_direct_smtp_evidence() -> None:
    assert all(Decimal("0.5") < v < Decimal("0.95") for v in RAISED_CONFIDENCE.values())
    assert RAISED_CONFIDENCE[(Basis.CATCH_ALL, AddressKind.PERSON)] > CATCHALL_CONFIDENCE
    assert RAISED_CONFIDENCE[(Basis.MX_ONLY, AddressKind.PERSON)] > MX_ONLY_CONFIDENCE
    for basis in Basis:
        assert RAISED_CONFIDENCE[(basis, AddressKind.ROLE)] < RAISED_CONFIDENCE[
            (basis, AddressKind.PERSON)
        ]


def test_valid_never_lowers_confidence() -> None:
    passed = Passed("first.last@acme.com", "first.last", Decimal("0.90"), True, {})
    target = Target("ann.lee@acme.com", AddressKind.PERSON, Basis.CATCH_ALL)
    result = apply_decision(passed, target, decided(VendorVerdict.VALID))
    assert isinstance(result, Passed) and result.confidence == Decimal("0.90")


@pytest.mark.parametrize(
    "decision",
    [
        decided(VendorVerdict.UNKNOWN),
        decided(VendorVerdict.CATCH_ALL),
        decided(VendorVerdict.UNKNOWN, DecisionKind.CACHED),
        VerifyDecision("ann.lee@acme.com", DecisionKind.UNAVAILABLE, detail="timeout", requests=3),
        *(skipped(reason) for reason in SkipReason),
    ],
)
def test_everything_else_leaves_the_pass_unchanged(decision: VerifyDecision) -> None:
    passed = catchall_pass()
    target = choose_target(passed, "acme.com", PEOPLE)
    assert target is not None
    result = apply_decision(passed, target, decision)
    assert isinstance(result, Passed)
    assert result.confidence == passed.confidence
    assert result.evidence["verifier"]["outcome"] == decision.kind.value
    assert {k: v for k, v in result.evidence.items() if k != "verifier"} == passed.evidence


class RecordingVerifier:
    def __init__(self, decision: VerifyDecision) -> None:
        self.decision = decision
        self.asked: list[str] = []

    async def check(self, address: str) -> VerifyDecision:
        await trio.lowlevel.checkpoint()
        self.asked.append(address)
        return self.decision


async def test_verify_weak_pass_only_asks_about_weak_passes() -> None:
    verifier = RecordingVerifier(decided(VendorVerdict.INVALID))
    strong = DomainResult(pattern_pass(), "mx.acme.com")
    failed = DomainResult(Failed(FailureCode.NO_MX, "no MX"), None)
    deferred = DomainResult(Deferred("resolver down", 600.0), None)
    with trio.fail_after(10):
        for result in (strong, failed, deferred):
            assert await verify_weak_pass(verifier, result, "acme.com", PEOPLE) is result
        assert verifier.asked == []
        weak = mx_only_result(MX)
        out = await verify_weak_pass(verifier, weak, "acme.com", PEOPLE)
    assert verifier.asked == ["ann.lee@acme.com"]
    assert out.mx_host == weak.mx_host == "mx.acme.com"
    assert isinstance(out.result, Failed) and out.result.code is FailureCode.VERIFY_FAIL


async def test_verify_weak_pass_evidence_carries_the_vendor_answer() -> None:
    answer = VerifierAnswer(
        "info@acme.com", VendorVerdict.VALID, "ok", 4999, quality="good", subresult="ok", role=True
    )
    decision = VerifyDecision(
        "info@acme.com", DecisionKind.VERIFIED, verdict=VendorVerdict.VALID, vendor_result="ok",
        requests=1, answer=answer,
    )
    with trio.fail_after(10):
        out = await verify_weak_pass(
            RecordingVerifier(decision), DomainResult(catchall_pass(), "mx"), "acme.com"
        )
    assert isinstance(out.result, Passed) and out.result.confidence == Decimal("0.55")
    record = out.result.evidence["verifier"]
    assert record["address"] == "info@acme.com" and record["address_kind"] == "role"
    assert record["vendor_result"] == "ok" and record["credits_left"] == 4999
    assert record["role"] is True
