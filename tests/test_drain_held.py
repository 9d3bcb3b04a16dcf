"""Issue 14 under MockClock: `run --drain` ends when a kill switch holds the rest of the work
(and says what is held and why, with exit code 4), and the writer's fence as the pipeline sees
it (fenced records are counted, logged, and give their credit back)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from typing import Any

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from ct_actors.actors.credits import WorkCredits
from ct_actors.actors.loader import DRAIN_PAUSE_POLL
from ct_actors.actors.smtp_gate import IP_BLACKLISTED
from ct_actors.actors.writer import WriterActor, WriterSettings
from ct_actors.cli import drain_exit_code
from ct_actors.db.errors import DatabaseUnavailable
from ct_actors.drain_report import DrainSummary, HeldBack, Switch
from ct_actors.exit_codes import EXIT_DATABASE, EXIT_HELD, EXIT_OK
from ct_actors.outcome import Outcome, Passed
from ct_actors.sim.stats import SimStats
from ct_actors.sim.world import Behaviour
from ct_actors.testing import (
    FakeStore,
    MemoryUsageStore,
    Unavailable,
    open_sim_connector,
)
from ct_actors.throttle.calendar import UtcClock
from ct_actors.throttle.limiter import ToolThrottles
from tests.pipeline_support import SimPipelines
from tests.test_killswitch_pipeline import (
    BOUND,
    POOL,
    REGISTRY,
    Records,
    blocklisted_world,
    claims_between,
    settings,
    wait_until,
)

pytestmark = pytest.mark.timeout(60)

EPOCH = dt.datetime(2026, 3, 2, 12, tzinfo=dt.UTC)  # virtual time 0 on the wall clock


class HeldStore(FakeStore):
    """FakeStore with `Store.held_back`: the pending records by why they are not done."""

    async def held_back(self, owner: str) -> HeldBack:
        await trio.lowlevel.checkpoint()
        now = trio.current_time()
        rows: list[tuple[str, str | None, int, dt.datetime | None]] = []
        for oid in self.spine:
            if oid in self.terminal:
                continue
            not_before = self.not_before.get(oid, -1.0)
            if not_before > now:
                reason = getattr(self.deferred[oid].result, "reason", None)
                rows.append(("deferred", reason, 1, EPOCH + dt.timedelta(seconds=not_before)))
                continue
            holder, expires = self.leases.get(oid, ("", 0.0))
            if expires > now:
                klass = "leased_here" if holder == owner else "leased_elsewhere"
                rows.append((klass, None, 1, None))
            else:
                rows.append(("claimable", None, 1, None))
        return HeldBack.from_rows(rows)


async def test_drain_ends_once_a_kill_switch_holds_everything_left(
    autojump_clock: trio.testing.MockClock,
    capsys: pytest.CaptureFixture[str],
    sim_pipeline: SimPipelines,
) -> None:
    world = blocklisted_world(43, 100, blocking=5)
    base = Records.of(world)
    store = HeldStore(base.spine)
    records = dataclasses.replace(base, store=store)
    listed = {
        o
        for o in records.spine
        if records.has_domain(o) and world.domain(records.owner[o]).behaviour is Behaviour.BLOCKLIST
    }
    seen: dict[str, float] = {}
    async with open_sim_connector(world, SimStats()) as sim:
        supervisor = sim_pipeline.build(
            world,
            store,
            sim,
            settings=settings(),
            pool=POOL,
            names=records.names,
            throttles=ToolThrottles(
                dict(REGISTRY.tools),
                clock=UtcClock(EPOCH, trio.current_time()),
                usage=MemoryUsageStore(),
            ),
        )

        credits = supervisor.credits
        leave = credits.leave

        def left(outreach_id: uuid.UUID) -> None:
            # When the pipeline last became empty: the moment the drain may end.
            leave(outreach_id)
            if credits.in_flight == 0:
                seen["quiet_at"] = trio.current_time()

        credits.leave = left  # type: ignore[method-assign]

        async def watch() -> None:
            await wait_until(lambda: supervisor.switches.is_tripped(IP_BLACKLISTED), step=0.01)
            seen["tripped_at"] = trio.current_time()

        async def drained() -> None:
            await supervisor.loader.drained.wait()
            seen["drained_at"] = trio.current_time()

        with capture_logs() as logs, trio.fail_after(BOUND):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(watch)
                nursery.start_soon(drained)
                await nursery.start(supervisor.run)
                # Before the fix this never returned (the loader waited for a SIGHUP).
                await supervisor.finished.wait()
        seen["finished_at"] = trio.current_time()

    # The drain ended at the first look after the pipeline emptied under the tripped switch.
    assert seen["tripped_at"] <= seen["drained_at"]
    assert seen["quiet_at"] <= seen["drained_at"] <= seen["quiet_at"] + DRAIN_PAUSE_POLL
    assert seen["finished_at"] - seen["drained_at"] < 30.0  # the pools' QUITs, nothing else
    assert supervisor.loader.drained_while_paused
    assert supervisor.switches.is_tripped(IP_BLACKLISTED)
    [event] = [e for e in logs if e["event"] == "drained"]
    assert event["held_by_kill_switch"] is True
    # Nothing claimed once the switch had stopped claiming; no blocklisted record terminal.
    assert claims_between(store, seen["quiet_at"], seen["finished_at"] + 1) == []
    assert listed.isdisjoint(store.terminal)
    assert all(exp <= seen["finished_at"] for _o, exp in store.leases.values())

    pending = [o for o in records.spine if o not in store.terminal]
    deferred = [o for o in pending if store.not_before.get(o, -1.0) > seen["finished_at"]]
    assert len(deferred) >= 3 and len(pending) > len(deferred)  # some were never claimed

    with capture_logs() as logs:
        code = await drain_exit_code(supervisor, store, "test:1")
    assert code == EXIT_HELD
    [held] = [e for e in logs if e["event"] == "drain_held"]
    assert held["held"] == len(pending)
    assert (held["deferred"], held["claimable"]) == (len(deferred), len(pending) - len(deferred))
    assert list(held["kill_switches"]) == [IP_BLACKLISTED]
    earliest = min(store.not_before[o] for o in deferred)
    due = (EPOCH + dt.timedelta(seconds=earliest)).isoformat(timespec="seconds")
    assert held["earliest_not_before"] == due.replace("+00:00", "Z")
    err = capsys.readouterr().err
    assert f"drain ended with {len(pending)} record(s) still pending" in err
    assert f"kill switch {IP_BLACKLISTED} is tripped" in err
    assert f"{len(pending) - len(deferred)} claimable, not claimed (held by the kill switch)" in err
    assert f"{len(deferred)} deferred" in err


# ─── drain_exit_code and the summary, without a pipeline ────────────────────────────────────


class StubSupervisor:
    """What drain_exit_code reads of a Supervisor: its switches and the loader's end."""

    def __init__(self, tripped: list[Any], drained_while_paused: bool) -> None:
        self._tripped = tripped
        self.halting = [IP_BLACKLISTED]
        self.switches = self
        self.loader = self
        self.drained_while_paused = drained_while_paused

    def tripped(self) -> list[Any]:
        return list(self._tripped)


class CountingStore:
    def __init__(self, held: HeldBack | Exception) -> None:
        self.held = held

    async def held_back(self, owner: str) -> HeldBack:
        await trio.lowlevel.checkpoint()
        if isinstance(self.held, Exception):
            raise self.held
        return self.held


async def test_a_drain_that_concluded_everything_exits_0_silently(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = await drain_exit_code(StubSupervisor([], False), CountingStore(HeldBack()), "o")
    assert code == EXIT_OK
    assert capsys.readouterr().err == ""


async def test_deferred_records_alone_are_held_back(capsys: pytest.CaptureFixture[str]) -> None:
    nb = dt.datetime(2026, 3, 2, 12, 10, tzinfo=dt.UTC)
    held = HeldBack.from_rows(
        [
            ("deferred", "our IP is blocklisted", 7, nb + dt.timedelta(minutes=5)),
            ("deferred", "resolver timeout", 2, nb),
            ("leased_elsewhere", None, 1, None),
        ]
    )
    code = await drain_exit_code(StubSupervisor([], False), CountingStore(held), "o")
    assert code == EXIT_HELD
    err = capsys.readouterr().err
    assert "drain ended with 10 record(s) still pending" in err
    assert "9 deferred (our own trouble, retried later), earliest due 2026-03-02T12:10:00Z" in err
    assert "     7  our IP is blocklisted" in err and "     2  resolver timeout" in err
    assert "1 leased by another daemon" in err
    assert "kill switch" not in err


async def test_a_drain_that_cannot_count_says_so(capsys: pytest.CaptureFixture[str]) -> None:
    down = CountingStore(DatabaseUnavailable("db down"))
    assert await drain_exit_code(StubSupervisor([], False), down, "o") == EXIT_DATABASE
    switch = dataclasses.make_dataclass("S", ["name", "reason"])(IP_BLACKLISTED, "3 hosts")
    assert await drain_exit_code(StubSupervisor([switch], True), down, "o") == EXIT_HELD
    assert "could not be counted" in capsys.readouterr().err


def test_deferral_reasons_are_grouped_by_their_cause() -> None:
    blocked = "our address is blocked by mx1.x.test: RCPT {}@x.test: 554 5.7.1 listed"
    held = HeldBack.from_rows(
        [
            ("deferred", blocked.format("a"), 1, None),
            ("deferred", blocked.format("b"), 1, None),
            ("deferred", None, 1, None),
        ]
    )
    assert held.reasons == (
        ("our address is blocked by mx1.x.test", 2),
        ("(no reason recorded)", 1),
    )


def test_summary_fields_name_the_top_reasons_only() -> None:
    rows = [("deferred", f"reason {i}", 10 - i, None) for i in range(8)]
    summary = DrainSummary(HeldBack.from_rows(rows), (Switch("dns_resolver_failure", None),))
    fields = summary.fields()
    assert list(fields["deferral_reasons"]) == [f"reason {i}" for i in range(5)]
    assert fields["held"] == sum(10 - i for i in range(8))
    assert "(other reasons)" in summary.describe()
    assert "dns_resolver_failure is tripped (no reason recorded)" in summary.describe()


# ─── the writer's fence ─────────────────────────────────────────────────────────────────────


def oid(n: int) -> uuid.UUID:
    return uuid.UUID(int=n)


def passed(n: int) -> Outcome:
    from decimal import Decimal

    return Outcome(oid(n), f"d{n}.test", Passed("info@d.test", "info", Decimal("0.7"), False))


async def test_the_writer_presents_claims_and_drops_fenced_records(
    autojump_clock: trio.testing.MockClock,
) -> None:
    store = FakeStore({oid(1): "d1.test", oid(2): "d2.test"})
    store.fence = True
    # Both claimed by us (claim 1); record 2 was then taken over by another daemon (claim 2).
    store.leases = {oid(1): ("w", 300.0), oid(2): ("other", 300.0)}
    store.attempts = {oid(1): 1, oid(2): 2}
    credits = WorkCredits(4)
    for n in (1, 2):
        await credits.acquire(1)
        credits.enter(oid(n), 1)
    send, receive = trio.open_memory_channel[Outcome](0)
    writer = WriterActor(
        receive,
        store,
        owner="w",
        credits=credits,
        settings=WriterSettings(batch_size=2, flush_interval=0.5),
        transient_errors=(Unavailable,),
    )
    with capture_logs() as logs, trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            await nursery.start(writer.run)
            async with send:
                await send.send(passed(1))
                await send.send(passed(2))
    assert store.presented == [{oid(1): 1, oid(2): 1}]
    assert set(store.terminal) == {oid(1)}
    assert store.leases == {oid(2): ("other", 300.0)}  # theirs, untouched
    stats = writer.statistics()
    assert (stats.fenced, stats.rows, stats.by_code) == (1, 1, {"PASS": 1})
    assert credits.in_flight == 0 and credits.available == 4
    fenced = [e for e in logs if e["event"] == "write_fenced"]
    assert [e["outreach_id"] for e in fenced] == [str(oid(2))]
    assert [e["outreach_id"] for e in logs if e["event"] == "outcome"] == [str(oid(1))]
    # The written outcome's line is out, so its note is dropped.
    assert store.unlogged_rows == {}
