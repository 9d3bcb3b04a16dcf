"""The operator's names query (issue 10, item 6): its shape is checked against the database
before the daemon starts, and its timeout applies per record, so one slow record neither stalls
nor starves the others of the batch.

Before: a one-column query made `run` read the wrapper's own row-number column as the last name
and write a PASS `first.last` at 0.95; the 5 s timeout was hard-coded for a whole claim batch
and the loader retried the same batch forever when it fired.
"""

from __future__ import annotations

import time
import uuid

import pytest
from conftest_db import Db

from ct_actors.db import ConfigurationError, NamesQuery
from ct_actors.db.names_query import names_query_problem

pytestmark = [pytest.mark.db, pytest.mark.timeout(60)]

GOOD = (
    "SELECT first_name, last_name FROM public.people WHERE outreach_id = $1 ORDER BY rank"
)


async def _people(db: Db, ids: list[uuid.UUID]) -> None:
    await db.execute(
        "CREATE TABLE public.people (outreach_id uuid, first_name text, last_name varchar(80),"
        " rank int, code text)"
    )
    await db.executemany(
        "INSERT INTO public.people VALUES ($1, $2, $3, 1, 'x')",
        [(i, f"First{n}", f"Last{n}") for n, i in enumerate(ids)],
    )


@pytest.mark.parametrize(
    ("columns", "params", "problem"),
    [
        ([("first_name", "text"), ("last_name", "varchar")], ["uuid"], None),
        ([("a", "bpchar"), ("b", "name"), ("rank", "int4")], ["uuid"], None),
        (
            [("first_name", "text")],
            ["uuid"],
            "returns 1 column (first_name); it must return the first and the last name as "
            "its first two columns",
        ),
        (
            [("first_name", "text"), ("rank", "int4")],
            ["uuid"],
            "column 2 (rank) is int4, not text",
        ),
        (
            [("a", "text"), ("b", "text")],
            ["text"],
            "$1 is typed text, not uuid (compare a uuid column with it, or write $1::uuid)",
        ),
        (
            [("a", "text"), ("b", "text")],
            ["uuid", "int4"],
            "takes 2 parameters; it must take exactly one ($1, the outreach_id)",
        ),
    ],
)
def test_names_query_problem(
    columns: list[tuple[str, str]], params: list[str], problem: str | None
) -> None:
    assert names_query_problem(columns, params) == problem


async def test_shape_is_checked_against_the_database(names_query: NamesQuery, db: Db) -> None:
    await _people(db, [])
    await names_query.check_names_query(GOOD)
    one_column = "SELECT first_name FROM public.people WHERE outreach_id = $1"
    with pytest.raises(ConfigurationError) as info:
        await names_query.check_names_query(one_column)
    assert "probe.names_query returns 1 column (first_name)" in str(info.value)
    with pytest.raises(ConfigurationError, match="column 2 \\(rank\\) is int4, not text"):
        await names_query.check_names_query(
            "SELECT first_name, rank FROM public.people WHERE outreach_id = $1"
        )
    with pytest.raises(ConfigurationError, match="\\$1 is typed text, not uuid"):
        await names_query.check_names_query("SELECT code, code FROM public.people WHERE code = $1")
    with pytest.raises(ConfigurationError, match="does not exist"):
        await names_query.check_names_query("SELECT a, b FROM public.nowhere WHERE id = $1")


async def test_a_one_column_query_never_yields_a_row_number_as_a_name(
    names_query: NamesQuery, db: Db
) -> None:
    ids = [uuid.uuid4()]
    await _people(db, ids)
    one_column = "SELECT first_name FROM public.people WHERE outreach_id = $1"
    assert await names_query.fetch_names_batch(one_column, ids) == {ids[0]: []}


async def test_the_timeout_applies_per_record(names_query: NamesQuery, db: Db) -> None:
    ids = sorted(uuid.uuid4() for _ in range(4))
    await _people(db, ids)
    slow = ids[2]
    # Only the slow record's query takes long (1 s); the others answer at once.
    query = (
        "SELECT first_name, last_name FROM public.people, "
        f"pg_sleep(CASE WHEN $1 = '{slow}'::uuid THEN 1 ELSE 0 END) "
        "WHERE outreach_id = $1"
    )
    # 0.4 s per record: the batch of four has 1.6 s and passes as a whole.
    got = await names_query.fetch_names_batch(query, ids, statement_timeout=0.4)
    assert got == {i: [(f"First{n}", f"Last{n}")] for n, i in enumerate(ids)}
    # 0.2 s per record: the batch (0.8 s) is cancelled; every record is then asked alone
    # with its own 0.2 s, and only the slow one is left out (the caller defers it).
    started = time.monotonic()
    got = await names_query.fetch_names_batch(query, ids, statement_timeout=0.2)
    assert got == {i: [(f"First{n}", f"Last{n}")] for n, i in enumerate(ids) if i != slow}
    assert time.monotonic() - started < 5.0
