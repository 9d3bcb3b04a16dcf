"""The periodic `stats` line and the sim's `sim_stopped` line keep their JSON keys and value types.

Operators' dashboards and docs/monitoring.md read these lines, so the move of every
`statistics()` to a typed value must not change what is rendered. The golden file
(tests/data/stats_line_shape.json) was recorded from the lines as the dict-returning
`statistics()` rendered them, before the change: for every path into the line, the JSON types
seen there. Maps keyed by data (outcome codes, host names) are collapsed to `*`, list items
to `[]`.

Two runs give every value a chance to show each of its types: the pipeline waiting for its
SMTPCheck daily budget (MockClock: `paused_until` and `exhausted_until` set, then cleared),
and the verifier tripping its money cap (real time, a loopback fake vendor: `budget_switch`).
Re-record with CT_RECORD_STATS_SHAPE=1 only for an intended, documented change of the line.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path
from typing import Any

import pytest
import structlog
import trio
import trio.testing

from ct_actors.actors.supervisor import Supervisor
from ct_actors.log import configure_logging
from ct_actors.sim.__main__ import stopped_event
from ct_actors.sim.world import World
from ct_actors.testing import FakeStore, MemoryUsageStore
from ct_actors.toolbox import SMTP_CHECK
from tests.pipeline_support import SimPipelines
from tests.test_pipeline_sim import spine_for
from tests.test_throttle_pipeline import (
    BEFORE_MIDNIGHT,
    DAY_LIMIT,
    MIDNIGHT,
    SMTP,
    Run,
    run_pipeline,
    throttles,
    with_limit,
)
from tests.test_verify_pipeline import run_money_capped

pytestmark = pytest.mark.timeout(60)
SMTP_KEY = f"{SMTP_CHECK} {SMTP.name}"  # the line's `throttles` key, "TOOL-005 SMTPCheck"

GOLDEN = Path(__file__).parent / "data" / "stats_line_shape.json"
# Maps whose keys are data (outcome codes, host names, query types), not names of fields.
BY_DATA = {
    "outcomes",
    "writer.by_code",
    "connections_by_host",
    "peak_concurrent_by_host",
    "commands",
    "replies",
    "rejected_421_by_host",
    "dns_queries",
    "dns_rcodes",
}
JSON_TYPES = {type(None): "null", bool: "bool", int: "int", float: "float", str: "str"}


def shape(
    value: Any, path: str = "", into: dict[str, set[str]] | None = None
) -> dict[str, set[str]]:
    """Every path into a parsed JSON value, with the JSON types found there."""
    out: dict[str, set[str]] = {} if into is None else into
    if isinstance(value, dict):
        out.setdefault(path, set()).add("object")
        for key, item in value.items():
            name = "*" if path in BY_DATA else key
            shape(item, f"{path}.{name}" if path else name, out)
    elif isinstance(value, list):
        out.setdefault(path, set()).add("array")
        for item in value:
            shape(item, f"{path}[]", out)
    else:
        out.setdefault(path, set()).add(JSON_TYPES[type(value)])
    return out


def merged(lines: list[dict[str, Any]]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for line in lines:
        shape({k: v for k, v in line.items() if k not in ("timestamp", "ts")}, "", out)
    return out


@pytest.fixture
def log_lines() -> Any:
    buf = io.StringIO()
    configure_logging("json", "info", stream=buf)
    # Not cached: a module's logger first used here would keep writing to `buf` in later
    # tests of this process and escape their structlog.testing.capture_logs().
    structlog.configure(cache_logger_on_first_use=False)
    try:
        yield lambda: [json.loads(line) for line in buf.getvalue().splitlines()]
    finally:
        structlog.reset_defaults()


async def paused_and_resumed(sim_pipeline: SimPipelines) -> Run:
    """The pipeline waiting for the SMTPCheck daily budget, with a stats line while it waits;
    returns the run (its final line is logged by the supervisor)."""
    assert trio.current_time() == 0.0
    midnight = (MIDNIGHT - BEFORE_MIDNIGHT).total_seconds()
    world = World.generate(23, 60, latency_ms=20, jitter_ms=10)
    spine, owner = spine_for(world)
    limits = throttles(BEFORE_MIDNIGHT, MemoryUsageStore(), with_limit(SMTP, "per_day", DAY_LIMIT))

    async def watch(supervisor: Supervisor) -> None:
        await trio.sleep_until(midnight - 10.0)
        supervisor.log_stats()

    with trio.fail_after(100_000):
        return await run_pipeline(
            sim_pipeline, world, FakeStore(spine), owner, limits, during=watch
        )


async def test_the_stats_lines_keep_their_keys_and_value_types(
    autojump_clock: trio.testing.MockClock, log_lines: Any, sim_pipeline: SimPipelines
) -> None:
    run = await paused_and_resumed(sim_pipeline)
    throttled = [line for line in log_lines() if line["event"] in ("stats", "stats_final")]
    assert [line["event"] for line in throttled] == ["stats", "stats_final"]
    # The line while waiting shows when work resumes; the final one, that it did.
    assert throttled[0]["throttles"][SMTP_KEY]["paused_until"] == MIDNIGHT.isoformat()
    assert throttled[1]["throttles"][SMTP_KEY]["paused_until"] is None
    sim_line = json.loads(json.dumps(stopped_event("SIGTERM", run.stats)))["stats"]
    got = {"stats": merged(throttled), "sim_stopped.stats": merged([sim_line])}
    record_or_compare("throttled", got)


async def test_the_verifier_stats_line_keeps_its_keys_and_value_types(
    log_lines: Any, sim_pipeline: SimPipelines
) -> None:
    world = World.generate(4, 20, latency_ms=0, jitter_ms=0)
    spine, _ = spine_for(world)
    with trio.fail_after(30):
        await run_money_capped(sim_pipeline, world, FakeStore(spine), cap_calls=3)
    final = [line for line in log_lines() if line["event"] == "stats_final"]
    assert len(final) == 1 and final[0]["verifier"]["budget_switch"] is True
    record_or_compare("verified", {"stats": merged(final)})


def record_or_compare(name: str, got: dict[str, dict[str, set[str]]]) -> None:
    rendered = {part: {p: "|".join(sorted(t)) for p, t in s.items()} for part, s in got.items()}
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
    if os.environ.get("CT_RECORD_STATS_SHAPE") == "1":
        golden[name] = rendered
        GOLDEN.write_text(json.dumps(golden, indent=1, sort_keys=True) + "\n")
    assert name in golden, f"no golden shape for {name}: record it (see the module docstring)"
    for part, want in golden[name].items():
        have = rendered.get(part, {})
        changed = {
            path: (want.get(path), have.get(path))
            for path in want.keys() | have.keys()
            if want.get(path) != have.get(path)
        }
        assert changed == {}, f"{part}: path -> (recorded, now)"
    assert rendered.keys() == golden[name].keys()
