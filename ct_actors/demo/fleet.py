"""`bench --processes N`: the benchmark run by a fleet of N real `ct-actors run --drain`
processes, and its summary."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import trio
import trio_asyncio
import yaml

from ct_actors.config import Config, env_var_name
from ct_actors.db.choice import ChosenDatabase
from ct_actors.demo.scenario import (
    LIFTED_RATE_LIMITS,
    PipelineTotals,
    Scenario,
    evaluate,
    print_summary,
    scenario_config,
    simulation_toolbox,
)
from ct_actors.demo.staging import (
    fetch_accuracy,
    migrate_and_seed,
    recreate_or_explain,
    start_sim,
    with_database,
)
from ct_actors.toolbox import Toolbox, load_toolbox


async def run_fleet(
    cfg: Config, toolbox: Toolbox, scenario: Scenario, chosen: ChosenDatabase | None = None
) -> dict[str, Any] | None:
    """`bench --processes N`: the same fresh database, spine and simulated internet as `_run`,
    processed by N real `ct-actors run --drain` processes (each its own `daemon.owner`, each
    with the benchmark's configuration) started together. Wall time runs from the first start
    to the last exit (process start-up included); CPU is every daemon process's own."""
    workdir = Path(tempfile.mkdtemp(prefix=f"ct-actors-{scenario.name}-x{scenario.processes}-"))
    world_path = workdir / "world.jsonl"
    db_url = with_database(cfg.database.url, scenario.database)
    async with trio_asyncio.open_loop():
        if not await recreate_or_explain(cfg, scenario, db_url, chosen):
            return None
        sim = await start_sim(scenario, world_path)
        try:
            seeded = await migrate_and_seed(db_url, world_path, scenario)
            fleet_cfg = scenario_config(cfg, scenario, sim.header, db_url)
            registry = _write_simulation_toolbox(toolbox, workdir / "toolbox.yaml")
            print(
                f"[{scenario.name}] world: {seeded.domains} domains; spine: {seeded.records} "
                f"records seeded in {seeded.seconds:.1f} s; {scenario.processes} daemon "
                f"processes; logs: {workdir}",
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
            sim_stats = await sim.aclose()
        sim_usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # now the sim's too
        accuracy = await fetch_accuracy(db_url)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    sim_cpu = (sim_usage.ru_utime - after.ru_utime) + (sim_usage.ru_stime - after.ru_stime)
    finals = [child.final() for child in children]
    # Each daemon's `stats_final` line is all a fleet's processes leave of their statistics.
    merged = PipelineTotals(
        records_done=sum(f.get("records_done", 0) for f in finals),
        sessions_opened=sum(f.get("smtp", {}).get("sessions_opened_total", 0) for f in finals),
        domains_probed=sum(f.get("dispatcher", {}).get("domains_probed", 0) for f in finals),
    )
    durations = [d for child in children for d in child.durations()]
    maxrss = max(child.maxrss_kb for child in children)
    result = evaluate(
        scenario, sim.header, accuracy, merged, sim_stats, durations, elapsed, cpu, maxrss, workdir
    )
    result["seeding_s"] = round(seeded.seconds, 1)
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
                if limit.get("scope") in LIFTED_RATE_LIMITS:
                    limit["limit"] = LIFTED_RATE_LIMITS[limit["scope"]]
    path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    written, wanted = load_toolbox(path), simulation_toolbox(toolbox)
    for tool_id, spec in wanted.tools.items():
        if written.tools[tool_id].rate_limits != spec.rate_limits:
            raise RuntimeError(f"{path}: {tool_id} limits differ from simulation_toolbox")
    return path


def _ms(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds * 1000:.2f}"


def print_fleet_summary(result: dict[str, Any]) -> None:
    print_summary(result)
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
