"""The verifier ledger: what the gate persists, and the storage protocol it needs.

Two tables (sql/004_verifier.sql), shared by every daemon on the database:

* `ct_actors.verifier_ledger`: one row per address ever sent (or about to be sent) to the vendor.
  The row is inserted *before* the call with `INSERT ... ON CONFLICT DO NOTHING`, so of two
  daemons wanting the same address exactly one gets to call; the verdict is filled in after.
  Status `pending` (a call is in flight, or its owner crashed during it), `done` (a verdict),
  `unavailable` (the attempt was made, the vendor gave no verdict).
* `ct_actors.verifier_spend`: one row per (tool, UTC month) with the calls and the money spent.
  A call is only made after one guarded statement has added `estimated_cost_per_call` to the
  month without passing `monthly_budget_cap` (see `PgVerifierLedger.verifier_reserve_spend`),
  so the cap holds across daemons and restarts.

This module is standard library only.
"""

from __future__ import annotations

import datetime as dt
import enum
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol


class LedgerStatus(enum.StrEnum):
    PENDING = "pending"
    DONE = "done"
    UNAVAILABLE = "unavailable"


@dataclass(frozen=True, slots=True)
class VerifierEntry:
    """One row of `ct_actors.verifier_ledger`."""

    address: str
    owner: str
    status: LedgerStatus
    attempts: int
    attempted_at: dt.datetime
    finished_at: dt.datetime | None = None
    verdict: str | None = None  # a `VendorVerdict` value when status is done
    result: str | None = None  # the vendor's raw `result` (ok, catch_all, ...)
    credits_after: int | None = None
    cost: Decimal = Decimal(0)
    detail: str | None = None  # vendor subresult, or why the attempt gave no verdict


@dataclass(frozen=True, slots=True)
class SpendRow:
    """One row of `ct_actors.verifier_spend`: a UTC month of one tool."""

    calls: int
    spent: Decimal


class VerifierLedger(Protocol):
    """What `EmailVerifier` needs from storage (`ct_actors.verify.pg_ledger.PgVerifierLedger`
    implements it in PostgreSQL, `ct_actors.testing.MemoryVerifierLedger` in memory)."""

    async def verifier_entry(self, address: str) -> VerifierEntry | None:
        """The address's row, or None."""
        ...

    async def verifier_claim(
        self, address: str, owner: str, at: dt.datetime, max_attempts: int
    ) -> int | None:
        """Take the right to call the vendor for `address`: insert a pending row (or, when
        `max_attempts` > 1, re-open an `unavailable` one with attempts left). Returns the
        attempt number, or None if another caller holds the row or the attempts are spent."""
        ...

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
        """Close `owner`'s pending row as done/unavailable (`cost` is added to the row's).
        False if the row is not ours or not pending any more."""
        ...

    async def verifier_release(self, address: str, owner: str) -> bool:
        """Delete `owner`'s pending row: no attempt was made, the address may be tried later."""
        ...

    async def verifier_reserve_spend(
        self, tool_id: str, month: dt.datetime, amount: Decimal, cap: Decimal | None
    ) -> Decimal | None:
        """Add one call and `amount` to the month unless that passes `cap` (None: no cap).
        Returns the month's new total, or None if refused. Atomic across daemons."""
        ...

    async def verifier_refund_spend(
        self, tool_id: str, month: dt.datetime, amount: Decimal
    ) -> None:
        """Take back one call and `amount` (a request the vendor provably did not bill)."""
        ...

    async def verifier_spend(self, tool_id: str, month: dt.datetime) -> SpendRow:
        """The month's calls and money (zeros when nothing was spent)."""
        ...
