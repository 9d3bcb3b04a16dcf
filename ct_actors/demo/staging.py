"""The stage a demo or benchmark run plays on: a fresh PostgreSQL database seeded with the world's
spine, and the simulated internet in its own process (`start_sim`)."""

from __future__ import annotations

import sys
from pathlib import Path
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
from ct_actors.sim.process import SimProcess


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


async def start_sim(scenario: Scenario, world_path: Path) -> SimProcess:
    """The scenario's simulated internet in its own process, on the scenario's ports (the
    simulator's defaults, the ones the demo's documentation names, unless --sim-ports moved
    them); DNS only in MX-only mode."""
    return await SimProcess.open(
        world_path,
        seed=scenario.seed,
        domains=scenario.domains,
        latency_ms=scenario.latency_ms,
        jitter_ms=scenario.jitter_ms,
        mix=scenario.mix,
        random_ports=False,
        smtp_port=scenario.smtp_port,
        dns_port=scenario.dns_port,
        dns_only=scenario.mode == "mx-only",
        # Generating and writing a world takes ~0.1 ms per domain on this machine.
        ready_timeout=120.0 + scenario.domains / 1000,
    )
