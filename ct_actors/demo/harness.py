"""`ct-actors demo` and `ct-actors bench`: a fresh database, a simulated internet in a separate
process, the real daemon pipeline until drained, and a comparison with the ground truth."""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio_asyncio

from ct_actors.app import run_pipeline
from ct_actors.config import Config
from ct_actors.db.choice import ChosenDatabase
from ct_actors.db.driver import open_database
from ct_actors.demo.fleet import print_fleet_summary, run_fleet
from ct_actors.demo.scenario import (
    Scenario,
    evaluate,
    print_summary,
    scenario_config,
    simulation_toolbox,
)
from ct_actors.demo.spine import spine_rows
from ct_actors.demo.staging import (
    fetch_outcomes,
    migrate_and_seed,
    recreate_or_explain,
    start_sim,
    with_database,
)
from ct_actors.exit_codes import EXIT_DATABASE, EXIT_FAILED, EXIT_OK
from ct_actors.log import configure_logging
from ct_actors.service import SystemdService
from ct_actors.toolbox import Toolbox


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
    print_summary(result)
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
        result = await run_fleet(cfg, toolbox, scenario, chosen)
        if result is None:
            return EXIT_DATABASE
        if args.json:
            print(json.dumps(result, default=str))
        else:
            print_fleet_summary(result)
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
        print_summary(result)
    return EXIT_OK


async def _run(
    cfg: Config, toolbox: Toolbox, scenario: Scenario, chosen: ChosenDatabase | None = None
) -> dict[str, Any] | None:
    workdir = Path(tempfile.mkdtemp(prefix=f"ct-actors-{scenario.name}-"))
    log_path = workdir / "daemon.jsonl"
    world_path = workdir / "world.json"
    db_url = with_database(cfg.database.url, scenario.database)
    async with trio_asyncio.open_loop():
        if not await recreate_or_explain(cfg, scenario, db_url, chosen):
            return None
        sim = await start_sim(scenario, world_path)
        world = sim.world
        try:
            rows = spine_rows(world, scenario.seed)
            await migrate_and_seed(db_url, world, rows)
            print(
                f"[{scenario.name}] world: {len(world.domains)} domains, "
                f"{len(world.live_hosts())} SMTP hosts; spine: {len(rows)} records; "
                f"logs: {log_path}",
                file=sys.stderr,
            )
            demo_cfg = scenario_config(cfg, scenario, world, db_url)
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
            sim_stats = await sim.aclose()
        outcomes = await fetch_outcomes(db_url)
    cpu = (usage_after.ru_utime - usage_before.ru_utime) + (
        usage_after.ru_stime - usage_before.ru_stime
    )
    return evaluate(
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


# ─── bench --processes N: a fleet of real daemon processes ───────────────────────────────────


