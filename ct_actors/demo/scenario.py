"""What a demo or benchmark run is: its `Scenario`, the daemon configuration and lifted-limit
registry it runs with, and how its result is judged against the world's truth and printed."""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal, cast

from ct_actors.actors.supervisor_statistics import SupervisorStatistics
from ct_actors.config import Config, SmtpConfig
from ct_actors.demo.seeding import Accuracy
from ct_actors.demo.spine import NAMES_QUERY
from ct_actors.sim.world_file import WorldHeader
from ct_actors.sim.world_types import SIM_NETWORK, Behaviour
from ct_actors.toolbox import Toolbox


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
    # The simulator's ports (its SMTP port on every host address, its DNS port on 127.0.53.53):
    # fixed by default; `bench --sim-ports` moves them so that two benches can run at once.
    smtp_port: int = 2525
    dns_port: int = 5353


# Large enough never to bind in a simulation; still counted (budgets in PostgreSQL) so the
# benchmark pays what production pays for them.
LIFTED_RATE_LIMITS = {
    "per_second": 1_000_000,
    "per_minute": 60_000_000,
    "per_day": 10**9,
    "per_month": 10**9,
}


def simulation_toolbox(toolbox: Toolbox) -> Toolbox:
    """The registry as shipped, with its rate limits lifted: the simulated internet is ours,
    and a demo throttled to the registry's 50 lookups/s would measure the registry."""
    tools = {}
    for tool_id, spec in toolbox.tools.items():
        limits = tuple(
            dataclasses.replace(limit, limit=LIFTED_RATE_LIMITS.get(limit.scope, limit.limit))
            for limit in spec.rate_limits
        )
        tools[tool_id] = dataclasses.replace(spec, rate_limits=limits)
    return dataclasses.replace(toolbox, tools=tools)


_DHA_WINDOW = 60.0


def _greylist_delay(world: WorldHeader) -> float:
    if world.has(Behaviour.GREYLIST_300):
        return SmtpConfig().greylist_retry_delay
    return world.greylist_delay + 0.5


def _dha_budget(world: WorldHeader) -> int:
    if world.has(Behaviour.DHA_BLOCK):
        return SmtpConfig().max_rejected_rcpts_per_host
    return 1_000_000


def scenario_config(cfg: Config, scenario: Scenario, world: WorldHeader, db_url: str) -> Config:
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
            starttls="opportunistic" if world.has(Behaviour.TLS_BROKEN) else "never",
            connect_timeout=2.0,
            command_timeout=10.0,
            max_connections=scenario.max_connections,
            max_connections_per_host=scenario.per_host,
            initial_connections_per_host=scenario.initial_per_host,
            # postgrey-like hosts (--mix real) need the production 300 s retry; the default
            # world's greylisters are quick, and so is the bench then.
            greylist_retry_delay=_greylist_delay(world),
            greylist_max_retries=4 if world.has(Behaviour.GREYLIST_300) else 2,
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


@dataclasses.dataclass(frozen=True, slots=True)
class PipelineTotals:
    """What a bench result needs of the pipeline's statistics: one daemon's
    (`SupervisorStatistics`), or a fleet's summed from its daemons' `stats_final` lines."""

    records_done: int
    sessions_opened: int
    domains_probed: int
    rejected_rcpts_peak: int | None = None  # one daemon's only: peaks do not add up
    rejected_rcpts_peak_host: str | None = None

    @classmethod
    def of(cls, stats: SupervisorStatistics) -> PipelineTotals:
        return cls(
            records_done=stats.records_done,
            sessions_opened=stats.smtp.sessions_opened_total,
            domains_probed=stats.dispatcher.domains_probed,
            rejected_rcpts_peak=stats.smtp.rejected_rcpts_peak,
            rejected_rcpts_peak_host=stats.smtp.rejected_rcpts_peak_host,
        )


def evaluate(
    scenario: Scenario,
    world: WorldHeader,
    accuracy: Accuracy,
    stats: PipelineTotals,
    sim_stats: dict[str, Any],
    durations: Iterable[float],
    elapsed: float,
    cpu: float,
    maxrss_kb: int,
    log_path: Path,
) -> dict[str, Any]:
    done = stats.records_done
    ordered = sorted(durations)
    return {
        "scenario": dataclasses.asdict(scenario),
        "records": accuracy.checked,
        "outcomes": dict(accuracy.by_code),
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
        "rejected_rcpts_peak_per_host_minute": stats.rejected_rcpts_peak,
        "rejected_rcpts_peak_host": stats.rejected_rcpts_peak_host,
        "rejected_rcpts_budget": _dha_budget(world),
        "smtp_sessions_per_domain": round(stats.sessions_opened / max(stats.domains_probed, 1), 3),
        "accuracy": accuracy.to_dict(),
        "log": str(log_path),
    }


def _rss_note(result: dict[str, Any]) -> str:
    if "rss_before_pipeline_mb" not in result:
        return ""  # a fleet: each daemon process's own peak
    return (
        f" (this process's lifetime peak; {result['rss_before_pipeline_mb']} MB before the "
        f"pipeline started, {result['rss_peak_sampled_mb']} MB sampled peak while it ran)"
    )


def _pct(ordered: list[float], q: float) -> float:
    if not ordered:
        return 0.0
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def print_summary(result: dict[str, Any]) -> None:
    acc = result["accuracy"]
    lines = [
        f"ct-actors {result['scenario']['name']}: {result['records']} records, "
        f"mode {result['scenario']['mode']}",
        "",
        "outcomes:",
        *(f"  {code:<24} {count:>6}" for code, count in sorted(result["outcomes"].items())),
        "",
        f"throughput        {result['records_per_s']} records/s ({result['elapsed_s']} s wall)",
        f"around the run    simulator start {result.get('sim_start_s', '-')} s, seeding "
        f"{result.get('seeding_s')} s (streamed from the world file), check "
        f"{result.get('check_s', '-')} s",
        f"latency p50/p99   {result['latency_p50_s']} s / {result['latency_p99_s']} s",
        f"cpu per record    {result['cpu_s_per_record'] * 1000:.2f} ms",
        f"peak RSS          {result['peak_rss_mb']} MB{_rss_note(result)}",
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
