"""The whole pipeline on the in-memory simulated world while its database goes away, under
MockClock: the outage is waited out, and a stop during an outage ends in bounded time, releases
nothing it cannot and loses nothing.

These are the timelines test_e2e_faults.py used to prove in real time for every outage kind; it
keeps one real-time smoke test per scenario (a real daemon, real PostgreSQL, real signals). The
two kinds here are how the outage reaches the client: `reset` (a crashed, restarting or
locked-out database: every call fails at once, as ECONNRESET or SQLSTATE 55000 do) and
`blackhole` (a partition: every call hangs until the client's own command timeout). That the
real store turns each real-world cut into `DatabaseUnavailable` is test_e2e_faults.py's
`test_the_store_reports_each_outage_as_unavailable_and_recovers`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from ct_actors.actors.loader import LoaderSettings
from ct_actors.actors.supervisor import PipelineSettings, Supervisor
from ct_actors.actors.supervisor_statistics import SupervisorStatistics
from ct_actors.actors.writer import WriterSettings
from ct_actors.db.errors import DatabaseUnavailable
from ct_actors.demo.labels import expected_label
from ct_actors.outcome import Outcome
from ct_actors.sim.stats import SimStats
from ct_actors.sim.world import Behaviour, World
from ct_actors.smtp.client import connect_session
from ct_actors.testing import (
    FakeStore,
    MemoryUsageStore,
    Report,
    Unavailable,
    open_sim_connector,
)
from ct_actors.throttle.calendar import UtcClock
from ct_actors.throttle.limiter import ToolThrottles
from ct_actors.toolbox import load_toolbox
from tests.pipeline_support import SIM_POOL, SimPipelines, label, pipeline_settings, spine_for

# The asyncpg pool's per-statement timeout (database.command_timeout's default): how long a call
# into a blackholed database hangs before the client gives up.
COMMAND_TIMEOUT = 15.0
WRITER = WriterSettings(batch_size=10, flush_interval=0.1)
MAX_IN_FLIGHT = 16
LEASE_SECONDS = 60.0
KINDS = ["reset", "blackhole"]
REGISTRY = load_toolbox(Path(__file__).parent.parent / "config" / "SNAP_ON_TOOLBOX.yaml")
ORIGIN = dt.datetime(2026, 3, 2, 9, 0, tzinfo=dt.UTC)  # trio time 0.0 under MockClock


def budgets(usage: MemoryUsageStore) -> ToolThrottles:
    """The registry's limits, their day/month budgets counted in `usage` (the database's
    ct_actors.tool_usage; it fails with the database)."""
    return ToolThrottles(
        dict(REGISTRY.tools),
        clock=UtcClock(ORIGIN, 0.0),
        usage=usage,
        transient_errors=(DatabaseUnavailable,),
    )


class OutageStore(FakeStore):
    """A FakeStore whose database can be cut and restored. While cut, every call fails: at once
    (`reset`), or after COMMAND_TIMEOUT (`blackhole`; a call still hanging when the database
    comes back fails then, as a silenced connection is reset when a partition heals)."""

    def __init__(self, spine: dict[uuid.UUID, str | None], kind: str) -> None:
        super().__init__(spine)
        self.kind = kind
        self.down = False
        self._restored = trio.Event()
        self.failed_calls: Counter[str] = Counter()
        self.writes_while_down = 0

    def cut(self) -> None:
        self.down = True
        self._restored = trio.Event()

    def restore(self) -> None:
        self.down = False
        self._restored.set()

    async def _call(self, name: str) -> None:
        if not self.down:
            return
        self.failed_calls[name] += 1
        if self.kind == "blackhole":
            with trio.move_on_after(COMMAND_TIMEOUT):
                await self._restored.wait()
        else:
            await trio.lowlevel.checkpoint()
        raise Unavailable(f"{name}: database unavailable ({self.kind})")

    async def claim(self, owner: str, limit: int, lease_seconds: float) -> list[Any]:
        await self._call("claim")
        return await super().claim(owner, limit, lease_seconds)

    async def pending_elsewhere(self, owner: str) -> int:
        await self._call("pending_elsewhere")
        return await super().pending_elsewhere(owner)

    async def renew_leases(self, owner: str, ids: Sequence[uuid.UUID], lease_seconds: float) -> int:
        await self._call("renew_leases")
        return await super().renew_leases(owner, ids, lease_seconds)

    async def release(self, owner: str, ids: Sequence[uuid.UUID]) -> int:
        await self._call("release")
        return await super().release(owner, ids)

    async def write_outcomes(
        self,
        owner: str,
        outcomes: Sequence[Outcome],
        *,
        claims: Mapping[uuid.UUID, int] | None = None,
    ) -> Report:
        await self._call("write_outcomes")
        return await super().write_outcomes(owner, outcomes, claims=claims)

    async def mark_logged(self, owner: str, ids: Sequence[uuid.UUID]) -> None:
        await self._call("mark_logged")
        await super().mark_logged(owner, ids)


def pipeline(
    pipelines: SimPipelines,
    world: World,
    store: OutageStore,
    owner: dict[uuid.UUID, str],
    connector: Any,
    *,
    name: str,
    drain: bool,
    drain_deadline: float = 60.0,
    throttles: ToolThrottles | None = None,
) -> Supervisor:
    return pipelines.build(
        world,
        store,
        connector,
        settings=dataclasses.replace(
            pipeline_settings(),
            owner=name,
            max_in_flight=MAX_IN_FLIGHT,
            drain_deadline=drain_deadline,
            loader=LoaderSettings(claim_batch=8, lease_seconds=LEASE_SECONDS),
            writer=WRITER,
        ),
        owner=owner,
        drain=drain,
        throttles=throttles,
    )


async def wait_until_terminal(store: FakeStore, count: int) -> None:
    while len(store.terminal) < count:  # noqa: ASYNC110 (polled: the fake has no event)
        await trio.sleep(0.05)


def ground_truth_problems(
    world: World, store: FakeStore, spine: dict[uuid.UUID, str | None], owner: dict[uuid.UUID, str]
) -> dict[str, tuple[str, str | None]]:
    got = {oid: label(o.result) for oid, o in {**store.deferred, **store.terminal}.items()}
    return {
        owner[oid]: (expected_label(world, owner[oid]), got.get(oid))
        for oid in spine
        if got.get(oid) != expected_label(world, owner[oid])
    }


@pytest.mark.parametrize("kind", KINDS)
async def test_a_database_outage_mid_run_is_waited_out(
    autojump_clock: trio.testing.MockClock, sim_pipeline: SimPipelines, kind: str
) -> None:
    world = World.generate(21, 60, latency_ms=40, jitter_ms=20)
    spine, owner = spine_for(world)
    store = OutageStore(spine, kind)
    down_for = 90.0  # past the writer's and the loader's back-off caps (30 s, 60 s)
    samples: list[SupervisorStatistics] = []
    async with open_sim_connector(world, SimStats()) as connector:
        supervisor = pipeline(
            sim_pipeline, world, store, owner, connector, name="test:1", drain=True
        )

        async def sample() -> None:
            while True:
                samples.append(supervisor.statistics())
                await trio.sleep(0.5)

        with trio.fail_after(3600):
            async with trio.open_nursery() as nursery:
                await nursery.start(supervisor.run)
                nursery.start_soon(sample)
                await wait_until_terminal(store, 10)
                store.cut()
                committed_at_cut = len(store.terminal)
                writes_at_cut = len(store.writes)
                await trio.sleep(down_for)
                # Nothing committed while the database was away; the writer kept trying (the
                # loader waits for credits the unwritten records hold; it renews their leases).
                assert len(store.terminal) == committed_at_cut
                assert len(store.writes) == writes_at_cut
                assert store.failed_calls["write_outcomes"] >= 2
                assert store.failed_calls["renew_leases"] >= 1
                during = samples[-1]
                assert during.writer.failing_since is not None
                assert during.writer.buffered > 0
                store.restore()
                restored_at = trio.current_time()
                await wait_until_terminal(store, committed_at_cut + 1)
                recovery = trio.current_time() - restored_at
                await supervisor.finished.wait()
                nursery.cancel_scope.cancel()

    # Back at work within the writer's longest back-off (retry_max) of the database's return.
    assert 0 < recovery <= WRITER.retry_max + WRITER.flush_interval
    assert ground_truth_problems(world, store, spine, owner) == {}
    final = supervisor.statistics()
    assert final.writer.retries >= 2
    assert final.writer.already_terminal == 0
    # Bounded all along: the writer never held more than a batch, nor the pipeline more than
    # max_in_flight records, outage or not.
    assert max(s.writer.buffered for s in samples) <= WRITER.batch_size
    assert max(s.in_flight for s in samples) <= MAX_IN_FLIGHT
    assert supervisor.credits.in_flight == 0 and store.leases == {}


@pytest.mark.parametrize("kind", KINDS)
async def test_a_stop_during_a_database_outage_ends_in_bounded_time_and_loses_nothing(
    autojump_clock: trio.testing.MockClock, sim_pipeline: SimPipelines, kind: str
) -> None:
    world = World.generate(22, 60, latency_ms=40, jitter_ms=20)
    spine, owner = spine_for(world)
    store = OutageStore(spine, kind)
    usage = MemoryUsageStore()
    drain_deadline = 2.0
    settings = PipelineSettings(owner="x")
    assert trio.current_time() == 0.0  # ORIGIN
    async with open_sim_connector(world, SimStats()) as connector:
        first = pipeline(
            sim_pipeline, world, store, owner, connector, name="first:1", drain=False,
            drain_deadline=drain_deadline, throttles=budgets(usage),
        )  # fmt: skip
        with capture_logs() as logs, trio.fail_after(3600):
            async with trio.open_nursery() as nursery:
                await nursery.start(first.run)
                await wait_until_terminal(store, 10)
                store.cut()
                usage.fail_calls = 1_000_000
                await trio.sleep(2.5)  # the writer holds a batch it cannot commit
                committed = set(store.terminal)
                stopped_at = trio.current_time()
                first.request_stop()
                await first.finished.wait()
                took = trio.current_time() - stopped_at
                nursery.cancel_scope.cancel()
        events = [e["event"] for e in logs]
        # The timeline of the stop: the drain deadline cancels the pipeline; the writer's last
        # flush is retried for final_flush_timeout; then the lease release fails at once
        # (reset) or is given up after release_timeout (blackhole: the call hangs 15 s). Each
        # stage is bounded, so the whole stop is too.
        release = settings.release_timeout if kind == "blackhole" else 0.0
        expected = drain_deadline + WRITER.final_flush_timeout + release
        assert took == pytest.approx(expected, abs=1e-6), (took, Counter(events))
        assert "drain_deadline_reached" in events
        # The database is away: nothing is released, the leases lapse on their own.
        released = "lease_release_timeout" if kind == "blackhole" else "lease_release_failed"
        assert released in events and "leases_released" not in events
        assert store.released == []
        # Nor can the unspent day budgets be given back: they stay spent until midnight.
        assert "budget_refund_failed" in events
        held = {oid for oid, (holder, _) in store.leases.items() if holder == "first:1"}
        assert held, "the stop caught no record in flight"
        assert set(store.terminal) == committed  # nothing committed while the database was away

        # The database comes back; once the first run's leases lapse, a second one drains the
        # spine: every record as the ground truth has it, nothing written twice.
        store.restore()
        usage.fail_calls = 0
        await trio.sleep(LEASE_SECONDS)
        second = pipeline(
            sim_pipeline,
            world,
            store,
            owner,
            connector,
            name="second:1",
            drain=True,
            throttles=budgets(usage),
        )
        with trio.fail_after(3600):
            async with trio.open_nursery() as nursery:
                await nursery.start(second.run)
                await second.finished.wait()
                nursery.cancel_scope.cancel()
    assert ground_truth_problems(world, store, spine, owner) == {}
    assert second.statistics().writer.already_terminal == 0
    blocklisted = {
        oid for oid in spine if world.domain(owner[oid]).behaviour is Behaviour.BLOCKLIST
    }
    assert set(store.terminal) | blocklisted == set(spine)


async def test_a_deadline_that_cuts_a_session_off_mid_greeting_closes_it(
    autojump_clock: trio.testing.MockClock,
) -> None:
    # What a stop's drain deadline does to a session still waiting for a slow (tarpit, 3 s)
    # greeting: the cancellation goes through, and the connection is closed, not leaked. (The
    # real-time SIGTERM scenarios hit this only when a kill happened to land there.)
    world = World.generate(23, 10, mix={Behaviour.TARPIT: 1.0}, latency_ms=40, jitter_ms=0)
    host = next(h for h in world.live_hosts() if h.behaviour is Behaviour.TARPIT)
    assert host.tarpit_delay == 3.0
    stats = SimStats()
    async with open_sim_connector(world, stats) as connector:
        with trio.move_on_after(1.0) as scope:
            await connect_session(
                connector,
                host.ip,
                SIM_POOL.port,
                helo_name=SIM_POOL.helo_name,
                connect_timeout=5.0,
                command_timeout=10.0,
                starttls="never",
            )
        assert scope.cancelled_caught
        # The server notices the close when its tarpit ends and it greets no one.
        await trio.sleep(host.tarpit_delay)
        assert stats.open[host.name] == 0
