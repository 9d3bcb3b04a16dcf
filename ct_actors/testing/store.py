"""The store's rooms in memory, with the semantics the PostgreSQL ones enforce in SQL, for
MockClock tests: each call checkpoints once where the real store has a round trip, then reads
and writes with no await in between (atomic under trio, as each statement is in PostgreSQL).

* `FakeStore`: the work queue (claims, leases, outcomes, the outcome log); terminal rows are
  never overwritten. `fail_writes` makes the next writes raise `Unavailable`; `fence` applies
  the write fence.
* `MemoryUsageStore`: the usage book (day/month budgets).
* `MemoryVerifierLedger`: the verifier's ledger and monthly spend.

One instance shared by several components plays "several daemons on one database"; keeping the
instance across a simulated restart plays "the rows survive a restart".
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import trio

from ct_actors.db.errors import DatabaseUnavailable
from ct_actors.db.usage import check_usage_window
from ct_actors.outcome import Deferred, Outcome
from ct_actors.verify.ledger import LedgerStatus, SpendRow, VerifierEntry


@dataclass(frozen=True)
class Claimed:
    outreach_id: uuid.UUID
    domain: str | None
    attempts: int | None = None
    spine_rows: int = 1


@dataclass
class Report:
    written: list[uuid.UUID] = field(default_factory=list)
    already_terminal: list[uuid.UUID] = field(default_factory=list)
    deferred: list[uuid.UUID] = field(default_factory=list)
    fenced: list[uuid.UUID] = field(default_factory=list)


class Unavailable(Exception):
    pass


class FakeStore:
    """`WorkQueue` in memory, over a spine of outreach id -> domain."""

    def __init__(self, spine: dict[uuid.UUID, str | None]) -> None:
        self.spine = dict(spine)
        self.terminal: dict[uuid.UUID, Outcome] = {}
        self.leases: dict[uuid.UUID, tuple[str, float]] = {}
        self.not_before: dict[uuid.UUID, float] = {}
        self.deferred: dict[uuid.UUID, Outcome] = {}
        self.writes: list[tuple[float, int]] = []
        self.claims: list[tuple[float, int]] = []
        self.fail_writes = 0  # raise Unavailable for the next N writes
        self.released: list[uuid.UUID] = []
        # Claim numbers per record (the lease's `attempts`), and what each write presented.
        self.attempts: dict[uuid.UUID, int] = {}
        self.presented: list[dict[uuid.UUID, int]] = []
        # Apply the write fence (WorkQueue.write_outcomes' `claims`) as the real statement does.
        self.fence = False
        # ct_actors.outcome_log: id -> owner, for PASS/FAIL written and not yet marked logged.
        self.unlogged_rows: dict[uuid.UUID, str] = {}

    async def claim(self, owner: str, limit: int, lease_seconds: float) -> list[Claimed]:
        await trio.lowlevel.checkpoint()
        now = trio.current_time()
        out: list[Claimed] = []
        for oid in sorted(self.spine):
            if len(out) >= limit:
                break
            if oid in self.terminal or self.not_before.get(oid, -1.0) > now:
                continue
            lease = self.leases.get(oid)
            if lease is not None and lease[1] > now:
                continue
            self.leases[oid] = (owner, now + lease_seconds)
            self.attempts[oid] = self.attempts.get(oid, 0) + 1
            out.append(Claimed(oid, self.spine[oid], self.attempts[oid]))
        self.claims.append((now, len(out)))
        return out

    async def pending_elsewhere(self, owner: str) -> int:
        await trio.lowlevel.checkpoint()
        now = trio.current_time()

        def mine(oid: uuid.UUID) -> bool:
            holder, expires = self.leases.get(oid, ("", 0.0))
            return holder == owner and expires > now

        return sum(
            1
            for oid in self.spine
            if oid not in self.terminal
            and self.not_before.get(oid, -1.0) <= now
            and not mine(oid)
        )

    async def renew_leases(self, owner: str, ids: Sequence[uuid.UUID], lease_seconds: float) -> int:
        await trio.lowlevel.checkpoint()
        now = trio.current_time()
        for oid in ids:
            held_by, expires = self.leases.get(oid, ("", 0.0))
            if held_by == owner and expires > now:  # only live leases, as the SQL
                self.leases[oid] = (owner, now + lease_seconds)
        return len(ids)

    async def release(self, owner: str, ids: Sequence[uuid.UUID]) -> int:
        await trio.lowlevel.checkpoint()
        for oid in ids:
            if self.leases.get(oid, ("", 0))[0] == owner:
                del self.leases[oid]
                self.released.append(oid)
        return len(ids)

    async def write_outcomes(
        self,
        owner: str,
        outcomes: Sequence[Outcome],
        *,
        claims: Mapping[uuid.UUID, int] | None = None,
    ) -> Report:
        await trio.lowlevel.checkpoint()
        if self.fail_writes:
            self.fail_writes -= 1
            raise Unavailable("database unavailable (fake)")
        claims = dict(claims or {})
        self.presented.append(claims)
        report = Report()
        now = trio.current_time()
        for outcome in outcomes:
            oid = outcome.outreach_id
            if self.fence and oid in claims:
                holder, expires = self.leases.get(oid, ("", 0.0))
                if holder != owner or expires <= now or self.attempts.get(oid) != claims[oid]:
                    report.fenced.append(oid)
                    continue
            self.leases.pop(oid, None)
            if oid in self.terminal:
                report.already_terminal.append(oid)
            elif isinstance(outcome.result, Deferred):
                self.not_before[oid] = now + outcome.result.retry_after
                self.deferred[oid] = outcome
                report.deferred.append(oid)
            else:
                self.terminal[oid] = outcome
                report.written.append(oid)
                self.unlogged_rows[oid] = owner
        self.writes.append((now, len(outcomes)))
        return report

    async def mark_logged(self, owner: str, ids: Sequence[uuid.UUID]) -> None:
        await trio.lowlevel.checkpoint()
        for oid in ids:
            if self.unlogged_rows.get(oid) == owner:
                del self.unlogged_rows[oid]

    async def unlogged(self, owner: str, stale_after: float, limit: int) -> list[Any]:
        # A fresh fake has no previous incarnation: nothing to recover unless a test put it.
        await trio.lowlevel.checkpoint()
        return []

    async def forget_unlogged(self, ids: Sequence[uuid.UUID]) -> None:
        await trio.lowlevel.checkpoint()
        for oid in ids:
            self.unlogged_rows.pop(oid, None)


class MemoryUsageStore:
    """`UsageBook.reserve_usage` / `refund_usage` / `usage` in memory, for MockClock tests of the
    day/month budgets: same grants, same refusals of bad arguments (ValueError), and a
    checkpoint per call where the real store has a database round trip.

    One instance shared by several throttles plays "several daemons on one database"; keeping
    the instance across a simulated restart plays "the counters survive a restart".
    """

    def __init__(self) -> None:
        self.used: dict[tuple[str, str, dt.datetime], int] = {}
        self.calls: list[tuple[str, str, str, dt.datetime, int]] = []  # (method, tool, scope,
        # window, amount) in call order, failed calls included
        self.fail_calls = 0  # raise DatabaseUnavailable for the next N calls

    def _begin(self, method: str, tool_id: str, scope: str, window: dt.datetime, n: int) -> None:
        self.calls.append((method, tool_id, scope, window, n))
        if self.fail_calls:
            self.fail_calls -= 1
            raise DatabaseUnavailable(f"{method}: database unavailable (fake)")

    async def reserve_usage(
        self, tool_id: str, scope: str, window_start: dt.datetime, want: int, limit: int
    ) -> int:
        check_usage_window(scope, window_start)
        if want < 1:
            raise ValueError(f"want must be >= 1, got {want!r}")
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit!r}")
        # Checkpoint first, then read-modify-write with no await in between: atomic under trio,
        # as the single statement is in PostgreSQL.
        await trio.lowlevel.checkpoint()
        self._begin("reserve", tool_id, scope, window_start, want)
        key = (tool_id, scope, window_start)
        used = self.used.get(key, 0)
        granted = max(0, min(want, limit - used))
        self.used[key] = used + granted
        return granted

    async def refund_usage(
        self, tool_id: str, scope: str, window_start: dt.datetime, count: int
    ) -> None:
        check_usage_window(scope, window_start)
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count!r}")
        await trio.lowlevel.checkpoint()
        if count == 0:
            return  # the real store does not go to the database either
        self._begin("refund", tool_id, scope, window_start, count)
        key = (tool_id, scope, window_start)
        if key in self.used:
            self.used[key] = max(0, self.used[key] - count)

    async def usage(self, tool_id: str, scope: str, window_start: dt.datetime) -> int:
        check_usage_window(scope, window_start)
        await trio.lowlevel.checkpoint()
        self._begin("usage", tool_id, scope, window_start, 0)
        return self.used.get((tool_id, scope, window_start), 0)


class MemoryVerifierLedger:
    """`VerifierLedger` in memory: the semantics of the SQL in `ct_actors.db.queries`
    (VERIFIER_*)."""

    def __init__(self) -> None:
        self.entries: dict[str, VerifierEntry] = {}
        self.spend: dict[tuple[str, dt.datetime], SpendRow] = {}
        self.calls: list[str] = []  # method names, in call order (failed ones included)
        self.fail_calls = 0  # raise DatabaseUnavailable for the next N calls

    async def _begin(self, method: str) -> None:
        await trio.lowlevel.checkpoint()
        self.calls.append(method)
        if self.fail_calls:
            self.fail_calls -= 1
            raise DatabaseUnavailable(f"{method}: database unavailable (fake)")

    async def verifier_entry(self, address: str) -> VerifierEntry | None:
        await self._begin("entry")
        return self.entries.get(address)

    async def verifier_claim(
        self, address: str, owner: str, at: dt.datetime, max_attempts: int
    ) -> int | None:
        await self._begin("claim")
        current = self.entries.get(address)
        if current is None:
            self.entries[address] = VerifierEntry(address, owner, LedgerStatus.PENDING, 1, at)
            return 1
        if current.status is LedgerStatus.UNAVAILABLE and current.attempts < max_attempts:
            self.entries[address] = dataclasses.replace(
                current,
                owner=owner,
                status=LedgerStatus.PENDING,
                attempts=current.attempts + 1,
                attempted_at=at,
                finished_at=None,
                detail=None,
            )
            return current.attempts + 1
        return None

    async def verifier_finish(
        self,
        address: str,
        owner: str,
        *,
        status: LedgerStatus,
        at: dt.datetime,
        verdict: str | None = None,
        result: str | None = None,
        credits_after: int | None = None,
        cost: Decimal = Decimal(0),
        detail: str | None = None,
    ) -> bool:
        await self._begin("finish")
        current = self.entries.get(address)
        if current is None or current.owner != owner or current.status is not LedgerStatus.PENDING:
            return False
        self.entries[address] = dataclasses.replace(
            current,
            status=status,
            finished_at=at,
            verdict=verdict,
            result=result,
            credits_after=credits_after,
            cost=current.cost + cost,
            detail=detail,
        )
        return True

    async def verifier_release(self, address: str, owner: str) -> bool:
        await self._begin("release")
        current = self.entries.get(address)
        if current is None or current.owner != owner or current.status is not LedgerStatus.PENDING:
            return False
        del self.entries[address]
        return True

    async def verifier_reserve_spend(
        self, tool_id: str, month: dt.datetime, amount: Decimal, cap: Decimal | None
    ) -> Decimal | None:
        await self._begin("reserve_spend")
        row = self.spend.get((tool_id, month), SpendRow(0, Decimal(0)))
        total = row.spent + amount
        if cap is not None and total > cap:
            return None
        self.spend[(tool_id, month)] = SpendRow(row.calls + 1, total)
        return total

    async def verifier_refund_spend(
        self, tool_id: str, month: dt.datetime, amount: Decimal
    ) -> None:
        await self._begin("refund_spend")
        row = self.spend.get((tool_id, month))
        if row is not None:
            self.spend[(tool_id, month)] = SpendRow(
                max(0, row.calls - 1), max(Decimal(0), row.spent - amount)
            )

    async def verifier_spend(self, tool_id: str, month: dt.datetime) -> SpendRow:
        await self._begin("spend")
        return self.spend.get((tool_id, month), SpendRow(0, Decimal(0)))
