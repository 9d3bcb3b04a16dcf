"""Issue 14, item 3, with a real SIGKILL: outcomes committed by a daemon killed before it logged
them get their canonical `outcome` lines from the next daemon of the same name.

The kill lands between commit and logging deterministically: the first daemon's stdout is a
pipe nobody reads, so once the pipe is full the daemon blocks in the middle of logging (a log
line is a blocking, flushed write) with its last batch committed. That is visible in the
database as notes in ct_actors.outcome_log that stay unacknowledged."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (
    REPO,
    DaemonProcess,
    SimProcess,
    daemon_sections,
    db_fetch,
    db_val,
    drain_exit_code,
    expected_label,
    seed_spine,
    snapshot,
    write_config,
)

from ct_actors.demo.spine import spine_rows

pytestmark = [pytest.mark.e2e, pytest.mark.db]

StartSim = Callable[..., SimProcess]
StartDaemon = Callable[..., DaemonProcess]

OWNER = "prober-kill-log"
STUCK = 2.0  # seconds a committed batch stays unacknowledged: the writer is blocked logging


def terminal(url: str) -> set[uuid.UUID]:
    snap = snapshot(url)
    ready = {i for i, ct in snap.targets.items() if ct["execution_status"] == "ready"}
    return ready | set(snap.errors)


def pipe_lines(raw: bytes) -> list[dict[str, Any]]:
    """The complete JSON lines the killed daemon got into its pipe."""
    out = []
    for line in raw.split(b"\n"):
        try:
            out.append(json.loads(line))
        except ValueError:
            continue  # a half-written last line, or nothing
    return out


@pytest.mark.timeout(180)
def test_a_daemon_killed_while_logging_has_its_lines_logged_by_its_successor(
    migrated_db: str, start_sim: StartSim, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    seed = 21
    sim = start_sim(seed=seed, domains=600, latency_ms=2, jitter_ms=1)
    world = sim.world
    rows = spine_rows(world, seed)
    seed_spine(migrated_db, world, rows)
    sections = daemon_sections(
        migrated_db, world, mode="mx-only", owner=OWNER, probe={"names_query": ""}
    )
    config = write_config(tmp_path / "ct-actors.toml", sections)

    first = subprocess.Popen(
        [sys.executable, "-m", "ct_actors", "--config", str(config), "run"],
        stdout=subprocess.PIPE,  # never read until the kill: it fills up and blocks the daemon
        stderr=subprocess.DEVNULL,
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 90
        stuck = 0
        while not stuck:
            assert first.poll() is None, "the first daemon exited by itself"
            assert time.monotonic() < deadline, "the daemon never blocked between commit and log"
            time.sleep(0.2)
            stuck = db_val(
                migrated_db,
                "SELECT count(*) FROM ct_actors.outcome_log "
                "WHERE owner = $1 AND committed_at < now() - make_interval(secs => $2)",
                OWNER,
                STUCK,
            )
        committed = terminal(migrated_db)
        first.send_signal(signal.SIGKILL)
        assert first.wait(10) == -signal.SIGKILL
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(10)
    assert first.stdout is not None
    logged_first = {
        uuid.UUID(e["outreach_id"])
        for e in pipe_lines(first.stdout.read())
        if e.get("event") == "outcome" and e["outcome"] in ("PASS", "FAIL")
    }
    first.stdout.close()
    owed = {
        r["outreach_id"]
        for r in db_fetch(migrated_db, "SELECT outreach_id FROM ct_actors.outcome_log")
    }
    # The gap: committed outcomes without their line.
    missing = committed - logged_first
    assert missing and missing <= owed, (len(missing), len(owed))

    # The successor, same daemon.owner, drains the rest and logs what the first never did.
    second = start_daemon(config, "run", "--drain")
    want = drain_exit_code(expected_label(world, r, "mx-only") for r in rows)
    assert second.wait(120) == want, second.diagnostics()
    recovered = second.recovered()
    recovered_ids = {uuid.UUID(e["outreach_id"]) for e in recovered}
    assert missing <= recovered_ids <= owed
    assert {e["committed_by"] for e in recovered} == {OWNER}
    (summary,) = second.events("outcome_log_recovered")
    assert summary["records"] == len(owed) and summary["gone"] == 0
    # Recovered lines say what the database holds.
    snap = snapshot(migrated_db)
    for event in recovered:
        oid = uuid.UUID(event["outreach_id"])
        if event["outcome"] == "PASS":
            assert snap.targets[oid]["execution_status"] == "ready"
            assert snap.targets[oid]["method_type"] == event["method_type"]
        else:
            assert snap.errors[oid][0]["failure_code"] == event["code"]
    # Every terminal outcome now has its line, and nothing is owed any more.
    logged_second = {uuid.UUID(e["outreach_id"]) for e in second.outcomes()}
    assert terminal(migrated_db) == logged_first | recovered_ids | logged_second
    assert db_val(migrated_db, "SELECT count(*) FROM ct_actors.outcome_log") == 0
    sim.stop()
    print(
        f"\n[kill while logging] committed before the kill {len(committed)}, logged by the "
        f"killed daemon {len(logged_first)}, owed {len(owed)}, recovered by its successor "
        f"{len(recovered_ids)}"
    )

