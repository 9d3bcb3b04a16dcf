"""The EmailVerifier's counters and state for the stats line, as a value (`VerifierStatistics`),
typed: `paused_until` is a datetime, `spent_here` a Decimal. Text happens once, at the logging
edge (`as_log`), whose keys are the stats line's `verifier` object (docs/monitoring.md)."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ct_actors.verify.answer import VendorVerdict
from ct_actors.verify.decision import DecisionKind, SkipReason, VerifyDecision

__all__ = ["DecisionCounters", "VerifierStatistics"]


@dataclass(frozen=True, slots=True)
class VerifierStatistics:
    checks: int  # check() calls
    requests: int  # HTTP requests to the vendor
    decisions: Mapping[DecisionKind, int]  # every kind, zero included
    skipped: Mapping[SkipReason, int]  # every reason, zero included
    verdicts: Mapping[VendorVerdict, int]  # verified and cached verdicts, every kind
    spent_here: Decimal  # money this process spent (billed or maybe billed)
    halted: str | None  # why the vendor refused us, until resume()
    paused_until: dt.datetime | None  # the tool's calendar budget is spent until then (UTC)
    budget_switch: bool  # budget_cap_reached is tripped

    def as_log(self) -> dict[str, Any]:
        """The stats line's `verifier` object: flat counters (`decision_verified`,
        `skipped_budget`, `verdict_invalid`, ...), `spent_here` as exact decimal text,
        `paused_until` as ISO 8601."""
        return {
            "checks": self.checks,
            "requests": self.requests,
            **{f"decision_{k.value}": self.decisions.get(k, 0) for k in DecisionKind},
            **{f"skipped_{r.value}": self.skipped.get(r, 0) for r in SkipReason},
            **{f"verdict_{v.value}": self.verdicts.get(v, 0) for v in VendorVerdict},
            "spent_here": str(self.spent_here),
            "halted": self.halted,
            "paused_until": self.paused_until.isoformat() if self.paused_until else None,
            "budget_switch": self.budget_switch,
        }


@dataclass(slots=True)
class DecisionCounters:
    """The gate's running counts (mutable; `VerifierStatistics` is their snapshot)."""

    checks: int = 0
    requests: int = 0
    decisions: Counter[DecisionKind] = field(default_factory=Counter)
    skipped: Counter[SkipReason] = field(default_factory=Counter)
    verdicts: Counter[VendorVerdict] = field(default_factory=Counter)

    def count(self, decision: VerifyDecision) -> None:
        self.decisions[decision.kind] += 1
        self.requests += decision.requests
        if decision.reason is not None:
            self.skipped[decision.reason] += 1
        if decision.verdict is not None:
            self.verdicts[decision.verdict] += 1
