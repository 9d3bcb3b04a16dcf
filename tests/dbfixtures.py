"""Shared PostgreSQL fixtures for the db tests (and anyone else who needs a real database).

Use from a test module with `pytest_plugins = ["dbfixtures"]` (or from the root conftest); the
helpers they build on (`Db`, `insert_spine`, ...) are in `conftest_db`. Importing this module
directly from a test module defeats pytest's assertion rewriting of it, hence the split.

Every test gets its own database, so tests never see each other's rows and can run while other
suites use the same server:
* `fresh_db`: URL of an empty database (from template0), for migration tests;
* `migrated_db`: URL of a copy of a per-session template database migrated once
  (CREATE DATABASE ... TEMPLATE is much cheaper than migrating each time);
* `db`: a `Db` connection to `migrated_db`; `store`: a `Store` on it;
* `aio_loop`: the trio_asyncio loop production code assumes is open.
If PostgreSQL is unreachable these fixtures skip the test, with the reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
import trio_asyncio
from conftest_db import ADMIN_URL, Db, admin, create_database, database_url, drop_database

from ct_actors.db.migrate import migrate
from ct_actors.db.store import Store, open_store


@pytest.fixture(scope="session")
def pg_available() -> None:
    async def probe(conn: Any) -> None:
        await conn.fetchval("SELECT 1")

    try:
        admin(probe)
    except Exception as exc:  # any failure to reach the server means "skip", with the reason
        pytest.skip(f"PostgreSQL unreachable at {urlsplit(ADMIN_URL).netloc}: {exc!r}")


@pytest.fixture(scope="session")
def migrated_template(pg_available: None) -> Iterator[str]:
    name = create_database()

    async def run() -> None:
        conn = await asyncpg.connect(database_url(name), timeout=5)
        try:
            await migrate(conn)
        finally:
            await conn.close()

    asyncio.run(run())
    yield name
    drop_database(name)


@pytest.fixture
def fresh_db(pg_available: None) -> Iterator[str]:
    """URL of a new, empty database (dropped after the test)."""
    name = create_database()
    yield database_url(name)
    drop_database(name)


@pytest.fixture
def migrated_db(migrated_template: str) -> Iterator[str]:
    """URL of a new database with the full schema (dropped after the test)."""
    name = create_database(template=migrated_template)
    yield database_url(name)
    drop_database(name)


@pytest.fixture
async def aio_loop() -> AsyncIterator[Any]:
    """The one asyncio loop (trio_asyncio) that production code assumes is already open."""
    async with trio_asyncio.open_loop() as loop:
        yield loop


@pytest.fixture
async def db(aio_loop: Any, migrated_db: str) -> AsyncIterator[Db]:
    conn = await Db.connect(migrated_db)
    yield conn
    await conn.aclose()


@pytest.fixture
async def store(aio_loop: Any, migrated_db: str) -> AsyncIterator[Store]:
    s = await open_store(migrated_db)
    yield s
    await s.aclose()
