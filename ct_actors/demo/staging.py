"""The stage a demo or benchmark run plays on: a fresh PostgreSQL database seeded with the world's
spine, and the simulated internet in its own process (`SimProcess`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import trio
from trio_asyncio import aio_as_trio

from ct_actors.config import Config
from ct_actors.db.choice import ChosenDatabase
from ct_actors.db.errors import DatabaseUnavailable
from ct_actors.db.migrate import migrate
from ct_actors.demo.scenario import Scenario
from ct_actors.demo.seeding import Accuracy, Seeded, check_outcomes, seed_from_world_file
from ct_actors.redact import redact_url
from ct_actors.sim.world_file import WorldHeader, read_header


async def recreate_or_explain(
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


def with_database(url: str, database: str) -> str:
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


async def migrate_and_seed(db_url: str, world_path: Path, scenario: Scenario) -> Seeded:
    """Migrate the fresh database and seed it from the world file, streamed."""
    conn = await aio_as_trio(asyncpg.connect)(db_url, timeout=5)
    try:
        await aio_as_trio(migrate)(conn)
        seeded: Seeded = await aio_as_trio(seed_from_world_file)(
            conn, world_path, scenario.seed, scenario.mode
        )
        return seeded
    finally:
        with trio.CancelScope(shield=True):
            await aio_as_trio(conn.close)()


async def fetch_accuracy(db_url: str) -> Accuracy:
    conn = await aio_as_trio(asyncpg.connect)(db_url, timeout=5)
    try:
        accuracy: Accuracy = await aio_as_trio(check_outcomes)(conn)
        return accuracy
    finally:
        with trio.CancelScope(shield=True):
            await aio_as_trio(conn.close)()


class SimProcess:
    """The simulated internet in its own process, as remote servers would be."""

    def __init__(
        self, process: trio.Process, header: WorldHeader, ready: dict[str, Any], buffer: bytes
    ) -> None:
        self.process = process
        self.header = header
        self.ready = ready  # its `sim_ready` line: listeners, hosts...
        self._buffer = buffer

    @classmethod
    async def start(cls, scenario: Scenario, world_path: Path) -> SimProcess:
        command = [
            sys.executable, "-m", "ct_actors.sim", "serve",
            "--seed", str(scenario.seed), "--domains", str(scenario.domains),
            "--world-file", str(world_path),
            "--latency-ms", str(scenario.latency_ms), "--jitter-ms", str(scenario.jitter_ms),
            "--mix", scenario.mix,
            "--smtp-port", str(scenario.smtp_port), "--dns-port", str(scenario.dns_port),
        ]  # fmt: skip
        if scenario.mode == "mx-only":
            command.append("--dns-only")  # an MX-only prober never connects to port 25
        process = await trio.lowlevel.open_process(command, stdout=subprocess.PIPE)
        assert process.stdout is not None
        buffer = b""
        try:
            # Generating and writing a world takes ~0.1 ms per domain on this machine.
            with trio.fail_after(120 + scenario.domains / 1000):
                while (ready := _ready_line(buffer)) is None:
                    chunk = await process.stdout.receive_some()
                    if not chunk:
                        raise RuntimeError("the simulated internet exited before it was ready")
                    buffer += chunk
            header = read_header(world_path)
        except BaseException:
            process.kill()
            with trio.CancelScope(shield=True):
                await process.wait()
            raise
        return cls(process, header, ready, buffer)

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


def _ready_line(buffer: bytes) -> dict[str, Any] | None:
    complete = buffer[: buffer.rfind(b"\n") + 1].decode(errors="replace")
    for line in complete.splitlines():
        if '"sim_ready"' in line:
            ready: dict[str, Any] = json.loads(line)
            return ready
    return None
