"""`run --drain` with a progress bar: the real pipeline draws done/total on the stream it is
given, and the last frame shows every pending record done."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import trio
from e2e_support import daemon_sections, seed_spine, write_config

from ct_actors.app import run_pipeline
from ct_actors.config import load_config
from ct_actors.db import Database, WorkQueue
from ct_actors.demo.spine import spine_rows
from ct_actors.service import SystemdService
from ct_actors.sim.world import World
from ct_actors.testing import SimResolver, open_sim_connector
from ct_actors.toolbox import load_toolbox

pytestmark = [pytest.mark.e2e, pytest.mark.db, pytest.mark.timeout(120)]


async def test_drain_draws_progress_up_to_the_pending_total(
    database: Database, queue: WorkQueue, migrated_db: str, tmp_path: Path
) -> None:
    world = World.generate(31, 40, latency_ms=5, jitter_ms=2)
    rows = spine_rows(world, 31)
    await trio.to_thread.run_sync(seed_spine, migrated_db, world, rows)
    pending = await queue.pending_count()
    cfg = load_config(
        write_config(
            tmp_path / "ct-actors.toml",
            daemon_sections(migrated_db, world, probe={"mode": "mx-only"}),
        )
    )
    out = io.StringIO()
    with trio.fail_after(60):
        async with open_sim_connector(world) as connector:
            supervisor = await run_pipeline(
                cfg,
                load_toolbox(cfg.toolbox.path),
                database,
                drain=True,
                resolver=SimResolver(world),
                connector=connector,
                handle_signals=False,
                service=SystemdService(),
                progress=out,
            )
    frames = [f for f in out.getvalue().split("\r") if f]
    assert frames and out.getvalue().endswith("\n")
    done = sum(supervisor.writer.outcomes.values())
    assert f"/{pending:,}" in frames[0]  # the total is what was pending at the start
    assert f"{done:,}/{pending:,}" in frames[-1]
    assert done == pending  # mx-only: every pending record gets its outcome in one drain
