"""End to end under faults: the daemon SIGKILLed at random moments and restarted again and
again, and PostgreSQL going away mid-run (with and without a SIGTERM while it is away).

Whatever happens, every record ends with exactly one terminal outcome (or stays pending when the
world defers it), equal to the world's ground truth; nothing is written twice (no record is
logged as committed by two runs); nothing is half-written (a FAIL is its company_target row and
its error row, or neither; a finished record holds no lease); and an outcome the daemon logged
is in the database.

The database goes away in three ways: `lockout` (ALTER DATABASE ... ALLOW_CONNECTIONS false and
every backend terminated, as an operator would), `network` (a TcpProxy between the daemon and
PostgreSQL resets every connection: a crashed or refusing host) and `blackhole` (the proxy goes
silent: a partition). Other suites share the server, so a lockout is always lifted in a
`finally` (and by the fixture), before the test's database is dropped.

Real time is spent only where a real process is the point: each outage scenario runs once as a
smoke test (`network` waited out, SIGTERM in a `blackhole`), on a small spine. What the real
store makes of each kind of cut (DatabaseUnavailable, then recovery) is checked in-process in a
second each; the pipeline's timelines through an outage, for every kind, are MockClock tests
(test_pipeline_db_outage.py).

The randomness (kill moments, outage length) is seeded: CT_E2E_FAULT_SEED=<n> replays a
failure; every assertion message carries the seed and the plan. See test_e2e_restart.py for the
deterministic stop/kill/restart scenario these build on.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import pytest
import trio
from e2e_support import (
    DaemonProcess,
    SimProcess,
    Snapshot,
    TcpProxy,
    daemon_sections,
    db_val,
    drain_exit_code,
    expected_label,
    json_events,
    let_in_database,
    lock_out_database,
    mismatches,
    seed_spine,
    snapshot,
    write_config,
)

from ct_actors.db.driver import open_database
from ct_actors.db.errors import DatabaseUnavailable
from ct_actors.db.work_queue import WorkQueue
from ct_actors.demo.spine import SpineRow, spine_rows
from ct_actors.sim.world import Behaviour, World

pytestmark = [pytest.mark.e2e, pytest.mark.db]

StartSim = Callable[..., SimProcess]
StartDaemon = Callable[..., DaemonProcess]

SEED = int(os.environ.get("CT_E2E_FAULT_SEED", "20251129"))
LEASE_SECONDS = 3
# A small pipeline: a kill or an outage catches most of the spine unfinished.
PROBE = {"max_in_flight": 32, "claim_batch": 16}
WRITER = {"batch_size": 20, "flush_interval": 0.1}
# After the drain deadline a stop still runs the writer's final flush and the supervisor's lease
# release, daemon.stop_timeout at most each, refunds the day/month budgets and closes the pool,
# half of it at most each. The SIGTERM scenario sets it short (the default, 10 s, would only
# make the daemon wait longer for a database that never answers).
STOP_TIMEOUT = 2.0
# A claim in flight when the stop comes is shielded for up to claim_timeout, and a statement
# cancelled on a silent connection unwinds only after database.command_timeout (15 s by
# default; the SIGTERM scenario sets it shorter, as an operator may).
CLAIM_TIMEOUT = 15.0
COMMAND_TIMEOUT = 3.0


# ─── checks shared by the scenarios ──────────────────────────────────────────────────────────


def terminal_ids(snap: Snapshot) -> set[uuid.UUID]:
    ready = {i for i, ct in snap.targets.items() if ct["execution_status"] == "ready"}
    return ready | set(snap.errors)


def committed_lines(daemon: DaemonProcess) -> list[dict[str, Any]]:
    """The daemon's canonical PASS/FAIL `outcome` lines: each one is logged after its commit."""
    return [e for e in daemon.outcomes() if e["outcome"] in ("PASS", "FAIL")]


def logged_label(event: dict[str, Any]) -> str:
    """An `outcome` line as a label comparable with `Snapshot.label`."""
    if event["outcome"] == "FAIL":
        return f"FAIL {event['code']}"
    catchall = " catchall" if event["is_catchall"] else ""
    return f"PASS {event['method_type']} {event['confidence']:.2f}{catchall}"


def half_written(snap: Snapshot) -> list[str]:
    """Rows that a crash or an outage must never leave behind (empty if none)."""
    problems = []
    terminal = terminal_ids(snap)
    for oid in sorted(terminal | set(snap.targets), key=str):
        ct = snap.targets.get(oid)
        errors = snap.errors.get(oid, [])
        status = None if ct is None else ct["execution_status"]
        open_errors = [e for e in errors if e["resolved_at"] is None]
        if len(open_errors) > 1:
            problems.append(f"{oid}: {len(open_errors)} open error rows")
        if status == "ready" and errors:
            problems.append(f"{oid}: a ready row and {len(errors)} error row(s)")
        if status == "failed" and len(open_errors) != 1:
            problems.append(f"{oid}: a failed row without its error row")
        if errors and status != "failed":
            problems.append(f"{oid}: an error row without its failed company_target row")
        if oid in terminal and oid in snap.leases:
            problems.append(f"{oid}: terminal, but still has a lease row")
    return problems


def ground_truth_problems(world: World, rows: Sequence[SpineRow], snap: Snapshot) -> list[str]:
    """Exactly one terminal outcome per record (or a deferred blocklist record), as the ground
    truth has it; empty if all is well."""
    problems = [str(m) for m in mismatches(world, rows, snap)]
    for row in rows:
        oid = row.outreach_id
        errors = snap.errors.get(oid, [])
        ct = snap.targets.get(oid)
        want = expected_label(world, row)
        if want == "PENDING":
            blocklisted = (
                row.domain is not None and world.domain(row.domain).behaviour is Behaviour.BLOCKLIST
            )
            lease = snap.leases.get(oid)
            if (
                not blocklisted
                or errors
                or (ct is not None and ct["execution_status"] != "pending")
            ):
                problems.append(f"{oid}: expected a deferred blocklist record, got {ct} {errors}")
            elif lease is None or not lease["deferred"]:
                problems.append(f"{oid}: blocklist record not deferred (lease {lease})")
        elif want.startswith("FAIL"):
            if ct is None or ct["execution_status"] != "failed" or len(errors) != 1:
                problems.append(
                    f"{oid}: expected one FAIL, got {ct and ct['execution_status']} "
                    f"and {len(errors)} error rows"
                )
        elif ct is None or ct["execution_status"] != "ready" or errors:
            problems.append(
                f"{oid}: expected one PASS, got {ct and ct['execution_status']} "
                f"and {len(errors)} error rows"
            )
    return problems


def logged_but_not_committed(daemons: Sequence[DaemonProcess], snap: Snapshot) -> list[str]:
    """PASS/FAIL lines whose record is not in the database with that outcome."""
    return [
        f"{e['outreach_id']}: logged {logged_label(e)!r}, database has "
        f"{snap.label(uuid.UUID(e['outreach_id']))!r}"
        for d in daemons
        for e in committed_lines(d)
        if snap.label(uuid.UUID(e["outreach_id"])) != logged_label(e)
    ]


def logged_twice(daemons: Sequence[DaemonProcess]) -> list[str]:
    logged = Counter(e["outreach_id"] for d in daemons for e in committed_lines(d))
    return sorted(oid for oid, n in logged.items() if n > 1)


def wait_for_leases_to_expire(db_url: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while db_val(db_url, "SELECT count(*) FROM ct_actors.lease WHERE expires_at > now()"):
        assert time.monotonic() < deadline, "leases were still live after the timeout"
        time.sleep(0.2)


def seeded_world(
    start_sim: StartSim, db_url: str, *, domains: int, seed: int, latency_ms: float = 20
) -> tuple[World, list[SpineRow]]:
    sim = start_sim(seed=seed, domains=domains, latency_ms=latency_ms, jitter_ms=5)
    rows = spine_rows(sim.world, seed)
    seed_spine(db_url, sim.world, rows)
    return sim.world, rows


def pipeline_config(path: Path, db_url: str, world: World, **sections: dict[str, Any]) -> Path:
    config = daemon_sections(
        db_url, world, lease_seconds=LEASE_SECONDS, probe=dict(PROBE), writer=dict(WRITER)
    )
    for name, keys in sections.items():
        config.setdefault(name, {}).update(keys)
    return write_config(path, config)


# ─── 1. SIGKILL at random moments, restart, repeat; then drain ──────────────────────────────

# When a run is killed: during start-up (before it can have written anything), right after
# its first commit, or somewhere mid-run.
KILL_MOMENTS = ("startup", "first-commit", "mid-run", "mid-run")


@pytest.mark.timeout(180)
def test_sigkill_at_random_moments_never_loses_or_repeats_an_outcome(
    migrated_db: str, start_sim: StartSim, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    world, rows = seeded_world(start_sim, migrated_db, domains=150, seed=SEED % 997)
    expected = {r.outreach_id: expected_label(world, r) for r in rows}
    n_terminal = sum(1 for label in expected.values() if label != "PENDING")
    config = pipeline_config(tmp_path / "daemon.toml", migrated_db, world)

    plan: list[tuple[str, int, float]] = []
    for moment in rng.sample(KILL_MOMENTS, len(KILL_MOMENTS)):
        if moment == "startup":
            plan.append((moment, 0, rng.uniform(0.05, 1.0)))
        elif moment == "first-commit":
            plan.append((moment, 1, rng.uniform(0.0, 0.3)))
        else:
            plan.append((moment, rng.randint(5, 50), rng.uniform(0.0, 0.8)))
    where = f"CT_E2E_FAULT_SEED={SEED} plan={plan}"

    killed: list[DaemonProcess] = []
    done: set[uuid.UUID] = set()
    held_at_a_kill = 0
    progress: list[str] = []
    for i, (moment, outcomes, delay) in enumerate(plan):
        daemon = start_daemon(config, "run")
        if outcomes:
            # Not asserted: near the end of the spine a run may find too little to do.
            daemon.wait_for_outcomes(outcomes, timeout=30)
        time.sleep(delay)
        assert daemon.proc.poll() is None, f"run {i} exited by itself ({where})\n" + (
            daemon.diagnostics()
        )
        daemon.signal(signal.SIGKILL)
        assert daemon.wait(10) == -signal.SIGKILL
        killed.append(daemon)

        snap = snapshot(migrated_db)
        assert half_written(snap) == [], f"after kill {i} ({moment}); {where}"
        now_done = terminal_ids(snap)
        assert done <= now_done, f"kill {i} ({moment}) lost outcomes; {where}"
        done = now_done
        owner = f"{socket.gethostname()}:{daemon.pid}"
        held = sum(1 for x in snap.leases.values() if x["live"] and x["owner"] == owner)
        held_at_a_kill += held
        progress.append(f"{moment}: {len(committed_lines(daemon))} logged, {held} held")

    assert 0 < len(done) < n_terminal, f"the kills did not land mid-work; {where}"
    assert held_at_a_kill, f"no kill caught a record in flight; {where}"

    # Restart and drain: `run --drain` waits for the killed runs' leases to lapse.
    final_run = start_daemon(config, "run", "--drain")
    assert final_run.wait(120) == drain_exit_code(expected.values()), final_run.diagnostics()
    final = snapshot(migrated_db)
    runs = [*killed, final_run]

    assert ground_truth_problems(world, rows, final) == [], where
    assert half_written(final) == [], where
    assert len(terminal_ids(final)) == n_terminal, where
    assert Counter(final.label(r.outreach_id) for r in rows) == Counter(expected.values())
    # Nothing written twice: no record was logged as committed (PASS/FAIL) by two runs, the last
    # run redid nothing of the killed runs', and what any run logged is what the database holds.
    assert logged_twice(runs) == [], where
    assert not {uuid.UUID(e["outreach_id"]) for e in committed_lines(final_run)} & done, where
    assert logged_but_not_committed(runs, final) == [], where
    assert final_run.events("already_processed") == [], where
    (stats,) = final_run.events("stats_final")
    assert stats["writer"]["already_terminal"] == 0, where
    print(
        f"\n[{where}] kills: {progress}; terminal after the kills {len(done)}/{n_terminal}; "
        f"the drain run committed {len(committed_lines(final_run))}"
    )


# ─── 2./3. the database goes away mid-run ────────────────────────────────────────────────────


class Outage(Protocol):
    daemon_url: str  # what the daemon's config points at

    def cut(self) -> None: ...
    def restore(self) -> None: ...


class Lockout:
    """The operator's way: `ALTER DATABASE ... ALLOW_CONNECTIONS false` and terminate every
    backend; reconnecting fails with SQLSTATE 55000 ("database ... is not currently accepting
    connections") until `ALLOW_CONNECTIONS true`."""

    def __init__(self, url: str) -> None:
        self._url = url
        self.daemon_url = url

    def cut(self) -> None:
        lock_out_database(self._url)

    def restore(self) -> None:
        let_in_database(self._url)


class NetworkCut:
    """The database host going away: the daemon talks to PostgreSQL through a TcpProxy whose
    connections are reset (established and new) until it is restored; or, as a `blackhole`,
    stay open and silent (a partition: the daemon only sees its own timeouts)."""

    def __init__(self, proxy: TcpProxy, url: str, *, blackhole: bool = False) -> None:
        self._proxy = proxy
        self._blackhole = blackhole
        self.daemon_url = proxy.url(url)

    def cut(self) -> None:
        self._proxy.cut(blackhole=self._blackhole)

    def restore(self) -> None:
        self._proxy.restore()


# The store is checked against every kind of cut; the daemon, in real time, once per scenario.
OUTAGE_KINDS = ["lockout", "network", "blackhole"]


@pytest.fixture
def outage(request: pytest.FixtureRequest, migrated_db: str) -> Iterator[Outage]:
    """The database cut of the scenario; whatever happens it is undone before the test's
    database is dropped (migrated_db is torn down after this fixture)."""
    if request.param == "lockout":
        lockout = Lockout(migrated_db)
        try:
            yield lockout
        finally:
            let_in_database(migrated_db)
    else:
        with TcpProxy.for_url(migrated_db) as proxy:
            yield NetworkCut(proxy, migrated_db, blackhole=request.param == "blackhole")


def since(daemon: DaemonProcess, mark: int, *names: str) -> list[dict[str, Any]]:
    """The daemon's events from stdout line `mark` on (named `names`, if any)."""
    events = json_events(daemon.out.lines[mark:])
    return [e for e in events if not names or e.get("event") in names]


@pytest.mark.parametrize("kind", OUTAGE_KINDS)
async def test_the_store_reports_each_outage_as_unavailable_and_recovers(
    aio_loop: Any, migrated_db: str, kind: str
) -> None:
    """The real work queue on the driver (asyncpg pool) against each real cut: every call fails with
    DatabaseUnavailable (a lockout's reconnect as SQLSTATE 55000; a blackholed call after
    database.command_timeout), never anything else; once the database is back a retry or two
    (stale pooled connections) succeed on the same store."""
    await trio.to_thread.run_sync(
        db_val,
        migrated_db,
        "INSERT INTO outreach.outreach (outreach_id, domain) VALUES ($1, 'a.example') RETURNING 1",
        uuid.uuid4(),
    )
    command_timeout = 1.0
    async with contextlib.AsyncExitStack() as stack:
        outage: Outage
        if kind == "lockout":
            stack.push_async_callback(trio.to_thread.run_sync, let_in_database, migrated_db)
            outage = Lockout(migrated_db)
        else:
            proxy = stack.enter_context(TcpProxy.for_url(migrated_db))
            outage = NetworkCut(proxy, migrated_db, blackhole=kind == "blackhole")
        url = outage.daemon_url
        database = await open_database(
            url, command_timeout=command_timeout, connect_timeout=1.0
        )
        store = WorkQueue(database)
        try:
            assert await store.pending_count() == 1
            await trio.to_thread.run_sync(outage.cut)
            errors: list[DatabaseUnavailable] = []
            for _ in range(3):
                started = trio.current_time()
                with pytest.raises(DatabaseUnavailable) as caught:
                    await store.claim("a", 10, 60)
                errors.append(caught.value)
                assert trio.current_time() - started < command_timeout + 2
            if kind == "lockout":
                assert "55000" in [e.sqlstate for e in errors], [repr(e) for e in errors]
            await trio.to_thread.run_sync(outage.restore)
            for attempt in range(4):
                try:
                    claimed = await store.claim("a", 10, 60)
                    break
                except DatabaseUnavailable:
                    assert attempt < 3, "the store never recovered"
            assert len(claimed) == 1
        finally:
            await database.aclose()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("outage", ["network"], indirect=True)
def test_a_database_outage_mid_run_is_waited_out(
    outage: Outage,
    migrated_db: str,
    start_sim: StartSim,
    start_daemon: StartDaemon,
    tmp_path: Path,
) -> None:
    rng = random.Random(SEED + 1)
    down_for = rng.uniform(2.0, 3.0)
    world, rows = seeded_world(start_sim, migrated_db, domains=150, seed=SEED % 991)
    where = f"CT_E2E_FAULT_SEED={SEED} down_for={down_for:.2f}s"
    config = pipeline_config(
        tmp_path / "daemon.toml", outage.daemon_url, world, log={"stats_interval": 0.5}
    )

    daemon = start_daemon(config, "run", "--drain")
    assert daemon.wait_for_outcomes(rng.randint(20, 60), timeout=60), daemon.diagnostics()
    mark = len(daemon.out.lines)
    outage.cut()
    cut_at = time.monotonic()
    try:
        time.sleep(1.0)  # anything committed before the cut has been logged by now
        committed_at_cut = len(daemon.outcomes())
        while time.monotonic() - cut_at < down_for:
            assert daemon.proc.poll() is None, (
                f"the daemon exited {time.monotonic() - cut_at:.1f}s into the outage; {where}\n"
                + daemon.diagnostics()
            )
            time.sleep(0.2)
        waiting = since(daemon, mark, "writer_retry", "claim_failed")
        assert waiting, f"no writer_retry/claim_failed while the database was down; {where}"
        assert len(daemon.outcomes()) == committed_at_cut, "outcomes logged with no database"
    finally:
        outage.restore()
    restored_at = time.monotonic()
    recovered = daemon.wait_for_outcomes(committed_at_cut + 1, timeout=60)
    recovery = time.monotonic() - restored_at
    assert recovered, f"no commit after the database came back; {where}\n" + daemon.diagnostics()
    held_back = drain_exit_code(expected_label(world, r) for r in rows)
    assert daemon.wait(120) == held_back, daemon.diagnostics()

    final = snapshot(migrated_db)
    assert ground_truth_problems(world, rows, final) == [], where
    assert half_written(final) == [], where
    assert logged_twice([daemon]) == [], where
    assert logged_but_not_committed([daemon], final) == [], where
    # Bounded: the writer never held more than a batch, nor the pipeline more than
    # max_in_flight records, outage or not.
    stats = daemon.events("stats") + daemon.events("stats_final")
    assert stats
    assert max(s["writer"]["buffered"] for s in stats) <= WRITER["batch_size"]
    assert max(s["in_flight"] for s in stats) <= PROBE["max_in_flight"]
    (last,) = daemon.events("stats_final")
    assert last["writer"]["retries"] >= 1 or last["loader"]["claim_errors"] >= 1
    seen = Counter(e["event"] for e in since(daemon, mark) if e.get("level") != "info")
    during = [e for e in since(daemon, mark, "stats") if e["writer"]["failing_since"] is not None]
    print(
        f"\n[{where}] recovered {recovery:.2f}s after the database came back; warnings during "
        f"and after the outage: {dict(seen)}; writer retries {last['writer']['retries']}, "
        f"claim errors {last['loader']['claim_errors']}, reclaimed own "
        f"{last['loader']['reclaimed_own']}, already terminal {last['writer']['already_terminal']}"
        f"; while failing: max writer buffered "
        f"{max((e['writer']['buffered'] for e in during), default=None)}, max in flight "
        f"{max((e['in_flight'] for e in during), default=None)}"
        f"; stderr: {len(daemon.err.lines)} lines, e.g. {daemon.err.lines[:1]}"
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize("outage", ["blackhole"], indirect=True)
def test_sigterm_during_a_database_outage_exits_in_bounded_time(
    request: pytest.FixtureRequest,
    outage: Outage,
    migrated_db: str,
    start_sim: StartSim,
    start_daemon: StartDaemon,
    tmp_path: Path,
) -> None:
    drain_deadline = 2.0
    world, rows = seeded_world(start_sim, migrated_db, domains=120, seed=SEED % 983)
    where = f"CT_E2E_FAULT_SEED={SEED}"

    def config(name: str, url: str) -> Path:
        return pipeline_config(
            tmp_path / f"{name}.toml",
            url,
            world,
            daemon={"drain_deadline": drain_deadline, "stop_timeout": STOP_TIMEOUT},
            database={"command_timeout": COMMAND_TIMEOUT},
        )

    first = start_daemon(config("first", outage.daemon_url), "run")
    assert first.wait_for_outcomes(30, timeout=60), first.diagnostics()
    mark = len(first.out.lines)
    outage.cut()
    try:
        # The writer is holding a batch it cannot commit when the stop comes (in a blackhole
        # it is still waiting for the database's answer: no writer_retry yet).
        time.sleep(2.5)
        retrying = since(first, mark, "writer_retry")
        assert retrying or request.node.callspec.params["outage"] == "blackhole", (
            f"no writer_retry after the cut; {where}\n" + first.diagnostics()
        )
        stopped_at = time.monotonic()
        first.signal(signal.SIGTERM)
        # Every stage of a stop is bounded: the drain and the writer's last flush, or a claim
        # in flight (whichever is longer: they run side by side), then the lease release, the
        # budget refunds (all tools together), closing the pool.
        bound = (
            max(drain_deadline + STOP_TIMEOUT, CLAIM_TIMEOUT + COMMAND_TIMEOUT)
            + STOP_TIMEOUT  # the lease release
            + STOP_TIMEOUT / 2  # the budget refunds
            + STOP_TIMEOUT / 2  # closing the pool
            + 5
        )
        rc = first.wait(bound)
        took = time.monotonic() - stopped_at
    finally:
        outage.restore()
    assert rc == 0, f"exit {rc}; {where}\n" + first.diagnostics()
    names = [e["event"] for e in since(first, mark)]
    assert "drain_deadline_reached" in names and "daemon_stopped" in names, names
    # The database is away: nothing can be released, the leases lapse on their own.
    assert "lease_release_failed" in names or "lease_release_timeout" in names, names
    assert "leases_released" not in names

    snap = snapshot(migrated_db)
    assert half_written(snap) == [], where
    assert logged_but_not_committed([first], snap) == [], where
    wait_for_leases_to_expire(migrated_db, timeout=LEASE_SECONDS + 10)

    second = start_daemon(config("second", migrated_db), "run", "--drain")
    held_back = drain_exit_code(expected_label(world, r) for r in rows)
    assert second.wait(120) == held_back, second.diagnostics()
    final = snapshot(migrated_db)
    assert ground_truth_problems(world, rows, final) == [], where
    assert half_written(final) == [], where
    assert logged_twice([first, second]) == [], where
    assert logged_but_not_committed([first, second], final) == [], where
    assert second.events("already_processed") == [], where
    print(
        f"\n[{where}] SIGTERM with the database down: exit {rc} after {took:.2f}s "
        f"(drain_deadline {drain_deadline}s); events after the cut: "
        f"{dict(Counter(n for n in names if n not in ('outcome', 'stats')))}"
    )
