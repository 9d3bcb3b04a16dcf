"""`ct-actors demo` and `ct-actors bench`: a fresh database, a simulated internet in a separate
process, the real daemon pipeline until drained, and a comparison with the ground truth."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import trio
import trio_asyncio
import yaml
from trio_asyncio import aio_as_trio

from ct_actors.app import run_pipeline
from ct_actors.config import Config, SmtpConfig, env_var_name
from ct_actors.db.choice import ChosenDatabase
from ct_actors.db.driver import open_database
from ct_actors.db.errors import DatabaseUnavailable
from ct_actors.db.migrate import migrate
from ct_actors.demo.spine import NAMES_QUERY, PEOPLE_DDL, SpineRow, spine_rows
from ct_actors.exit_codes import EXIT_DATABASE, EXIT_FAILED, EXIT_OK
from ct_actors.log import configure_logging
from ct_actors.redact import redact_url
from ct_actors.service import SystemdService
from ct_actors.sim.world import SIM_NETWORK, Behaviour, World
from ct_actors.toolbox import Toolbox, load_toolbox


@dataclasses.dataclass(frozen=True, slots=True)
class Scenario:
    name: str
    domains: int
    seed: int
    mode: str
    database: str
    latency_ms: float
    jitter_ms: float
    per_host: int
    max_connections: int
    max_in_flight: int
    # The demo shows the adaptive per-host window growing from 1; the benchmark starts at its
    # maximum, as an operator who tuned a permissive deployment would.
    initial_per_host: int = 1
    # `bench --processes N`: N `ct-actors run --drain` processes, each with this configuration.
    processes: int = 1
    # The simulated internet's behaviour mix, passed through to `python -m ct_actors.sim serve
    # --mix` ("default", or "real": plus the real servers' defences and reply texts).
    mix: str = "default"


async def run_demo(
    cfg: Config, toolbox: Toolbox, args: argparse.Namespace, chosen: ChosenDatabase | None = None
) -> int:
    """`cfg.database.url` is an administrator's URL (the cli puts the chosen one there:
    `ct_actors.db.choice`); `chosen` says which server it is, for the user."""
    scenario = Scenario(
        "demo",
        args.domains,
        args.seed,
        args.mode,
        args.database,
        args.latency_ms,
        args.latency_ms / 2,
        per_host=4,
        max_connections=256,
        max_in_flight=1024,
        mix=getattr(args, "mix", None) or "default",
    )
    result = await _run(cfg, toolbox, scenario, chosen)
    if result is None:
        return EXIT_DATABASE
    _print_summary(result)
    return EXIT_OK if result["accuracy"]["mismatches"] == 0 else EXIT_FAILED


async def run_bench(
    cfg: Config, toolbox: Toolbox, args: argparse.Namespace, chosen: ChosenDatabase | None = None
) -> int:
    scenario = Scenario(
        "bench",
        args.domains,
        args.seed,
        args.mode,
        args.database,
        50.0,
        25.0,
        per_host=64,
        max_connections=2048,
        max_in_flight=4096,
        initial_per_host=64,
        processes=getattr(args, "processes", None) or 1,
        mix=getattr(args, "mix", None) or "default",
    )
    if getattr(args, "processes", None) is not None:
        result = await _run_fleet(cfg, toolbox, scenario, chosen)
        if result is None:
            return EXIT_DATABASE
        if args.json:
            print(json.dumps(result, default=str))
        else:
            _print_fleet_summary(result)
        # 4: `run --drain` ended with records held back (the world's blocklisted domains stay
        # deferred), which is the truth of this world, not a failed run.
        clean = all(
            p["exit_code"] in (0, 4) and not p["kill_switches_tripped"]
            for p in result["per_process"]
        )
        return EXIT_OK if clean else EXIT_FAILED
    result = await _run(cfg, toolbox, scenario, chosen)
    if result is None:
        return EXIT_DATABASE
    if args.json:
        print(json.dumps(result, default=str))
    else:
        _print_summary(result)
    return EXIT_OK


async def _run(
    cfg: Config, toolbox: Toolbox, scenario: Scenario, chosen: ChosenDatabase | None = None
) -> dict[str, Any] | None:
    workdir = Path(tempfile.mkdtemp(prefix=f"ct-actors-{scenario.name}-"))
    log_path = workdir / "daemon.jsonl"
    world_path = workdir / "world.json"
    db_url = _with_database(cfg.database.url, scenario.database)
    async with trio_asyncio.open_loop():
        if not await _recreate_or_explain(cfg, scenario, db_url, chosen):
            return None
        sim = await SimProcess.start(scenario, world_path)
        world = sim.world
        try:
            rows = spine_rows(world, scenario.seed)
            await _seed(db_url, world, rows)
            print(
                f"[{scenario.name}] world: {len(world.domains)} domains, "
                f"{len(world.live_hosts())} SMTP hosts; spine: {len(rows)} records; "
                f"logs: {log_path}",
                file=sys.stderr,
            )
            demo_cfg = _scenario_config(cfg, scenario, world, db_url)
            toolbox = simulation_toolbox(toolbox)
            print(
                f"[{scenario.name}] throttles: the registry's per-domain spacing, back-off and "
                "TTLs; its per-second/day/month limits (and, unless the world has directory-"
                "harvest blockers, the per-host rejected-RCPT budget) are lifted for the "
                "simulated internet",
                file=sys.stderr,
            )
            with log_path.open("w") as log_file:
                configure_logging("json", "info", stream=log_file, secrets=cfg.secrets())
                database = await open_database(db_url, min_size=1, max_size=4)
                usage_before = resource.getrusage(resource.RUSAGE_SELF)
                started = time.perf_counter()
                try:
                    supervisor = await run_pipeline(
                        demo_cfg,
                        toolbox,
                        database,
                        drain=True,
                        handle_signals=False,
                        service=SystemdService(),  # a demo is not the service: no sd_notify
                    )
                finally:
                    elapsed = time.perf_counter() - started
                    usage_after = resource.getrusage(resource.RUSAGE_SELF)
                    await database.aclose()
                configure_logging(cfg.log.format, cfg.log.level, secrets=cfg.secrets())
        finally:
            sim_stats = await sim.stop()
        outcomes = await _fetch_outcomes(db_url)
    cpu = (usage_after.ru_utime - usage_before.ru_utime) + (
        usage_after.ru_stime - usage_before.ru_stime
    )
    return _evaluate(
        scenario,
        world,
        rows,
        outcomes,
        supervisor.statistics(),
        sim_stats,
        supervisor.writer.durations,
        elapsed,
        cpu,
        usage_after.ru_maxrss,
        log_path,
    )


async def _recreate_or_explain(
    cfg: Config, scenario: Scenario, db_url: str, chosen: ChosenDatabase | None
) -> bool:
    """Drop and create the scenario's database; False (explained on stderr) if unreachable."""
    where = (
        chosen.describe(scenario.database)
        if chosen is not None
        else f"database {redact_url(db_url)}"
    )
    print(f"[{scenario.name}] {where}", file=sys.stderr)
    try:
        await _recreate_database(cfg.database.url, scenario.database)
    except (OSError, asyncpg.PostgresError, DatabaseUnavailable) as exc:
        print(
            f"ct-actors {scenario.name}: PostgreSQL is not reachable at "
            f"{redact_url(cfg.database.url)} ({type(exc).__name__}: {exc}). Start that "
            "server, set CT_DATABASE_URL to one where this user may create databases, or "
            "unset CT_DATABASE_URL to use the embedded PostgreSQL.",
            file=sys.stderr,
        )
        return False
    return True


def _with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + database, parts.query, parts.fragment))


async def _recreate_database(admin_url: str, database: str) -> None:
    if not database.replace("_", "").isalnum():
        raise ValueError(f"unsafe database name {database!r}")
    conn = await aio_as_trio(asyncpg.connect)(admin_url, timeout=5)
    try:
        await aio_as_trio(conn.execute)(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await aio_as_trio(conn.execute)(f'CREATE DATABASE "{database}"')
    finally:
        with trio.CancelScope(shield=True):
            await aio_as_trio(conn.close)()


async def _seed(db_url: str, world: World, rows: list[SpineRow]) -> None:
    conn = await aio_as_trio(asyncpg.connect)(db_url, timeout=5)
    try:
        await aio_as_trio(migrate)(conn)
        await aio_as_trio(conn.execute)(PEOPLE_DDL)
        await aio_as_trio(conn.copy_records_to_table)(
            "outreach",
            schema_name="outreach",
            columns=["outreach_id", "domain"],
            records=[(r.outreach_id, r.raw_domain) for r in rows],
        )
        people = [
            (r.outreach_id, i, first, last)
            for r in rows
            if r.domain is not None
            for i, (first, last) in enumerate(world.people(r.domain))
        ]
        await aio_as_trio(conn.copy_records_to_table)(
            "people",
            schema_name="ct_demo",
            columns=["outreach_id", "ord", "first_name", "last_name"],
            records=people,
        )
    finally:
        with trio.CancelScope(shield=True):
            await aio_as_trio(conn.close)()


async def _fetch_outcomes(db_url: str) -> dict[Any, dict[str, Any]]:
    conn = await aio_as_trio(asyncpg.connect)(db_url, timeout=5)
    try:
        rows = await aio_as_trio(conn.fetch)(
            """SELECT ct.outreach_id, ct.execution_status, ct.method_type, ct.confidence_score,
                      ct.is_catchall, e.failure_code
                 FROM outreach.company_target ct
            LEFT JOIN outreach.company_target_errors e
                   ON e.outreach_id = ct.outreach_id AND e.resolved_at IS NULL
                WHERE ct.execution_status IN ('ready', 'failed')"""
        )
        return {r["outreach_id"]: dict(r) for r in rows}
    finally:
        with trio.CancelScope(shield=True):
            await aio_as_trio(conn.close)()


class SimProcess:
    """The simulated internet in its own process, as remote servers would be."""

    def __init__(self, process: trio.Process, world: World, buffer: bytes) -> None:
        self.process = process
        self.world = world
        self._buffer = buffer

    @classmethod
    async def start(cls, scenario: Scenario, world_path: Path) -> SimProcess:
        command = [
            sys.executable, "-m", "ct_actors.sim", "serve",
            "--seed", str(scenario.seed), "--domains", str(scenario.domains),
            "--world-file", str(world_path),
            "--latency-ms", str(scenario.latency_ms), "--jitter-ms", str(scenario.jitter_ms),
            "--mix", scenario.mix,
        ]  # fmt: skip
        process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE)
        assert process.stdout is not None
        buffer = b""
        try:
            with trio.fail_after(120):
                while b"sim_ready" not in buffer:
                    chunk = await process.stdout.receive_some()
                    if not chunk:
                        raise RuntimeError("the simulated internet exited before it was ready")
                    buffer += chunk
            world = World.from_json(await trio.Path(world_path).read_text())
        except BaseException:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
            raise
        return cls(process, world, buffer)

    async def stop(self) -> dict[str, Any]:
        """SIGTERM, read its final stats line, wait for it to exit."""
        self.process.terminate()
        assert self.process.stdout is not None
        with trio.move_on_after(30, shield=True) as scope:
            while chunk := await self.process.stdout.receive_some():
                self._buffer += chunk
            await self.process.wait()
        if scope.cancelled_caught:
            self.process.kill()
        for line in self._buffer.decode(errors="replace").splitlines():
            if '"sim_stopped"' in line:
                stats: dict[str, Any] = json.loads(line).get("stats", {})
                return stats
        return {}


# Large enough never to bind in a simulation; still counted (budgets in PostgreSQL) so the
# benchmark pays what production pays for them.
_LIFTED = {"per_second": 1_000_000, "per_minute": 60_000_000, "per_day": 10**9, "per_month": 10**9}


def simulation_toolbox(toolbox: Toolbox) -> Toolbox:
    """The registry as shipped, with its rate limits lifted: the simulated internet is ours,
    and a demo throttled to the registry's 50 lookups/s would measure the registry."""
    tools = {}
    for tool_id, spec in toolbox.tools.items():
        limits = tuple(
            dataclasses.replace(limit, limit=_LIFTED.get(limit.scope, limit.limit))
            for limit in spec.rate_limits
        )
        tools[tool_id] = dataclasses.replace(spec, rate_limits=limits)
    return dataclasses.replace(toolbox, tools=tools)


_DHA_WINDOW = 60.0


def _greylist_delay(world: World) -> float:
    if world.by_behaviour(Behaviour.GREYLIST_300):
        return SmtpConfig().greylist_retry_delay
    return world.greylist_delay + 0.5


def _dha_budget(world: World) -> int:
    if world.by_behaviour(Behaviour.DHA_BLOCK):
        return SmtpConfig().max_rejected_rcpts_per_host
    return 1_000_000


def _scenario_config(cfg: Config, scenario: Scenario, world: World, db_url: str) -> Config:
    return dataclasses.replace(
        cfg,
        database=dataclasses.replace(cfg.database, url=db_url, lease_seconds=600),
        dns=dataclasses.replace(
            cfg.dns,
            nameservers=(world.dns_address,),
            port=world.dns_port,
            timeout=2.0,
            max_in_flight=256,
        ),
        smtp=dataclasses.replace(
            cfg.smtp,
            port=world.smtp_port,
            helo_name="prober.ct-actors-sim.test",
            mail_from="postmaster@prober.ct-actors-sim.test",
            # Only --mix real has a STARTTLS host (one that breaks the handshake, to exercise
            # the plaintext fallback); the default world offers none.
            starttls="opportunistic" if world.by_behaviour(Behaviour.TLS_BROKEN) else "never",
            connect_timeout=2.0,
            command_timeout=10.0,
            max_connections=scenario.max_connections,
            max_connections_per_host=scenario.per_host,
            initial_connections_per_host=scenario.initial_per_host,
            # postgrey-like hosts (--mix real) need the production 300 s retry; the default
            # world's greylisters are quick, and so is the bench then.
            greylist_retry_delay=_greylist_delay(world),
            greylist_max_retries=4 if world.by_behaviour(Behaviour.GREYLIST_300) else 2,
            # The default mix has no directory-harvest blockers: lift the per-host rejected-RCPT
            # budget like the registry's rates (said on stderr). A world that has them keeps
            # the production default, which stays under their threshold.
            max_rejected_rcpts_per_host=_dha_budget(world),
            rejected_rcpts_window=_DHA_WINDOW,
            dead_host_backoff=60.0,
            session_reuse_seconds=30,
            pool_idle_seconds=30,
            # The simulated internet lives on loopback, which production refuses.
            allow_networks=(SIM_NETWORK,),
        ),
        probe=dataclasses.replace(
            cfg.probe,
            mode=cast(Literal["smtp", "mx-only"], scenario.mode),
            names_query=NAMES_QUERY,
            max_in_flight=scenario.max_in_flight,
            claim_batch=500,
        ),
        log=dataclasses.replace(cfg.log, stats_interval=5.0),
        daemon=dataclasses.replace(cfg.daemon, owner=f"{scenario.name}:{os.getpid()}"),
    )


def _evaluate(
    scenario: Scenario,
    world: World,
    rows: list[SpineRow],
    outcomes: dict[Any, dict[str, Any]],
    stats: dict[str, Any],
    sim_stats: dict[str, Any],
    durations: Iterable[float],
    elapsed: float,
    cpu: float,
    maxrss_kb: int,
    log_path: Path,
) -> dict[str, Any]:
    by_code: Counter[str] = Counter()
    mismatches: list[dict[str, Any]] = []
    for row in rows:
        got = outcomes.get(row.outreach_id)
        got_label = _label(got)
        by_code[" ".join(got_label.split(" ")[:2])] += 1
        want_label = _expected_label(world, row, scenario.mode)
        if got_label != want_label:
            behaviour = world.domain(row.domain).behaviour if row.domain else "unusable"
            mismatches.append(
                {
                    "outreach_id": str(row.outreach_id),
                    "domain": row.raw_domain,
                    "behaviour": str(behaviour),
                    "expected": want_label,
                    "got": got_label,
                }
            )
    done = stats["records_done"]
    ordered = sorted(durations)
    return {
        "scenario": dataclasses.asdict(scenario),
        "records": len(rows),
        "outcomes": dict(by_code),
        "elapsed_s": round(elapsed, 2),
        "records_per_s": round(done / elapsed, 1) if elapsed else None,
        "latency_p50_s": round(_pct(ordered, 0.50), 3),
        "latency_p99_s": round(_pct(ordered, 0.99), 3),
        "cpu_s_per_record": round(cpu / max(done, 1), 5),
        "peak_rss_mb": round(maxrss_kb / 1024, 1),
        "server_side": {
            k: sim_stats.get(k)
            for k in ("connections", "rcpts", "rejected_421", "data_attempts", "dropped")
        },
        "rejected_rcpts_peak_per_host_minute": stats["smtp"].get("rejected_rcpts_peak"),
        "rejected_rcpts_peak_host": stats["smtp"].get("rejected_rcpts_peak_host"),
        "rejected_rcpts_budget": _dha_budget(world),
        "smtp_sessions_per_domain": round(
            stats["smtp"]["sessions_opened_total"] / max(stats["dispatcher"]["domains_probed"], 1),
            3,
        ),
        "accuracy": {
            "checked": len(rows),
            "mismatches": len(mismatches),
            "percent": round(100 * (len(rows) - len(mismatches)) / max(len(rows), 1), 2),
            "examples": mismatches[:10],
        },
        "log": str(log_path),
    }


def _label(row: dict[str, Any] | None) -> str:
    if row is None:
        return "PENDING"
    if row["execution_status"] == "failed":
        return f"FAIL {row['failure_code']}"
    catchall = " catchall" if row["is_catchall"] else ""
    return f"PASS {row['method_type']} {row['confidence_score']:.2f}{catchall}"


def _expected_label(world: World, row: SpineRow, mode: str) -> str:
    if row.domain is None:
        return "FAIL CT-I-NO-DOMAIN"
    exp = world.expected_mx_only(row.domain) if mode == "mx-only" else world.expected(row.domain)
    if exp.outcome == "DEFERRED":
        return "PENDING"
    if exp.outcome == "FAIL":
        return f"FAIL {exp.code}"
    catchall = " catchall" if exp.is_catchall else ""
    return f"PASS {exp.method_type} {exp.confidence:.2f}{catchall}"


def _pct(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _print_summary(result: dict[str, Any]) -> None:
    acc = result["accuracy"]
    lines = [
        f"ct-actors {result['scenario']['name']}: {result['records']} records, "
        f"mode {result['scenario']['mode']}",
        "",
        "outcomes:",
        *(f"  {code:<24} {count:>6}" for code, count in sorted(result["outcomes"].items())),
        "",
        f"throughput        {result['records_per_s']} records/s ({result['elapsed_s']} s wall)",
        f"latency p50/p99   {result['latency_p50_s']} s / {result['latency_p99_s']} s",
        f"cpu per record    {result['cpu_s_per_record'] * 1000:.2f} ms",
        f"peak RSS          {result['peak_rss_mb']} MB",
        f"SMTP sessions     {result['smtp_sessions_per_domain']} per probed domain",
        f"rejected RCPTs    {result['rejected_rcpts_peak_per_host_minute']} per host per "
        f"{_DHA_WINDOW:g} s at peak ({result['rejected_rcpts_peak_host']}; budget "
        f"{result['rejected_rcpts_budget']})",
        f"server side       {json.dumps(result['server_side'])}",
        f"accuracy          {acc['percent']}% ({acc['checked'] - acc['mismatches']}/"
        f"{acc['checked']} match the ground truth)",
    ]
    for example in acc["examples"]:
        lines.append(f"  mismatch: {json.dumps(example)}")
    lines.append(f"daemon log        {result['log']}")
    print("\n".join(lines))


# ─── bench --processes N: a fleet of real daemon processes ───────────────────────────────────


async def _run_fleet(
    cfg: Config, toolbox: Toolbox, scenario: Scenario, chosen: ChosenDatabase | None = None
) -> dict[str, Any] | None:
    """`bench --processes N`: the same fresh database, spine and simulated internet as `_run`,
    processed by N real `ct-actors run --drain` processes (each its own `daemon.owner`, each
    with the benchmark's configuration) started together. Wall time runs from the first start
    to the last exit (process start-up included); CPU is every daemon process's own."""
    workdir = Path(tempfile.mkdtemp(prefix=f"ct-actors-{scenario.name}-x{scenario.processes}-"))
    world_path = workdir / "world.json"
    db_url = _with_database(cfg.database.url, scenario.database)
    async with trio_asyncio.open_loop():
        if not await _recreate_or_explain(cfg, scenario, db_url, chosen):
            return None
        sim = await SimProcess.start(scenario, world_path)
        world = sim.world
        try:
            rows = spine_rows(world, scenario.seed)
            await _seed(db_url, world, rows)
            fleet_cfg = _scenario_config(cfg, scenario, world, db_url)
            registry = _write_simulation_toolbox(toolbox, workdir / "toolbox.yaml")
            print(
                f"[{scenario.name}] world: {len(world.domains)} domains; spine: {len(rows)} "
                f"records; {scenario.processes} daemon processes; logs: {workdir}",
                file=sys.stderr,
            )
            children = [
                _FleetProcess(f"{scenario.name}-{i + 1}", workdir)
                for i in range(scenario.processes)
            ]
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started, started_wall = time.perf_counter(), time.time()
            async with trio.open_nursery() as nursery:
                for child in children:
                    nursery.start_soon(child.run, cfg, fleet_cfg, registry, started)
            elapsed = time.perf_counter() - started
            after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the daemons, not the sim yet
        finally:
            sim_stats = await sim.stop()
        sim_usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # now the sim's too
        outcomes = await _fetch_outcomes(db_url)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    sim_cpu = (sim_usage.ru_utime - after.ru_utime) + (sim_usage.ru_stime - after.ru_stime)
    finals = [child.final() for child in children]
    merged = {
        "records_done": sum(f.get("records_done", 0) for f in finals),
        "smtp": {
            "sessions_opened_total": sum(
                f.get("smtp", {}).get("sessions_opened_total", 0) for f in finals
            )
        },
        "dispatcher": {
            "domains_probed": sum(f.get("dispatcher", {}).get("domains_probed", 0) for f in finals)
        },
    }
    durations = [d for child in children for d in child.durations()]
    maxrss = max(child.maxrss_kb for child in children)
    result = _evaluate(
        scenario, world, rows, outcomes, merged, sim_stats, durations, elapsed, cpu, maxrss, workdir
    )
    result["processes"] = scenario.processes
    result["wall_clock"] = "first process start to last exit, start-up included"
    # The simulated internet runs on the same cores (its whole life: start-up and seeding too).
    result["simulator_cpu_s"] = round(sim_cpu, 2)
    result["per_process"] = [
        child.summary(final, started_wall) for child, final in zip(children, finals, strict=True)
    ]
    return result


class _FleetProcess:
    """One `ct-actors run --drain` of the fleet: its JSON log in a file, its own rusage."""

    def __init__(self, owner: str, workdir: Path) -> None:
        self.owner = owner
        self.log_path = workdir / f"{owner}.jsonl"
        self.exit_code: int | None = None
        self.cpu_s = 0.0
        self.maxrss_kb = 0
        self.started_s = 0.0
        self.exited_s = 0.0
        self.kill_switches: list[str] = []

    async def run(self, base: Config, cfg: Config, registry: Path, t0: float) -> None:
        mine = dataclasses.replace(
            cfg,
            toolbox=dataclasses.replace(cfg.toolbox, path=registry),
            daemon=dataclasses.replace(cfg.daemon, owner=self.owner),
        )
        # A benchmark's daemons are not the service: no sd_notify to a systemd above us.
        inherited = {
            k: v for k, v in os.environ.items() if k not in ("NOTIFY_SOCKET", "WATCHDOG_USEC")
        }
        env = {**inherited, **_config_env(mine)}
        command = [sys.executable, "-m", "ct_actors"]
        if base.source is not None:
            command += ["--config", str(base.source)]
        command += ["--log-format", "json", "--log-level", "info", "run", "--drain"]
        with (
            self.log_path.open("wb") as out,
            self.log_path.with_suffix(".stderr").open("wb") as err,
        ):
            self.started_s = time.perf_counter() - t0
            proc = await trio.to_thread.run_sync(
                lambda: subprocess.Popen(command, stdout=out, stderr=err, env=env)
            )
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._stop_on_kill_switch, proc)
                    # wait4 in a thread: the child's own CPU time and peak RSS.
                    _pid, status, usage = await trio.to_thread.run_sync(
                        os.wait4, proc.pid, 0, abandon_on_cancel=True
                    )
                    nursery.cancel_scope.cancel()
            except BaseException:
                proc.kill()
                raise
        proc.returncode = self.exit_code = os.waitstatus_to_exitcode(status)
        self.exited_s = time.perf_counter() - t0
        self.cpu_s = usage.ru_utime + usage.ru_stime
        self.maxrss_kb = usage.ru_maxrss

    async def _stop_on_kill_switch(self, proc: subprocess.Popen[bytes]) -> None:
        """A tripped kill switch holds a `run --drain` until an operator's SIGHUP: stop that
        process (SIGTERM; its records are deferred) so that the benchmark ends, and say so."""
        offset = 0
        while True:
            await trio.sleep(0.5)
            with self.log_path.open("rb") as log_file:  # only what was written since
                log_file.seek(offset)
                chunk = log_file.read()
            complete = chunk[: chunk.rfind(b"\n") + 1]  # whole lines only
            offset += len(complete)
            if b'"kill_switch_tripped"' in complete:
                tripped = self._events("kill_switch_tripped")
                self.kill_switches = [f"{e.get('switch')}: {e.get('reason')}" for e in tripped]
                print(
                    f"[bench] {self.owner}: kill switch tripped ({self.kill_switches[0]}); "
                    "stopping it (SIGTERM)",
                    file=sys.stderr,
                )
                proc.terminate()
                return

    def _events(self, name: str) -> list[dict[str, Any]]:
        out = []
        with self.log_path.open(encoding="utf-8", errors="replace") as lines:
            for line in lines:
                if f'"event":"{name}"' in line or f'"event": "{name}"' in line:
                    try:
                        out.append(json.loads(line))
                    except ValueError:
                        continue
        return out

    def final(self) -> dict[str, Any]:
        finals = self._events("stats_final")
        return finals[-1] if finals else {}

    def durations(self) -> list[float]:
        return [float(e["duration"]) for e in self._events("outcome") if "duration" in e]

    def summary(self, final: dict[str, Any], t0_wall: float) -> dict[str, Any]:
        done = int(final.get("records_done", 0))
        ready = self._events("ready")
        ready_s = (
            dt.datetime.fromisoformat(ready[0]["ts"].replace("Z", "+00:00")).timestamp() - t0_wall
            if ready and "ts" in ready[0]
            else None
        )
        return {
            "owner": self.owner,
            "exit_code": self.exit_code,
            "records": done,
            "outcomes": final.get("outcomes", {}),
            "started_s": round(self.started_s, 2),
            "ready_s": None if ready_s is None else round(ready_s, 2),
            "exited_s": round(self.exited_s, 2),
            "cpu_s": round(self.cpu_s, 2),
            "cpu_s_per_record": round(self.cpu_s / done, 5) if done else None,
            "peak_rss_mb": round(self.maxrss_kb / 1024, 1),
            "kill_switches_tripped": self.kill_switches,
            "log": str(self.log_path),
        }


def _config_env(cfg: Config) -> dict[str, str]:
    """Every key of `cfg` as a `CT_<SECTION>_<KEY>` variable (they override the config file)."""
    out = {}
    for dotted, value in cfg.flat().items():
        if value is None:
            text = ""
        elif isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, tuple):
            text = ",".join(str(v) for v in value)
        else:
            text = str(value)
        out[env_var_name(dotted)] = text
    return out


def _write_simulation_toolbox(toolbox: Toolbox, path: Path) -> Path:
    """`simulation_toolbox` as a registry file for the daemon processes: the shipped file with
    our tools' per-second/minute/day/month limits lifted (checked by loading it back)."""
    doc = yaml.safe_load(toolbox.source.read_text(encoding="utf-8"))
    for tool in doc.get("tools", {}).values():
        if isinstance(tool, dict) and tool.get("tool_id") in toolbox.tools:
            for limit in tool.get("throttle", {}).get("rate_limits", []):
                if limit.get("scope") in _LIFTED:
                    limit["limit"] = _LIFTED[limit["scope"]]
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    written, wanted = load_toolbox(path), simulation_toolbox(toolbox)
    for tool_id, spec in wanted.tools.items():
        if written.tools[tool_id].rate_limits != spec.rate_limits:
            raise RuntimeError(f"{path}: {tool_id} limits differ from simulation_toolbox")
    return path


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f}"


def _print_fleet_summary(result: dict[str, Any]) -> None:
    _print_summary(result)
    lines = [
        f"processes         {result['processes']} (wall: {result['wall_clock']}; the simulated "
        "internet shares the cores)",
    ]
    for p in result["per_process"]:
        lines.append(
            f"  {p['owner']:<10} exit {p['exit_code']}  {p['records']:>6} records  "
            f"cpu {p['cpu_s']:.1f} s ({_ms(p['cpu_s_per_record'])} ms/record)  "
            f"started {p['started_s']:.1f} s, ready {p['ready_s']} s, exited "
            f"{p['exited_s']:.1f} s  rss {p['peak_rss_mb']} MB"
        )
        for tripped in p["kill_switches_tripped"]:
            lines.append(f"    kill switch tripped (process stopped): {tripped}")
    lines.append(f"simulator cpu     {result['simulator_cpu_s']} s")
    print("\n".join(lines))
