"""End-to-end back-pressure: one credit per record, from claim to committed outcome.

The loader may only claim as many records as it holds credits, and a credit comes back only
when the writer has committed that record's outcome (or released its lease). So the loader
never holds more work than the whole pipeline — resolver, pools, writer — can take.
"""

from __future__ import annotations

import uuid

import trio


class WorkCredits:
    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("credit limit must be at least 1")
        self.limit = limit
        self._free = trio.Semaphore(limit)
        self._records: dict[uuid.UUID, float] = {}
        # The lease `attempts` each record was claimed with: the writer's fence token.
        self._claims: dict[uuid.UUID, int] = {}

    @property
    def in_flight(self) -> int:
        return len(self._records)

    @property
    def available(self) -> int:
        return self._free.value

    def __contains__(self, outreach_id: object) -> bool:
        return outreach_id in self._records

    def records(self) -> list[uuid.UUID]:
        return list(self._records)

    async def acquire(self, wanted: int) -> int:
        """Wait for at least one credit, then take up to `wanted` without waiting more."""
        await self._free.acquire()
        got = 1
        while got < wanted:
            try:
                self._free.acquire_nowait()
            except trio.WouldBlock:
                break
            got += 1
        return got

    def give_back(self, count: int) -> None:
        for _ in range(count):
            self._free.release()

    def enter(self, outreach_id: uuid.UUID, attempt: int | None = None) -> None:
        """A claimed record now holds one of the acquired credits."""
        self._records[outreach_id] = trio.current_time()
        self.reclaimed(outreach_id, attempt)

    def reclaimed(self, outreach_id: uuid.UUID, attempt: int | None) -> None:
        """The record's lease now belongs to the claim numbered `attempt` (None: unknown,
        the write is not fenced)."""
        if attempt is None:
            self._claims.pop(outreach_id, None)
        else:
            self._claims[outreach_id] = attempt

    def claims(self, ids: list[uuid.UUID]) -> dict[uuid.UUID, int]:
        return {i: self._claims[i] for i in ids if i in self._claims}

    def leave(self, outreach_id: uuid.UUID) -> None:
        self._claims.pop(outreach_id, None)
        if self._records.pop(outreach_id, None) is not None:
            self._free.release()

    def oldest_age(self) -> float:
        if not self._records:
            return 0.0
        return trio.current_time() - min(self._records.values())
