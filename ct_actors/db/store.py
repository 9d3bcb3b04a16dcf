"""The trio-facing database store.

Every public method is a trio coroutine that makes exactly one trio->asyncio crossing
(`trio_asyncio.aio_as_trio`, ~150 µs of CPU each) and, on the hot path, one database round trip:
`claim` and `write_outcomes` move a whole batch per call. The caller owns the asyncio loop: all
of this must run inside `trio_asyncio.open_loop()`.

Error contract (see `ct_actors.db.errors`): connection trouble and transient conflicts surface as
`DatabaseUnavailable` (retry with backoff, never FAIL a record because of it); a schema that is
not ours as `SchemaError`; anything else as `QueryError`. No message ever contains the
password of the URL.

Leases (ct_actors.lease) make the work queue safe to share between several daemons:
* `claim` locks pending spine rows with SKIP LOCKED and upserts a lease per record;
* a live lease blocks other owners; an expired one is claimable by anyone; the owner must be
  unique per running process (leases this owner took before this store was opened, i.e. by a
  previous incarnation that crashed, are claimable again at once);
* `write_outcomes` deletes the leases of finished records, or releases deferred ones with a
  `not_before`; `release` hands unfinished work back immediately (shutdown).

Tool budgets (`reserve_usage`, `refund_usage`, `usage`) count the SNAP_ON_TOOLBOX per_day and
per_month limits in `ct_actors.tool_usage`, one counter per UTC calendar window, shared by every
daemon on the database and kept across restarts.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import json
import re
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from typing import Any, ParamSpec, TypeVar, cast
from uuid import UUID

import asyncpg
import structlog
import trio
import trio_asyncio

from ct_actors.db import queries as q
from ct_actors.db.encode import SecretMask, clean_text, encode_outcomes
from ct_actors.db.errors import (
    ConfigurationError,
    DatabaseUnavailable,
    QueryError,
    SchemaError,
    StoreError,
)
from ct_actors.db.migrate import migrate as _migrate
from ct_actors.db.names_query import names_query_problem
from ct_actors.db.redact import Redactor, scrub_text
from ct_actors.drain_report import HeldBack
from ct_actors.outcome import Failed, FailureCode, Outcome, Passed
from ct_actors.throttle.calendar import window_start
from ct_actors.verify.ledger import LedgerStatus, SpendRow, VerifierEntry

__all__ = [
    "USAGE_SCOPES",
    "ClaimedRecord",
    "ConfigurationError",
    "DatabaseUnavailable",
    "QueryError",
    "SchemaError",
    "SpineAnomalies",
    "SpineRecord",
    "Store",
    "StoreError",
    "StoreStatistics",
    "UnloggedOutcome",
    "WriteReport",
    "check_usage_window",
    "open_store",
    "translate_exception",
    "usage_window",
]

log = structlog.get_logger("ct_actors.db")

P = ParamSpec("P")
# An asyncio-side coroutine taking an asyncpg connection, like ct_actors.db.migrate.migrate.
MigrationRunner = Callable[[Any], Awaitable[list[str]]]
T = TypeVar("T")

# How many rows an operator names query may contribute.
MAX_NAMES = 3

# Characters of verifier_ledger.detail kept.
_LEDGER_DETAIL_LIMIT = 500

# The toolbox scopes counted in ct_actors.tool_usage (its CHECK constraint says the same).
USAGE_SCOPES: tuple[str, ...] = ("per_day", "per_month")
# A window row whose creation keeps losing to something deleting it (an operator pruning the
# current window in a loop) is not worth waiting for forever.
_RESERVE_ATTEMPTS = 5


@dataclass(frozen=True, slots=True)
class ClaimedRecord:
    outreach_id: UUID
    domain: str | None
    # How many times this record has been claimed, this claim included (deferrals and crashes
    # make it grow); lets the caller notice a record that keeps coming back.
    attempts: int = 1
    # Spine rows seen with this id by the claim: more than 1 means upstream duplicated it (one
    # record is processed; the caller reports the rest as skipped).
    spine_rows: int = 1


@dataclass(frozen=True, slots=True)
class SpineAnomalies:
    """Spine rows the claim cannot treat as records of their own (a spine without a primary
    key): rows with a NULL outreach_id are never claimed; an id carried by several rows is
    processed once. `duplicated` lists at most SPINE_DUPLICATES_LISTED ids."""

    null_ids: int
    duplicated: dict[UUID, int]

    @property
    def skipped_rows(self) -> int:
        return self.null_ids + sum(n - 1 for n in self.duplicated.values())


# How many duplicated ids `spine_anomalies` lists (and counts) at most.
SPINE_DUPLICATES_LISTED = 1000


@dataclass(frozen=True, slots=True)
class SpineRecord:
    outreach_id: UUID
    domain: str | None


@dataclass(frozen=True, slots=True)
class WriteReport:
    written: list[UUID]
    # Already PASS/FAIL before this write (another daemon, an earlier run, a re-sent batch), or
    # CT-I-ALREADY-PROCESSED outcomes: nothing was changed for them.
    already_terminal: list[UUID]
    deferred: list[UUID]
    # PASS/FAIL outcomes whose spine row disappeared since the claim: nothing written.
    not_in_spine: list[UUID] = field(default_factory=list)
    # Written under a claim that is no longer the writer's (the lease expired, or was taken over
    # by another claim): nothing written, the lease left alone (queries.WRITE_OUTCOMES' fence).
    fenced: list[UUID] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class UnloggedOutcome:
    """A committed outcome whose canonical log line may be missing (sql/006_outcome_log.sql),
    rebuilt from its outcome row; `outcome` is None when that row is gone (resolved or deleted
    by an operator since)."""

    outreach_id: UUID
    owner: str
    committed_at: dt.datetime
    outcome: Outcome | None


@dataclass(slots=True)
class StoreStatistics:
    round_trips: int = 0
    crossings: int = 0
    claims: int = 0
    rows_claimed: int = 0
    writes: int = 0
    rows_written: int = 0
    rows_already_terminal: int = 0
    rows_deferred: int = 0
    rows_not_in_spine: int = 0
    rows_fenced: int = 0
    errors: int = 0
    # Wall-clock seconds spent in claim / write_outcomes calls (crossing + database).
    claim_seconds: float = 0.0
    write_seconds: float = 0.0


# ---------------------------------------------------------------------------------------------
# Exception translation
# ---------------------------------------------------------------------------------------------
# SQLSTATE classes/codes that mean "the database is not available to us right now".
_UNAVAILABLE_CLASSES = ("08", "53", "57", "40", "28", "3D")  # connection, resources, operator
# intervention (shutdown, statement timeout), rollback (deadlock/serialization), auth, no db
_UNAVAILABLE_CODES = frozenset({"55P03"})  # lock_not_available (lock_timeout)
_SCHEMA_CODES = frozenset({"42P01", "42703", "3F000", "42883", "42P10"})
# undefined table/column/schema/function, ON CONFLICT without a matching unique index


def translate_exception(exc: BaseException, redactor: Redactor, what: str) -> StoreError:
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
# The store
# ---------------------------------------------------------------------------------------------
class Store:
    """Open with `open_store`; close with `aclose` (or `async with store:`)."""

    def __init__(self, pool: Any, redactor: Redactor, incarnation: dt.datetime) -> None:
        self._pool = pool
        self._redactor = redactor
        # DB-clock time this store was opened; see the lease notes in the module docstring.
        self._incarnation = incarnation
        self._stats = StoreStatistics()
        # Keyset-pagination cursor per owner (see queries.CLAIM_AFTER).
        self._cursor: dict[str, UUID | None] = {}
        self._closed = False
        # Known secrets masked in everything stored (outcomes, verifier ledger): the URL's
        # password from the start, the rest (the verifier API key) from `set_secrets`.
        self._mask = SecretMask(redactor.secrets)

    def set_secrets(self, secrets: Iterable[str]) -> None:
        """Secret values (Config.secrets(): the verifier API key, the database password) to
        mask wherever they would be stored, e.g. echoed back by a vendor into evidence."""
        self._mask = SecretMask((*self._redactor.secrets, *secrets))

    def __repr__(self) -> str:
        return f"<Store {self._redactor.redacted_url}{' closed' if self._closed else ''}>"

    @property
    def url(self) -> str:
        """The database URL with its password masked."""
        return self._redactor.redacted_url

    def statistics(self) -> StoreStatistics:
        return replace(self._stats)

    async def __aenter__(self) -> Store:
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

    # -- plumbing ---------------------------------------------------------------------------
    async def _call(
        self, what: str, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        if self._closed:
            raise RuntimeError("store is closed")
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

        return await self._call("migrate", run)

    # -- hot path ---------------------------------------------------------------------------
    async def claim(self, owner: str, limit: int, lease_seconds: float) -> list[ClaimedRecord]:
        """Lease up to `limit` pending records for `owner`, ordered by outreach_id.

        Pending = in the spine, not PASS/FAIL, no open error row, no live lease of another
        owner, not deferred into the future. Usually one round trip; two when the store's
        cursor reaches the end of the spine and wraps around.
        """
        if limit <= 0:
            return []
        if not lease_seconds > 0:
            # A lease that is born expired is claimable by everyone: double processing.
            raise ValueError(f"lease_seconds must be positive, got {lease_seconds!r}")
        started = time.perf_counter()
        after = self._cursor.get(owner)

        async def run() -> tuple[list[Any], UUID | None]:
            rows: list[Any] = []
            cursor: UUID | None = None
            async with self._pool.acquire() as conn:
                if after is not None:
                    self._stats.round_trips += 1
                    rows = list(
                        await conn.fetch(
                            q.CLAIM_AFTER, owner, limit, lease_seconds, self._incarnation, after
                        )
                    )
                    if len(rows) == limit:
                        return rows, rows[-1]["outreach_id"]
                self._stats.round_trips += 1
                more = await conn.fetch(
                    q.CLAIM_FROM_START,
                    owner,
                    limit - len(rows),
                    lease_seconds,
                    self._incarnation,
                )
                if len(more) == limit - len(rows):
                    cursor = more[-1]["outreach_id"]
                # else: the whole spine was scanned; start from the beginning next time.
                rows.extend(more)
                return rows, cursor

        try:
            rows, cursor = await self._call("claim", run)
        finally:
            self._stats.claim_seconds += time.perf_counter() - started
        self._cursor[owner] = cursor
        self._stats.claims += 1
        self._stats.rows_claimed += len(rows)
        # Sorted as a whole: after a wrap-around the rows come in two ascending runs.
        return sorted(
            (
                _claimed(r) for r in rows
            ),
            key=lambda r: r.outreach_id,
        )

    async def claim_among(
        self, owner: str, ids: Iterable[UUID], limit: int, lease_seconds: float
    ) -> list[ClaimedRecord]:
        """`claim` restricted to the records in `ids` (`ct-actors canary`): the same pending and
        lease rules, ordered by outreach_id, one round trip, no cursor."""
        id_list = sorted(set(ids))
        if limit <= 0 or not id_list:
            return []
        if not lease_seconds > 0:
            raise ValueError(f"lease_seconds must be positive, got {lease_seconds!r}")
        started = time.perf_counter()
        try:
            rows = await self._call(
                "claim",
                self._fetch,
                q.CLAIM_AMONG,
                owner,
                limit,
                lease_seconds,
                self._incarnation,
                id_list,
            )
        finally:
            self._stats.claim_seconds += time.perf_counter() - started
        self._stats.claims += 1
        self._stats.rows_claimed += len(rows)
        return [_claimed(r) for r in rows]

    async def write_outcomes(
        self,
        owner: str,
        outcomes: Sequence[Outcome],
        *,
        claims: Mapping[UUID, int] | None = None,
    ) -> WriteReport:
        """Persist a batch in one statement (one transaction, one round trip).

        Passed -> company_target 'ready'. Failed -> error row + company_target 'failed'
        (CT-I-NOT-FOUND: error row only; CT-I-ALREADY-PROCESSED: nothing). Deferred -> lease
        released with not_before = now() + retry_after. Records already terminal are never
        modified and come back in `already_terminal`. Raises ValueError (nothing written) if a
        record appears twice in the batch or a confidence is outside [0, 1].

        `claims` maps a record to the `attempts` of the claim it answers (`ClaimedRecord`):
        such a record is written only while that claim is still `owner`'s live lease, checked
        in the same statement (see queries.WRITE_OUTCOMES); otherwise it comes back in `fenced`
        and nothing of it is written. Every PASS/FAIL written is also entered in
        ct_actors.outcome_log until `mark_logged`.
        """
        if not outcomes:
            return WriteReport([], [], [])
        batch = encode_outcomes(outcomes, claims, self._mask)
        started = time.perf_counter()
        try:
            rows = await self._call(
                "write outcomes", self._fetch, q.WRITE_OUTCOMES, owner, *batch.args()
            )
        finally:
            self._stats.write_seconds += time.perf_counter() - started
        status = {r["outreach_id"]: r["status"] for r in rows}
        report = WriteReport([], [], [], [], [])
        lists = {
            "written": report.written,
            "already_terminal": report.already_terminal,
            "deferred": report.deferred,
            "not_in_spine": report.not_in_spine,
            "fenced": report.fenced,
        }
        for outcome in outcomes:
            st = status.get(outcome.outreach_id)
            if st not in lists:  # pragma: no cover - the statement returns one row per input
                raise QueryError(f"write outcomes: no status for {outcome.outreach_id} ({st!r})")
            lists[st].append(outcome.outreach_id)
        self._stats.writes += 1
        self._stats.rows_written += len(report.written)
        self._stats.rows_already_terminal += len(report.already_terminal)
        self._stats.rows_deferred += len(report.deferred)
        self._stats.rows_not_in_spine += len(report.not_in_spine)
        self._stats.rows_fenced += len(report.fenced)
        return report

    # -- canonical log lines owed (sql/006_outcome_log.sql) ---------------------------------
    async def mark_logged(self, owner: str, ids: Iterable[UUID]) -> None:
        """The `outcome` lines of these records have been written: forget them. One round
        trip per writer batch."""
        id_list = list(ids)
        if not id_list:
            await trio.lowlevel.checkpoint()
            return
        await self._call("mark logged", self._execute, q.MARK_LOGGED, owner, id_list)

    async def unlogged(
        self, owner: str, stale_after: float, limit: int = 1000
    ) -> list[UnloggedOutcome]:
        """Committed outcomes whose line may be missing: those of a previous incarnation of
        `owner` (committed before this store was opened) and those of any owner committed
        more than `stale_after` seconds ago. Oldest first, at most `limit`."""
        rows = await self._call(
            "unlogged outcomes",
            self._fetch,
            q.UNLOGGED,
            owner,
            self._incarnation,
            float(stale_after),
            limit,
        )
        return [_unlogged(r) for r in rows]

    async def forget_unlogged(self, ids: Iterable[UUID]) -> None:
        """Drop rows of `unlogged` once their lines are written (whoever committed them)."""
        id_list = list(ids)
        if not id_list:
            await trio.lowlevel.checkpoint()
            return
        await self._call("forget unlogged", self._execute, q.FORGET_UNLOGGED, id_list)

    async def held_back(self, owner: str) -> HeldBack:
        """What is still pending, by why (the end of `run --drain`; see drain_report)."""
        rows = await self._call("held back", self._fetch, q.HELD_BACK, owner)
        return HeldBack.from_rows(
            [(r["class"], r["reason"], int(r["n"]), r["earliest"]) for r in rows]
        )

    async def renew_leases(
        self, owner: str, ids: Iterable[UUID], lease_seconds: float
    ) -> list[UUID]:
        """Extend `owner`'s leases; returns the ids still held (a missing id was lost: taken
        over after expiry, or finished)."""
        id_list = list(ids)
        if not id_list:
            return []
        rows = await self._call(
            "renew leases", self._fetch, q.RENEW_LEASES, owner, id_list, lease_seconds
        )
        return [r["outreach_id"] for r in rows]

    async def release(self, owner: str, ids: Iterable[UUID] | None = None) -> list[UUID]:
        """Hand unfinished work back: the records become claimable at once. `ids=None`
        releases every live lease of `owner` (shutdown)."""
        if ids is None:
            rows = await self._call("release", self._fetch, q.RELEASE_ALL, owner)
        else:
            id_list = list(ids)
            if not id_list:
                return []
            rows = await self._call("release", self._fetch, q.RELEASE, owner, id_list)
        return [r["outreach_id"] for r in rows]

    # -- single record (`once`) -----------------------------------------------------------
    async def fetch_spine(self, outreach_id: UUID) -> SpineRecord | None:
        rows = await self._call("fetch spine", self._fetch, q.FETCH_SPINE, outreach_id)
        if not rows:
            return None
        return SpineRecord(outreach_id=rows[0]["outreach_id"], domain=rows[0]["domain"])

    async def terminal_status(self, outreach_id: UUID) -> str | None:
        """'ready' (PASS), 'failed' (FAIL: company_target 'failed' or an open error row), or
        None when the record is still pending."""
        value = await self._call("terminal status", self._fetchval, q.TERMINAL_STATUS, outreach_id)
        return None if value is None else str(value)

    # -- operator-configured names query (off by default) -------------------------------------
    async def _names_one(
        self, query: str, outreach_id: UUID, statement_timeout: float
    ) -> list[tuple[str, str]]:
        # READ ONLY: the query is operator-supplied text; whatever it says, it cannot write.
        async with self._pool.acquire() as conn, conn.transaction(readonly=True):
            self._stats.round_trips += 4  # BEGIN, set_config, prepare+fetch, COMMIT
            timeout_ms = str(max(1, int(statement_timeout * 1000)))
            await conn.fetchval(q.SET_LOCAL_STATEMENT_TIMEOUT, timeout_ms)
            cursor = await conn.cursor(query, outreach_id)
            # A few extra rows so that rows with NULL names do not starve the result.
            rows = await cursor.fetch(MAX_NAMES * 4)
        names: list[tuple[str, str]] = []
        for row in rows:
            if len(row) < 2 or row[0] is None or row[1] is None:
                continue
            first, last = str(row[0]).strip(), str(row[1]).strip()
            if first and last:
                names.append((first, last))
            if len(names) == MAX_NAMES:
                break
        return names

    async def fetch_names(
        self, query: str, outreach_id: UUID, *, statement_timeout: float = 5.0
    ) -> list[tuple[str, str]]:
        """Run the operator's names query (`$1` = outreach_id, returns first_name, last_name)
        in a READ ONLY transaction with a statement timeout; at most 3 (first, last) pairs."""
        return await self._call(
            "names query", self._names_one, query, outreach_id, statement_timeout
        )

    async def fetch_names_batch(
        self, query: str, ids: Iterable[UUID], *, statement_timeout: float = 5.0
    ) -> dict[UUID, list[tuple[str, str]]]:
        """`fetch_names` for many records in ONE statement: the operator's query runs as a
        LATERAL subquery once per id (`$1` bound to each id in turn), so a claim batch costs
        one round trip instead of one per record.

        `statement_timeout` is per record: the batch statement gets it once per id. When the
        batch is cancelled by it, every record's query runs alone with its own timeout, and a
        record whose query still times out is left out of the result (the caller defers it):
        one slow record neither stalls nor starves the others."""
        id_list = list(dict.fromkeys(ids))
        if not id_list:
            return {}
        sql = lateral_names_query(query)

        async def fetch(conn: Any, batch: list[UUID]) -> dict[UUID, list[tuple[str, str]]]:
            seconds = statement_timeout * len(batch)
            async with conn.transaction(readonly=True):
                self._stats.round_trips += 4  # BEGIN, set_config, fetch, COMMIT
                timeout_ms = str(max(1, int(seconds * 1000)))
                await conn.fetchval(q.SET_LOCAL_STATEMENT_TIMEOUT, timeout_ms)
                # The client-side command_timeout must not cut the server's budget short.
                rows = await conn.fetch(sql, batch, timeout=seconds + 5.0)
            return _names_by_id(batch, rows)

        async def run() -> dict[UUID, list[tuple[str, str]]]:
            async with self._pool.acquire() as conn:
                try:
                    return await fetch(conn, id_list)
                except _NAMES_RECORD_ERRORS:
                    if len(id_list) == 1:
                        return {}
                out: dict[UUID, list[tuple[str, str]]] = {}
                for oid in id_list:
                    try:
                        out.update(await fetch(conn, [oid]))
                    except _NAMES_RECORD_ERRORS:
                        continue
                return out

        return await self._call("names query", run)

    async def check_names_query(self, query: str) -> None:
        """Raise ConfigurationError unless the names query takes a uuid `$1` and returns the
        first and last name as its first two (text) columns. Asks the database (a prepare: it
        runs nothing), since the shape of arbitrary SQL cannot be read from its text."""

        async def run() -> tuple[list[tuple[str, str]], list[str]]:
            async with self._pool.acquire() as conn, conn.transaction(readonly=True):
                self._stats.round_trips += 3
                stmt = await conn.prepare(query)
                columns = [(a.name, a.type.name) for a in stmt.get_attributes()]
                params = [p.name for p in stmt.get_parameters()]
            return columns, params

        try:
            columns, params = await self._call("names query check", run)
        except (QueryError, SchemaError) as exc:
            # Unknown table/column, syntax: the operator's query, not our schema.
            raise ConfigurationError(f"probe.names_query does not prepare: {exc}") from None
        problem = names_query_problem(columns, params)
        if problem is not None:
            raise ConfigurationError(f"probe.names_query {problem}")

    # -- monitoring ---------------------------------------------------------------------------
    async def spine_anomalies(self) -> SpineAnomalies:
        """NULL and duplicated outreach_ids in the spine (see SpineAnomalies)."""

        async def run() -> SpineAnomalies:
            async with self._pool.acquire() as conn:
                self._stats.round_trips += 2
                nulls = await conn.fetchval(q.SPINE_NULL_IDS)
                dups = await conn.fetch(q.SPINE_DUPLICATED_IDS, SPINE_DUPLICATES_LISTED)
            return SpineAnomalies(
                null_ids=int(nulls), duplicated={r["outreach_id"]: int(r["n"]) for r in dups}
            )

        return await self._call("spine check", run)

    async def pending_count(self) -> int:
        """Spine records without a terminal outcome (including leased and deferred ones)."""
        return int(await self._call("pending count", self._fetchval, q.PENDING_COUNT))

    async def pending_elsewhere(self, owner: str) -> int:
        """Pending, not deferred, and not held by `owner` (see queries.PENDING_ELSEWHERE)."""
        return int(
            await self._call("pending elsewhere", self._fetchval, q.PENDING_ELSEWHERE, owner)
        )

    async def pending_elsewhere_among(self, owner: str, ids: Iterable[UUID]) -> int:
        """`pending_elsewhere` restricted to the records in `ids`."""
        id_list = sorted(set(ids))
        if not id_list:
            return 0
        return int(
            await self._call(
                "pending elsewhere",
                self._fetchval,
                q.PENDING_ELSEWHERE_AMONG,
                owner,
                id_list,
            )
        )

    async def counts_by_outcome(self) -> dict[str, int]:
        """{'PASS': n, '<failure code>': n, ...} over terminal outcomes (open error rows)."""
        rows = await self._call("counts by outcome", self._fetch, q.COUNTS_BY_OUTCOME)
        return {str(r["outcome"]): int(r["n"]) for r in rows}

    # -- tool budgets (per_day / per_month) --------------------------------------------------
    async def reserve_usage(
        self, tool_id: str, scope: str, window_start: dt.datetime, want: int, limit: int
    ) -> int:
        """Add up to `want` calls to the window's counter without ever taking it past `limit`;
        returns how many were granted (0..want). Atomic across connections and daemons.

        `window_start` is the start of the UTC calendar window (see `usage_window`). One round
        trip, or up to three for the first reservation of a window. Raises ValueError for a bad
        argument, DatabaseUnavailable etc. as every store call.
        """
        check_usage_window(scope, window_start)
        if want < 1:
            raise ValueError(f"want must be >= 1, got {want!r}")
        if limit < 1:
            raise ValueError(f"limit must be >= 1, got {limit!r}")

        async def run() -> int:
            async with self._pool.acquire() as conn:
                for _attempt in range(_RESERVE_ATTEMPTS):
                    # The common case first: the window's row exists (every reservation of a
                    # window but the first).
                    self._stats.round_trips += 1
                    granted = await conn.fetchval(
                        q.RESERVE_USAGE, tool_id, scope, window_start, want, limit
                    )
                    if granted is not None:
                        return int(granted)
                    self._stats.round_trips += 1
                    granted = await conn.fetchval(
                        q.RESERVE_USAGE_FIRST, tool_id, scope, window_start, want, limit
                    )
                    if granted is not None:
                        return int(granted)
                    # Another reservation created the row between our two statements.
            raise QueryError(
                f"reserve usage: the row of {tool_id}/{scope}/{window_start.isoformat()} "
                f"vanished {_RESERVE_ATTEMPTS} times in a row (is something deleting it?)"
            )

        return await self._call("reserve usage", run)

    async def refund_usage(
        self, tool_id: str, scope: str, window_start: dt.datetime, count: int
    ) -> None:
        """Give back `count` reserved calls that were not used (never below 0). Refunding into
        a window that has no row is a no-op."""
        check_usage_window(scope, window_start)
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count!r}")
        if count == 0:
            await trio.lowlevel.checkpoint()
            return
        await self._call(
            "refund usage", self._execute, q.REFUND_USAGE, tool_id, scope, window_start, count
        )

    async def usage(self, tool_id: str, scope: str, window_start: dt.datetime) -> int:
        """Calls counted in the window so far (0 when nothing was reserved in it)."""
        check_usage_window(scope, window_start)
        value = await self._call("usage", self._fetchval, q.USAGE, tool_id, scope, window_start)
        return 0 if value is None else int(value)

    # -- EmailVerifier ledger (TOOL-019; sql/004_verifier.sql; ct_actors.verify.ledger) --------
    # `Store` is the production `VerifierLedger`. Timestamps are passed in (the gate's UtcClock),
    # not taken from the database clock, so the cache TTL and the calendar month follow the same
    # clock as the tool budgets. One round trip each.
    async def verifier_entry(self, address: str) -> VerifierEntry | None:
        rows = await self._call("verifier entry", self._fetch, q.VERIFIER_ENTRY, address)
        if not rows:
            return None
        r = rows[0]
        return VerifierEntry(
            address=r["address"],
            owner=r["owner"],
            status=LedgerStatus(r["status"]),
            attempts=int(r["attempts"]),
            attempted_at=r["attempted_at"],
            finished_at=r["finished_at"],
            verdict=r["verdict"],
            result=r["result"],
            credits_after=None if r["credits_after"] is None else int(r["credits_after"]),
            cost=r["cost"],
            detail=r["detail"],
        )

    async def verifier_claim(
        self, address: str, owner: str, at: dt.datetime, max_attempts: int
    ) -> int | None:
        """Insert the address's pending row (or re-open an `unavailable` one with attempts
        left); the attempt number, or None if another caller has it."""
        _check_aware(at)
        value = await self._call(
            "verifier claim", self._fetchval, q.VERIFIER_CLAIM, address, owner, at, max_attempts
        )
        return None if value is None else int(value)

    async def verifier_finish(
        self,
        address: str,
        owner: str,
        *,
        status: LedgerStatus,
        at: dt.datetime,
        verdict: str | None = None,
        result: str | None = None,
        credits_after: int | None = None,
        cost: Decimal | int = 0,
        detail: str | None = None,
    ) -> bool:
        _check_aware(at)
        if status is LedgerStatus.PENDING:
            raise ValueError("verifier_finish needs a final status (done or unavailable)")
        value = await self._call(
            "verifier finish",
            self._fetchval,
            q.VERIFIER_FINISH,
            address,
            owner,
            status.value,
            at,
            verdict,
            result,
            credits_after,
            Decimal(cost),
            # Vendor text: bounded, control characters escaped, known secrets (the API key a
            # vendor may echo back) masked, like every stored free text.
            clean_text(detail, _LEDGER_DETAIL_LIMIT, self._mask),
        )
        return value is not None

    async def verifier_release(self, address: str, owner: str) -> bool:
        value = await self._call(
            "verifier release", self._fetchval, q.VERIFIER_RELEASE, address, owner
        )
        return value is not None

    async def verifier_reserve_spend(
        self, tool_id: str, month: dt.datetime, amount: Decimal, cap: Decimal | None
    ) -> Decimal | None:
        """One call and `amount` onto the month unless that passes `cap`; the new total, or
        None if refused. Atomic across connections and daemons."""
        check_usage_window("per_month", month)
        if amount < 0:
            raise ValueError(f"amount must be >= 0, got {amount!r}")
        value = await self._call(
            "verifier reserve spend",
            self._fetchval,
            q.VERIFIER_RESERVE_SPEND,
            tool_id,
            month,
            amount,
            cap,
        )
        return None if value is None else Decimal(value)

    async def verifier_refund_spend(
        self, tool_id: str, month: dt.datetime, amount: Decimal
    ) -> None:
        check_usage_window("per_month", month)
        await self._call(
            "verifier refund spend",
            self._execute,
            q.VERIFIER_REFUND_SPEND,
            tool_id,
            month,
            amount,
        )

    async def verifier_spend(self, tool_id: str, month: dt.datetime) -> SpendRow:
        check_usage_window("per_month", month)
        rows = await self._call(
            "verifier spend", self._fetch, q.VERIFIER_SPEND, tool_id, month
        )
        if not rows:
            return SpendRow(0, Decimal(0))
        return SpendRow(int(rows[0]["calls"]), Decimal(rows[0]["spent"]))


def usage_window(scope: str, at: dt.datetime) -> dt.datetime:
    """Start of the UTC calendar window of `scope` ('per_day' or 'per_month') containing the
    tz-aware instant `at` (the same calendar the budgets use)."""
    if scope not in USAGE_SCOPES:
        raise ValueError(f"scope must be one of {', '.join(USAGE_SCOPES)}, got {scope!r}")
    return window_start(scope, at)


def check_usage_window(scope: str, window_start: dt.datetime) -> None:
    """ValueError unless `window_start` is a UTC window start of `scope`. A naive datetime
    would be read in the database session's TimeZone, and an unaligned one (say, now()) would
    silently give every call a window, and so a budget, of its own."""
    if scope not in USAGE_SCOPES:
        raise ValueError(f"scope must be one of {', '.join(USAGE_SCOPES)}, got {scope!r}")
    if window_start.tzinfo is None or window_start.utcoffset() != dt.timedelta(0):
        raise ValueError(f"window_start must be a UTC datetime, got {window_start!r}")
    if usage_window(scope, window_start) != window_start:
        raise ValueError(
            f"window_start {window_start.isoformat()} is not the start of a UTC "
            f"{'day' if scope == 'per_day' else 'month'}"
        )


def _claimed(row: Any) -> ClaimedRecord:
    return ClaimedRecord(
        outreach_id=row["outreach_id"],
        domain=row["domain"],
        attempts=int(row["attempts"]),
        spine_rows=int(row["spine_rows"]),
    )


# Failures of the names query that may belong to one record's data: the statement timeout
# (57014) and data exceptions (class 22: a bad cast, a division by zero for one row).
_NAMES_RECORD_ERRORS = (asyncpg.QueryCanceledError, asyncpg.DataError)


def _names_by_id(ids: list[UUID], rows: Sequence[Any]) -> dict[UUID, list[tuple[str, str]]]:
    """Rows of `lateral_names_query`: (id, the query's columns..., ct_rn). Only the query's
    own first two columns are names; a narrower row (which `check_names_query` refuses at
    start) yields none, never the wrapper's row number."""
    out: dict[UUID, list[tuple[str, str]]] = {oid: [] for oid in ids}
    for row in rows:
        names = out[row[0]]
        if len(names) >= MAX_NAMES or len(row) < 4 or row[1] is None or row[2] is None:
            continue
        first, last = str(row[1]).strip(), str(row[2]).strip()
        if first and last:
            names.append((first, last))
    return out


_PARAM_1 = re.compile(r"\$1(?!\d)")


def lateral_names_query(query: str) -> str:
    """Wrap the operator's per-record names query (`$1` = outreach_id) so it runs for a whole
    array of ids at once, in id order, rows in the query's own order."""
    body = _PARAM_1.sub("ids.id", query.strip().rstrip(";"))
    return (
        "SELECT ids.id, n.* FROM unnest($1::uuid[]) WITH ORDINALITY AS ids(id, ord) "
        "CROSS JOIN LATERAL (SELECT q.*, row_number() OVER () AS ct_rn "
        f"FROM ({body}) AS q) AS n ORDER BY ids.ord, n.ct_rn"
    )


async def open_store(
    url: str,
    *,
    min_size: int = 1,
    max_size: int = 4,
    command_timeout: float | None = 15.0,
    connect_timeout: float = 10.0,
    application_name: str = "ct-actors",
) -> Store:
    """Open a connection pool. Raises DatabaseUnavailable (redacted) if the server cannot be
    reached or refuses us, ConfigurationError if the URL is unusable."""
    redactor = Redactor(url)

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
            incarnation = await pool.fetchval(q.INCARNATION_START)
        except BaseException:
            pool.terminate()
            raise
        return pool, incarnation

    try:
        pool, incarnation = await trio_asyncio.aio_as_trio(run)()
    except Exception as exc:
        raise translate_exception(exc, redactor, "connect") from None
    return Store(pool, redactor, incarnation)


# ---------------------------------------------------------------------------------------------
# EmailVerifier ledger support (appended; the methods are at the end of `Store`)
# ---------------------------------------------------------------------------------------------
def _check_aware(at: dt.datetime) -> None:
    """A naive timestamp would be read in the session's TimeZone."""
    if at.tzinfo is None or at.utcoffset() is None:
        raise ValueError(f"timestamp must be timezone-aware, got {at!r}")



# ---------------------------------------------------------------------------------------------
# Outcome log recovery support
# ---------------------------------------------------------------------------------------------
def _unlogged(r: Any) -> UnloggedOutcome:
    """An UNLOGGED row back into the Outcome the writer committed (what its line needs)."""
    visits = r["visits"]
    if isinstance(visits, str):  # jsonb comes back as text without a type codec
        visits = json.loads(visits)
    evidence: dict[str, Any] = {"visits": visits} if isinstance(visits, list) else {}
    result: Passed | Failed | None = None
    if r["failure_code"] is not None:
        try:
            code = FailureCode(r["failure_code"])
        except ValueError:
            code = None
        if code is not None:
            result = Failed(
                code,
                r["blocking_reason"] or "",
                "warning" if r["severity"] == "warning" else "error",
                evidence,
            )
    elif r["execution_status"] == "ready":
        result = Passed(
            r["email_method"] or "",
            r["method_type"] or "",
            Decimal(r["confidence_score"] if r["confidence_score"] is not None else 0),
            bool(r["is_catchall"]),
            evidence,
        )
    outcome = None
    if result is not None:
        outcome = Outcome(
            r["outreach_id"],
            r["domain_normalised"],
            result,
            r["mx_host"],
            float(r["duration"]) if r["duration"] is not None else 0.0,
        )
    return UnloggedOutcome(r["outreach_id"], r["owner"], r["committed_at"], outcome)
