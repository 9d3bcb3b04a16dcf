"""The writer and the loader against the in-memory FakeStore, under the autojump MockClock.

Times are exact where the arithmetic is (binary fractions), `pytest.approx` elsewhere.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs
from trio import current_time as now

from ct_actors.actors.credits import WorkCredits
from ct_actors.actors.dispatcher import Job, NamesFailed, NamesSource
from ct_actors.actors.loader import LoaderActor, LoaderSettings
from ct_actors.actors.writer import WriterActor, WriterSettings, WriterStatistics
from ct_actors.outcome import Outcome, Passed
from ct_actors.testing import Claimed, FakeStore, Report, Unavailable

BOUND = 3600.0
OWNER = "test:1"


def oid(i: int) -> uuid.UUID:
    return uuid.UUID(int=i)


def outcome(i: int) -> Outcome:
    passed = Passed("info@d.test", "info", Decimal("0.70"), False)
    return Outcome(oid(i), f"d{i}.test", passed, "mx.d.test", 0.0)


class RecordingStore(FakeStore):
    """FakeStore that also records every attempt (failed ones too) with what it was asked."""

    def __init__(self, spine: dict[uuid.UUID, str | None], credits: WorkCredits | None = None):
        super().__init__(spine)
        self.credits = credits
        self.write_attempts: list[float] = []
        self.fail_claims = 0
        # (time, limit asked, records returned, credits free, records in flight) per claim
        self.claim_log: list[tuple[float, int, int, int, int]] = []
        self.claim_attempts: list[float] = []
        self.renewals: list[tuple[float, list[uuid.UUID]]] = []

    async def write_outcomes(
        self, owner: str, outcomes: Sequence[Outcome], **kw: Any
    ) -> Report:
        self.write_attempts.append(now())
        return await super().write_outcomes(owner, outcomes, **kw)

    async def claim(self, owner: str, limit: int, lease_seconds: float) -> list[Claimed]:
        self.claim_attempts.append(now())
        if self.fail_claims:
            self.fail_claims -= 1
            await trio.lowlevel.checkpoint()
            raise Unavailable("database unavailable (fake)")
        assert self.credits is not None
        free, in_flight = self.credits.available, self.credits.in_flight
        claimed = await super().claim(owner, limit, lease_seconds)
        self.claim_log.append((now(), limit, len(claimed), free, in_flight))
        return claimed

    async def renew_leases(self, owner: str, ids: Sequence[uuid.UUID], lease_seconds: float) -> int:
        self.renewals.append((now(), sorted(ids)))
        return await super().renew_leases(owner, ids, lease_seconds)


# ─── writer ──────────────────────────────────────────────────────────────────────────────────


def writer_for(
    store: FakeStore, credits: WorkCredits, **kw: float
) -> tuple[WriterActor, trio.MemorySendChannel[Outcome]]:
    send, recv = trio.open_memory_channel[Outcome](0)
    settings = WriterSettings(
        batch_size=int(kw.pop("batch_size", 10)),
        flush_interval=kw.pop("flush_interval", 0.5),
        retry_initial=kw.pop("retry_initial", 0.5),
        retry_max=kw.pop("retry_max", 30.0),
        final_flush_timeout=kw.pop("final_flush_timeout", 10.0),
    )
    writer = WriterActor(
        recv,
        store,
        owner=OWNER,
        credits=credits,
        settings=settings,
        transient_errors=(Unavailable,),
    )
    return writer, send


async def holding(n: int) -> WorkCredits:
    """Credits for records 1..n, entered as if the loader had claimed them at t=0."""
    credits = WorkCredits(10)
    assert await credits.acquire(n) == n
    for i in range(1, n + 1):
        credits.enter(oid(i))
    return credits


async def test_writer_flushes_a_partial_batch_flush_interval_after_its_first_item(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store, credits = RecordingStore({}), await holding(3)
    writer, send = writer_for(store, credits, batch_size=10, flush_interval=0.5)
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            async with send:
                await trio.sleep_until(1.0)
                await send.send(outcome(1))
                await trio.sleep_until(1.25)
                await send.send(outcome(2))
                await trio.sleep_until(1.49)
                assert (store.writes, credits.in_flight) == ([], 3)
                assert writer.statistics().buffered == 2
                await trio.sleep_until(1.75)
                assert store.writes == [(1.5, 2)]  # 1.0 + flush_interval, not 1.25 + 0.5
                assert credits.in_flight == 1  # committed records gave their credits back
                await send.send(outcome(3))  # a new batch: its own deadline
                await trio.sleep_until(3.0)
    assert store.writes == [(1.5, 2), (2.25, 1)]
    assert writer.statistics() == WriterStatistics(
        batches=2,
        rows=3,
        already_terminal=0,
        retries=0,
        fenced=0,
        recovered_lines=0,
        buffered=0,
        failing_since=None,
        by_code={"PASS": 3},
    )


async def test_writer_flushes_a_full_batch_immediately(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store, credits = RecordingStore({}), await holding(4)
    writer, send = writer_for(store, credits, batch_size=3, flush_interval=0.5)
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            async with send:
                await trio.sleep_until(1.0)
                for i in (1, 2, 3, 4):
                    await send.send(outcome(i))
                assert now() == 1.0
                assert store.writes == [(1.0, 3)]
                await trio.sleep_until(2.0)
    assert store.writes == [(1.0, 3), (1.5, 1)]
    assert credits.in_flight == 0


async def test_writer_retries_with_capped_exponential_backoff_while_the_db_is_down(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store, credits = RecordingStore({}), await holding(2)
    store.fail_writes = 6
    writer, send = writer_for(store, credits, retry_initial=0.5, retry_max=5.0)
    sent_second_at: list[float] = []

    async def send_second() -> None:
        await trio.sleep_until(1.0)
        await send.send(outcome(2))  # the writer holds its batch: back-pressure
        sent_second_at.append(now())

    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            async with send:
                await send.send(outcome(1))  # t=0: flush due at 0.5
                nursery.start_soon(send_second)
                await trio.sleep_until(12.0)
                down = writer.statistics()
                assert (store.terminal, sent_second_at) == ({}, [])
                assert credits.in_flight == 2  # nothing committed, no credit returned
                await trio.sleep_until(18.25)
                assert list(store.terminal) == [oid(1)]
                assert credits.in_flight == 1
                await trio.sleep_until(30.0)
    # Attempts after 0.5, 1, 2, 4, then capped at 5, 5 s.
    assert store.write_attempts == [0.5, 1.0, 2.0, 4.0, 8.0, 13.0, 18.0, 18.5]
    assert sent_second_at == [18.0]
    assert store.writes == [(18.0, 1), (18.5, 1)]
    assert sorted(store.terminal) == [oid(1), oid(2)]  # nothing lost
    assert credits.in_flight == 0
    assert (down.retries, down.failing_since, down.batches) == (5, 0.5, 0)
    assert writer.statistics().retries == 6
    assert writer.statistics().failing_since is None


async def test_writer_final_flush_on_channel_close(autojump_clock: trio.testing.MockClock) -> None:
    store, credits = RecordingStore({}), await holding(2)
    writer, send = writer_for(store, credits, flush_interval=0.5)
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await send.send(outcome(1))
            await send.send(outcome(2))
            await trio.sleep_until(0.125)
            await send.aclose()
        assert now() == 0.125  # flushed at close, not at the 0.5 deadline
    assert store.writes == [(0.125, 2)]
    assert credits.in_flight == 0


async def test_writer_final_flush_is_bounded_and_keeps_credits_when_db_stays_down(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store, credits = RecordingStore({}), await holding(2)
    store.fail_writes = 1_000_000
    writer, send = writer_for(store, credits, retry_max=5.0, final_flush_timeout=10.0)
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            await send.send(outcome(1))
            await send.send(outcome(2))
            await trio.sleep_until(0.25)
            await send.aclose()
        assert now() == 0.25 + 10.0
    assert store.write_attempts == [0.25, 0.75, 1.75, 3.75, 7.75]
    assert store.writes == []
    # Still holding their credits: the supervisor releases their leases (pending again).
    assert sorted(credits.records()) == [oid(1), oid(2)]


# ─── loader ──────────────────────────────────────────────────────────────────────────────────


def loader_for(
    store: FakeStore, credits: WorkCredits, *, drain: bool, **kw: float
) -> tuple[LoaderActor, trio.MemoryReceiveChannel[Job]]:
    send, recv = trio.open_memory_channel[Job](0)
    settings = LoaderSettings(
        claim_batch=int(kw.pop("claim_batch", 4)),
        lease_seconds=kw.pop("lease_seconds", 300.0),
        idle_poll=kw.pop("idle_poll", 5.0),
        retry_initial=kw.pop("retry_initial", 1.0),
        retry_max=kw.pop("retry_max", 60.0),
    )
    loader = LoaderActor(
        send,
        store,
        owner=OWNER,
        credits=credits,
        settings=settings,
        transient_errors=(Unavailable,),
        drain=drain,
    )
    return loader, recv


def spine(n: int) -> dict[uuid.UUID, str | None]:
    return {oid(i): f"d{i}.test" for i in range(1, n + 1)}


async def test_loader_never_claims_more_than_its_free_credits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # max_in_flight 5, claim batches of 4; a consumer that takes jobs at once but commits one
    # record per second (at 1, 2, ... 10). Credits, not the channel, hold the loader back.
    credits = WorkCredits(5)
    store = RecordingStore(spine(10), credits)
    loader, jobs = loader_for(store, credits, drain=True, claim_batch=4)
    received: list[tuple[float, int]] = []
    peak = 0
    returned_at: list[float] = []

    async def run_loader() -> None:
        await loader.run()
        returned_at.append(now())

    async def consume() -> None:
        nonlocal peak
        queue: deque[Job] = deque()
        async with trio.open_nursery() as inner:

            async def commit() -> None:
                for _ in range(10):
                    await trio.sleep(1.0)
                    credits.leave(queue.popleft().outreach_id)

            inner.start_soon(commit)
            async with jobs:
                async for job in jobs:
                    queue.append(job)
                    received.append((now(), job.outreach_id.int))
                    peak = max(peak, credits.in_flight)

    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(run_loader)
            nursery.start_soon(consume)
    assert store.claim_log[:7] == [
        # (time, limit, claimed, free credits after acquiring, in flight)
        (0.0, 4, 4, 1, 0),
        (0.0, 1, 1, 0, 4),
        (1.0, 1, 1, 0, 4),
        (2.0, 1, 1, 0, 4),
        (3.0, 1, 1, 0, 4),
        (4.0, 1, 1, 0, 4),
        (5.0, 1, 1, 0, 4),
    ]
    for _, limit, claimed, free, in_flight in store.claim_log:
        assert claimed <= limit
        assert limit + free + in_flight == 5  # asked for exactly the credits it held
        assert limit + in_flight <= 5
    assert all(claimed == 0 for _, _, claimed, _, _ in store.claim_log[7:])
    assert peak == 5
    assert [i for _, i in received] == list(range(1, 11))
    # Drain: the last record is committed at 10.0; the loader polls every 0.05 s meanwhile.
    assert len(returned_at) == 1 and 10.0 <= returned_at[0] <= 10.05 + 1e-6
    assert loader.drained.is_set()
    assert credits.in_flight == 0 and credits.available == 5
    stats = loader.statistics()
    assert stats.claimed == 10
    assert stats.claims == len(store.claim_log)
    assert stats.claim_errors == 0


async def test_loader_drain_returns_at_once_when_nothing_is_claimable(
    autojump_clock: trio.testing.MockClock,
) -> None:
    credits = WorkCredits(5)
    store = RecordingStore({}, credits)
    loader, jobs = loader_for(store, credits, drain=True)
    with trio.fail_after(BOUND):
        await loader.run()
    assert now() == 0.0
    assert store.claim_log == [(0.0, 4, 0, 1, 0)]
    assert loader.drained.is_set()
    assert credits.available == 5
    with pytest.raises(trio.EndOfChannel):
        await jobs.receive()  # the loader closed its channel: the pipeline's stop signal


async def test_loader_claim_errors_back_off_and_return_credits(
    autojump_clock: trio.testing.MockClock,
) -> None:
    credits = WorkCredits(5)
    store = RecordingStore(spine(3), credits)
    store.fail_claims = 3
    loader, jobs = loader_for(store, credits, drain=True, retry_initial=1.0, retry_max=60.0)
    free_during_backoff: list[int] = []

    async def consume() -> None:
        async with jobs:
            async for job in jobs:
                await trio.sleep(0.02)
                credits.leave(job.outreach_id)

    async def watch() -> None:
        for t in (0.5, 2.0, 5.0):
            await trio.sleep_until(t)
            free_during_backoff.append(credits.available)

    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            nursery.start_soon(watch)
            await loader.run()
            drained_at = now()
    # Back-off 1, 2, 4 s: attempts at 0, 1, 3, then success at 7.
    assert store.claim_attempts[:4] == [0.0, 1.0, 3.0, 7.0]
    assert free_during_backoff == [5, 5, 5]  # every credit given back while waiting
    assert store.claim_log[0] == (7.0, 4, 3, 1, 0)
    # The consumer takes 0.02 s per job: the third is received at 7.04, the loader's next claim
    # is empty with one record in flight, and its 0.05 s drain poll finds none at 7.09.
    assert drained_at == pytest.approx(7.09)
    assert loader.statistics().claim_errors == 3
    assert credits.available == 5


async def test_loader_renews_leases_every_third_of_the_lease(
    autojump_clock: trio.testing.MockClock,
) -> None:
    credits = WorkCredits(5)
    store = RecordingStore(spine(2), credits)
    loader, jobs = loader_for(store, credits, drain=False, lease_seconds=30.0, idle_poll=5.0)
    held: list[Job] = []

    async def consume() -> None:
        async with jobs:
            async for job in jobs:
                held.append(job)

    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            nursery.start_soon(loader.run)
            await trio.sleep_until(35.0)
            assert store.renewals == [(t, [oid(1), oid(2)]) for t in (10.0, 20.0, 30.0)]
            assert store.leases[oid(1)] == (OWNER, 30.0 + 30.0)  # renewed at 30 for 30 s
            for job in held:
                credits.leave(job.outreach_id)
            await trio.sleep_until(55.0)
            loader.stop()
    assert [t for t, _ in store.renewals] == [10.0, 20.0, 30.0]  # nothing in flight: no call
    assert loader.statistics().renewals == 3
    assert store.claim_log[0] == (0.0, 4, 2, 1, 0)


class RenewalsFail(RecordingStore):
    async def renew_leases(self, owner: str, ids: Sequence[uuid.UUID], lease_seconds: float) -> int:
        await trio.lowlevel.checkpoint()
        self.renewals.append((now(), sorted(ids)))
        raise Unavailable("database unavailable (fake)")


async def test_loader_reclaiming_its_own_expired_lease_does_not_leak_a_credit(
    autojump_clock: trio.testing.MockClock,
) -> None:
    credits = WorkCredits(2)
    store = RenewalsFail(spine(1), credits)
    loader, jobs = loader_for(store, credits, drain=False, claim_batch=1, lease_seconds=30.0)
    held: list[Job] = []

    async def consume() -> None:
        async with jobs:
            async for job in jobs:
                held.append(job)

    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            nursery.start_soon(loader.run)
            await trio.sleep_until(35.0)  # renewals at 10, 20, 30 failed; the lease ended at 30
            assert [t for t, _ in store.renewals] == [10.0, 20.0, 30.0]
            # Reclaimed under a new claim number: the writer must present that one (fence).
            assert store.attempts[oid(1)] >= 2
            assert credits.claims([oid(1)]) == {oid(1): store.attempts[oid(1)]}
            for job in held:  # the pipeline finishes every job it was given
                credits.leave(job.outreach_id)
            await trio.sleep_until(36.0)
            loader.stop()
    assert credits.available == 2
    assert [job.outreach_id for job in held] == [oid(1)]


class DuplicatedSpine(RecordingStore):
    """Record 1 is carried by three spine rows (the real claim merges them into one record)."""

    async def claim(self, owner: str, limit: int, lease_seconds: float) -> list[Claimed]:
        claimed = await super().claim(owner, limit, lease_seconds)
        return [
            Claimed(c.outreach_id, c.domain, spine_rows=3 if c.outreach_id == oid(1) else 1)
            for c in claimed
        ]


async def test_loader_alerts_each_duplicated_spine_id_once(
    autojump_clock: trio.testing.MockClock,
) -> None:
    credits = WorkCredits(2)
    store = DuplicatedSpine(spine(2), credits)
    loader, jobs = loader_for(store, credits, drain=False, claim_batch=2, lease_seconds=10.0)
    seen: list[tuple[float, uuid.UUID]] = []

    async def consume() -> None:
        # Finishes every job without a terminal outcome: the leases lapse and both records are
        # claimed again after lease_seconds, the duplicated one included.
        async with jobs:
            async for job in jobs:
                seen.append((now(), job.outreach_id))
                credits.leave(job.outreach_id)

    with capture_logs() as logs, trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(consume)
            nursery.start_soon(loader.run)
            await trio.sleep_until(25.0)
            loader.stop()
    assert [i for _, i in seen].count(oid(1)) >= 2  # claimed (and processed) again
    alerts = [e for e in logs if e["event"] == "spine_duplicate_id"]
    assert [(a["outreach_id"], a["spine_rows"], a["skipped_rows"]) for a in alerts] == [
        (str(oid(1)), 3, 2)
    ]
    assert alerts[0]["log_level"] == "error"
    assert loader.statistics().spine_duplicate_rows == 2


# ─── names query failures (issue 10, item 6) ────────────────────────────────────────────────


def names_loader(
    store: FakeStore, credits: WorkCredits, names: NamesSource
) -> tuple[LoaderActor, trio.MemoryReceiveChannel[Job]]:
    send, recv = trio.open_memory_channel[Job](0)
    settings = LoaderSettings(
        claim_batch=2,
        idle_poll=5.0,
        retry_initial=1.0,
        retry_max=60.0,
        names_failures=3,
        names_pause=100.0,
    )
    loader = LoaderActor(
        send,
        store,
        owner=OWNER,
        credits=credits,
        settings=settings,
        transient_errors=(Unavailable,),
        names=names,
    )
    return loader, recv


async def test_a_record_whose_names_query_failed_is_deferred_not_probed_without_names(
    autojump_clock: trio.testing.MockClock,
) -> None:
    credits = WorkCredits(2)
    store = RecordingStore(spine(2), credits)

    async def names(
        ids: Sequence[uuid.UUID],
    ) -> dict[uuid.UUID, list[tuple[str, str]] | NamesFailed]:
        await trio.lowlevel.checkpoint()
        # Record 2's own query timed out.
        return {oid(1): [("Ann", "Lee")], oid(2): NamesFailed("timed out (5 s)")}

    loader, jobs = names_loader(store, credits, names)
    with capture_logs() as logs, trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(loader.run)
            first, second = await jobs.receive(), await jobs.receive()
            loader.stop()
            nursery.cancel_scope.cancel()
    assert (first.people, first.names_error) == ((("Ann", "Lee"),), None)
    assert second.people == ()
    assert second.names_error == "timed out (5 s)"
    assert [
        (e["outreach_id"], e["reason"]) for e in logs if e["event"] == "names_query_record_failed"
    ] == [(str(oid(2)), "timed out (5 s)")]
    assert loader.statistics().names_deferred == 1


async def test_repeated_names_failures_alert_defer_the_batch_and_pause_claiming(
    autojump_clock: trio.testing.MockClock,
) -> None:
    credits = WorkCredits(4)
    store = RecordingStore(spine(4), credits)
    attempts: list[float] = []

    async def names(ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[tuple[str, str]]]:
        attempts.append(now())
        await trio.lowlevel.checkpoint()
        raise Unavailable("canceling statement due to statement timeout")

    loader, jobs = names_loader(store, credits, names)
    received: list[tuple[float, Job]] = []
    with capture_logs() as logs, trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(loader.run)
            for _ in range(4):
                job = await jobs.receive()
                received.append((now(), job))
            loader.stop()
            nursery.cancel_scope.cancel()
    # Batch 1: attempts at 0, 1 (back-off 1 s), 3 (2 s); the third failure alerts and defers
    # the batch; claiming pauses 100 s. Batch 2 at 103: the failures are still in a row, so
    # its single attempt defers it at once.
    assert attempts == [0.0, 1.0, 3.0, 103.0]
    assert [t for t, _ in received] == [3.0, 3.0, 103.0, 103.0]
    reason = "the names query failed 3 times: canceling statement due to statement timeout"
    assert {job.names_error for _, job in received} == {
        reason,
        "the names query failed 4 times: canceling statement due to statement timeout",
    }
    assert received[0][1].names_error == reason
    alerts = [e for e in logs if e["event"] == "names_query_failing"]
    assert [(a["failures"], a["deferred"], a["pause"]) for a in alerts] == [
        (3, 2, 100.0),
        (4, 2, 100.0),
    ]
    assert loader.statistics().names_pauses == 2
