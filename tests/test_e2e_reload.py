"""End to end: SIGHUP and the resolver kill switch in a real daemon process.

* A registry rewritten under the running daemon changes the MXLookup rate it keeps, as measured
  from its own stats lines; a broken registry is refused by name and changes nothing.
* A broken first nameserver is switched away from (`resolver_switched`) without a single record
  ending anywhere but at its ground truth.
* With every nameserver broken the kill switch trips and the daemon waits, paused, writing
  nothing on the resolver's account; SIGHUP clears it and starts again from the first
  nameserver; SIGTERM stops it with every record still pending and no lease held.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import re
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from e2e_support import (
    TOOLBOX,
    DaemonProcess,
    SimProcess,
    Snapshot,
    daemon_sections,
    expected_label,
    mismatches,
    seed_spine,
    snapshot,
    write_config,
)

from ct_actors.demo.spine import SpineRow, spine_rows
from ct_actors.dns.client import DnsReply, UdpDnsClient
from ct_actors.dns.types import DnsUnavailable
from ct_actors.sim.world import World

pytestmark = [pytest.mark.e2e, pytest.mark.db]

StartSim = Callable[..., SimProcess]
StartDaemon = Callable[..., DaemonProcess]

MX_LOOKUP = "TOOL-004 MXLookup"  # its key in the stats line's `throttles`
RESOLVER_FAILURE = "dns_resolver_failure"
BROKEN_SERVFAIL = "127.0.53.54"
BROKEN_SILENT = "127.0.53.55"


# ─── the registry ───────────────────────────────────────────────────────────────────────────


def registry_text(*, mx_per_second: int, without_tool: str | None = None) -> str:
    """The shipped registry with MXLookup's per_second limit set to `mx_per_second` (and the
    tool `without_tool`, by YAML key, cut out)."""
    text = TOOLBOX.read_text(encoding="utf-8")
    start = text.index('tool_id: "TOOL-004"')
    end = text.index("tool_id:", start + 1)
    old = '{scope: "per_second", limit: 50}'
    at = text.index(old, start)
    assert at < end, "MXLookup's per_second limit moved in the shipped registry"
    text = text[:at] + f'{{scope: "per_second", limit: {mx_per_second}}}' + text[at + len(old) :]
    if without_tool is not None:
        block = re.search(rf"^  {without_tool}:\n.*?(?=^  \w+:\n)", text, re.M | re.S)
        assert block is not None, without_tool
        text = text[: block.start()] + text[block.end() :]
    return text


def write_registry(path: Path, text: str) -> None:
    # As an operator's editor or config management would: the daemon never sees half a file.
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ─── the daemon's log, read as it is written ────────────────────────────────────────────────


class EventLog:
    """The daemon's JSON log lines, parsed once each as they arrive."""

    def __init__(self, daemon: DaemonProcess) -> None:
        self.daemon = daemon
        self.events: list[dict[str, Any]] = []
        self._parsed = 0

    def _update(self, lines: list[str]) -> None:
        for line in lines[self._parsed :]:
            if line.startswith("{"):
                with contextlib.suppress(ValueError):
                    self.events.append(json.loads(line))
        self._parsed = len(lines)

    def refresh(self) -> None:
        def update(lines: list[str]) -> bool:
            self._update(lines)
            return True

        self.daemon.out.wait_for(update, 0)

    def named(self, name: str, after: int = 0) -> list[tuple[int, dict[str, Any]]]:
        self.refresh()
        return [(i, e) for i, e in enumerate(self.events) if i >= after and e["event"] == name]

    def wait(
        self,
        name: str | frozenset[str],
        *,
        after: int = 0,
        where: Callable[[dict[str, Any]], bool] = lambda e: True,
        timeout: float,
    ) -> tuple[int, dict[str, Any]]:
        """The first event named `name` (or any of them) at index >= `after` that satisfies
        `where`: (index, event)."""
        names = frozenset([name]) if isinstance(name, str) else name
        found: list[tuple[int, dict[str, Any]]] = []
        scan = after

        def predicate(lines: list[str]) -> bool:
            nonlocal scan
            self._update(lines)
            while scan < len(self.events):
                event = self.events[scan]
                if event.get("event") in names and where(event):
                    found.append((scan, event))
                    return True
                scan += 1
            return False

        if not self.daemon.out.wait_for(predicate, timeout) or not found:
            raise AssertionError(f"no {sorted(names)} event within {timeout} s\n{self}")
        return found[0]

    def __str__(self) -> str:
        """A short account for failure messages (the stats lines are kilobytes each)."""
        self.refresh()
        tail = [e for e in self.events if e["event"] not in ("stats", "outcome")][-15:]
        stats = [e for e in self.events if e["event"] == "stats"][-1:]
        lines = [json.dumps(e) for e in tail]
        for e in stats:
            brief = {k: e[k] for k in ("records_done", "in_flight", "outcomes", "resolver")}
            lines.append(f"last stats: {json.dumps(brief)}")
        lines.append("--- stderr (tail) ---")
        lines.extend(self.daemon.err.lines[-15:])
        return "\n".join(lines)


def ts(event: dict[str, Any]) -> float:
    return dt.datetime.fromisoformat(event["ts"]).timestamp()


def mx_calls(stats: dict[str, Any]) -> int:
    calls: int = stats["throttles"][MX_LOOKUP]["calls"]
    return calls


def mx_limits(stats: dict[str, Any]) -> list[str]:
    limits: list[str] = stats["throttles"][MX_LOOKUP]["limits"]
    return limits


@dataclass(frozen=True)
class Rate:
    calls: int
    seconds: float
    first: dict[str, Any]  # the stats lines it was measured between
    last: dict[str, Any]

    @property
    def per_second(self) -> float:
        return self.calls / self.seconds

    def most_allowed(self, per_second: int) -> int:
        """The most calls a sliding window of `per_second` a second lets through in this span:
        a full second's worth in every started second (a burst can fall at each end)."""
        return per_second * (math.floor(self.seconds) + 1)

    def __str__(self) -> str:
        return f"{self.calls} MXLookup calls in {self.seconds:.2f} s = {self.per_second:.1f}/s"


def measure_rate(log: EventLog, *, after: int, span: float, timeout: float) -> tuple[int, Rate]:
    """MXLookup calls per second between the first stats line at index >= `after` and the
    first one at least `span` seconds later (by the lines' own timestamps). Returns the index
    of that last stats line too."""
    i0, first = log.wait("stats", after=after, timeout=timeout)
    i1, last = log.wait(
        "stats", after=i0 + 1, where=lambda e: ts(e) - ts(first) >= span, timeout=span + timeout
    )
    return i1, Rate(mx_calls(last) - mx_calls(first), ts(last) - ts(first), first, last)


def terminal_ids(snap: Snapshot) -> set[Any]:
    ready = {i for i, ct in snap.targets.items() if ct["execution_status"] in ("ready", "failed")}
    return ready | set(snap.errors)


def wrong_terminal_rows(
    world: World, rows: list[SpineRow], snap: Snapshot, mode: str
) -> list[tuple[str | None, str, str]]:
    """Records the daemon finished (PASS or FAIL) with anything but the ground truth."""
    done = terminal_ids(snap)
    return [
        (r.raw_domain, expected_label(world, r, mode), snap.label(r.outreach_id))
        for r in rows
        if r.outreach_id in done and snap.label(r.outreach_id) != expected_label(world, r, mode)
    ]


# ─── 1. SIGHUP changes the MXLookup rate; a broken registry changes nothing ─────────────────


SLOW, FAST = 5, 40


@pytest.mark.timeout(120)
def test_sighup_changes_the_lookup_rate_and_a_broken_registry_changes_nothing(
    migrated_db: str, start_sim: StartSim, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    seed = 31
    sim = start_sim(seed=seed, domains=800, latency_ms=1, jitter_ms=0)
    world = sim.world
    rows = spine_rows(world, seed)
    seed_spine(migrated_db, world, rows)
    registry = tmp_path / "SNAP_ON_TOOLBOX.yaml"
    write_registry(registry, registry_text(mx_per_second=SLOW))
    sections = daemon_sections(
        migrated_db,
        world,
        mode="mx-only",
        toolbox={"path": registry},
        log={"stats_interval": 1.0},
        # Enough in flight to keep 40 lookups a second busy, few enough that a stop is quick.
        probe={"max_in_flight": 64, "claim_batch": 32},
        daemon={"drain_deadline": 5.0},
    )
    config = write_config(tmp_path / "ct-actors.toml", sections)
    daemon = start_daemon(config, "run")
    log = EventLog(daemon)

    # At 5/s: measured once the pipeline is busy (the first stats line with a lookup in it).
    start, _ = log.wait("stats", where=lambda e: mx_calls(e) > 0, timeout=60)
    end, slow = measure_rate(log, after=start, span=4.0, timeout=10)
    assert mx_limits(slow.last)[0] == f"per_second {SLOW}/1s"
    # About 5 a second, and never more than a sliding window of 5 a second allows (over 4 s, a
    # burst at each end: 25, 6.25/s).
    assert slow.per_second >= 3.0 and slow.calls <= slow.most_allowed(SLOW), str(slow)

    # The operator raises the limit and reloads.
    write_registry(registry, registry_text(mx_per_second=FAST))
    daemon.signal(signal.SIGHUP)
    at, reloaded = log.wait("reloaded", after=end, timeout=10)
    changes = reloaded["toolbox_changes"]
    assert any(
        line.startswith("TOOL-004 (MXLookup) rate_limits:")
        and f"per_second {SLOW}/1s" in line
        and f"per_second {FAST}/1s" in line
        for line in changes
    ), changes
    assert reloaded["config_changes"] == [] and reloaded["kill_switches_cleared"] == []
    end, fast = measure_rate(log, after=at, span=3.0, timeout=10)
    assert mx_limits(fast.first)[0] == f"per_second {FAST}/1s"
    assert fast.per_second > 15.0 and fast.calls <= fast.most_allowed(FAST), str(fast)

    # Two broken registries: a negative limit, then our SMTPCheck tool gone. Each is refused
    # by name and the running one stays.
    write_registry(registry, registry_text(mx_per_second=-1))
    daemon.signal(signal.SIGHUP)
    at, failed = log.wait("reload_failed", after=end, timeout=10)
    assert "tools.MXLookup(TOOL-004).throttle.rate_limits[0].limit" in failed["error"], failed
    assert "got -1" in failed["error"], failed
    write_registry(registry, registry_text(mx_per_second=FAST * 2, without_tool="SMTPCheck"))
    daemon.signal(signal.SIGHUP)
    at, failed = log.wait("reload_failed", after=at + 1, timeout=10)
    assert "no tool with tool_id TOOL-005" in failed["error"], failed
    end, kept = measure_rate(log, after=at, span=3.0, timeout=10)
    assert mx_limits(kept.first)[0] == mx_limits(kept.last)[0] == f"per_second {FAST}/1s"
    assert kept.per_second > 15.0 and kept.calls <= kept.most_allowed(FAST), str(kept)
    assert daemon.proc.poll() is None
    assert len(log.named("reloaded")) == 1
    assert len(log.named("reload_requested")) == 3

    # Plenty was left to do: the limits, not the work running out, set the pace throughout.
    assert mx_calls(kept.last) < len(world.domains) - 2 * FAST

    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0, str(log)
    assert daemon.events("daemon_stopped")
    sim_stats = sim.stop()
    snap = snapshot(migrated_db)
    assert 0 < len(terminal_ids(snap)) < len(rows)
    assert sim_stats["dns_queries"]["MX"] < len(world.domains)
    assert wrong_terminal_rows(world, rows, snap, "mx-only") == []
    assert [x for x in snap.leases.values() if x["live"]] == []
    print(f"\nrates: {slow}; after SIGHUP {fast}; after the refused reloads {kept}")


# ─── 2. a broken first nameserver is switched away from ─────────────────────────────────────


@pytest.mark.timeout(120)
def test_a_broken_first_resolver_is_switched_away_from(
    migrated_db: str, start_sim: StartSim, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    # A dead first resolver (it never answers) and every lookup in flight at once (MXLookup
    # unthrottled), as when a resolver tens of milliseconds away dies under a full pipeline.
    # On loopback, with the shipped 50/s, lookups barely overlap and which of them happen to
    # straddle the switch varies from run to run.
    seed = 32
    sim = start_sim(seed=seed, domains=200, broken_dns=[f"{BROKEN_SILENT}=silent"])
    world = sim.world
    healthy = world.dns_address
    assert sim.ready["broken_dns"] and BROKEN_SILENT in sim.ready["broken_dns"][0]
    rows = spine_rows(world, seed)
    seed_spine(migrated_db, world, rows)
    registry = tmp_path / "SNAP_ON_TOOLBOX.yaml"
    write_registry(registry, registry_text(mx_per_second=10_000))
    sections = daemon_sections(
        migrated_db,
        world,
        mode="mx-only",
        dns={"nameservers": [BROKEN_SILENT, healthy], "attempts": 2, "timeout": 0.3},
        killswitch={"resolver_failure_domains": 5},
        toolbox={"path": registry},
        log={"stats_interval": 1.0},
    )
    config = write_config(tmp_path / "ct-actors.toml", sections)

    daemon = start_daemon(config, "run", "--drain")
    log = EventLog(daemon)

    _, switched = log.wait("resolver_switched", timeout=60)
    assert switched["failed"] == BROKEN_SILENT and switched["now_using"] == healthy, switched
    assert switched["switch"] == RESOLVER_FAILURE
    # Then the drain completes, on the healthy resolver, with no kill switch on the way.
    _, end = log.wait(frozenset({"drained", "kill_switch_tripped"}), timeout=90)
    assert end["event"] == "drained", f"the pipeline paused with {healthy} active: {end}"
    assert daemon.wait(30) == 0, str(log)
    sim.stop()
    snap = snapshot(migrated_db)
    assert len(daemon.events("resolver_switched")) == 1
    assert daemon.events("kill_switch_tripped") == []
    (final,) = daemon.events("stats_final")
    assert final["resolver"]["active_nameserver"] == healthy
    assert final["resolver"]["resolver_switches"] == 1
    # Not one record paid for the resolver: every one at its ground truth (no CT-M-NO-MX for a
    # domain with MX, nothing deferred with "our resolver could not answer").
    assert mismatches(world, rows, snap, mode="mx-only") == []
    assert snap.leases == {}


@pytest.mark.timeout(60)
def test_a_query_waiting_on_a_dead_resolver_when_it_is_switched_asks_the_new_one(
    start_sim: StartSim,
) -> None:
    sim = start_sim(seed=35, domains=10, broken_dns=[f"{BROKEN_SILENT}=silent"])
    world = sim.world
    domain = next(d for d in sorted(world.domains) if world.domain(d).has_mx)

    async def ask_across_a_switch() -> DnsReply | DnsUnavailable:
        nameservers = [BROKEN_SILENT, world.dns_address]
        async with UdpDnsClient(nameservers, port=world.dns_port, timeout=0.5) as client:
            assert client.active_nameserver == BROKEN_SILENT
            result: list[DnsReply | DnsUnavailable] = []

            async def ask() -> None:
                try:
                    result.append(await client.exchange(domain, "MX"))
                except DnsUnavailable as exc:
                    result.append(exc)

            with trio.fail_after(10):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(ask)
                    await trio.sleep(0.2)  # its first attempt is waiting on the dead resolver
                    assert client.switch_nameserver() == world.dns_address
            return result[0]

    # A query in flight when the resolver is switched finishes on the new one.
    answer = trio.run(ask_across_a_switch)
    assert isinstance(answer, DnsReply), str(answer)
    assert answer.nameserver == world.dns_address


# ─── 3. every nameserver broken: the kill switch pauses the pipeline ────────────────────────


@dataclass
class AllBroken:
    world: World
    rows: list[SpineRow]
    daemon: DaemonProcess
    log: EventLog
    tripped_at: int  # index of the kill_switch_tripped event in log.events

    @property
    def with_domain(self) -> set[Any]:
        return {r.outreach_id for r in self.rows if r.domain is not None}


def run_with_every_resolver_broken(
    migrated_db: str, start_sim: StartSim, start_daemon: StartDaemon, tmp_path: Path, seed: int
) -> AllBroken:
    """A daemon whose two nameservers are both broken (the first answers SERVFAIL, the second
    never answers), up to its kill_switch_tripped event."""
    sim = start_sim(
        seed=seed,
        domains=100,
        broken_dns=[f"{BROKEN_SERVFAIL}=servfail", f"{BROKEN_SILENT}=silent"],
    )
    assert len(sim.ready["broken_dns"]) == 2
    world = sim.world
    rows = spine_rows(world, seed)
    seed_spine(migrated_db, world, rows)
    sections = daemon_sections(
        migrated_db,
        world,
        mode="mx-only",
        dns={"nameservers": [BROKEN_SERVFAIL, BROKEN_SILENT], "attempts": 2, "timeout": 0.3},
        killswitch={"resolver_failure_domains": 5},
        probe={"defer_seconds": 1},
        log={"stats_interval": 0.5},
        daemon={"drain_deadline": 5.0},
    )
    config = write_config(tmp_path / "ct-actors.toml", sections)
    daemon = start_daemon(config, "run")
    log = EventLog(daemon)
    at, switched = log.wait("resolver_switched", timeout=60)
    assert (switched["failed"], switched["now_using"]) == (BROKEN_SERVFAIL, BROKEN_SILENT)
    assert switched["switch"] == RESOLVER_FAILURE
    at, tripped = log.wait("kill_switch_tripped", after=at, timeout=60)
    assert tripped["switch"] == RESOLVER_FAILURE and tripped["failed"] == BROKEN_SILENT, tripped
    return AllBroken(world, rows, daemon, log, at)


def wait_paused(
    log: EventLog, after: int, quiet: float
) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """Wait until nothing is in flight, then for `quiet` seconds more of stats lines; returns
    the index of the last one and the two stats lines that bracket the quiet time."""
    at, first = log.wait("stats", after=after, where=lambda e: e["in_flight"] == 0, timeout=30)
    at, later = log.wait(
        "stats", after=at + 1, where=lambda e: ts(e) - ts(first) >= quiet, timeout=quiet + 10
    )
    return at, first, later


@pytest.mark.timeout(120)
def test_every_resolver_broken_trips_the_kill_switch_and_pauses(
    migrated_db: str, start_sim: StartSim, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    run = run_with_every_resolver_broken(migrated_db, start_sim, start_daemon, tmp_path, seed=33)
    daemon, log = run.daemon, run.log

    # Paused: still running, claiming nothing, asking no resolver, finishing nothing.
    at, first, later = wait_paused(log, run.tripped_at, quiet=2.0)
    assert daemon.proc.poll() is None
    for stats in (first, later):
        assert stats["kill_switches"][RESOLVER_FAILURE]["tripped"] is True
        assert stats["resolver"]["active_nameserver"] == BROKEN_SILENT
    for key in ("loader", "resolver", "outcomes"):
        assert later[key] == first[key], key
    assert later["in_flight"] == 0
    # The resolver's trouble is never a record's outcome: nothing with a domain is finished.
    snap = snapshot(migrated_db)
    assert terminal_ids(snap) & run.with_domain == set()
    assert wrong_terminal_rows(run.world, run.rows, snap, "mx-only") == []
    assert first["outcomes"].get("DEFERRED", 0) > 0

    # SIGHUP is the operator's "fixed": the switch is cleared and the first nameserver is
    # active again. (It is still broken here, so the daemon goes through it all again.)
    daemon.signal(signal.SIGHUP)
    at, reloaded = log.wait("reloaded", after=at, timeout=10)
    assert reloaded["kill_switches_cleared"] == [RESOLVER_FAILURE]
    cleared = [e for _, e in log.named("kill_switch_cleared", after=run.tripped_at)]
    assert [e["switch"] for e in cleared] == [RESOLVER_FAILURE]
    at, again = log.wait("resolver_switched", after=at, timeout=60)
    assert (again["failed"], again["now_using"]) == (BROKEN_SERVFAIL, BROKEN_SILENT)
    at, _ = log.wait("kill_switch_tripped", after=at, timeout=60)
    at, _, _ = wait_paused(log, at, quiet=0.5)

    daemon.signal(signal.SIGTERM)
    assert daemon.wait(30) == 0, str(log)
    assert daemon.events("daemon_stopped")
    snap = snapshot(migrated_db)
    assert terminal_ids(snap) & run.with_domain == set()
    assert all(snap.label(i) == "PENDING" for i in run.with_domain)
    assert [x for x in snap.leases.values() if x["live"]] == []


@pytest.mark.timeout(120)
def test_a_tripped_resolver_kill_switch_stops_lookups_at_once(
    migrated_db: str, start_sim: StartSim, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    # When the switch trips, most lookups are queued behind the MXLookup throttle (every
    # domain's retries, breadth first): they must answer DnsUnavailable, not go out to the
    # broken resolvers at the throttle's pace.
    run = run_with_every_resolver_broken(migrated_db, start_sim, start_daemon, tmp_path, seed=34)
    # The first stats line after the trip, and the one after everything in flight answered.
    _, first = run.log.wait("stats", after=run.tripped_at, timeout=10)
    _, settled = run.log.wait(
        "stats", after=run.tripped_at, where=lambda e: e["in_flight"] == 0, timeout=30
    )
    assert settled["resolver"]["lookups"] == first["resolver"]["lookups"], (
        f"{settled['resolver']['lookups'] - first['resolver']['lookups']} MX lookups sent "
        f"after the kill switch tripped, over {ts(settled) - ts(first):.1f} s"
    )
