"""Every SQL statement the daemon runs, one module per room of the store, re-exported here so
they can be read, scanned (`ct_actors.ops.isolation.scan_statements`) and EXPLAINed together
(tests/test_db_migrate.py checks that every public constant of a module is here).

* `claim`: the work queue's claim and leases; `write`: its batch write and the outcome log;
  `pending`: its read-only counts and lookups (`ct_actors.db.work_queue`);
* `usage`: the tool budgets (`ct_actors.db.usage`);
* `ledger`: the EmailVerifier ledger (`ct_actors.verify.pg_ledger`);
* `common`: the terminal predicate they share, and the driver's one-liners.

Conventions:
* explicit column lists everywhere (never `SELECT *`): the spine carries `sovereign_id`, which
  this daemon must never read;
* batch statements take parallel arrays and `unnest` them, so a batch is one round trip;
* "terminal" means a company_target row in TERMINAL_STATUSES or an open error row. A resolved
  error row (resolved_at set by an operator, with an ADR) no longer blocks the record.
"""

from ct_actors.db.queries.claim import (
    CLAIM_AFTER,
    CLAIM_AMONG,
    CLAIM_FROM_START,
    RELEASE,
    RELEASE_ALL,
    RENEW_LEASES,
)
from ct_actors.db.queries.common import (
    INCARNATION_START,
    SET_LOCAL_STATEMENT_TIMEOUT,
    TERMINAL_SQL,
    TERMINAL_STATUSES,
)
from ct_actors.db.queries.ledger import (
    VERIFIER_CLAIM,
    VERIFIER_ENTRY,
    VERIFIER_FINISH,
    VERIFIER_REFUND_SPEND,
    VERIFIER_RELEASE,
    VERIFIER_RESERVE_SPEND,
    VERIFIER_SPEND,
)
from ct_actors.db.queries.pending import (
    COUNTS_BY_OUTCOME,
    FETCH_SPINE,
    HELD_BACK,
    PENDING_COUNT,
    PENDING_ELSEWHERE,
    PENDING_ELSEWHERE_AMONG,
    SPINE_DUPLICATED_IDS,
    SPINE_NULL_IDS,
    TERMINAL_STATUS,
)
from ct_actors.db.queries.usage import REFUND_USAGE, RESERVE_USAGE, RESERVE_USAGE_FIRST, USAGE
from ct_actors.db.queries.write import (
    FORGET_UNLOGGED,
    MARK_LOGGED,
    UNLOGGED,
    WRITE_COLUMNS,
    WRITE_OUTCOMES,
)

__all__ = [
    "CLAIM_AFTER",
    "CLAIM_AMONG",
    "CLAIM_FROM_START",
    "COUNTS_BY_OUTCOME",
    "FETCH_SPINE",
    "FORGET_UNLOGGED",
    "HELD_BACK",
    "INCARNATION_START",
    "MARK_LOGGED",
    "PENDING_COUNT",
    "PENDING_ELSEWHERE",
    "PENDING_ELSEWHERE_AMONG",
    "REFUND_USAGE",
    "RELEASE",
    "RELEASE_ALL",
    "RENEW_LEASES",
    "RESERVE_USAGE",
    "RESERVE_USAGE_FIRST",
    "SET_LOCAL_STATEMENT_TIMEOUT",
    "SPINE_DUPLICATED_IDS",
    "SPINE_NULL_IDS",
    "TERMINAL_SQL",
    "TERMINAL_STATUS",
    "TERMINAL_STATUSES",
    "UNLOGGED",
    "USAGE",
    "VERIFIER_CLAIM",
    "VERIFIER_ENTRY",
    "VERIFIER_FINISH",
    "VERIFIER_REFUND_SPEND",
    "VERIFIER_RELEASE",
    "VERIFIER_RESERVE_SPEND",
    "VERIFIER_SPEND",
    "WRITE_COLUMNS",
    "WRITE_OUTCOMES",
]
