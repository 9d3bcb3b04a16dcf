"""Helpers for tests that need a real PostgreSQL (the fixtures are in `dbfixtures`).

Databases are created and dropped with plain asyncio (`asyncio.run`), outside trio, by sync
fixtures; tests talk to them from trio through `trio_asyncio`, like production code. `Db` is a raw
asyncpg connection driven from trio, for test setup and assertions.

Which server: `ct_actors.db.choice.choose_database("tests")` decides, once per session (the
`pg_server` fixture in `dbfixtures`): CT_TEST_DATABASE_URL (an admin URL, database `postgres`;
CT_TEST_PG_URL is its deprecated old name) if set, else an embedded cluster of our own.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Sequence
from decimal import Decimal
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit, urlunsplit

import asyncpg
import trio
import trio_asyncio

from ct_actors.outcome import Deferred, Failed, FailureCode, Outcome, Passed

_admin_url: str | None = None


def set_admin_url(url: str | None) -> None:
    global _admin_url
    _admin_url = url


def admin_url() -> str:
    """The session's administrator URL; only valid under the `pg_server` fixture."""
    if _admin_url is None:
        raise RuntimeError("no test database yet: depend on the pg_server fixture (dbfixtures)")
    return _admin_url

T = TypeVar("T")


def database_url(name: str, base: str | None = None) -> str:
    parts = urlsplit(base or admin_url())
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def admin(fn: Callable[[Any], Awaitable[T]]) -> T:
    async def run() -> T:
        conn = await asyncpg.connect(admin_url(), timeout=5)
        try:
            return await fn(conn)
        finally:
            await conn.close()

    return asyncio.run(run())


def create_database(template: str = "template0") -> str:
    name = f"ct_test_{uuid.uuid4().hex[:16]}"

    async def create(conn: Any) -> None:
        # FILE_COPY copies the template's files as they are; the default (WAL_LOG) writes every
        # block through the WAL, the slower of the two for a template this small (measured on
        # the 149 database tests: 21-28 s of set-up in all instead of 32-36 s).
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}" STRATEGY FILE_COPY')

    admin(create)
    return name


def drop_database(name: str) -> None:
    async def drop(conn: Any) -> None:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    admin(drop)


class Db:
    """A raw asyncpg connection driven from trio, for test setup and assertions."""

    def __init__(self, conn: Any) -> None:
        self.conn = conn

    @classmethod
    async def connect(cls, url: str) -> Db:
        return cls(await trio_asyncio.aio_as_trio(asyncpg.connect)(url, timeout=5))

    async def execute(self, sql: str, *args: Any) -> str:
        return str(await trio_asyncio.aio_as_trio(self.conn.execute)(sql, *args))

    async def executemany(self, sql: str, args: Sequence[Sequence[Any]]) -> None:
        await trio_asyncio.aio_as_trio(self.conn.executemany)(sql, args)

    async def fetch(self, sql: str, *args: Any) -> list[Any]:
        return list(await trio_asyncio.aio_as_trio(self.conn.fetch)(sql, *args))

    async def fetchrow(self, sql: str, *args: Any) -> Any:
        return await trio_asyncio.aio_as_trio(self.conn.fetchrow)(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await trio_asyncio.aio_as_trio(self.conn.fetchval)(sql, *args)

    async def run(self, fn: Callable[[Any], Awaitable[T]]) -> T:
        """Run an asyncio-side coroutine function on this connection (e.g. migrate)."""
        return cast(T, await trio_asyncio.aio_as_trio(fn)(self.conn))

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True):
            await trio_asyncio.aio_as_trio(self.conn.close)()


async def insert_spine(
    db: Db, count: int, *, domain: Callable[[int], str | None] | None = None
) -> list[uuid.UUID]:
    """Insert `count` spine rows (sorted ids); domain(i) defaults to f"d{i}.example"."""
    ids = sorted(uuid.uuid4() for _ in range(count))
    domains = [(domain(i) if domain else f"d{i}.example") for i in range(count)]
    await db.execute(
        "INSERT INTO outreach.outreach (outreach_id, sovereign_id, domain) "
        "SELECT i, gen_random_uuid(), d FROM unnest($1::uuid[], $2::text[]) AS t(i, d)",
        ids,
        domains,
    )
    return ids


def passed(outreach_id: uuid.UUID, domain: str = "x.example", **evidence: Any) -> Outcome:
    return Outcome(
        outreach_id,
        domain,
        Passed("{first}.{last}@" + domain, "first.last", Decimal("0.7"), False, dict(evidence)),
        mx_host=f"mx.{domain}",
    )


def failed(
    outreach_id: uuid.UUID, code: FailureCode = FailureCode.NO_MX, **evidence: Any
) -> Outcome:
    return Outcome(outreach_id, None, Failed(code, f"because {code.value}", evidence=evidence))


def deferred(outreach_id: uuid.UUID, retry_after: float = 3600.0, reason: str = "busy") -> Outcome:
    return Outcome(outreach_id, None, Deferred(reason, retry_after))
