"""`ct-actors demo` and `ct-actors bench`: a fresh database, a simulated internet in a separate
process, the real daemon pipeline until drained, and a comparison with the ground truth."""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
import trio_asyncio

from ct_actors.actors.supervisor import Supervisor
from ct_actors.app import run_pipeline
from ct_actors.config import Config
from ct_actors.db.choice import ChosenDatabase
from ct_actors.db.driver import open_database
from ct_actors.demo.fleet import print_fleet_summary, run_fleet
from ct_actors.demo.scenario import (
    PipelineTotals,
    Scenario,
    evaluate,
    print_summary,
    scenario_config,
    simulation_toolbox,
)
from ct_actors.demo.soak import Sampler, current_rss_mb, report
from ct_actors.demo.staging import (
    fetch_accuracy,
    migrate_and_seed,
    recreate_or_explain,
    start_sim,
    with_database,
)
from ct_actors.exit_codes import EXIT_CONFIG, EXIT_DATABASE, EXIT_FAILED, EXIT_OK
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
        **_sim_ports(getattr(args, "sim_ports", None)),
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
        **_sim_ports(getattr(args, "sim_ports", None)),
    )
    if getattr(args, "soak", False) and getattr(args, "processes", None) is not None:
        print(
            "ct-actors bench: --soak samples this process; it cannot watch --processes",
            file=sys.stderr,
        )
        return EXIT_CONFIG
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
    soak = None
    if getattr(args, "soak", False):
        # One line per sample as it is taken; with --json the lines go to stderr so that
        # stdout stays one JSON object.
        soak = Sampler(args.sample_seconds, out=sys.stderr if args.json else sys.stdout)
    result = await _run(cfg, toolbox, scenario, chosen, soak)
    if result is None:
        return EXIT_DATABASE
    if args.json:
        print(json.dumps(result, default=str))
    else:
        print_summary(result)
        for line in result.get("soak_report", ()):
            print(line)
    return EXIT_OK


async def _run(
    cfg: Config,
    toolbox: Toolbox,
    scenario: Scenario,
    chosen: ChosenDatabase | None = None,
    soak: Sampler | None = None,
) -> dict[str, Any] | None:
    """`soak`: sample and print RSS and records/s while the pipeline runs (`bench --soak`);
    without it the RSS is still sampled every second, silently, for the daemon's peak."""
    workdir = Path(tempfile.mkdtemp(prefix=f"ct-actors-{scenario.name}-"))
    log_path = workdir / "daemon.jsonl"
    world_path = workdir / "world.jsonl"
    db_url = with_database(cfg.database.url, scenario.database)
    sampler = soak or Sampler(1.0)
    async with trio_asyncio.open_loop():
        if not await recreate_or_explain(cfg, scenario, db_url, chosen):
            return None
        sim_started = time.perf_counter()
        sim = await start_sim(scenario, world_path)
        sim_start_s = time.perf_counter() - sim_started
        try:
            seeded = await migrate_and_seed(db_url, world_path, scenario)
            print(
                f"[{scenario.name}] world: {seeded.domains} domains, "
                f"{sim.ready.get('smtp_hosts')} SMTP hosts; spine: {seeded.records} records "
                f"seeded in {seeded.seconds:.1f} s; logs: {log_path}",
                file=sys.stderr,
            )
            demo_cfg = scenario_config(cfg, scenario, sim.header, db_url)
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
                rss_before = current_rss_mb()
                usage_before = resource.getrusage(resource.RUSAGE_SELF)
                started = time.perf_counter()
                try:
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(sampler.run)
                        supervisor = await run_pipeline(
                            demo_cfg,
                            toolbox,
                            database,
                            drain=True,
                            handle_signals=False,
                            service=SystemdService(),  # a demo is not the service: no sd_notify
                            on_ready=lambda sup: sampler.attach(lambda: records_done(sup)),
                        )
                        sampler.sample()  # the end of the run is a sample too
                        nursery.cancel_scope.cancel()
                finally:
                    elapsed = time.perf_counter() - started
                    usage_after = resource.getrusage(resource.RUSAGE_SELF)
                    await database.aclose()
                configure_logging(cfg.log.format, cfg.log.level, secrets=cfg.secrets())
        finally:
            sim_stats = await sim.aclose()
        check_started = time.perf_counter()
        accuracy = await fetch_accuracy(db_url)
        check_s = time.perf_counter() - check_started
    cpu = (usage_after.ru_utime - usage_before.ru_utime) + (
        usage_after.ru_stime - usage_before.ru_stime
    )
    result = evaluate(
        scenario,
        sim.header,
        accuracy,
        PipelineTotals.of(supervisor.statistics()),
        sim_stats,
        supervisor.writer.durations,
        elapsed,
        cpu,
        usage_after.ru_maxrss,
        log_path,
    )
    # Around the run: the simulator's start (generating and writing the world), the seeding,
    # and the check of every row against the world's expectation.
    result["sim_start_s"] = round(sim_start_s, 1)
    result["seeding_s"] = round(seeded.seconds, 1)
    result["check_s"] = round(check_s, 1)
    # The harness holds no world (it streams the world file): what it had before the pipeline
    # started is the interpreter, the libraries and the asyncio loop for seeding.
    result["rss_before_pipeline_mb"] = round(rss_before, 1)
    result["rss_peak_sampled_mb"] = round(sampler.peak_mb, 1)
    if soak is not None:
        result["soak_samples"] = [dataclasses.asdict(s) for s in soak.samples]
        result["soak_report"] = report(soak.samples, workdir / "soak.png")
    return result


def _sim_ports(ports: tuple[int, int] | None) -> dict[str, int]:
    return {} if ports is None else {"smtp_port": ports[0], "dns_port": ports[1]}


def records_done(supervisor: Supervisor) -> int:
    return sum(supervisor.writer.outcomes.values())


# ─── bench --processes N: a fleet of real daemon processes ───────────────────────────────────
