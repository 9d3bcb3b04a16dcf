"""What the canary report's checks read: the database's rows for the selected records, read in one
snapshot (`fetch_facts`, SQL in `ct_actors.ops.queries`), and the isolation and sovereign
proofs. `CanaryFacts.outcome` applies the store's definition of a terminal outcome (stated in
`ct_actors.ops.checks`)."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from ct_actors.ops import queries as oq
from ct_actors.ops.db import OpsDb


# ---------------------------------------------------------------------------------------------
# Facts
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class TargetRow:
    outreach_id: uuid.UUID
    execution_status: str | None
    email_method: str | None
    method_type: str | None
    confidence_score: Decimal | None
    is_catchall: bool | None
    imo_completed_at: dt.datetime | None
    company_unique_id: str | None
    probe_mode: str | None  # evidence ->> 'mode'


@dataclass(frozen=True, slots=True)
class ErrorRow:
    error_id: int
    outreach_id: uuid.UUID
    failure_code: str | None
    imo_stage: str | None
    pipeline_stage: str | None
    blocking_reason: str | None
    retry_allowed: bool | None
    created_at: dt.datetime | None
    resolved_at: dt.datetime | None


@dataclass(frozen=True, slots=True)
class LeaseRow:
    outreach_id: uuid.UUID
    owner: str
    attempts: int
    not_before: dt.datetime | None
    last_reason: str | None
    live: bool


@dataclass(frozen=True, slots=True)
class ForeignWrites:
    other_targets: int = 0
    other_errors: int = 0
    targets_not_in_spine: int = 0


@dataclass(frozen=True, slots=True)
class CanaryFacts:
    targets: dict[uuid.UUID, TargetRow]
    errors: dict[uuid.UUID, list[ErrorRow]]
    leases: dict[uuid.UUID, LeaseRow]
    run_started: dt.datetime  # database clock
    run_finished: dt.datetime
    foreign: ForeignWrites = field(default_factory=ForeignWrites)

    def open_errors(self, outreach_id: uuid.UUID) -> list[ErrorRow]:
        return [e for e in self.errors.get(outreach_id, ()) if e.resolved_at is None]

    def outcome(self, outreach_id: uuid.UUID) -> str:
        """'PASS', 'FAIL', 'CONFLICT' (both a 'ready' row and an open error row) or
        'NOT PROCESSED'."""
        target = self.targets.get(outreach_id)
        ready = target is not None and target.execution_status == "ready"
        failed = (target is not None and target.execution_status == "failed") or bool(
            self.open_errors(outreach_id)
        )
        if ready and failed:
            return "CONFLICT"
        if ready:
            return "PASS"
        if failed:
            return "FAIL"
        return "NOT PROCESSED"

    def failure_code(self, outreach_id: uuid.UUID) -> str | None:
        errors = self.open_errors(outreach_id)
        return errors[0].failure_code if errors else None


@dataclass(frozen=True, slots=True)
class StaticScan:
    """SQL constants of the modules that hold every statement the daemon and the canary run."""

    modules: tuple[str, ...]
    statements: int
    offending: tuple[str, ...]  # "module.NAME: why"

    @property
    def ok(self) -> bool:
        return self.statements > 0 and not self.offending


@dataclass(frozen=True, slots=True)
class RoleProof:
    """PostgreSQL's own answer about the restricted role the pipeline ran under."""

    role: str
    guarded_total: int  # columns named sovereign_id in the database
    guarded_readable: int  # ... of which the role may SELECT (must be 0)
    reads_spine: bool  # SELECT on outreach.outreach (outreach_id, domain)
    is_superuser: bool
    bypasses_rls: bool
    memberships: int
    sessions: int  # the role's sessions seen while the pipeline's pool was open
    relations_granted: int = 0
    guarded_relations: tuple[str, ...] = ()

    @property
    def problems(self) -> list[str]:
        out = []
        if self.guarded_total == 0:
            out.append("the database has no sovereign_id column to protect")
        if self.guarded_readable:
            out.append(f"the role can read {self.guarded_readable} sovereign_id column(s)")
        if not self.reads_spine:
            out.append("the role cannot read outreach.outreach (outreach_id, domain)")
        if self.is_superuser:
            out.append("the role is a superuser")
        if self.bypasses_rls:
            out.append("the role bypasses row security")
        if self.memberships:
            out.append(f"the role is a member of {self.memberships} other role(s)")
        if self.sessions == 0:
            out.append("no session of the role was seen: the pipeline did not run under it")
        return out

    @property
    def ok(self) -> bool:
        return not self.problems


@dataclass(frozen=True, slots=True)
class SovereignProof:
    static: StaticScan
    role: RoleProof | None
    role_error: str | None = None  # why the role could not be set up or verified
    permission_denied: str | None = None  # a 42501 the pipeline hit, verbatim (redacted)


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------
async def fetch_facts(
    db: OpsDb,
    ids: Sequence[uuid.UUID],
    run_started: dt.datetime,
    run_finished: dt.datetime,
) -> CanaryFacts:
    id_list = list(ids)

    async def body(conn: Any) -> CanaryFacts:
        targets = await conn.fetch(oq.CANARY_TARGETS, id_list)
        errors = await conn.fetch(oq.CANARY_ERRORS, id_list)
        leases = await conn.fetch(oq.CANARY_LEASES, id_list)
        foreign = await conn.fetchrow(oq.FOREIGN_WRITES, run_started, run_finished, id_list)
        by_error: dict[uuid.UUID, list[ErrorRow]] = {}
        for r in errors:
            by_error.setdefault(r["outreach_id"], []).append(ErrorRow(**dict(r)))
        return CanaryFacts(
            targets={r["outreach_id"]: TargetRow(**dict(r)) for r in targets},
            errors=by_error,
            leases={r["outreach_id"]: LeaseRow(**dict(r)) for r in leases},
            run_started=run_started,
            run_finished=run_finished,
            foreign=ForeignWrites(**{k: int(v) for k, v in dict(foreign).items()}),
        )

    return await db.snapshot("canary validation", body)
