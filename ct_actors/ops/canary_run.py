"""One canary run as the report tells it (`CanaryRun`): what was selected, the facts and checks,
the pipeline's figures, and the outcome counts and rate derived from them (pure)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ct_actors.actors.supervisor_statistics import SupervisorStatistics
from ct_actors.ops.canary_facts import CanaryFacts, SovereignProof
from ct_actors.ops.checks import CheckResult
from ct_actors.ops.selection import Selection


@dataclass(frozen=True, slots=True)
class CanaryRun:
    """Everything the report says, gathered by `ct_actors.ops.canary`."""

    started_at: dt.datetime  # wall clock, UTC
    version: str
    database: str  # URL, password masked
    mode: str
    owner: str
    selection: Selection
    facts: CanaryFacts
    checks: Sequence[CheckResult]
    proof: SovereignProof
    duration: float  # seconds, the pipeline's run
    pending_after: int
    claim_batch: int
    max_in_flight: int
    timeout: float
    timed_out: bool = False
    pipeline: SupervisorStatistics | None = None  # Supervisor.statistics() at the end
    pipeline_error: str | None = None
    output: Path | None = None
    notes: Sequence[str] = field(default_factory=tuple)

    @property
    def ids(self) -> list[Any]:
        return self.selection.ids

    @property
    def outcomes(self) -> dict[Any, str]:
        return {i: self.facts.outcome(i) for i in self.ids}

    def count(self, outcome: str) -> int:
        return sum(1 for o in self.outcomes.values() if o == outcome)

    @property
    def processed(self) -> int:
        return self.count("PASS") + self.count("FAIL")

    @property
    def failed_checks(self) -> list[CheckResult]:
        return [c for c in self.checks if not c.passed]

    @property
    def validated(self) -> bool:
        return len(self.checks) == 8 and not self.failed_checks

    @property
    def rate(self) -> float | None:
        """Records with an outcome per second of pipeline run."""
        if self.duration <= 0 or self.processed == 0:
            return None
        return self.processed / self.duration
