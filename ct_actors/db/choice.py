"""Which PostgreSQL a command or the test suite uses: the one place that decides (issue 11).

* `demo`, `bench`: `CT_DATABASE_URL` if set, else the embedded server in the state directory
  (`embedded.default_data_dir()`).
* tests: `CT_TEST_DATABASE_URL` (or the deprecated `CT_TEST_PG_URL`) if set, else one embedded
  cluster in a temporary directory for the whole session, removed at the end.
* production commands (`migrate`, `run`, `once`, `report`, `canary`): `database.url` only; they
  never fall back to an embedded server. `database.url = "embedded"` with
  `database.data_directory` runs a single-box installation on it (the `ct_actors` database).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit, urlunsplit

from ct_actors.db.embedded import EmbeddedPostgres, Say, default_data_dir, say_to_stderr
from ct_actors.redact import redact_url

DEMO_ENV = "CT_DATABASE_URL"
TEST_ENV = "CT_TEST_DATABASE_URL"
TEST_ENV_DEPRECATED = "CT_TEST_PG_URL"
EMBEDDED = "embedded"
PRODUCTION_DATABASE = "ct_actors"

Purpose = Literal["demo", "tests", "production"]


@dataclass(frozen=True, slots=True)
class ChosenDatabase:
    """`url`: an administrator's URL (it may create databases); `server`: the embedded server,
    or None for a server named by URL."""

    url: str
    source: str  # the environment variable or config key that named it, or "embedded"
    server: EmbeddedPostgres | None = None

    def with_database(self, name: str) -> str:
        return with_database(self.url, name)

    def describe(self, database: str) -> str:
        """One line for a human: which server, and how to look inside while it runs."""
        if self.server is None:
            return f"database {redact_url(self.with_database(database))} (from {self.source})"
        how = "joined" if self.server.reused else "started"
        return (
            f"database {database} on the embedded PostgreSQL ({how}; data in "
            f"{self.server.data_dir}); look inside with: {self.server.psql(database)}"
        )


def with_database(url: str, name: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def named_url(purpose: Purpose, env: Mapping[str, str]) -> tuple[str, str] | None:
    """(url, variable) when the environment names a server for `purpose`, else None."""
    names = (TEST_ENV, TEST_ENV_DEPRECATED) if purpose == "tests" else (DEMO_ENV,)
    for name in names:
        value = env.get(name, "").strip()
        if value and value != EMBEDDED:
            return value, name
    return None


@contextmanager
def choose_database(
    purpose: Purpose,
    env: Mapping[str, str] | None = None,
    *,
    url: str | None = None,
    data_dir: Path | None = None,
    say: Say = say_to_stderr,
) -> Iterator[ChosenDatabase]:
    """The database for `purpose`, started if embedded and stopped (when we were its last user)
    on exit, Ctrl-C included. Call from the main thread, before `trio.run`.

    `production`: `url` is the configured `database.url` (a URL, or "embedded" with
    `data_dir`); a missing url is the caller's to refuse before calling this."""
    env = os.environ if env is None else env
    if purpose == "production":
        if url is None or not url.strip():
            raise ValueError("production commands need database.url")
        if url != EMBEDDED:
            yield ChosenDatabase(url, "database.url")
            return
        if data_dir is None:
            raise ValueError('database.url = "embedded" needs database.data_directory')
        with EmbeddedPostgres(data_dir, durable=True, say=say) as server:
            yield ChosenDatabase(server.url, EMBEDDED, server)
        return
    named = named_url(purpose, env)
    if named is not None:
        if purpose == "tests" and named[1] == TEST_ENV_DEPRECATED:
            say(f"{TEST_ENV_DEPRECATED} is deprecated; use {TEST_ENV}")
        yield ChosenDatabase(named[0], named[1])
        return
    if purpose == "demo":
        with EmbeddedPostgres(data_dir or default_data_dir(), durable=False, say=say) as server:
            yield ChosenDatabase(server.url, EMBEDDED, server)
        return
    # Tests: a throw-away cluster. Under /tmp rather than pytest's 0700 per-user base, and
    # searchable (0711), so that the unprivileged account can reach it when we are root.
    base = Path(tempfile.mkdtemp(prefix="ct-actors-test-pg-"))
    try:
        os.chmod(base, 0o711)
        with EmbeddedPostgres(base / "pg", temporary=True, say=say) as server:
            yield ChosenDatabase(server.url, EMBEDDED, server)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def ensure_database(admin: str, name: str) -> str:
    """Create database `name` on the server of `admin` if it does not exist; its URL. Plain
    asyncio (`asyncio.run`): call before `trio.run`."""
    import asyncio

    import asyncpg

    if not name.replace("_", "").isalnum():
        raise ValueError(f"unsafe database name {name!r}")

    async def create() -> None:
        conn = await asyncpg.connect(admin, timeout=10)
        try:
            if not await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
                await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()

    asyncio.run(create())
    return with_database(admin, name)
