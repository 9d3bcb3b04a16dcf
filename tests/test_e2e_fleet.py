"""End to end with a fleet: three real daemon processes (`ct-actors run`, each with its own
`daemon.owner`) on one database and one simulated internet, SIGKILLed, SIGTERMed and restarted
at seeded random moments while they work, then drained (`run --drain`).

What a fleet must guarantee on top of what one daemon does (test_e2e_restart, test_e2e_faults):
* every record ends with exactly one terminal outcome, the world's ground truth (blocklist
  records stay pending, deferred), and no record is logged as committed (PASS/FAIL) by two
  processes, whoever crashed when;
* the work is spread: each owner (read from its processes' `ready` lines) wrote a fair share;
* the day budgets of the registry (ct_actors.tool_usage) are one shared count: it never passes
  the registry's limit, and it is exactly what the processes spent. Each process connects with
  its own `ct_fleet.run` setting (a URL parameter) and a test-only trigger on tool_usage records
  every change with it, so each process's net reservation is known: a process that exited
  normally (SIGTERM, drain) spent exactly its `stats_final` calls; a SIGKILLed one may have
  forfeited the unspent rest of its last block, never less than the calls it logged.

Per-MX-host politeness and rates are per daemon (docs/throttles.md); they are not checked here.
The randomness (which daemon, when) is seeded: CT_E2E_FLEET_SEED=<n> replays a failure; every
assertion message carries the seed and the plan.

Also here, reproduced deterministically in-process, two bugs that `ct-actors bench
--processes N` ran into (now fixed): `smtp_port_blocked` tripping while connections to live hosts
succeed; `run --drain` exiting while another daemon's claim is in flight.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio
import trio.testing
from conftest_db import Db, insert_spine
from e2e_support import (
    DaemonProcess,
    SimProcess,
    daemon_sections,
    db_fetch,
    db_run,
    db_val,
    drain_exit_code,
    expected_label,
    seed_spine,
    snapshot,
    write_config,
)
from structlog.testing import capture_logs
from test_e2e_faults import (
    committed_lines,
    ground_truth_problems,
    half_written,
    logged_but_not_committed,
    logged_twice,
    terminal_ids,
)
from test_e2e_restart import in_process_supervisor

from ct_actors.actors.pool_manager import SmtpPoolManager
from ct_actors.db import WorkQueue
from ct_actors.db import queries as q
from ct_actors.demo.labels import expected_label as sim_expected_label
from ct_actors.demo.spine import spine_rows
from ct_actors.net.connector import Connector
from ct_actors.sim.stats import SimStats
from ct_actors.sim.world import Behaviour, World
from ct_actors.testing import FakeStore, open_sim_connector
from ct_actors.toolbox import load_toolbox
from tests.pipeline_support import SIM_POOL, SimPipelines, label, spine_for

StartSim = Callable[..., SimProcess]
StartDaemon = Callable[..., DaemonProcess]

SEED = int(os.environ.get("CT_E2E_FLEET_SEED", "20251207"))
OWNERS = ("fleet-a", "fleet-b", "fleet-c")
LEASE_SECONDS = 3
DOMAINS = 200
# Slow enough remote servers, and a small pipeline per daemon, that the run lasts ~20 s: long
# enough for the kills and restarts to land while all three work.
LATENCY_MS, JITTER_MS = 120.0, 30.0
PROBE = {"max_in_flight": 12, "claim_batch": 6}
WRITER = {"batch_size": 10, "flush_interval": 0.1}
DRAIN_DEADLINE = 4.0  # a SIGTERM may cut records off mid-probe: their leases are released
STATS_INTERVAL = 1.0  # a SIGKILLed process's last `stats` line: a lower bound of its calls
MIN_SHARE = 0.10
BUDGET_TOOLS = ("TOOL-004", "TOOL-005")  # MXLookup, SMTPCheck: both have a per_day budget

# The test-only audit of the shared budget: who changed tool_usage, by how much.
AUDIT_DDL = """
CREATE SCHEMA ct_fleet_test;
CREATE TABLE ct_fleet_test.usage_audit (
    id bigserial PRIMARY KEY,
    run text NOT NULL,
    tool_id text NOT NULL,
    scope text NOT NULL,
    window_start timestamptz NOT NULL,
    delta bigint NOT NULL
);
CREATE FUNCTION ct_fleet_test.audit_usage() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO ct_fleet_test.usage_audit (run, tool_id, scope, window_start, delta)
    VALUES (coalesce(current_setting('ct_fleet.run', true), ''), NEW.tool_id, NEW.scope,
            NEW.window_start,
            NEW.used - CASE WHEN TG_OP = 'UPDATE' THEN OLD.used ELSE 0 END);
    RETURN NULL;
END
$$;
CREATE TRIGGER ct_fleet_audit AFTER INSERT OR UPDATE ON ct_actors.tool_usage
    FOR EACH ROW EXECUTE FUNCTION ct_fleet_test.audit_usage();
"""


# While the fleet runs, half_written() (three queries, three snapshots) would race with the
# writers; this is the same pairing rule in one statement, one snapshot.
HALF_WRITTEN_NOW = """
SELECT e.outreach_id::text, 'an open error row without its failed company_target row' AS problem
  FROM outreach.company_target_errors e
  LEFT JOIN outreach.company_target ct ON ct.outreach_id = e.outreach_id
 WHERE e.resolved_at IS NULL AND ct.execution_status IS DISTINCT FROM 'failed'
UNION ALL
SELECT ct.outreach_id::text, 'a failed company_target row without its open error row'
  FROM outreach.company_target ct
 WHERE ct.execution_status = 'failed' AND NOT EXISTS (
       SELECT 1 FROM outreach.company_target_errors e
        WHERE e.outreach_id = ct.outreach_id AND e.resolved_at IS NULL)
"""


# ─── the fleet ───────────────────────────────────────────────────────────────────────────────


@dataclass
class Run:
    """One process of one daemon slot (an owner): started, then killed, stopped or drained."""

    slot: str  # the owner
    index: int
    drain: bool
    daemon: DaemonProcess
    ended_by: str = "running"  # "SIGKILL", "SIGTERM", "drained"

    @property
    def name(self) -> str:
        return f"{self.slot}.{self.index}"

    @property
    def graceful(self) -> bool:
        return self.ended_by in ("SIGTERM", "drained")

    def owner(self) -> str | None:
        """The owner the process says it is (its `ready` line); None if killed before it."""
        ready = self.daemon.events("ready")
        return ready[0]["owner"] if ready else None


@dataclass
class Fleet:
    config_for: Callable[[str, str], Path]
    start_daemon: StartDaemon
    runs: list[Run] = field(default_factory=list)
    current: dict[str, Run] = field(default_factory=dict)

    def start(self, slot: str, *, drain: bool) -> Run:
        index = sum(1 for r in self.runs if r.slot == slot)
        run_id = f"{slot}.{index}"
        args = ("run", "--drain") if drain else ("run",)
        daemon = self.start_daemon(self.config_for(slot, run_id), *args)
        run = Run(slot, index, drain, daemon)
        self.runs.append(run)
        self.current[slot] = run
        return run

    def committed(self) -> int:
        return sum(len(committed_lines(r.daemon)) for r in self.runs)

    def wait_for_committed(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.committed() < count:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True


@dataclass(frozen=True)
class Disruption:
    slot: str
    how: str  # "SIGKILL" | "SIGTERM" | "SIGKILL-at-startup"
    at_fraction: float  # of the terminal records committed (fleet-wide) before it comes
    delay: float  # then this long
    restart_after: float  # and the slot is restarted (`run --drain`) this long after it died

    def __repr__(self) -> str:
        return (
            f"{self.how}({self.slot} @{self.at_fraction:.2f}+{self.delay:.2f}s, "
            f"restart +{self.restart_after:.2f}s)"
        )


def plan(rng: random.Random) -> list[Disruption]:
    """Every slot is disrupted once (two SIGKILLs and one SIGTERM, in a random order of slots),
    so every slot ends as a `run --drain`; one restarted process is SIGKILLed again while it
    starts up."""
    slots = rng.sample(OWNERS, len(OWNERS))
    hows = rng.sample(["SIGKILL", "SIGKILL", "SIGTERM"], 3)
    fractions = sorted(rng.uniform(0.08, 0.55) for _ in range(3))
    out = [
        Disruption(slot, how, at, rng.uniform(0.0, 0.5), rng.uniform(0.2, 1.5))
        for slot, how, at in zip(slots, hows, fractions, strict=True)
    ]
    again = rng.randrange(len(out))
    out.insert(
        again + 1,
        Disruption(
            out[again].slot, "SIGKILL-at-startup", 0.0, rng.uniform(0.05, 1.0),
            rng.uniform(0.2, 1.0),
        ),
    )
    return out


# ─── the shared budget ───────────────────────────────────────────────────────────────────────


def tool_stats(event: dict[str, Any], tool_id: str) -> dict[str, Any]:
    """A tool's section of a `stats`/`stats_final` line's `throttles` ("TOOL-005 SMTPCheck")."""
    (section,) = [v for k, v in event["throttles"].items() if k.split(" ")[0] == tool_id]
    return dict(section)


def budget_problems(
    db_url: str, runs: Sequence[Run], limits: dict[str, int], caps: dict[str, int]
) -> tuple[list[str], dict[str, Any]]:
    """Check the shared per_day budget against every process's calls; (problems, summary)."""
    problems: list[str] = []
    summary: dict[str, Any] = {}
    used_rows = db_fetch(
        db_url,
        "SELECT tool_id, sum(used)::bigint AS used FROM ct_actors.tool_usage "
        "WHERE scope = 'per_day' GROUP BY tool_id",
    )
    used = {r["tool_id"]: int(r["used"]) for r in used_rows}
    audit = db_fetch(
        db_url,
        "SELECT run, tool_id, delta FROM ct_fleet_test.usage_audit WHERE scope = 'per_day' "
        "ORDER BY id",
    )
    net: dict[tuple[str, str], int] = defaultdict(int)
    for row in audit:
        net[row["run"], row["tool_id"]] += int(row["delta"])
        if row["run"] not in {r.name for r in runs}:
            problems.append(f"tool_usage changed by an unknown session: {row}")
        if row["delta"] > caps[row["tool_id"]]:
            problems.append(f"one reservation above the largest block: {row}")
    for tool in BUDGET_TOOLS:
        total = used.get(tool, 0)
        known_calls = 0
        per_run = {}
        for run in runs:
            mine = net.get((run.name, tool), 0)
            final = run.daemon.events("stats_final")
            stats = run.daemon.events("stats")
            if run.graceful:
                if len(final) != 1:
                    problems.append(f"{run.name} ({run.ended_by}): {len(final)} stats_final lines")
                    continue
                calls = tool_stats(final[0], tool)["calls"]
                if mine != calls:
                    problems.append(
                        f"{tool}: {run.name} ({run.ended_by}) holds {mine} of the day's budget "
                        f"but made {calls} calls (stats_final)"
                    )
            else:
                # SIGKILLed: at least the calls of its last stats line, at most what it reserved.
                calls = tool_stats(stats[-1], tool)["calls"] if stats else 0
                if mine < calls:
                    problems.append(
                        f"{tool}: killed {run.name} holds {mine} of the day's budget but had "
                        f"already made {calls} calls"
                    )
            known_calls += calls
            per_run[run.name] = {"calls": calls, "budget": mine}
        if sum(v for (_r, t), v in net.items() if t == tool) != total:
            problems.append(f"{tool}: the audit does not add up to tool_usage ({total})")
        if total > limits[tool]:
            problems.append(f"{tool}: {total} used, above the registry's {limits[tool]}/day")
        if total < known_calls:
            problems.append(f"{tool}: {total} used, fewer than the {known_calls} calls logged")
        summary[tool] = {"used": total, "calls_logged": known_calls, "runs": per_run}
    return problems, summary


# ─── the test ────────────────────────────────────────────────────────────────────────────────


@pytest.mark.e2e
@pytest.mark.db
@pytest.mark.timeout(120)
def test_a_fleet_killed_and_restarted_writes_each_outcome_once_and_shares_the_work(
    migrated_db: str, start_sim: StartSim, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    started = time.monotonic()
    rng = random.Random(SEED)
    disruptions = plan(rng)
    where = f"CT_E2E_FLEET_SEED={SEED} plan={disruptions}"

    sim = start_sim(seed=SEED % 997, domains=DOMAINS, latency_ms=LATENCY_MS, jitter_ms=JITTER_MS)
    world = sim.world
    rows = spine_rows(world, SEED % 997)
    seed_spine(migrated_db, world, rows)
    db_run(migrated_db, lambda conn: conn.execute(AUDIT_DDL))
    expected = {r.outreach_id: expected_label(world, r) for r in rows}
    n_terminal = sum(1 for label in expected.values() if label != "PENDING")

    def config_for(slot: str, run_id: str) -> Path:
        sections = daemon_sections(
            f"{migrated_db}?ct_fleet.run={run_id}",
            world,
            lease_seconds=LEASE_SECONDS,
            owner=slot,
            probe=dict(PROBE),
            writer=dict(WRITER),
            daemon={"drain_deadline": DRAIN_DEADLINE},
            log={"stats_interval": STATS_INTERVAL},
        )
        return write_config(tmp_path / f"{run_id}.toml", sections)

    fleet = Fleet(config_for, start_daemon)
    for slot in OWNERS:
        fleet.start(slot, drain=False)

    def live_leases(owner: str) -> int:
        return int(
            db_val(
                migrated_db,
                "SELECT count(*) FROM ct_actors.lease WHERE owner = $1 AND expires_at > now()",
                owner,
            )
        )

    timeline: list[str] = []
    held_at_kills = 0
    for step in disruptions:
        run = fleet.current[step.slot]
        if step.how == "SIGKILL-at-startup":
            time.sleep(step.delay)
        else:
            reached = fleet.wait_for_committed(int(step.at_fraction * n_terminal), timeout=60)
            assert reached, f"the fleet stalled before {step}; {where}\n" + "\n".join(
                f"{r.name}:\n{r.daemon.diagnostics(10)}" for r in fleet.current.values()
            )
            time.sleep(step.delay)
        assert run.daemon.proc.poll() is None, (
            f"{run.name} exited by itself before {step}; {where}\n" + run.daemon.diagnostics()
        )
        committed_before = fleet.committed()
        if step.how == "SIGTERM":
            run.daemon.signal(signal.SIGTERM)
            rc = run.daemon.wait(DRAIN_DEADLINE + 30)
            assert rc == 0, f"{run.name} exit {rc} after SIGTERM; {where}\n" + (
                run.daemon.diagnostics()
            )
            assert run.daemon.events("daemon_stopped"), run.daemon.diagnostics()
            run.ended_by = "SIGTERM"
            # A stopped daemon leaves nothing of its own leased (and releases nobody else's).
            held = live_leases(run.slot)
            assert held == 0, f"{run.name} left {held} live leases after SIGTERM; {where}"
        else:
            run.daemon.signal(signal.SIGKILL)
            assert run.daemon.wait(10) == -signal.SIGKILL
            run.ended_by = "SIGKILL"
            held = live_leases(run.slot)
            held_at_kills += held
        assert db_fetch(migrated_db, HALF_WRITTEN_NOW) == [], f"after {step}; {where}"
        timeline.append(
            f"{time.monotonic() - started:5.1f}s {step.how} {run.name} at {committed_before}/"
            f"{n_terminal} committed ({len(committed_lines(run.daemon))} by it, {held} held)"
        )
        time.sleep(step.restart_after)
        fleet.start(step.slot, drain=True)

    assert held_at_kills, f"no SIGKILL caught a record in flight; {where}"
    for run in list(fleet.current.values()):
        rc = run.daemon.wait(60)
        # Held back (4) when the world has records whose truth is to stay deferred.
        want = drain_exit_code(expected.values())
        assert rc == want, f"{run.name} exit {rc}; {where}\n" + run.daemon.diagnostics()
        run.ended_by = "drained"
    elapsed = time.monotonic() - started
    sim.stop()
    final = snapshot(migrated_db)
    daemons = [r.daemon for r in fleet.runs]

    # Exactly one outcome per record, the ground truth's; nothing half-written.
    assert ground_truth_problems(world, rows, final) == [], where
    assert half_written(final) == [], where
    assert len(terminal_ids(final)) == n_terminal, where
    assert Counter(final.label(r.outreach_id) for r in rows) == Counter(expected.values()), where
    # No record committed by two processes; what each logged is what the database holds.
    assert logged_twice(daemons) == [], where
    assert logged_but_not_committed(daemons, final) == [], where

    # Every process says who it is; the work is spread across the three owners.
    by_owner: Counter[str] = Counter()
    for run in fleet.runs:
        mine = committed_lines(run.daemon)
        owner = run.owner()
        assert owner == run.slot or (owner is None and not mine), (
            f"{run.name} ran as {owner!r}; {where}"
        )
        by_owner[run.slot] += len(mine)
    logged = sum(by_owner.values())
    assert logged >= 0.85 * n_terminal, f"{logged}/{n_terminal} outcomes logged; {where}"
    shares = {slot: round(by_owner[slot] / logged, 3) for slot in OWNERS}
    assert min(shares.values()) >= MIN_SHARE, f"unfair shares {shares}; {where}"

    # One shared day budget, spent exactly as the processes say they spent it.
    toolbox = load_toolbox(Path(daemon_sections(migrated_db, world)["toolbox"]["path"]))
    limits = {}
    for tool in BUDGET_TOOLS:
        per_day = toolbox.tools[tool].rate_limit("per_day")
        assert per_day is not None, tool
        limits[tool] = per_day.limit
    caps = {t: max(20, limits[t] // 100) for t in BUDGET_TOOLS}  # CalendarBudget._reserve
    problems, budget = budget_problems(migrated_db, fleet.runs, limits, caps)
    assert problems == [], where

    duplicates = sum(len(d.events("already_processed")) for d in daemons)
    print(
        f"\n[{where}] {n_terminal} terminal records in {elapsed:.1f}s; shares {shares}; "
        f"timeline {timeline}; already_processed {duplicates}; budget "
        + "; ".join(
            f"{t}: used {v['used']}, calls logged {v['calls_logged']}" for t, v in budget.items()
        )
    )


# ─── pinned: smtp_port_blocked trips while connections are succeeding ─────────────────────────


class LoggedConnector:
    """The in-memory simulated internet, logging every connect's result into the captured log,
    so that its order against `kill_switch_tripped` is exact."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.log = structlog.get_logger("test.connector")

    async def connect(self, address: str, port: int) -> Any:
        try:
            stream = await self.inner.connect(address, port)
        except OSError:
            self.log.info("test_connect", address=address, connected=False)
            raise
        self.log.info("test_connect", address=address, connected=True)
        return stream


@pytest.mark.timeout(60)
def test_refusals_while_connections_succeed_do_not_trip_port_blocked(
    sim_pipeline: SimPipelines,
) -> None:
    # 12 domains whose first MX host refuses connections (the second one answers) and 4
    # ordinary ones, on slow servers (200 ms a reply): all claimed at once, as a daemon does at
    # start-up or in a fleet. Port 25 works: the live hosts accept every connection.
    world = World.generate(
        3,
        16,
        mix={Behaviour.FIRST_MX_DEAD: 0.75, Behaviour.VERIFIABLE: 0.25},
        latency_ms=200,
        jitter_ms=0,
    )
    spine, owner = spine_for(world)
    store = FakeStore(spine)

    async def run() -> None:
        def logged(inner: Connector) -> SmtpPoolManager:
            return SmtpPoolManager(SIM_POOL, LoggedConnector(inner), max_connections=32)

        async with sim_pipeline.open(world, store, owner=owner, pools=logged) as supervisor:
            # With the switch tripped the drain never ends (the loader is paused): give it
            # ample virtual time, then stop it.
            with trio.move_on_after(600):
                await supervisor.finished.wait()
            supervisor.request_stop()

    # Synchronous, under trio.run, so that an AssertionError below is reported as such.
    with capture_logs() as logs:
        trio.run(run, clock=trio.testing.MockClock(autojump_threshold=0))
    events = [e for e in logs if e["event"] in ("test_connect", "kill_switch_tripped")]
    trip = next((i for i, e in enumerate(events) if e["event"] == "kill_switch_tripped"), None)
    connected_before_trip = [
        e for e in events[: len(events) if trip is None else trip] if e.get("connected")
    ]
    if not connected_before_trip:
        pytest.fail("precondition: no connection to a live host succeeded before the trip")
    # No fault of ours: nothing may trip, and every record gets its ground-truth outcome.
    assert trip is None, (
        f"{events[trip]['reason']} ({len(connected_before_trip)} connections to live hosts "
        "had succeeded before)"
    )
    got = {oid: label(o.result) for oid, o in {**store.deferred, **store.terminal}.items()}
    assert {
        owner[oid]: (sim_expected_label(world, owner[oid]), got.get(oid))
        for oid in spine
        if got.get(oid) != sim_expected_label(world, owner[oid])
    } == {}


# ─── pinned: `run --drain` exits while another daemon's claim is in flight ───────────────────


@pytest.mark.db
@pytest.mark.timeout(60)
async def test_drain_waits_for_records_another_daemon_is_claiming(
    queue: WorkQueue, db: Db, migrated_db: str, sim_pipeline: SimPipelines
) -> None:
    world = World.generate(2, 6, latency_ms=0, jitter_ms=0)
    names = sorted(world.domains)
    ids = await insert_spine(db, len(names), domain=names.__getitem__)
    # Another daemon's claim caught between its statement and its commit (a fleet's daemons
    # claim all the time; `bench --processes 2` lost a daemon to this at start-up).
    other = await Db.connect(migrated_db)
    try:
        await other.execute("BEGIN")
        incarnation = await other.fetchval("SELECT clock_timestamp()")
        claimed = await other.fetch(q.CLAIM_FROM_START, "other:1", 100, 1.0, incarnation)
        assert len(claimed) == len(ids)
        async with open_sim_connector(world, SimStats()) as connector:
            supervisor = in_process_supervisor(sim_pipeline, queue, world, connector, drain=True)
            async with trio.open_nursery() as nursery:
                await nursery.start(supervisor.run)
                with trio.move_on_after(3):
                    await supervisor.finished.wait()
                finished_while_claimed = supervisor.finished.is_set()
                # The other daemon's claim commits, and it dies: its leases lapse after 1 s, and
                # the draining daemon must then finish the records.
                await other.execute("COMMIT")
                with trio.fail_after(30):
                    await supervisor.finished.wait()
    finally:
        await other.aclose()
    pending = await queue.pending_count()
    assert not finished_while_claimed, f"the drain exited with {pending} records pending"
    assert pending == 0
