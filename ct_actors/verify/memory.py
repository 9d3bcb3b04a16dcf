"""`VerifierLedger` in memory: the semantics of the SQL in `ct_actors.db.queries` (VERIFIER_*),
for MockClock tests and the demo. One instance shared by several `EmailVerifier`s plays "several
daemons on one database"; each call checkpoints once, where the real store has a round trip,
and then reads and writes with no await in between (atomic under trio, as each statement is in
PostgreSQL).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal

import trio

from ct_actors.db.errors import DatabaseUnavailable
from ct_actors.verify.ledger import LedgerStatus, SpendRow, VerifierEntry


class MemoryVerifierLedger:
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
