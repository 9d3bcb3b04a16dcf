"""The writer actor: batches outcomes into PostgreSQL, one transaction per batch.

It stops receiving while a batch is being written, so a slow or absent database slows the
whole pipeline instead of piling results up in memory. A failed write is retried with capped
exponential back-off, holding the batch: nothing is dropped, and because the write is
idempotent (a terminal row is never overwritten) a retry after an ambiguous failure cannot
write anything twice. Each committed outcome gets its canonical log line and returns its
credit to the loader.

Two guarantees against a daemon killed at the wrong moment (issue 14):
* the write is fenced: each record is sent with the number of the claim it answers, and the
  store writes it only while that claim is still our live lease, in the same statement. A
  fenced-off record (our lease expired, or another claim took it over) is counted and logged
  (`write_fenced`), nothing of it is written, and its credit is returned;
* the canonical line is owed until logged: the write statement notes every PASS/FAIL it wrote in
  ct_actors.outcome_log, and the writer drops the batch's notes after logging it. On start it
  logs what a previous incarnation of the same name (or any daemon, long ago) committed and
  never logged, marked `recovered`, so the monitoring recipes count every outcome.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections import Counter, deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
import trio

from ct_actors.actors.credits import WorkCredits
from ct_actors.config import DaemonConfig, DatabaseConfig, WriterConfig
from ct_actors.outcome import Deferred, Failed, Outcome, Passed

log = structlog.get_logger("ct_actors.writer")


class Unlogged(Protocol):
    @property
    def outreach_id(self) -> uuid.UUID: ...
    @property
    def owner(self) -> str: ...
    @property
    def committed_at(self) -> dt.datetime: ...
    @property
    def outcome(self) -> Outcome | None: ...


class OutcomeStore(Protocol):
    async def write_outcomes(
        self, owner: str, outcomes: Sequence[Outcome], *, claims: Mapping[uuid.UUID, int]
    ) -> Any: ...
    async def mark_logged(self, owner: str, ids: Sequence[uuid.UUID]) -> None: ...
    async def unlogged(self, owner: str, stale_after: float, limit: int) -> Sequence[Unlogged]: ...
    async def forget_unlogged(self, ids: Sequence[uuid.UUID]) -> None: ...


# Defaults are the config's (ct_actors/config/sections.py): defaults live in one place.
_WRITER = WriterConfig()
_DATABASE = DatabaseConfig()
_DAEMON = DaemonConfig()


@dataclass(frozen=True, slots=True)
class WriterSettings:
    batch_size: int = _WRITER.batch_size
    flush_interval: float = _WRITER.flush_interval
    retry_initial: float = 0.5
    retry_max: float = 30.0
    final_flush_timeout: float = _DAEMON.stop_timeout
    # Outcomes of another daemon name still unlogged after this long are logged by us on start
    # (their writer is gone: a live one forgets its notes milliseconds after committing).
    recover_after: float = float(_DATABASE.lease_seconds)
    recover_batch: int = 1000


@dataclass(frozen=True, slots=True)
class WriterStatistics:
    batches: int
    rows: int
    already_terminal: int
    retries: int
    fenced: int  # refused by the write fence
    recovered_lines: int  # outcome lines logged on start for a previous process
    buffered: int
    failing_since: float | None  # trio time the database started failing; None while it works
    by_code: Mapping[str, int]  # committed outcomes by code


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
        self._stats = {
            "batches": 0,
            "rows": 0,
            "already_terminal": 0,
            "retries": 0,
            "fenced": 0,
            "recovered_lines": 0,
        }
        # Logged, but the store could not be told yet (retried with the next batch).
        self._unacked: list[uuid.UUID] = []
        self.buffered = 0
        # Per-record latency (claim to commit) of the most recent records, for benchmarks.
        self.durations: deque[float] = deque(maxlen=100_000)
        self.last_commit = 0.0
        self.failing_since: float | None = None

    def reconfigure(self, settings: WriterSettings) -> None:
        """Reload: batch size and flush interval from the next batch; rows held carry over."""
        self.settings = settings

    def statistics(self) -> WriterStatistics:
        return WriterStatistics(
            **self._stats,
            buffered=self.buffered,
            failing_since=self.failing_since,
            by_code=dict(self.outcomes),
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.last_commit = trio.current_time()
        batch: list[Outcome] = []
        task_status.started()
        # Before the first receive: the pipeline starts meanwhile, and waits at most this long.
        await self._recover()
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
                report = await self._store.write_outcomes(
                    self._owner,
                    batch,
                    claims=self._credits.claims([o.outreach_id for o in batch]),
                )
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
        fenced = {*getattr(report, "fenced", ())}
        for outcome in batch:
            self.durations.append(outcome.duration)
            if outcome.outreach_id in fenced:
                self._fenced(outcome)
            else:
                self._committed(outcome, outcome.outreach_id in already)
            self._credits.leave(outcome.outreach_id)
        written = [*getattr(report, "written", ())]
        await self._acknowledge(written)

    async def _acknowledge(self, logged: list[uuid.UUID]) -> None:
        """Their lines are out: drop their notes (sql/006). Not retried in place: a failure
        keeps them for the next batch, and at worst a restart logs them a second time."""
        ids = self._unacked + logged
        if not ids:
            return
        try:
            await self._store.mark_logged(self._owner, ids)
        except self._transient as exc:
            self._unacked = ids
            log.warning("outcome_log_ack_failed", error=str(exc), records=len(ids))
            return
        self._unacked = []

    async def _recover(self) -> None:
        """Log the outcomes committed without their line by a previous incarnation of this
        daemon name (SIGKILL between commit and log), or long ago by any daemon."""
        limit = self.settings.recover_batch
        while True:
            try:
                rows = await self._store.unlogged(
                    self._owner, self.settings.recover_after, limit
                )
                for row in rows:
                    if row.outcome is not None:
                        self._stats["recovered_lines"] += 1
                        # Not counted as this run's outcomes: another process committed it.
                        self._log_outcome(
                            row.outcome,
                            recovered=True,
                            committed_at=row.committed_at.isoformat(),
                            committed_by=row.owner,
                        )
                await self._store.forget_unlogged([row.outreach_id for row in rows])
            except self._transient as exc:
                log.warning("outcome_log_recovery_failed", error=str(exc))
                return
            if rows:
                log.info(
                    "outcome_log_recovered",
                    records=len(rows),
                    gone=sum(1 for row in rows if row.outcome is None),
                    owners=sorted({row.owner for row in rows}),
                )
            if len(rows) < limit:
                return

    def _fenced(self, outcome: Outcome) -> None:
        self._stats["fenced"] += 1
        log.warning(
            "write_fenced",
            outreach_id=str(outcome.outreach_id),
            domain=outcome.domain,
            note="our claim on this record expired or was taken over: nothing written",
        )

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
        if isinstance(result, Passed):
            self.outcomes["PASS"] += 1
        elif isinstance(result, Failed):
            self.outcomes[str(result.code)] += 1
        elif isinstance(result, Deferred):
            self.outcomes["DEFERRED"] += 1
        self._log_outcome(outcome)

    def _log_outcome(self, outcome: Outcome, **extra: Any) -> None:
        """The canonical `outcome` line (docs/monitoring.md)."""
        result = outcome.result
        fields: dict[str, Any] = {
            "outreach_id": str(outcome.outreach_id),
            "domain": outcome.domain,
            "mx_host": outcome.mx_host,
            "duration": round(outcome.duration, 3),
            **extra,
        }
        visits = result.evidence.get("visits")
        if isinstance(visits, list):
            # What each MX host visit came to ("timeout", "concluded", ...): enough to count
            # SMTP timeouts or blocks from the logs alone.
            fields["smtp"] = [f"{v.get('host')}:{v.get('outcome')}" for v in visits
                              if isinstance(v, dict)]
        if isinstance(result, Passed):
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
