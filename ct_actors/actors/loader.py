"""The loader actor: claims pending spine records (leases) and feeds them to the dispatcher.

It claims only as many records as it holds credits (see `credits.py`), renews the leases of
records still in flight, and on stop closes its channel — the pipeline's shutdown signal —
after which the stages drain in order. Claiming fails soft: if the database is down the loader
waits and tries again; nothing is lost because nothing was claimed.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import structlog
import trio

from ct_actors.actors.credits import WorkCredits
from ct_actors.actors.dispatcher import Job, NamesFailed, NamesSource
from ct_actors.config import DatabaseConfig, ProbeConfig

if TYPE_CHECKING:
    from ct_actors.db.queue_types import SpineAnomalies

log = structlog.get_logger("ct_actors.loader")

# How often a drain held by a kill switch looks whether the pipeline has emptied.
DRAIN_PAUSE_POLL = 0.05


class Claimed(Protocol):
    @property
    def outreach_id(self) -> uuid.UUID: ...
    @property
    def domain(self) -> str | None: ...
    # The lease's claim number (ClaimedRecord.attempts): the writer's fence token. None when
    # unknown; that record's write is then not fenced.
    @property
    def attempts(self) -> int | None: ...
    # Spine rows carrying this id (more than 1: upstream duplicated it; see WorkQueue.claim).
    @property
    def spine_rows(self) -> int: ...


class ClaimStore(Protocol):
    async def claim(self, owner: str, limit: int, lease_seconds: float) -> Sequence[Claimed]: ...
    async def renew_leases(
        self, owner: str, ids: Sequence[uuid.UUID], lease_seconds: float
    ) -> object: ...
    async def pending_elsewhere(self, owner: str) -> int: ...


# Defaults are the config's (ct_actors/config/sections.py): defaults live in one place.
_PROBE = ProbeConfig()
_DATABASE = DatabaseConfig()


@dataclass(frozen=True, slots=True)
class LoaderSettings:
    claim_batch: int = _PROBE.claim_batch
    lease_seconds: float = float(_DATABASE.lease_seconds)
    idle_poll: float = 5.0  # how often to look for new work when none is pending
    retry_initial: float = 1.0
    retry_max: float = 60.0
    # A claim is never cut short by a stop; this bounds the wait (a statement on a dead
    # connection gives up after database.command_timeout, 15 s, anyway).
    claim_timeout: float = 15.0
    # The names query (probe.names_failures / names_pause): after this many failed attempts
    # in a row, alert, defer the batch's records and pause claiming, instead of retrying the
    # same batch forever.
    names_failures: int = _PROBE.names_failures
    names_pause: float = _PROBE.names_pause


@dataclass(frozen=True, slots=True)
class LoaderStatistics:
    claims: int
    claimed: int  # records
    empty_claims: int
    claim_errors: int
    renewals: int
    reclaimed_own: int  # records this owner had leased before (a restart)
    waits_for_other_leases: int
    spine_duplicate_rows: int
    names_deferred: int
    names_pauses: int


class LoaderActor:
    def __init__(
        self,
        send: trio.MemorySendChannel[Job],
        store: ClaimStore,
        *,
        owner: str,
        credits: WorkCredits,
        settings: LoaderSettings,
        transient_errors: tuple[type[BaseException], ...],
        names: NamesSource | None = None,
        drain: bool = False,
        pause: Callable[[], Awaitable[None]] | None = None,
        retries_due: Callable[[], int] | None = None,
    ) -> None:
        # Domains this daemon deferred to retry soon (greylisting): a drain waits for them.
        self._retries_due = retries_due
        self._names = names
        self._pause = pause
        self._send = send
        self._store = store
        self._owner = owner
        self._credits = credits
        self.settings = settings
        self._transient = transient_errors
        self._claim_errors: tuple[type[BaseException], ...] = (*transient_errors, trio.TooSlowError)
        self._drain = drain
        self._stop = trio.Event()
        self.drained = trio.Event()
        # The drain ended while a kill switch held claiming (pending work was left unclaimed).
        self.drained_while_paused = False
        self._names_failures = 0  # failed names query attempts in a row
        # Duplicated spine ids already reported, so each is alerted once per process.
        self._duplicates_reported: set[uuid.UUID] = set()
        self._stats = {
            "claims": 0,
            "claimed": 0,
            "empty_claims": 0,
            "claim_errors": 0,
            "renewals": 0,
            "reclaimed_own": 0,
            "waits_for_other_leases": 0,
            "spine_duplicate_rows": 0,
            "names_deferred": 0,
            "names_pauses": 0,
        }

    def reconfigure(self, settings: LoaderSettings) -> None:
        """Reload: batch size, lease length and the names-query limits from the next claim."""
        self.settings = settings

    def statistics(self) -> LoaderStatistics:
        return LoaderStatistics(**self._stats)

    def stop(self) -> None:
        """Stop claiming; the channel closes and the pipeline drains behind it."""
        self._stop.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._renew_loop)
            task_status.started()
            async with self._send:
                with trio.CancelScope() as claiming:
                    nursery.start_soon(_cancel_on, self._stop, claiming)
                    await self._claim_loop()
            nursery.cancel_scope.cancel()

    async def _claim_loop(self) -> None:
        delay = self.settings.retry_initial
        while True:
            credits = await self._credits.acquire(self.settings.claim_batch)
            if self._pause is not None:
                # A kill switch holds the pipeline: claim nothing until it is cleared. Checked
                # after the wait for credits, which can be long: a switch may trip meanwhile.
                try:
                    held = await self._wait_for_pause()
                except BaseException:
                    self._credits.give_back(credits)
                    raise
                if held:
                    self._credits.give_back(credits)
                    self.drained_while_paused = True
                    log.info(
                        "drained", claimed_total=self._stats["claimed"], held_by_kill_switch=True
                    )
                    self.drained.set()
                    return
            try:
                claimed = await self._claim(credits)
            except self._claim_errors as exc:
                self._credits.give_back(credits)
                self._stats["claim_errors"] += 1
                log.warning(
                    "claim_failed", error=str(exc) or type(exc).__name__, retry_in=delay
                )
                await trio.sleep(delay)
                delay = min(delay * 2, self.settings.retry_max)
                continue
            except BaseException:
                self._credits.give_back(credits)
                raise
            delay = self.settings.retry_initial
            self._stats["claims"] += 1
            self._report_duplicates(claimed)
            # A record still in flight here can come back when its lease lapsed (renewals
            # failed): the claim renewed the lease, and it must not be sent a second time.
            fresh = [record for record in claimed if record.outreach_id not in self._credits]
            self._stats["reclaimed_own"] += len(claimed) - len(fresh)
            for record in claimed:
                if record.outreach_id in self._credits:
                    # Its lease is this new claim now: the writer must present the new number.
                    self._credits.reclaimed(record.outreach_id, record.attempts)
            self._credits.give_back(credits - len(fresh))
            if not claimed:
                self._stats["empty_claims"] += 1
                if await self._drained():
                    log.info(
                        "drained", claimed_total=self._stats["claimed"], held_by_kill_switch=False
                    )
                    self.drained.set()
                    return
                await trio.sleep(self.settings.idle_poll if not self._drain else 0.05)
                continue
            self._stats["claimed"] += len(fresh)
            now = trio.current_time()
            for record in fresh:
                self._credits.enter(record.outreach_id, record.attempts)
            people, failure = await self._fetch_names([record.outreach_id for record in fresh])
            # If cancelled mid-batch, the unsent records stay in `credits` so the supervisor
            # releases their leases with everything else still unfinished.
            for record in fresh:
                error = failure
                entry = people.get(record.outreach_id, [])
                names: tuple[tuple[str, str], ...] = ()
                if isinstance(entry, NamesFailed):
                    error = error or entry.reason
                    log.warning(
                        "names_query_record_failed",
                        outreach_id=str(record.outreach_id),
                        reason=entry.reason,
                    )
                else:
                    names = tuple(entry)
                if error is not None:
                    self._stats["names_deferred"] += 1
                await self._send.send(
                    Job(record.outreach_id, record.domain, now, names, names_error=error)
                )
            if failure is not None:
                # Claiming more would only defer more: give the database (or the operator)
                # names_pause seconds before the next batch tries the query again.
                self._stats["names_pauses"] += 1
                await trio.sleep(self.settings.names_pause)

    def _report_duplicates(self, claimed: Sequence[Claimed]) -> None:
        for record in claimed:
            if record.spine_rows > 1 and record.outreach_id not in self._duplicates_reported:
                self._duplicates_reported.add(record.outreach_id)
                self._stats["spine_duplicate_rows"] += record.spine_rows - 1
                log.error(
                    "spine_duplicate_id",
                    outreach_id=str(record.outreach_id),
                    spine_rows=record.spine_rows,
                    skipped_rows=record.spine_rows - 1,
                    domain=record.domain,
                    note="processed once; fix the spine upstream",
                )

    async def _wait_for_pause(self) -> bool:
        """Wait while a kill switch holds claiming. True: the drain ends here instead.

        A tripped switch waits for an operator (SIGHUP). The daemon does, but `run --drain`
        must end once nothing is in flight here: the records it cannot claim are held back,
        and the drain reports them (issue 14). Records still in flight are finished first (a
        halted probe is deferred, so they come back to the writer quickly)."""
        assert self._pause is not None
        if not self._drain:
            await self._pause()
            return False
        while True:
            with trio.move_on_after(DRAIN_PAUSE_POLL):
                await self._pause()
                return False
            if not self._credits.in_flight:
                return True

    async def _claim(self, credits: int) -> Sequence[Claimed]:
        # Shielded: a stop that cancelled the claim after the database committed it would lose
        # the answer, and those leases would stay live, owned by no one, for lease_seconds.
        with trio.CancelScope(shield=True), trio.fail_after(self.settings.claim_timeout):
            claimed = await self._store.claim(self._owner, credits, self.settings.lease_seconds)
        return claimed

    async def _drained(self) -> bool:
        """In drain mode: nothing claimable, nothing in flight here, and no record held by a
        live lease of another daemon (one that crashed a moment ago still holds its records
        until the leases expire; they are pending, so draining must wait for them)."""
        if not self._drain or self._credits.in_flight:
            return False
        if self._retries_due is not None and self._retries_due():
            await trio.sleep(min(1.0, self.settings.idle_poll))
            return False
        try:
            held = await self._store.pending_elsewhere(self._owner)
        except self._transient as exc:
            log.warning("claim_failed", error=str(exc), retry_in=self.settings.retry_initial)
            return False
        if held:
            self._stats["waits_for_other_leases"] += 1
            await trio.sleep(min(1.0, self.settings.idle_poll))
        return held == 0

    async def _fetch_names(
        self, ids: list[uuid.UUID]
    ) -> tuple[Mapping[uuid.UUID, list[tuple[str, str]] | NamesFailed], str | None]:
        """Sample names for the whole claim batch in one query (the operator's names_query),
        and None, or the reason the whole batch gets none. A record answered with NamesFailed
        had its own query fail (timeout); the caller defers it. The records are leased, so a
        database hiccup is retried with back-off, but only `names_failures` attempts in a row:
        then an alert, and the reason (the batch is deferred, never probed without names)."""
        if self._names is None:
            return {}, None
        delay = self.settings.retry_initial
        while True:
            try:
                people = await self._names(ids)
            except self._transient as exc:
                self._names_failures += 1
                error = str(exc) or type(exc).__name__
                if self._names_failures >= self.settings.names_failures:
                    log.error(
                        "names_query_failing",
                        error=error,
                        failures=self._names_failures,
                        deferred=len(ids),
                        pause=self.settings.names_pause,
                    )
                    return {}, f"the names query failed {self._names_failures} times: {error}"
                log.warning("names_query_failed", error=error, records=len(ids), retry_in=delay)
                await trio.sleep(delay)
                delay = min(delay * 2, self.settings.retry_max)
                continue
            if self._names_failures >= self.settings.names_failures:
                log.warning("names_query_recovered", failures=self._names_failures)
            self._names_failures = 0
            return people, None

    async def _renew_loop(self) -> None:
        interval = max(1.0, self.settings.lease_seconds / 3)
        while True:
            await trio.sleep(interval)
            ids = self._credits.records()
            if not ids:
                continue
            try:
                await self._store.renew_leases(self._owner, ids, self.settings.lease_seconds)
                self._stats["renewals"] += 1
            except self._transient as exc:
                log.warning("lease_renewal_failed", error=str(exc), records=len(ids))


async def _cancel_on(event: trio.Event, scope: trio.CancelScope) -> None:
    await event.wait()
    scope.cancel()


class SpineChecker(Protocol):
    async def spine_anomalies(self) -> SpineAnomalies: ...


async def report_spine_anomalies(
    store: SpineChecker, transient_errors: tuple[type[BaseException], ...]
) -> SpineAnomalies | None:
    """At start: one alert for the spine rows no claim will ever process as records of their
    own (NULL outreach_id; the extra rows of a duplicated id). A database hiccup only skips the
    check: the claim itself is safe against these rows either way."""
    try:
        found = await store.spine_anomalies()
    except transient_errors as exc:
        log.warning("spine_check_failed", error=str(exc) or type(exc).__name__)
        return None
    if found.skipped_rows:
        log.error(
            "spine_rows_skipped",
            skipped_rows=found.skipped_rows,
            null_ids=found.null_ids,
            duplicated_ids=len(found.duplicated),
            sample=[str(oid) for oid in list(found.duplicated)[:10]],
            note="NULL ids are never processed, duplicated ids once; fix the spine upstream",
        )
    return found
