"""End to end: the daemon stopped (SIGTERM) and killed (SIGKILL) part-way through a run, then
restarted to completion, never writes an outcome twice and leaves the ground truth behind."""

from __future__ import annotations

import signal
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest_db import Db, insert_spine
from e2e_support import (
    DaemonProcess,
    SimProcess,
    Snapshot,
    daemon_sections,
    db_val,
    drain_exit_code,
    expected_label,
    mismatches,
    seed_spine,
    snapshot,
    write_config,
)

from ct_actors.actors.dispatcher import DispatchSettings
from ct_actors.actors.loader import LoaderSettings
from ct_actors.actors.pool_settings import PoolSettings
from ct_actors.actors.supervisor import PipelineSettings, Supervisor
from ct_actors.db import DatabaseUnavailable, WorkQueue
from ct_actors.demo.spine import spine_rows
from ct_actors.sim.stats import SimStats
from ct_actors.sim.world import Behaviour, World
from ct_actors.testing import open_sim_connector
from tests.pipeline_support import SimPipelines

pytestmark = [pytest.mark.e2e, pytest.mark.db]

StartSim = Callable[..., SimProcess]
StartDaemon = Callable[..., DaemonProcess]

LEASE_SECONDS = 3


def terminal_ids(snap: Snapshot) -> set[uuid.UUID]:
    ready = {i for i, ct in snap.targets.items() if ct["execution_status"] == "ready"}
    return ready | set(snap.errors)


def terminal_logged(daemon: DaemonProcess) -> list[str]:
    return [e["outreach_id"] for e in daemon.outcomes() if e["outcome"] in ("PASS", "FAIL")]


def wait_for_leases_to_expire(db_url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while db_val(db_url, "SELECT count(*) FROM ct_actors.lease WHERE expires_at > now()"):
        assert time.monotonic() < deadline, "the killed daemon's leases never expired"
        time.sleep(0.2)


@pytest.mark.timeout(300)
def test_stop_kill_and_restart_write_each_outcome_once(
    migrated_db: str, start_sim: StartSim, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    seed = 8
    sim = start_sim(seed=seed, domains=150, latency_ms=20, jitter_ms=5)
    world = sim.world
    rows = spine_rows(world, seed)
    seed_spine(migrated_db, world, rows)
    expected = {r.outreach_id: expected_label(world, r) for r in rows}
    n_terminal = sum(1 for label in expected.values() if label != "PENDING")

    def config(name: str, **daemon: float) -> Path:
        # A small pipeline so that a stop leaves most of the spine untouched.
        sections = daemon_sections(
            migrated_db,
            world,
            lease_seconds=LEASE_SECONDS,
            probe={"max_in_flight": 32, "claim_batch": 16},
            daemon=dict(daemon),
        )
        return write_config(tmp_path / f"{name}.toml", sections)

    # 1. SIGTERM part-way, with a drain deadline short enough to cut records off mid-probe.
    first = start_daemon(config("first", drain_deadline=1.0), "run")
    assert first.wait_for_outcomes(30, timeout=60), first.diagnostics()
    stopped_at = time.monotonic()
    first.signal(signal.SIGTERM)
    assert first.wait(30) == 0, first.diagnostics()
    assert time.monotonic() - stopped_at < 10, "SIGTERM did not stop the daemon promptly"
    assert first.events("stopping") and first.events("daemon_stopped")
    snap1 = snapshot(migrated_db)
    done1 = terminal_ids(snap1)
    assert 0 < len(done1) < n_terminal
    # Nothing unfinished may still be held: released leases are claimable at once. (Checked at
    # the end, so that a failure here does not hide the rest.)
    stranded = [lease for lease in snap1.leases.values() if lease["live"]]
    for released in first.events("leases_released"):
        assert released["records"] > 0

    # 2. SIGKILL part-way: no chance to release anything.
    second = start_daemon(config("second"), "run")
    assert second.wait_for_outcomes(30, timeout=60), second.diagnostics()
    second.signal(signal.SIGKILL)
    assert second.wait(10) == -signal.SIGKILL
    snap2 = snapshot(migrated_db)
    done2 = terminal_ids(snap2)
    assert done1 < done2 and len(done2) < n_terminal
    killed_owner = f"{socket.gethostname()}:{second.pid}"
    held = [x for x in snap2.leases.values() if x["live"] and x["owner"] == killed_owner]
    assert held, "the killed daemon held no leases: nothing was in flight"
    # The crashed daemon's leases lapse after database.lease_seconds.
    wait_for_leases_to_expire(migrated_db, timeout=LEASE_SECONDS + 10)
    # ...and its notes of outcomes committed but not logged are older than that by now: the
    # next daemon (another owner name) logs them on start.
    time.sleep(LEASE_SECONDS)

    # 3. Restart and drain to completion.
    third = start_daemon(config("third"), "run", "--drain")
    # The blocklisted records stay deferred: the drain ends with them held back (exit 4).
    assert third.wait(120) == drain_exit_code(expected.values()), third.diagnostics()
    sim.stop()
    final = snapshot(migrated_db)

    assert mismatches(world, rows, final) == []
    # Exactly one terminal outcome per record (or a deferred blocklist record), never two error
    # rows, and every count as the ground truth has it.
    for row in rows:
        errors = final.errors.get(row.outreach_id, [])
        ct = final.targets.get(row.outreach_id)
        assert len(errors) <= 1
        if expected[row.outreach_id] == "PENDING":
            assert row.domain is not None
            assert world.domain(row.domain).behaviour is Behaviour.BLOCKLIST
            assert not errors and (ct is None or ct["execution_status"] == "pending")
            assert final.leases[row.outreach_id]["deferred"]
        elif expected[row.outreach_id].startswith("FAIL"):
            assert ct is not None and ct["execution_status"] == "failed" and len(errors) == 1
        else:
            assert ct is not None and ct["execution_status"] == "ready" and not errors
    assert len(terminal_ids(final)) == n_terminal
    assert Counter(final.label(r.outreach_id) for r in rows) == Counter(expected.values())

    # Nothing written twice: across the three runs no record was committed (logged as a PASS or
    # FAIL outcome) more than once, and the last run found nothing of the earlier runs' to redo.
    logged = terminal_logged(first) + terminal_logged(second) + terminal_logged(third)
    assert [i for i, n in Counter(logged).items() if n > 1] == []
    assert not {uuid.UUID(i) for i in terminal_logged(third)} & done2
    assert third.events("already_processed") == []
    (stats,) = third.events("stats_final")
    assert stats["writer"]["already_terminal"] == 0
    # Every committed outcome has its canonical line somewhere: the killed run's outcomes
    # committed between its commit and its logging are logged by the third run, `recovered`
    # (its leases, and so its notes, are older than lease_seconds by then).
    recovered = [e["outreach_id"] for e in third.recovered()]
    assert {uuid.UUID(i) for i in logged + recovered} == terminal_ids(final)
    assert {uuid.UUID(i) for i in recovered} <= done2 - done1
    assert all(e["committed_by"] == killed_owner for e in third.recovered())

    assert stranded == []


# ─── the same properties, pinned down deterministically in-process ───────────────────────────


class SlowClaimAnswers:
    """The real work queue, except that each claim's answer reaches the daemon `delay` seconds after
    the database committed it (a slow link, or a busy event loop)."""

    def __init__(self, store: WorkQueue, delay: float) -> None:
        self._store = store
        self._delay = delay
        self.committed = trio.Event()

    async def claim(self, owner: str, limit: int, lease_seconds: float) -> list[Any]:
        claimed: list[Any] = await self._store.claim(owner, limit, lease_seconds)
        if claimed:
            self.committed.set()
        await trio.sleep(self._delay)
        return claimed

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)


def in_process_supervisor(
    pipelines: SimPipelines, store: Any, world: World, connector: Any, *, drain: bool
) -> Supervisor:
    """The pipeline on the in-memory world and a real database (`store`)."""
    return pipelines.build(
        world,
        store,
        connector,
        settings=PipelineSettings(
            owner=f"in-process:{uuid.uuid4().hex[:8]}",
            max_in_flight=16,
            drain_deadline=5.0,
            loader=LoaderSettings(claim_batch=16, lease_seconds=300.0, idle_poll=0.1),
            dispatch=DispatchSettings(mode="mx-only"),
        ),
        pool=PoolSettings(),
        max_connections=4,
        transient_db_errors=(DatabaseUnavailable,),
        drain=drain,
    )


async def test_a_stop_while_a_claim_is_answered_strands_no_lease(
    queue: WorkQueue, db: Db, sim_pipeline: SimPipelines
) -> None:
    world = World.generate(1, 10, latency_ms=0, jitter_ms=0)
    names = sorted(world.domains)
    await insert_spine(db, len(names), domain=names.__getitem__)
    slow = SlowClaimAnswers(queue, delay=5.0)
    async with open_sim_connector(world, SimStats()) as connector:
        supervisor = in_process_supervisor(sim_pipeline, slow, world, connector, drain=False)
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            with trio.fail_after(10):
                await slow.committed.wait()
            supervisor.request_stop()
            with trio.fail_after(20):
                await supervisor.finished.wait()
    # The claim committed leases the daemon never saw; stopping must not leave them live (else
    # the records wait out database.lease_seconds, 300 s by default, after every restart).
    stranded = await db.fetch("SELECT outreach_id FROM ct_actors.lease WHERE expires_at > now()")
    assert stranded == []


async def test_drain_finishes_records_a_crashed_daemon_still_leases(
    queue: WorkQueue, db: Db, sim_pipeline: SimPipelines
) -> None:
    world = World.generate(2, 6, latency_ms=0, jitter_ms=0)
    names = sorted(world.domains)
    ids = await insert_spine(db, len(names), domain=names.__getitem__)
    # A daemon that was killed a moment ago: its leases are live for two more seconds.
    await db.execute(
        "INSERT INTO ct_actors.lease (outreach_id, owner, expires_at) "
        "SELECT unnest($1::uuid[]), 'crashed:1', now() + interval '2 seconds'",
        ids[:2],
    )
    async with open_sim_connector(world, SimStats()) as connector:
        supervisor = in_process_supervisor(sim_pipeline, queue, world, connector, drain=True)
        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                await nursery.start(supervisor.run)
                await supervisor.finished.wait()
    # `run --drain` exits "once nothing is pending": the crashed daemon's records are pending.
    assert await queue.pending_count() == 0
