"""One database connection for the operator commands, driven from trio.

Like `ct_actors.db.driver.Database`: every call is one trio->asyncio crossing (so it must run inside
`trio_asyncio.open_loop()`), and whatever asyncpg raises comes back translated by
`translate_exception` (DatabaseUnavailable / SchemaError / QueryError / ConfigurationError) with
the password masked. The bodies are asyncio-side coroutine functions taking the asyncpg
connection, so a whole report is read in one crossing and one snapshot.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

import asyncpg
import trio
import trio_asyncio

from ct_actors.db.driver import install_loop_exception_handler, translate_exception
from ct_actors.db.errors import StoreError
from ct_actors.db.redact import UrlRedactor

T = TypeVar("T")
Body = Callable[[Any], Awaitable[T]]


class OpsDb:
    """Open with `OpsDb.connect`; close with `aclose` (or `async with`)."""

    def __init__(self, conn: Any, redactor: UrlRedactor) -> None:
        self._conn = conn
        self._redactor = redactor
        self._closed = False

    @property
    def url(self) -> str:
        """The database URL with its password masked."""
        return self._redactor.redacted_url

    @classmethod
    async def connect(
        cls, url: str, *, connect_timeout: float = 10.0, application_name: str = "ct-actors-ops"
    ) -> OpsDb:
        redactor = UrlRedactor(url)

        async def run() -> Any:
            install_loop_exception_handler(asyncio.get_running_loop())
            return await asyncpg.connect(
                dsn=url,
                timeout=connect_timeout,
                command_timeout=300,
                server_settings={"application_name": application_name},
            )

        try:
            conn = await trio_asyncio.aio_as_trio(run)()
        except Exception as exc:
            raise translate_exception(exc, redactor, "connect") from None
        return cls(conn, redactor)

    async def __aenter__(self) -> OpsDb:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True), trio.move_on_after(5) as scope:
            try:
                await trio_asyncio.aio_as_trio(self._conn.close)()
            except Exception:
                scope.cancel()
        if scope.cancelled_caught:
            self._conn.terminate()

    async def call(self, what: str, body: Body[T]) -> T:
        """Run `await body(conn)` on the asyncio side; errors translated."""
        if self._closed:
            raise RuntimeError("connection is closed")
        try:
            return cast(T, await trio_asyncio.aio_as_trio(body)(self._conn))
        except StoreError:
            raise
        except Exception as exc:
            raise translate_exception(exc, self._redactor, what) from None

    async def snapshot(self, what: str, body: Body[T]) -> T:
        """`call` inside one READ ONLY, REPEATABLE READ transaction: every query of `body` sees
        the same committed state and the same now()."""

        async def run(conn: Any) -> T:
            async with conn.transaction(isolation="repeatable_read", readonly=True):
                return await body(conn)

        return await self.call(what, run)

    async def fetchval(self, what: str, sql: str, *args: Any) -> Any:
        async def run(conn: Any) -> Any:
            return await conn.fetchval(sql, *args)

        return await self.call(what, run)

    async def execute(self, what: str, sql: str, *args: Any) -> str:
        async def run(conn: Any) -> str:
            return cast(str, await conn.execute(sql, *args))

        return await self.call(what, run)
