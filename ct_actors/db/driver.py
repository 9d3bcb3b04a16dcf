"""The database driver: the one object that owns the asyncpg pool.

`Database` is what every room of the store stands on (the work queue `ct_actors.db.work_queue`,
the tool budgets `ct_actors.db.usage`, the operator's names query `ct_actors.db.names_query`, the
verifier ledger `ct_actors.verify.pg_ledger`): it owns the pool, the trio->asyncio crossing,
exception translation, redaction of the URL's secrets, the secrets masked in stored text, and
the round-trip statistics. The rooms hold SQL and turn rows into our types; none of them sees
asyncpg's exceptions or the URL.

Every call is a trio coroutine that makes exactly one trio->asyncio crossing
(`trio_asyncio.aio_as_trio`, ~150 µs of CPU each). The caller owns the asyncio loop: all of this
must run inside `trio_asyncio.open_loop()`.

Error contract (see `ct_actors.db.errors`): connection trouble and transient conflicts surface as
`DatabaseUnavailable` (retry with backoff, never FAIL a record because of it); a schema that is
not ours as `SchemaError`; anything else as `QueryError`. No message ever contains the
password of the URL.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import asdict, dataclass
from typing import Any, ParamSpec, TypeVar, cast

import asyncpg
import structlog
import trio
import trio_asyncio

from ct_actors.db.encode import SecretMask
from ct_actors.db.errors import (
    ConfigurationError,
    DatabaseUnavailable,
    QueryError,
    SchemaError,
    StoreError,
)
from ct_actors.db.migrate import migrate as _migrate
from ct_actors.db.queries.common import INCARNATION_START
from ct_actors.db.redact import UrlRedactor, scrub_text

__all__ = [
    "Database",
    "DatabaseStatistics",
    "install_loop_exception_handler",
    "open_database",
    "translate_exception",
]

log = structlog.get_logger("ct_actors.db")

P = ParamSpec("P")
T = TypeVar("T")
# An asyncio-side coroutine taking an asyncpg connection, like ct_actors.db.migrate.migrate.
MigrationRunner = Callable[[Any], Awaitable[list[str]]]


@dataclass(frozen=True, slots=True)
class DatabaseStatistics:
    round_trips: int  # statements sent to PostgreSQL
    crossings: int  # calls across the trio-asyncio boundary
    errors: int


@dataclass(slots=True)
class _Counters:
    """The running counts (`DatabaseStatistics` is their snapshot)."""

    round_trips: int = 0
    crossings: int = 0
    errors: int = 0


# ---------------------------------------------------------------------------------------------
# Exception translation
# ---------------------------------------------------------------------------------------------
# SQLSTATE classes/codes that mean "the database is not available to us right now".
_UNAVAILABLE_CLASSES = ("08", "53", "57", "40", "28", "3D")  # connection, resources, operator
# intervention (shutdown, statement timeout), rollback (deadlock/serialization), auth, no db
_UNAVAILABLE_CODES = frozenset({"55P03"})  # lock_not_available (lock_timeout)
_SCHEMA_CODES = frozenset({"42P01", "42703", "3F000", "42883", "42P10"})
# undefined table/column/schema/function, ON CONFLICT without a matching unique index


def translate_exception(exc: BaseException, redactor: UrlRedactor, what: str) -> StoreError:
    """Map anything asyncpg/asyncio raises to our hierarchy, with a redacted message."""
    if isinstance(exc, StoreError):
        return exc
    name = type(exc).__name__
    sqlstate = getattr(exc, "sqlstate", None)
    detail = redactor.text(exc) or name
    message = f"{what} on {redactor.redacted_url}: {name}: {detail}"
    kind: type[StoreError]
    if isinstance(exc, asyncpg.PostgresError) and isinstance(sqlstate, str):
        if (
            sqlstate in _UNAVAILABLE_CODES
            or sqlstate[:2] in _UNAVAILABLE_CLASSES
            # 55000 is a catch-all "object not in prerequisite state"; only this one of its
            # meanings (ALTER DATABASE ... ALLOW_CONNECTIONS false) is an outage.
            or (sqlstate == "55000" and "not currently accepting connections" in detail)
        ):
            kind = DatabaseUnavailable
        elif sqlstate in _SCHEMA_CODES:
            kind = SchemaError
        else:
            kind = QueryError
    elif isinstance(exc, asyncpg.ClientConfigurationError) or (
        isinstance(exc, ValueError) and what == "connect"
    ):
        kind = ConfigurationError
    elif isinstance(
        exc,
        OSError | asyncio.TimeoutError | ConnectionError | EOFError | asyncpg.InternalClientError,
    ) or (
        # "connection is closed", "pool is closing", ...; other InterfaceErrors are our bugs.
        isinstance(exc, asyncpg.InterfaceError)
        and any(w in str(exc).lower() for w in ("closed", "closing", "connection", "terminated"))
    ):
        kind = DatabaseUnavailable
    else:
        kind = QueryError
    return kind(message, sqlstate=sqlstate if isinstance(sqlstate, str) else None, cause=name)


# Errors asyncpg reports through the loop's exception handler (not to any caller) when a
# connection dies under it: a protocol waiter nobody awaits any more ("Future exception was never
# retrieved: ConnectionError: unexpected connection_lost() call"), or a pooled connection reset
# with a transaction open. trio_asyncio's default handler re-raises every such report into the
# loop's nursery, which would take the whole daemon down on a database restart; the operation
# that hit the dead connection has already raised DatabaseUnavailable to its caller, and the
# pool replaces the connection. So these are logged, not raised.
_BACKGROUND_NOISE: tuple[type[BaseException], ...] = (
    ConnectionError,
    OSError,
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    asyncpg.exceptions.OperatorInterventionError,  # admin shutdown, crash shutdown
)


def _loop_exception_handler(loop: Any, context: dict[str, Any]) -> None:
    exc = context.get("exception")
    message = str(context.get("message") or "")
    if isinstance(exc, _BACKGROUND_NOISE) or "Resetting connection with an active" in message:
        log.warning(
            "db_background_error",
            message=scrub_text(message),
            error=scrub_text(f"{type(exc).__name__}: {exc}") if exc is not None else None,
        )
        return
    loop.default_exception_handler(context)


def install_loop_exception_handler(loop: Any) -> bool:
    """Install `_loop_exception_handler` on the running asyncio loop unless the application set
    its own (which must then tolerate asyncpg's background connection errors). Idempotent."""
    current = loop.get_exception_handler()
    if current is None:
        loop.set_exception_handler(_loop_exception_handler)
        return True
    return current is _loop_exception_handler


async def _keep_session(_conn: Any) -> None:
    """Pool reset hook, replacing asyncpg's default `RESET ALL; UNLISTEN *; ...`, which costs a
    round trip on every release. We never change session state (only SET LOCAL and
    transaction-scoped advisory locks), and asyncpg rolls back any open transaction before
    calling this hook."""
    return None


# asyncpg < 0.30 has no `reset` hook; there the default reset query (one more round trip per
# release) is merely slower.
_POOL_HAS_RESET = "reset" in inspect.signature(asyncpg.create_pool).parameters


# ---------------------------------------------------------------------------------------------
# The driver
# ---------------------------------------------------------------------------------------------
class Database:
    """Open with `open_database`; close with `aclose` (or `async with database:`)."""

    def __init__(self, pool: Any, redactor: UrlRedactor, incarnation: dt.datetime) -> None:
        self._pool = pool
        self._redactor = redactor
        # DB-clock time the pool was opened: the work queue's leases taken by this owner name
        # before it are a crashed previous incarnation's (see ct_actors.db.work_queue).
        self._incarnation = incarnation
        self._stats = _Counters()
        self._closed = False
        # Known secrets masked in everything stored (outcomes, verifier ledger): the URL's
        # password from the start, the rest (the verifier API key) from `set_secrets`.
        self._mask = SecretMask(redactor.secrets)

    def set_secrets(self, secrets: Iterable[str]) -> None:
        """Secret values (Config.secrets(): the verifier API key, the database password) to
        mask wherever they would be stored, e.g. echoed back by a vendor into evidence."""
        self._mask = SecretMask((*self._redactor.secrets, *secrets))

    @property
    def mask(self) -> SecretMask:
        """What every room applies to free text before storing it."""
        return self._mask

    @property
    def incarnation(self) -> dt.datetime:
        return self._incarnation

    def __repr__(self) -> str:
        return f"<Database {self._redactor.redacted_url}{' closed' if self._closed else ''}>"

    @property
    def url(self) -> str:
        """The database URL with its password masked."""
        return self._redactor.redacted_url

    def statistics(self) -> DatabaseStatistics:
        return DatabaseStatistics(**asdict(self._stats))

    async def __aenter__(self) -> Database:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def aclose(self, grace: float = 5.0) -> None:
        """Close the pool. Shielded, so it completes during cancellation; connections still
        busy after `grace` seconds are terminated."""
        if self._closed:
            return
        self._closed = True
        with trio.CancelScope(shield=True):
            with trio.move_on_after(grace) as scope:
                try:
                    await trio_asyncio.aio_as_trio(self._pool.close)()
                except Exception:
                    scope.cancel()
            if scope.cancelled_caught:
                self._pool.terminate()

    # -- the crossing -------------------------------------------------------------------------
    async def call(
        self, what: str, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Run the asyncio-side `fn` in one crossing; anything it raises comes back as a
        redacted StoreError (`what` names the operation in the message). A body that runs
        statements itself on `connection()` counts them with `count_round_trips`."""
        if self._closed:
            raise RuntimeError("database is closed")
        self._stats.crossings += 1
        try:
            return cast(T, await trio_asyncio.aio_as_trio(fn)(*args, **kwargs))
        except StoreError:
            self._stats.errors += 1
            raise
        except Exception as exc:
            self._stats.errors += 1
            # `from None`: the original text may quote the DSN; translate keeps its class name
            # and SQLSTATE.
            raise translate_exception(exc, self._redactor, what) from None

    def connection(self) -> Any:
        """A pooled connection (`async with database.connection() as conn:`), for asyncio-side
        bodies run by `call` that need several statements on one connection."""
        return self._pool.acquire()

    def count_round_trips(self, n: int = 1) -> None:
        self._stats.round_trips += n

    async def fetch(self, what: str, sql: str, *args: Any) -> list[Any]:
        """One statement, one round trip: its rows."""
        return await self.call(what, self._fetch, sql, *args)

    async def fetchval(self, what: str, sql: str, *args: Any) -> Any:
        """One statement, one round trip: the first column of its first row (None: no row)."""
        return await self.call(what, self._fetchval, sql, *args)

    async def execute(self, what: str, sql: str, *args: Any) -> str:
        """One statement, one round trip: its status tag."""
        return await self.call(what, self._execute, sql, *args)

    async def _fetch(self, sql: str, *args: Any) -> list[Any]:
        self._stats.round_trips += 1
        return cast(list[Any], await self._pool.fetch(sql, *args))

    async def _fetchval(self, sql: str, *args: Any) -> Any:
        self._stats.round_trips += 1
        return await self._pool.fetchval(sql, *args)

    async def _execute(self, sql: str, *args: Any) -> str:
        self._stats.round_trips += 1
        return cast(str, await self._pool.execute(sql, *args))

    # -- schema -----------------------------------------------------------------------------
    async def migrate(self, runner: MigrationRunner | None = None) -> list[str]:
        """Apply pending migrations on one pooled connection; returns the versions applied.
        `runner` defaults to `ct_actors.db.migrate.migrate` (injectable for tests)."""
        run_migrations = _migrate if runner is None else runner

        async def run() -> list[str]:
            async with self._pool.acquire() as conn:
                return await run_migrations(conn)

        return await self.call("migrate", run)


async def open_database(
    url: str,
    *,
    min_size: int = 1,
    max_size: int = 4,
    command_timeout: float | None = 15.0,
    connect_timeout: float = 10.0,
    application_name: str = "ct-actors",
) -> Database:
    """Open a connection pool. Raises DatabaseUnavailable (redacted) if the server cannot be
    reached or refuses us, ConfigurationError if the URL is unusable."""
    redactor = UrlRedactor(url)

    async def run() -> tuple[Any, dt.datetime]:
        install_loop_exception_handler(asyncio.get_running_loop())
        options: dict[str, Any] = {}
        if _POOL_HAS_RESET:
            options["reset"] = _keep_session
        pool = await asyncpg.create_pool(
            dsn=url,
            min_size=min_size,
            max_size=max_size,
            command_timeout=command_timeout,
            timeout=connect_timeout,
            server_settings={"application_name": application_name},
            **options,
        )
        try:
            incarnation = await pool.fetchval(INCARNATION_START)
        except BaseException:
            pool.terminate()
            raise
        return pool, incarnation

    try:
        pool, incarnation = await trio_asyncio.aio_as_trio(run)()
    except Exception as exc:
        raise translate_exception(exc, redactor, "connect") from None
    return Database(pool, redactor, incarnation)
