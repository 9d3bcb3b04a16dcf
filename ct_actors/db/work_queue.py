"""The work queue: claims, leases and outcomes, on the database driver (`ct_actors.db.driver`).

`claim` and `write_outcomes` move a whole batch in one round trip each (the hot path).

Leases (ct_actors.lease) make the work queue safe to share between several daemons:
* `claim` locks pending spine rows with SKIP LOCKED and upserts a lease per record;
* a live lease blocks other owners; an expired one is claimable by anyone; the owner must be
  unique per running process (leases this owner took before the database was opened, i.e. by a
  previous incarnation that crashed, are claimable again at once);
* `write_outcomes` deletes the leases of finished records, or releases deferred ones with a
  `not_before`; `release` hands unfinished work back immediately (shutdown).

Errors are the driver's: DatabaseUnavailable, SchemaError, QueryError (ct_actors.db.errors).
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any
from uuid import UUID

import trio

from ct_actors.db import queries as q
from ct_actors.db.driver import Database
from ct_actors.db.encode import encode_outcomes
from ct_actors.db.errors import QueryError
from ct_actors.db.queue_types import (
    SPINE_DUPLICATES_LISTED,
    ClaimedRecord,
    SpineAnomalies,
    SpineRecord,
    UnloggedOutcome,
    WriteReport,
    claimed_record,
    unlogged_outcome,
)
from ct_actors.drain_report import HeldBack
from ct_actors.outcome import Outcome

__all__ = ["QueueStatistics", "WorkQueue"]


@dataclass(frozen=True, slots=True)
class QueueStatistics:
    claims: int
    rows_claimed: int
    writes: int
    rows_written: int
    rows_already_terminal: int
    rows_deferred: int
    rows_not_in_spine: int
    rows_fenced: int
    # Wall-clock seconds spent in claim / write_outcomes calls (crossing + database).
    claim_seconds: float
    write_seconds: float


@dataclass(slots=True)
class _Counters:
    """The running counts (`QueueStatistics` is their snapshot)."""

    claims: int = 0
    rows_claimed: int = 0
    writes: int = 0
    rows_written: int = 0
    rows_already_terminal: int = 0
    rows_deferred: int = 0
    rows_not_in_spine: int = 0
    rows_fenced: int = 0
    claim_seconds: float = 0.0
    write_seconds: float = 0.0


class WorkQueue:
    """The records to process, as `LoaderActor` (ClaimStore), `WriterActor` (OutcomeStore), the
    supervisor, `once` and the drain report see them. One per pipeline: it keeps the claim's
    keyset cursor per owner. The database's round trips are counted by the driver."""

    def __init__(self, database: Database) -> None:
        self._db = database
        self._stats = _Counters()
        # Keyset-pagination cursor per owner (see queries.CLAIM_AFTER).
        self._cursor: dict[str, UUID | None] = {}

    @property
    def database(self) -> Database:
        return self._db

    def statistics(self) -> QueueStatistics:
        return QueueStatistics(**asdict(self._stats))

    # -- hot path ---------------------------------------------------------------------------
    async def claim(self, owner: str, limit: int, lease_seconds: float) -> list[ClaimedRecord]:
        """Lease up to `limit` pending records for `owner`, ordered by outreach_id.

        Pending = in the spine, not PASS/FAIL, no open error row, no live lease of another
        owner, not deferred into the future. Usually one round trip; two when the queue's
        cursor reaches the end of the spine and wraps around.
        """
        if limit <= 0:
            return []
        if not lease_seconds > 0:
            # A lease that is born expired is claimable by everyone: double processing.
            raise ValueError(f"lease_seconds must be positive, got {lease_seconds!r}")
        started = time.perf_counter()
        after = self._cursor.get(owner)

        async def run() -> tuple[list[Any], UUID | None]:
            rows: list[Any] = []
            cursor: UUID | None = None
            async with self._db.connection() as conn:
                if after is not None:
                    self._db.count_round_trips(1)
                    rows = list(
                        await conn.fetch(
                            q.CLAIM_AFTER, owner, limit, lease_seconds, self._db.incarnation, after
                        )
                    )
                    if len(rows) == limit:
                        return rows, rows[-1]["outreach_id"]
                self._db.count_round_trips(1)
                more = await conn.fetch(
                    q.CLAIM_FROM_START,
                    owner,
                    limit - len(rows),
                    lease_seconds,
                    self._db.incarnation,
                )
                if len(more) == limit - len(rows):
                    cursor = more[-1]["outreach_id"]
                # else: the whole spine was scanned; start from the beginning next time.
                rows.extend(more)
                return rows, cursor

        try:
            rows, cursor = await self._db.call("claim", run)
        finally:
            self._stats.claim_seconds += time.perf_counter() - started
        self._cursor[owner] = cursor
        self._stats.claims += 1
        self._stats.rows_claimed += len(rows)
        # Sorted as a whole: after a wrap-around the rows come in two ascending runs.
        return sorted(
            (claimed_record(r) for r in rows),
            key=lambda r: r.outreach_id,
        )

    async def claim_among(
        self, owner: str, ids: Iterable[UUID], limit: int, lease_seconds: float
    ) -> list[ClaimedRecord]:
        """`claim` restricted to the records in `ids` (`ct-actors canary`): the same pending and
        lease rules, ordered by outreach_id, one round trip, no cursor."""
        id_list = sorted(set(ids))
        if limit <= 0 or not id_list:
            return []
        if not lease_seconds > 0:
            raise ValueError(f"lease_seconds must be positive, got {lease_seconds!r}")
        started = time.perf_counter()
        try:
            rows = await self._db.fetch(
                "claim",
                q.CLAIM_AMONG,
                owner,
                limit,
                lease_seconds,
                self._db.incarnation,
                id_list,
            )
        finally:
            self._stats.claim_seconds += time.perf_counter() - started
        self._stats.claims += 1
        self._stats.rows_claimed += len(rows)
        return [claimed_record(r) for r in rows]

    async def write_outcomes(
        self,
        owner: str,
        outcomes: Sequence[Outcome],
        *,
        claims: Mapping[UUID, int] | None = None,
    ) -> WriteReport:
        """Persist a batch in one statement (one transaction, one round trip).

        Passed -> company_target 'ready'. Failed -> error row + company_target 'failed'
        (CT-I-NOT-FOUND: error row only; CT-I-ALREADY-PROCESSED: nothing). Deferred -> lease
        released with not_before = now() + retry_after. Records already terminal are never
        modified and come back in `already_terminal`. Raises ValueError (nothing written) if a
        record appears twice in the batch or a confidence is outside [0, 1].

        `claims` maps a record to the `attempts` of the claim it answers (`ClaimedRecord`):
        such a record is written only while that claim is still `owner`'s live lease, checked
        in the same statement (see queries.WRITE_OUTCOMES); otherwise it comes back in `fenced`
        and nothing of it is written. Every PASS/FAIL written is also entered in
        ct_actors.outcome_log until `mark_logged`.
        """
        if not outcomes:
            return WriteReport([], [], [])
        batch = encode_outcomes(outcomes, claims, self._db.mask)
        started = time.perf_counter()
        try:
            rows = await self._db.fetch("write outcomes", q.WRITE_OUTCOMES, owner, *batch.args())
        finally:
            self._stats.write_seconds += time.perf_counter() - started
        status = {r["outreach_id"]: r["status"] for r in rows}
        report = WriteReport([], [], [], [], [])
        lists = {
            "written": report.written,
            "already_terminal": report.already_terminal,
            "deferred": report.deferred,
            "not_in_spine": report.not_in_spine,
            "fenced": report.fenced,
        }
        for outcome in outcomes:
            st = status.get(outcome.outreach_id)
            if st not in lists:  # pragma: no cover - the statement returns one row per input
                raise QueryError(f"write outcomes: no status for {outcome.outreach_id} ({st!r})")
            lists[st].append(outcome.outreach_id)
        self._stats.writes += 1
        self._stats.rows_written += len(report.written)
        self._stats.rows_already_terminal += len(report.already_terminal)
        self._stats.rows_deferred += len(report.deferred)
        self._stats.rows_not_in_spine += len(report.not_in_spine)
        self._stats.rows_fenced += len(report.fenced)
        return report

    # -- canonical log lines owed (sql/006_outcome_log.sql) ---------------------------------
    async def mark_logged(self, owner: str, ids: Iterable[UUID]) -> None:
        """The `outcome` lines of these records have been written: forget them. One round
        trip per writer batch."""
        id_list = list(ids)
        if not id_list:
            await trio.lowlevel.checkpoint()
            return
        await self._db.execute("mark logged", q.MARK_LOGGED, owner, id_list)

    async def unlogged(
        self, owner: str, stale_after: float, limit: int = 1000
    ) -> list[UnloggedOutcome]:
        """Committed outcomes whose line may be missing: those of a previous incarnation of
        `owner` (committed before the database was opened) and those of any owner committed
        more than `stale_after` seconds ago. Oldest first, at most `limit`."""
        rows = await self._db.fetch(
            "unlogged outcomes",
            q.UNLOGGED,
            owner,
            self._db.incarnation,
            float(stale_after),
            limit,
        )
        return [unlogged_outcome(r) for r in rows]

    async def forget_unlogged(self, ids: Iterable[UUID]) -> None:
        """Drop rows of `unlogged` once their lines are written (whoever committed them)."""
        id_list = list(ids)
        if not id_list:
            await trio.lowlevel.checkpoint()
            return
        await self._db.execute("forget unlogged", q.FORGET_UNLOGGED, id_list)

    async def held_back(self, owner: str) -> HeldBack:
        """What is still pending, by why (the end of `run --drain`; see drain_report)."""
        rows = await self._db.fetch("held back", q.HELD_BACK, owner)
        return HeldBack.from_rows(
            [(r["class"], r["reason"], int(r["n"]), r["earliest"]) for r in rows]
        )

    async def renew_leases(
        self, owner: str, ids: Iterable[UUID], lease_seconds: float
    ) -> list[UUID]:
        """Extend `owner`'s live leases; returns the ids still held (a missing id was lost:
        taken over after expiry, finished, deferred or released by our own write meanwhile)."""
        id_list = list(ids)
        if not id_list:
            return []
        rows = await self._db.fetch("renew leases", q.RENEW_LEASES, owner, id_list, lease_seconds)
        return [r["outreach_id"] for r in rows]

    async def release(self, owner: str, ids: Iterable[UUID] | None = None) -> list[UUID]:
        """Hand unfinished work back: the records become claimable at once. `ids=None`
        releases every live lease of `owner` (shutdown)."""
        if ids is None:
            rows = await self._db.fetch("release", q.RELEASE_ALL, owner)
        else:
            id_list = list(ids)
            if not id_list:
                return []
            rows = await self._db.fetch("release", q.RELEASE, owner, id_list)
        return [r["outreach_id"] for r in rows]

    # -- single record (`once`) -----------------------------------------------------------
    async def fetch_spine(self, outreach_id: UUID) -> SpineRecord | None:
        rows = await self._db.fetch("fetch spine", q.FETCH_SPINE, outreach_id)
        if not rows:
            return None
        return SpineRecord(outreach_id=rows[0]["outreach_id"], domain=rows[0]["domain"])

    async def terminal_status(self, outreach_id: UUID) -> str | None:
        """'ready' (PASS), 'failed' (FAIL: company_target 'failed' or an open error row), or
        None when the record is still pending."""
        value = await self._db.fetchval("terminal status", q.TERMINAL_STATUS, outreach_id)
        return None if value is None else str(value)

    # -- monitoring ---------------------------------------------------------------------------
    async def spine_anomalies(self) -> SpineAnomalies:
        """NULL and duplicated outreach_ids in the spine (see SpineAnomalies)."""

        async def run() -> SpineAnomalies:
            async with self._db.connection() as conn:
                self._db.count_round_trips(2)
                nulls = await conn.fetchval(q.SPINE_NULL_IDS)
                dups = await conn.fetch(q.SPINE_DUPLICATED_IDS, SPINE_DUPLICATES_LISTED)
            return SpineAnomalies(
                null_ids=int(nulls), duplicated={r["outreach_id"]: int(r["n"]) for r in dups}
            )

        return await self._db.call("spine check", run)

    async def pending_count(self) -> int:
        """Spine records without a terminal outcome (including leased and deferred ones)."""
        return int(await self._db.fetchval("pending count", q.PENDING_COUNT))

    async def pending_elsewhere(self, owner: str) -> int:
        """Pending, not deferred, and not held by `owner` (see queries.PENDING_ELSEWHERE)."""
        return int(await self._db.fetchval("pending elsewhere", q.PENDING_ELSEWHERE, owner))

    async def pending_elsewhere_among(self, owner: str, ids: Iterable[UUID]) -> int:
        """`pending_elsewhere` restricted to the records in `ids`."""
        id_list = sorted(set(ids))
        if not id_list:
            return 0
        return int(
            await self._db.fetchval(
                "pending elsewhere",
                q.PENDING_ELSEWHERE_AMONG,
                owner,
                id_list,
            )
        )

    async def counts_by_outcome(self) -> dict[str, int]:
        """{'PASS': n, '<failure code>': n, ...} over terminal outcomes (open error rows)."""
        rows = await self._db.fetch("counts by outcome", q.COUNTS_BY_OUTCOME)
        return {str(r["outcome"]): int(r["n"]) for r in rows}
