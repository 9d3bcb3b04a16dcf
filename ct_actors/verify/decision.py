"""What the EmailVerifier's gate decides for one address (`VerifyDecision`), and the pure rule
that reads an existing ledger row into a decision (`judge_ledger_row`). No I/O: the gate
(`verify.gate`) is the async shell around these."""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from typing import Any, Final

from ct_actors.verify.answer import VendorVerdict, VerifierAnswer
from ct_actors.verify.ledger import LedgerStatus, VerifierEntry

__all__ = [
    "DETAIL_MAX",
    "DecisionKind",
    "NextStep",
    "SkipReason",
    "VerifyDecision",
    "judge_ledger_row",
    "normalise_address",
    "skipped",
]

DETAIL_MAX: Final = 500  # characters of a decision's detail (the ledger's column holds 500)


class DecisionKind(enum.StrEnum):
    VERIFIED = "verified"  # the vendor answered in this check
    CACHED = "cached"  # a fresh verdict from the ledger (this or another daemon)
    SKIPPED = "skipped"  # no call was made (see SkipReason)
    UNAVAILABLE = "unavailable"  # called, no verdict (transient trouble after the retries)


class SkipReason(enum.StrEnum):
    BUDGET = "budget"  # budget_cap_reached: the money cap or the vendor's credits
    THROTTLED = "throttled"  # the tool's limiter gave no call in time (per_month spent)
    ATTEMPTED = "attempted"  # the address's one attempt was spent earlier, without a verdict
    STALE = "stale"  # the verdict is older than cache_ttl; no second attempt
    IN_FLIGHT = "in_flight"  # another daemon is still verifying it
    HALTED = "halted"  # the vendor refused our key/request: verifier stopped until resume()
    LEDGER = "ledger_unavailable"  # the ledger could not be read or written


@dataclass(frozen=True, slots=True)
class VerifyDecision:
    address: str
    kind: DecisionKind
    verdict: VendorVerdict | None = None  # VERIFIED / CACHED only
    reason: SkipReason | None = None  # SKIPPED only
    detail: str = ""
    vendor_result: str | None = None
    checked_at: dt.datetime | None = None  # when the verdict was obtained
    requests: int = 0  # HTTP requests made by this check
    answer: VerifierAnswer | None = None  # VERIFIED only

    def evidence(self) -> dict[str, Any]:
        """JSON-friendly, for the outcome's evidence."""
        out: dict[str, Any] = {"address": self.address, "outcome": self.kind.value}
        if self.verdict is not None:
            out["verdict"] = self.verdict.value
        if self.reason is not None:
            out["reason"] = self.reason.value
        if self.detail:
            out["detail"] = self.detail
        if self.vendor_result is not None:
            out["vendor_result"] = self.vendor_result
        if self.checked_at is not None:
            out["checked_at"] = self.checked_at.isoformat()
        if self.requests:
            out["requests"] = self.requests
        if self.answer is not None:
            out.update(self.answer.evidence())
        return out


def skipped(addr: str, reason: SkipReason, detail: str = "", requests: int = 0) -> VerifyDecision:
    return VerifyDecision(
        addr, DecisionKind.SKIPPED, reason=reason, detail=detail[:DETAIL_MAX], requests=requests
    )


def normalise_address(address: str) -> str:
    """The ledger key: stripped, lower-cased (our candidates are lower-case ASCII anyway).
    ValueError if it is not an address."""
    text = address.strip()
    local, at, domain = text.rpartition("@")
    if (
        not at
        or not local
        or not domain
        or len(text) > 254
        or any(c.isspace() or ord(c) < 32 for c in text)
    ):
        raise ValueError(f"not an email address: {address!r}")
    return f"{local}@{domain}".lower()


class NextStep(enum.Enum):
    """What the gate does when a ledger row gives no decision yet."""

    WAIT_FOR_PEER = "wait"  # another daemon's call is in flight: poll for its verdict
    CLAIM = "claim"  # an unavailable row with attempts left: claim it for another attempt


def judge_ledger_row(
    addr: str,
    entry: VerifierEntry,
    *,
    now: dt.datetime,
    owner: str,
    cache_ttl: float | None,
    max_attempts: int,
    abandoned_after: float,
) -> VerifyDecision | NextStep:
    """An existing ledger row -> the decision it stands for (see `verify.gate`, rules 1-2)."""
    if entry.status is LedgerStatus.DONE:
        try:
            verdict = VendorVerdict(entry.verdict or "")
        except ValueError:
            return skipped(addr, SkipReason.ATTEMPTED, f"unreadable verdict {entry.verdict!r}")
        at = entry.finished_at or entry.attempted_at
        if cache_ttl is not None and (now - at).total_seconds() >= cache_ttl:
            return skipped(
                addr, SkipReason.STALE,
                f"verified {verdict.value} at {at.isoformat()}, older than the cache TTL; "
                "one attempt per address",
            )
        return VerifyDecision(
            addr, DecisionKind.CACHED, verdict=verdict, vendor_result=entry.result,
            checked_at=at, detail=entry.detail or "",
        )
    if entry.status is LedgerStatus.UNAVAILABLE:
        if entry.attempts < max_attempts:
            return NextStep.CLAIM
        return skipped(
            addr, SkipReason.ATTEMPTED,
            f"attempted at {entry.attempted_at.isoformat()} without a verdict"
            + (f": {entry.detail}" if entry.detail else ""),
        )
    # Pending. Our own live checks are serialised by the gate, so a pending row of our own
    # name is from before a restart: its call may have gone out.
    age = (now - entry.attempted_at).total_seconds()
    if entry.owner == owner or age >= abandoned_after:
        return skipped(
            addr, SkipReason.ATTEMPTED,
            f"an attempt by {entry.owner} at {entry.attempted_at.isoformat()} never finished",
        )
    return NextStep.WAIT_FOR_PEER
