"""The shape the operator's names query (`probe.names_query`) must have, checked before use.

The shape of arbitrary SQL cannot be known from its text (`SELECT *`, views, functions, CTEs),
so the check asks PostgreSQL: the daemon prepares the statement at start (a Parse/Describe, it
runs nothing) and reads its parameter and result types. The configuration loader only checks
what the text can tell (one SELECT/WITH statement using `$1`, no other parameter).
"""

from __future__ import annotations

from collections.abc import Sequence

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
