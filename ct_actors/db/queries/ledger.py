"""The EmailVerifier (TOOL-019) ledger and monthly spend (sql/004_verifier.sql), run by
`ct_actors.verify.pg_ledger`."""

from __future__ import annotations

from typing import Final

_VERIFIER_COLUMNS: Final = """
    l.address, l.owner, l.status, l.attempts, l.attempted_at, l.finished_at, l.verdict,
    l.result, l.credits_after, l.cost, l.detail
"""

VERIFIER_ENTRY: Final = f"""
SELECT {_VERIFIER_COLUMNS} FROM ct_actors.verifier_ledger l WHERE l.address = $1
"""

# $1 address, $2 owner, $3 attempted_at, $4 max attempts. A new row is the first attempt; an
# `unavailable` row is re-opened only while attempts are left (never with the registry's 1). A
# concurrent insert of the same address makes us wait for its commit and then do nothing (no
# row returned): exactly one claimer calls the vendor.
VERIFIER_CLAIM: Final = """
INSERT INTO ct_actors.verifier_ledger AS l (address, owner, status, attempts, attempted_at, cost)
VALUES ($1, $2, 'pending', 1, $3, 0)
ON CONFLICT (address) DO UPDATE
    SET owner = excluded.owner,
        status = 'pending',
        attempts = l.attempts + 1,
        attempted_at = excluded.attempted_at,
        finished_at = NULL,
        detail = NULL
    WHERE l.status = 'unavailable' AND l.attempts < $4::integer
RETURNING l.attempts
"""

# $1 address, $2 owner, $3 status, $4 finished_at, $5 verdict, $6 result, $7 credits_after,
# $8 cost (added), $9 detail. Only the owner's pending row: a row re-claimed by someone else
# after we were presumed dead is theirs now.
VERIFIER_FINISH: Final = """
UPDATE ct_actors.verifier_ledger AS l
SET status = $3, finished_at = $4, verdict = $5, result = $6, credits_after = $7,
    cost = l.cost + $8::numeric, detail = $9
WHERE l.address = $1 AND l.owner = $2 AND l.status = 'pending'
RETURNING l.address
"""

VERIFIER_RELEASE: Final = """
DELETE FROM ct_actors.verifier_ledger l
WHERE l.address = $1 AND l.owner = $2 AND l.status = 'pending'
RETURNING l.address
"""

# $1 tool_id, $2 month_start, $3 amount, $4 cap (NULL: none). One statement, atomic across
# daemons: the first call of a month inserts the row; later ones take the conflict path, where
# PostgreSQL locks the row and evaluates the guard against its latest committed version, so two
# daemons can never both pass the cap. No row returned = refused.
VERIFIER_RESERVE_SPEND: Final = """
INSERT INTO ct_actors.verifier_spend AS s (tool_id, month_start, calls, spent, updated_at)
SELECT $1, $2, 1, $3::numeric, now()
WHERE $4::numeric IS NULL OR $3::numeric <= $4::numeric
ON CONFLICT (tool_id, month_start) DO UPDATE
    SET calls = s.calls + 1, spent = s.spent + excluded.spent, updated_at = now()
    WHERE $4::numeric IS NULL OR s.spent + excluded.spent <= $4::numeric
RETURNING s.spent
"""

VERIFIER_REFUND_SPEND: Final = """
UPDATE ct_actors.verifier_spend AS s
SET calls = GREATEST(s.calls - 1, 0), spent = GREATEST(s.spent - $3::numeric, 0),
    updated_at = now()
WHERE s.tool_id = $1 AND s.month_start = $2
"""

VERIFIER_SPEND: Final = """
SELECT s.calls, s.spent FROM ct_actors.verifier_spend s
WHERE s.tool_id = $1 AND s.month_start = $2
"""
