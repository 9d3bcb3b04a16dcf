"""The writer actor: batches outcomes into PostgreSQL, one transaction per batch.

It stops receiving while a batch is being written, so a slow or absent database slows the
whole pipeline instead of piling results up in memory. A failed write is retried with capped
exponential back-off, holding the batch: nothing is dropped, and because the write is
idempotent (a terminal row is never overwritten) a retry after an ambiguous failure cannot
write anything twice. Each committed outcome gets its canonical log line and returns its
credit to the loader.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
import trio

from ct_actors.actors.credits import WorkCredits
from ct_actors.outcome import Deferred, Failed, Outcome, Passed

log = structlog.get_logger("ct_actors.writer")


class OutcomeStore(Protocol):
    async def write_outcomes(self, owner: str, outcomes: Sequence[Outcome]) -> Any: ...


@dataclass(frozen=True, slots=True)
class WriterSettings:
    batch_size: int = 500
    flush_interval: float = 0.5
    retry_initial: float = 0.5
    retry_max: float = 30.0
    final_flush_timeout: float = 10.0


class WriterActor:
    def __init__(
        self,
        receive: trio.MemoryReceiveChannel[Outcome],
        store: OutcomeStore,
        *,
        owner: str,
        credits: WorkCredits,
        settings: WriterSettings,
        transient_errors: tuple[type[BaseException], ...],
    ) -> None:
        self._receive = receive
        self._store = store
        self._owner = owner
        self._credits = credits
        self.settings = settings
        self._transient = transient_errors
        self.outcomes: Counter[str] = Counter()
        self._stats = {"batches": 0, "rows": 0, "already_terminal": 0, "retries": 0}
        self.buffered = 0
        # Per-record latency (claim to commit) of the most recent records, for benchmarks.
        self.durations: deque[float] = deque(maxlen=100_000)
        self.last_commit = 0.0
        self.failing_since: float | None = None

    def statistics(self) -> dict[str, object]:
        return {
            **self._stats,
            "buffered": self.buffered,
            "failing_since": self.failing_since,
            "by_code": dict(self.outcomes),
        }

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.last_commit = trio.current_time()
        batch: list[Outcome] = []
        task_status.started()
        try:
            async with self._receive:
                deadline = float("inf")
                while True:
                    outcome: Outcome | None = None
                    with trio.move_on_at(deadline):
                        try:
                            outcome = await self._receive.receive()
                        except trio.EndOfChannel:
                            break
                    if outcome is not None:
                        if not batch:
                            deadline = trio.current_time() + self.settings.flush_interval
                        batch.append(outcome)
                        self.buffered = len(batch)
                        if len(batch) < self.settings.batch_size:
                            continue
                    await self._flush(batch)
                    batch = []
                    self.buffered = 0
                    deadline = float("inf")
        finally:
            if batch:
                # Bounded final flush: what cannot be written in time stays pending (its lease
                # is released by the supervisor), never half-written.
                with trio.move_on_after(self.settings.final_flush_timeout, shield=True):
                    await self._flush(batch)

    async def _flush(self, batch: list[Outcome]) -> None:
        delay = self.settings.retry_initial
        while True:
            try:
                report = await self._store.write_outcomes(self._owner, batch)
            except self._transient as exc:
                self._stats["retries"] += 1
                if self.failing_since is None:
                    self.failing_since = trio.current_time()
                log.warning("writer_retry", error=str(exc), batch=len(batch), retry_in=delay)
                await trio.sleep(delay)
                delay = min(delay * 2, self.settings.retry_max)
                continue
            break
        self.failing_since = None
        self.last_commit = trio.current_time()
        self._stats["batches"] += 1
        already = {*getattr(report, "already_terminal", ())}
        for outcome in batch:
            self.durations.append(outcome.duration)
            self._committed(outcome, outcome.outreach_id in already)
            self._credits.leave(outcome.outreach_id)

    def _committed(self, outcome: Outcome, already_terminal: bool) -> None:
        if already_terminal:
            self._stats["already_terminal"] += 1
            log.info(
                "already_processed",
                outreach_id=str(outcome.outreach_id),
                domain=outcome.domain,
                code="CT-I-ALREADY-PROCESSED",
            )
            return
        self._stats["rows"] += 1
        result = outcome.result
        fields: dict[str, Any] = {
            "outreach_id": str(outcome.outreach_id),
            "domain": outcome.domain,
            "mx_host": outcome.mx_host,
            "duration": round(outcome.duration, 3),
        }
        visits = result.evidence.get("visits")
        if isinstance(visits, list):
            # What each MX host visit came to ("timeout", "concluded", ...): enough to count
            # SMTP timeouts or blocks from the logs alone.
            fields["smtp"] = [f"{v.get('host')}:{v.get('outcome')}" for v in visits
                              if isinstance(v, dict)]
        if isinstance(result, Passed):
            self.outcomes["PASS"] += 1
            log.info(
                "outcome",
                outcome="PASS",
                code=None,
                method_type=result.method_type,
                confidence=float(result.confidence),
                is_catchall=result.is_catchall,
                **fields,
            )
        elif isinstance(result, Failed):
            self.outcomes[str(result.code)] += 1
            log.info(
                "outcome",
                outcome="FAIL",
                code=str(result.code),
                method_type=None,
                confidence=None,
                reason=result.blocking_reason[:300],
                **fields,
            )
        elif isinstance(result, Deferred):
            self.outcomes["DEFERRED"] += 1
            log.info(
                "outcome",
                outcome="DEFERRED",
                code=None,
                method_type=None,
                confidence=None,
                reason=result.reason[:300],
                retry_after=result.retry_after,
                **fields,
            )
