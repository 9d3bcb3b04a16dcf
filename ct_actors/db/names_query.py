"""The operator's names query (`probe.names_query`, off by default): `NamesQuery` runs it on the
database driver, for one record or a whole claim batch; and the shape it must have, checked
before use.

The shape of arbitrary SQL cannot be known from its text (`SELECT *`, views, functions, CTEs),
so the check asks PostgreSQL: the daemon prepares the statement at start (a Parse/Describe, it
runs nothing) and reads its parameter and result types. The configuration loader only checks
what the text can tell (one SELECT/WITH statement using `$1`, no other parameter).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any
from uuid import UUID

import asyncpg

from ct_actors.db import queries as q
from ct_actors.db.driver import Database
from ct_actors.db.errors import ConfigurationError, QueryError, SchemaError

__all__ = ["MAX_NAMES", "NamesQuery", "lateral_names_query", "names_query_problem"]

# How many rows an operator names query may contribute.
MAX_NAMES = 3

# Types a name can come back as (`SELECT 'x'` describes as text since PostgreSQL 10).
TEXT_TYPES = frozenset({"text", "varchar", "bpchar", "name", "citext"})


def names_query_problem(columns: Sequence[tuple[str, str]], params: Sequence[str]) -> str | None:
    """What is wrong with a query whose result columns are `columns` ((name, type name)) and
    whose parameters have the types `params`; None when it can be used."""
    if len(params) != 1:
        return (
            f"takes {len(params)} parameters; it must take exactly one ($1, the outreach_id)"
        )
    if params[0] != "uuid":
        return (
            f"$1 is typed {params[0]}, not uuid (compare a uuid column with it, "
            "or write $1::uuid)"
        )
    if len(columns) < 2:
        listed = ", ".join(name for name, _type in columns) or "none"
        return (
            f"returns {len(columns)} column ({listed}); it must return the first and the last "
            "name as its first two columns"
        )
    for position, (name, type_name) in enumerate(columns[:2], start=1):
        if type_name not in TEXT_TYPES:
            return f"column {position} ({name}) is {type_name}, not text"
    return None


class NamesQuery:
    """The operator's names query, run READ ONLY with a statement timeout (the query is
    operator-supplied text; whatever it says, it cannot write)."""

    def __init__(self, database: Database) -> None:
        self._db = database

    async def _names_one(
        self, query: str, outreach_id: UUID, statement_timeout: float
    ) -> list[tuple[str, str]]:
        # READ ONLY: the query is operator-supplied text; whatever it says, it cannot write.
        async with self._db.connection() as conn, conn.transaction(readonly=True):
            self._db.count_round_trips(4)  # BEGIN, set_config, prepare+fetch, COMMIT
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
        return await self._db.call(
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
                self._db.count_round_trips(4)  # BEGIN, set_config, fetch, COMMIT
                timeout_ms = str(max(1, int(seconds * 1000)))
                await conn.fetchval(q.SET_LOCAL_STATEMENT_TIMEOUT, timeout_ms)
                # The client-side command_timeout must not cut the server's budget short.
                rows = await conn.fetch(sql, batch, timeout=seconds + 5.0)
            return _names_by_id(batch, rows)

        async def run() -> dict[UUID, list[tuple[str, str]]]:
            async with self._db.connection() as conn:
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

        return await self._db.call("names query", run)

    async def check_names_query(self, query: str) -> None:
        """Raise ConfigurationError unless the names query takes a uuid `$1` and returns the
        first and last name as its first two (text) columns. Asks the database (a prepare: it
        runs nothing), since the shape of arbitrary SQL cannot be read from its text."""

        async def run() -> tuple[list[tuple[str, str]], list[str]]:
            async with self._db.connection() as conn, conn.transaction(readonly=True):
                self._db.count_round_trips(3)
                stmt = await conn.prepare(query)
                columns = [(a.name, a.type.name) for a in stmt.get_attributes()]
                params = [p.name for p in stmt.get_parameters()]
            return columns, params

        try:
            columns, params = await self._db.call("names query check", run)
        except (QueryError, SchemaError) as exc:
            # Unknown table/column, syntax: the operator's query, not our schema.
            raise ConfigurationError(f"probe.names_query does not prepare: {exc}") from None
        problem = names_query_problem(columns, params)
        if problem is not None:
            raise ConfigurationError(f"probe.names_query {problem}")


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
