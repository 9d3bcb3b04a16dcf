"""Shared PostgreSQL fixtures for the db tests (and anyone else who needs a real database).

Registered as a plugin by tests/conftest.py; the
helpers they build on (`Db`, `insert_spine`, ...) are in `conftest_db`. Importing this module
directly from a test module defeats pytest's assertion rewriting of it, hence the split.

Every test gets its own database, so tests never see each other's rows and can run while other
suites use the same server:
* `fresh_db`: URL of an empty database (from template0), for migration tests;
* `migrated_db`: URL of a copy of a per-session template database migrated once
  (CREATE DATABASE ... TEMPLATE is much cheaper than migrating each time);
* `db`: a `Db` connection to `migrated_db`; `database`: the daemon's driver (`Database`) on it,
  and its rooms: `queue` (`WorkQueue`), `usage_book` (`UsageBook`), `names_query`
  (`NamesQuery`), `pg_ledger` (`PgVerifierLedger`);
* `aio_loop`: the trio_asyncio loop production code assumes is open.
* `pg_server`: the session's administrator URL. One server for the whole session, chosen by
  `ct_actors.db.choice.choose_database("tests")`: CT_TEST_DATABASE_URL if set, else an embedded
  cluster started once and stopped at the end. A test that needs PostgreSQL and cannot get one
  fails (pytest.fail), never skips: a green run means the database code ran.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import urlsplit

import asyncpg
import pytest
import trio_asyncio
from conftest_db import (
    Db,
    admin,
    create_database,
    database_url,
    drop_database,
    set_admin_url,
)

from ct_actors.db.choice import choose_database
from ct_actors.db.driver import Database, open_database
from ct_actors.db.embedded import EmbeddedPostgresError
from ct_actors.db.migrate import migrate
from ct_actors.db.names_query import NamesQuery
from ct_actors.db.usage import UsageBook
from ct_actors.db.work_queue import WorkQueue
from ct_actors.verify.pg_ledger import PgVerifierLedger


def _say(message: str) -> None:
    print(f"[test database] {message}", file=sys.stderr)


@pytest.fixture(scope="session")
def pg_server() -> Iterator[str]:
    try:
        with choose_database("tests", say=_say) as chosen:
            set_admin_url(chosen.url)

            async def probe(conn: Any) -> None:
                await conn.fetchval("SELECT 1")

            try:
                admin(probe)
            except Exception as exc:  # fail, with the reason; never skip
                pytest.fail(
                    f"PostgreSQL unreachable at {urlsplit(chosen.url).netloc} "
                    f"(from {chosen.source}): {exc!r}",
                    pytrace=False,
                )
            yield chosen.url
            set_admin_url(None)
    except EmbeddedPostgresError as exc:
        pytest.fail(f"the embedded PostgreSQL did not start: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def pg_available(pg_server: str) -> None:
    """Kept for tests that only need a reachable server (they fail without one)."""


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
async def database(aio_loop: Any, migrated_db: str) -> AsyncIterator[Database]:
    opened = await open_database(migrated_db)
    yield opened
    await opened.aclose()


@pytest.fixture
def queue(database: Database) -> WorkQueue:
    return WorkQueue(database)


@pytest.fixture
def usage_book(database: Database) -> UsageBook:
    return UsageBook(database)


@pytest.fixture
def names_query(database: Database) -> NamesQuery:
    return NamesQuery(database)


@pytest.fixture
def pg_ledger(database: Database) -> PgVerifierLedger:
    return PgVerifierLedger(database)
