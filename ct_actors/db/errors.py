"""Exceptions raised by `ct_actors.db`.

The split matters to the caller: `DatabaseUnavailable` is *our* trouble (network, server restart,
lock contention) and must never be turned into a FAIL for a record; the caller backs off and
retries. Everything else is a bug or a misconfiguration and should stop the daemon loudly.

Messages are always redacted (see `ct_actors.db.redact`): these exceptions are raised `from None`
so that the original asyncpg exception, whose text may embed the DSN, is not chained into logs.
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class for everything `ct_actors.db` raises on purpose."""

    def __init__(self, message: str, *, sqlstate: str | None = None, cause: str | None = None):
        super().__init__(message)
        # The SQLSTATE and the original exception's class name survive the redaction, so logs
        # can still tell a deadlock from a refused connection.
        self.sqlstate = sqlstate
        self.cause = cause


class DatabaseUnavailable(StoreError):
    """Connection refused/lost/timed out, server shutting down, too many connections, or a
    transient conflict (deadlock, serialization failure, lock timeout). Retry with backoff."""


class SchemaError(StoreError):
    """The database schema is not what this version expects: a migration failed or was
    tampered with, or a table lacks something we need. Operator action required."""


class QueryError(StoreError):
    """Any other database error (a constraint we did not expect, an operator-configured query
    that is broken, ...). Not transient."""


class ConfigurationError(StoreError, ValueError):
    """The database URL (or another setting) is unusable. Not transient."""
