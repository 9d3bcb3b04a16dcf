"""The stage a demo or benchmark run plays on: a fresh PostgreSQL database seeded with the world's
spine, and the simulated internet in its own process (`start_sim`)."""

from __future__ import annotations

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
from ct_actors.demo.spine import SpineRow, write_spine
from ct_actors.redact import redact_url
from ct_actors.sim.process import SimProcess
from ct_actors.sim.world import World


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


async def migrate_and_seed(db_url: str, world: World, rows: list[SpineRow]) -> None:
    conn = await aio_as_trio(asyncpg.connect)(db_url, timeout=5)
    try:
        await aio_as_trio(migrate)(conn)
        await aio_as_trio(write_spine)(conn, world, rows)
    finally:
        with trio.CancelScope(shield=True):
            await aio_as_trio(conn.close)()


async def fetch_outcomes(db_url: str) -> dict[Any, dict[str, Any]]:
    conn = await aio_as_trio(asyncpg.connect)(db_url, timeout=5)
    try:
        rows = await aio_as_trio(conn.fetch)(
            """SELECT ct.outreach_id, ct.execution_status, ct.method_type, ct.confidence_score,
                      ct.is_catchall, e.failure_code
                 FROM outreach.company_target ct
            LEFT JOIN outreach.company_target_errors e
                   ON e.outreach_id = ct.outreach_id AND e.resolved_at IS NULL
                WHERE ct.execution_status IN ('ready', 'failed')"""
        )
        return {r["outreach_id"]: dict(r) for r in rows}
    finally:
        with trio.CancelScope(shield=True):
            await aio_as_trio(conn.close)()


async def start_sim(scenario: Scenario, world_path: Path) -> SimProcess:
    """The scenario's simulated internet in its own process, on the simulator's default ports
    (the ones the demo's documentation names)."""
    return await SimProcess.open(
        world_path,
        seed=scenario.seed,
        domains=scenario.domains,
        latency_ms=scenario.latency_ms,
        jitter_ms=scenario.jitter_ms,
        mix=scenario.mix,
        random_ports=False,
        ready_timeout=120.0,
    )
