"""What the verifier is asked, and what its answer does to a pass (pure, plus one thin async
helper for the dispatcher).

**When.** Only for a *weak* PASS, where SMTP could not tell a real mailbox from any address:

* `catch_all`: the domain accepted our random probe address, so every RCPT is accepted
  (PASS first.last, confidence 0.50, is_catchall);
* `mx_only`: no SMTP conversation at all (mode mx-only; PASS first.last, confidence 0.70).

A PASS from a pattern hit on a non-catch-all domain (0.70-0.95) is not sent to the vendor: the
mail server itself already said the mailbox exists. FAILs and deferrals are never verified.

**Which address.** The concrete address the PASS stands for: the PASS's pattern applied to the
first usable sample person (`ann.lee@acme.com` for first.last), or, with no usable sample name
(the names query is off by default), the role address `info@<domain>`. One address per domain
and pass: the gate allows one vendor attempt per address ever, and the dispatcher's verdict
cache answers the domain's other records.

**What the verdict does.**

* invalid -> the pass ends with FAIL CT-M-VERIFY-FAIL;
* disposable -> FAIL CT-M-VERIFY-FAIL too: the domain is a throwaway-mail provider (the
  vendor's quality "bad"), nothing sent there reaches a company;
* valid (`ok`) -> confidence raised as in the table below (never lowered);
* unknown, catch_all -> unchanged (the vendor knows no more than our SMTP did);
* no verdict (skipped: budget, throttled, attempted, stale, in_flight, halted,
  ledger_unavailable; or unavailable) -> unchanged: the verifier never fails or defers a record
  for its own trouble.

Confidence after a `valid`:

| weak basis | sample-name address | role address |
| --- | --- | --- |
| catch-all (0.50) | 0.80 | 0.55 |
| mx-only (0.70) | 0.85 | 0.75 |

Why these numbers, against the SMTP model in `probe.patterns` (first.last 0.95, other person
patterns 0.90/0.85, role 0.70, catch-all 0.50, mx-only 0.70):

* A vendor `ok` on a sample person's address is independent evidence for exactly the pattern we
  emit, but it is one address of one person from a third party (registry accuracy 98%), so it
  stays below what our own RCPT acceptance of first.last on a non-catch-all domain is worth
  (0.95).
* mx-only + person -> 0.85: the vendor did the SMTP conversation we skipped, and it checks for
  catch-all itself (it would have said catch_all); that is our own first.last hit (0.95) minus
  a margin for second-hand evidence: the level of the weakest person pattern (first/last, 0.85).
* catch-all + person -> 0.80: we *know* the domain accepts everything at RCPT, so a vendor `ok`
  rests on the vendor's catch-all resolution (history, provider-specific checks), weaker than a
  plain RCPT answer: below the mx-only case, well above the 0.50 guess.
* A role address (`info@`) says the domain really delivers, nothing about how people's
  addresses look: a small step only (mx-only 0.70 -> 0.75, catch-all 0.50 -> 0.55), and never
  up to a role PASS's own 0.70 on a catch-all domain, where first.last remains a guess.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final, Protocol

from ct_actors.outcome import Failed, FailureCode, Passed, Result
from ct_actors.probe.domain_probe import DomainResult
from ct_actors.probe.patterns import (
    MAX_PEOPLE,
    PERSON_PATTERNS,
    ROLE_PATTERNS,
    fold_name,
    local_part,
)
from ct_actors.verify.answer import VendorVerdict
from ct_actors.verify.decision import VerifyDecision

__all__ = [
    "FAIL_VERDICTS",
    "RAISED_CONFIDENCE",
    "AddressKind",
    "AddressVerifier",
    "Basis",
    "Target",
    "apply_decision",
    "choose_target",
    "verify_weak_pass",
    "weak_basis",
]


class Basis(enum.StrEnum):
    CATCH_ALL = "catch_all"
    MX_ONLY = "mx_only"


class AddressKind(enum.StrEnum):
    PERSON = "person"
    ROLE = "role"


RAISED_CONFIDENCE: Final[dict[tuple[Basis, AddressKind], Decimal]] = {
    (Basis.CATCH_ALL, AddressKind.PERSON): Decimal("0.80"),
    (Basis.CATCH_ALL, AddressKind.ROLE): Decimal("0.55"),
    (Basis.MX_ONLY, AddressKind.PERSON): Decimal("0.85"),
    (Basis.MX_ONLY, AddressKind.ROLE): Decimal("0.75"),
}
FAIL_VERDICTS: Final = frozenset({VendorVerdict.INVALID, VendorVerdict.DISPOSABLE})


class AddressVerifier(Protocol):
    async def check(self, address: str) -> VerifyDecision: ...


@dataclass(frozen=True, slots=True)
class Target:
    address: str
    kind: AddressKind
    basis: Basis

    def evidence(self) -> dict[str, Any]:
        return {"address": self.address, "address_kind": self.kind.value, "basis": self.basis.value}


def weak_basis(passed: Passed) -> Basis | None:
    """Why this PASS is weak enough to ask the vendor, or None."""
    if passed.is_catchall:
        return Basis.CATCH_ALL
    if passed.evidence.get("mode") == "mx-only":
        return Basis.MX_ONLY
    return None


def choose_target(
    passed: Passed, domain: str, people: Sequence[tuple[str, str]] = ()
) -> Target | None:
    """The concrete address to verify for a weak PASS, or None if the PASS is not weak."""
    basis = weak_basis(passed)
    if basis is None:
        return None
    if passed.method_type in PERSON_PATTERNS:
        for first, last in list(people)[:MAX_PEOPLE]:
            if fold_name(first) and fold_name(last):
                address = f"{local_part(passed.method_type, first, last)}@{domain}"
                return Target(address, AddressKind.PERSON, basis)
    role = passed.method_type if passed.method_type in ROLE_PATTERNS else ROLE_PATTERNS[0]
    return Target(f"{role}@{domain}", AddressKind.ROLE, basis)


def apply_decision(passed: Passed, target: Target, decision: VerifyDecision) -> Passed | Failed:
    """The verifier's effect on a weak PASS (see the module docstring's tables)."""
    record: dict[str, Any] = {
        **decision.evidence(),
        **target.evidence(),
        "confidence_before": str(passed.confidence),
    }
    verdict = decision.verdict
    if verdict in FAIL_VERDICTS:
        assert verdict is not None
        detail = f" ({decision.detail})" if decision.detail else ""
        return Failed(
            FailureCode.VERIFY_FAIL,
            f"email verifier says {target.address} is {verdict.value}{detail}",
            evidence={**passed.evidence, "verifier": record},
        )
    confidence = passed.confidence
    if verdict is VendorVerdict.VALID:
        confidence = max(confidence, RAISED_CONFIDENCE[(target.basis, target.kind)])
    record["confidence_after"] = str(confidence)
    return dataclasses.replace(
        passed, confidence=confidence, evidence={**passed.evidence, "verifier": record}
    )


async def verify_weak_pass(
    verifier: AddressVerifier,
    result: DomainResult,
    domain: str,
    people: Sequence[tuple[str, str]] = (),
) -> DomainResult:
    """The dispatcher's hook: `result` unchanged unless it is a weak PASS; then the verifier's
    decision applied. Never raises for vendor or ledger trouble."""
    passed = result.result
    if not isinstance(passed, Passed):
        return result
    target = choose_target(passed, domain, people)
    if target is None:
        return result
    decision = await verifier.check(target.address)
    applied: Result = apply_decision(passed, target, decision)
    return dataclasses.replace(result, result=applied)
