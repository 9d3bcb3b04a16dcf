"""PostgreSQL persistence for ct-actors, in rooms on one driver:

* `driver.Database` (`open_database`): the pool, the trio->asyncio crossing, exception
  translation, redaction, statistics; every room below takes it;
* `work_queue.WorkQueue`: claims, leases, outcomes (the loader, the writer, `once`);
* `usage.UsageBook`: the tool budgets' day/month counters (the throttles);
* `names_query.NamesQuery`: the operator's names query;
* the verifier ledger lives with the verifier (`ct_actors.verify.pg_ledger`), on this driver.

All coroutines here run on trio inside an open `trio_asyncio.open_loop()` (the caller opens it
once per process); `migrate.migrate` alone is asyncio-side and takes an asyncpg connection.
"""

from ct_actors.db.driver import Database, DatabaseStatistics, open_database
from ct_actors.db.errors import (
    ConfigurationError,
    DatabaseUnavailable,
    QueryError,
    SchemaError,
    StoreError,
)
from ct_actors.db.migrate import migrate, verify_schema
from ct_actors.db.names_query import NamesQuery
from ct_actors.db.queue_types import ClaimedRecord, SpineAnomalies, SpineRecord, WriteReport
from ct_actors.db.redact import redact_url
from ct_actors.db.usage import USAGE_SCOPES, UsageBook, usage_window
from ct_actors.db.work_queue import QueueStatistics, WorkQueue

__all__ = [
    "USAGE_SCOPES",
    "ClaimedRecord",
    "ConfigurationError",
    "Database",
    "DatabaseStatistics",
    "DatabaseUnavailable",
    "NamesQuery",
    "QueryError",
    "QueueStatistics",
    "SchemaError",
    "SpineAnomalies",
    "SpineRecord",
    "StoreError",
    "UsageBook",
    "WorkQueue",
    "WriteReport",
    "migrate",
    "open_database",
    "redact_url",
    "usage_window",
    "verify_schema",
]
