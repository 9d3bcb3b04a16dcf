"""What several rooms' SQL shares: when a record is terminal, and two one-liners of the driver."""

from __future__ import annotations

from typing import Final

# Statuses after which a record is never touched again by the daemon. 'blocked' and 'pending'
# rows (possibly written by other systems) are overwritten by our outcome.
TERMINAL_STATUSES: Final = ("ready", "failed")
TERMINAL_SQL: Final = "(" + ", ".join(f"'{s}'" for s in TERMINAL_STATUSES) + ")"


def not_terminal(id_expr: str, extra: str = "TRUE") -> str:
    """Predicate: the record has no terminal outcome. Two separate NOT EXISTS (not NOT (A OR
    B)) so the planner turns them into anti-joins over the unique indexes; an OR of EXISTS
    becomes a hashed subplan that reads all of company_target on every claim. `extra` is a
    condition on `{t}.outreach_id` repeated inside the subqueries (see CLAIM_AFTER)."""
    return f"""
    NOT EXISTS (SELECT 1 FROM outreach.company_target ct
                WHERE ct.outreach_id = {id_expr} AND ct.execution_status IN {TERMINAL_SQL}
                  AND {extra.replace("{t}", "ct")})
    AND NOT EXISTS (SELECT 1 FROM outreach.company_target_errors e
                    WHERE e.outreach_id = {id_expr} AND e.resolved_at IS NULL
                      AND {extra.replace("{t}", "e")})
"""


# The database clock when the driver opened its pool: leases older than this with our owner name
# are a previous incarnation's (see queries.claim).
INCARNATION_START: Final = "SELECT clock_timestamp()"

SET_LOCAL_STATEMENT_TIMEOUT: Final = "SELECT set_config('statement_timeout', $1, true)"
