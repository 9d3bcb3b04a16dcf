"""PostgreSQL persistence for ct-actors: schema migrations, work claiming, outcome writing.

All coroutines here run on trio inside an open `trio_asyncio.open_loop()` (the caller opens it
once per process); `migrate.migrate` alone is asyncio-side and takes an asyncpg connection.
"""

from ct_actors.db.errors import (
    ConfigurationError,
    DatabaseUnavailable,
    QueryError,
    SchemaError,
    StoreError,
)
from ct_actors.db.migrate import migrate, verify_schema
from ct_actors.db.redact import redact_url
from ct_actors.db.store import (
    USAGE_SCOPES,
    ClaimedRecord,
    SpineAnomalies,
    SpineRecord,
    Store,
    StoreStatistics,
    WriteReport,
    open_store,
    usage_window,
)

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
    "WriteReport",
    "migrate",
    "open_store",
    "redact_url",
    "usage_window",
    "verify_schema",
]
