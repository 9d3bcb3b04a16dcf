"""The verifier ledger in PostgreSQL: the production `VerifierLedger` (ct_actors.verify.ledger),
on the database driver (`ct_actors.db.driver`); its SQL is `ct_actors.db.queries.ledger`.

Timestamps are passed in (the gate's UtcClock), not taken from the database clock, so the cache
TTL and the calendar month follow the same clock as the tool budgets. One round trip each.
Errors are the driver's: DatabaseUnavailable, SchemaError, QueryError (ct_actors.db.errors).
"""

from __future__ import annotations

import datetime as dt
from decimal import Decimal

from ct_actors.db import queries as q
from ct_actors.db.driver import Database
from ct_actors.db.encode import clean_text
from ct_actors.db.usage import check_usage_window
from ct_actors.verify.ledger import LedgerStatus, SpendRow, VerifierEntry

__all__ = ["PgVerifierLedger"]

# Characters of verifier_ledger.detail kept.
_LEDGER_DETAIL_LIMIT = 500


def check_aware(at: dt.datetime) -> None:
    """A naive timestamp would be read in the session's TimeZone."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"timestamp must be timezone-aware, got {at!r}")


class PgVerifierLedger:
    """`ct_actors.verifier_ledger` and `ct_actors.verifier_spend` (sql/004_verifier.sql)."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def verifier_entry(self, address: str) -> VerifierEntry | None:
        rows = await self._db.fetch("verifier entry", q.VERIFIER_ENTRY, address)
        if not rows:
            return None
        r = rows[0]
        return VerifierEntry(
            address=r["address"],
            owner=r["owner"],
            status=LedgerStatus(r["status"]),
            attempts=int(r["attempts"]),
            attempted_at=r["attempted_at"],
            finished_at=r["finished_at"],
            verdict=r["verdict"],
            result=r["result"],
            credits_after=None if r["credits_after"] is None else int(r["credits_after"]),
            cost=r["cost"],
            detail=r["detail"],
        )

    async def verifier_claim(
        self, address: str, owner: str, at: dt.datetime, max_attempts: int
    ) -> int | None:
        """Insert the address's pending row (or re-open an `unavailable` one with attempts
        left); the attempt number, or None if another caller has it."""
        check_aware(at)
        value = await self._db.fetchval(
            "verifier claim", q.VERIFIER_CLAIM, address, owner, at, max_attempts
        )
        return None if value is None else int(value)

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
        cost: Decimal | int = 0,
        detail: str | None = None,
    ) -> bool:
        check_aware(at)
        if status is LedgerStatus.PENDING:
            raise ValueError("verifier_finish needs a final status (done or unavailable)")
        value = await self._db.fetchval(
            "verifier finish",
            q.VERIFIER_FINISH,
            address,
            owner,
            status.value,
            at,
            verdict,
            result,
            credits_after,
            Decimal(cost),
            # Vendor text: bounded, control characters escaped, known secrets (the API key a
            # vendor may echo back) masked, like every stored free text.
            clean_text(detail, _LEDGER_DETAIL_LIMIT, self._db.mask),
        )
        return value is not None

    async def verifier_release(self, address: str, owner: str) -> bool:
        value = await self._db.fetchval("verifier release", q.VERIFIER_RELEASE, address, owner)
        return value is not None

    async def verifier_reserve_spend(
        self, tool_id: str, month: dt.datetime, amount: Decimal, cap: Decimal | None
    ) -> Decimal | None:
        """One call and `amount` onto the month unless that passes `cap`; the new total, or
        None if refused. Atomic across connections and daemons."""
        check_usage_window("per_month", month)
        if amount < 0:
            raise ValueError(f"amount must be >= 0, got {amount!r}")
        value = await self._db.fetchval(
            "verifier reserve spend",
            q.VERIFIER_RESERVE_SPEND,
            tool_id,
            month,
            amount,
            cap,
        )
        return None if value is None else Decimal(value)

    async def verifier_refund_spend(
        self, tool_id: str, month: dt.datetime, amount: Decimal
    ) -> None:
        check_usage_window("per_month", month)
        await self._db.execute(
            "verifier refund spend",
            q.VERIFIER_REFUND_SPEND,
            tool_id,
            month,
            amount,
        )

    async def verifier_spend(self, tool_id: str, month: dt.datetime) -> SpendRow:
        check_usage_window("per_month", month)
        rows = await self._db.fetch("verifier spend", q.VERIFIER_SPEND, tool_id, month)
        if not rows:
            return SpendRow(0, Decimal(0))
        return SpendRow(int(rows[0]["calls"]), Decimal(rows[0]["spent"]))
