"""One live daemon per `daemon.owner`: a PostgreSQL session advisory lock.

Leases are keyed by owner name, and a daemon treats leases of its own name taken before it
started as left over by a previous incarnation (claimable again at once). Two live daemons
configured with the same name would therefore take over each other's live leases and probe
the same records twice. `run` takes this lock before claiming anything and holds it, on a
connection of its own, for its whole life; PostgreSQL releases it when that session ends
(clean exit, crash, or the server noticing a dead client), so a restart never needs cleanup.

The key is (OWNER_LOCK_CLASS, hashtext(owner)) in the two-int4 advisory lock space (the
migration lock uses the one-bigint space, so they cannot collide). Two different owner names
with the same 32-bit hash would also exclude each other: the refusal names the holder's
backend pid so the operator can tell.
"""

from __future__ import annotations

import functools
from typing import Any

import asyncpg
import trio
import trio_asyncio

from ct_actors.db.driver import translate_exception
from ct_actors.db.errors import ConfigurationError, StoreError
from ct_actors.db.redact import UrlRedactor

# "ctow" in ASCII.
OWNER_LOCK_CLASS = 0x63746F77

TRY_LOCK = "SELECT pg_try_advisory_lock($1::int4, hashtext($2))"
# Who holds it: the two-int4 form stores key1 in classid and key2 in objid (objsubid 2).
HOLDER = """
SELECT a.pid, a.application_name, a.client_addr::text AS client, a.backend_start
FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
  AND l.classid = ($1::int4)::bigint::oid
  AND l.objid = ((hashtext($2)::bigint + 4294967296) % 4294967296)::oid
LIMIT 1
"""


class OwnerInUse(ConfigurationError):
    """Another live daemon runs with this daemon.owner."""


class OwnerLock:
    """Held while open; `aclose` releases it (closing its session)."""

    def __init__(self, conn: Any, owner: str) -> None:
        self._conn = conn
        self.owner = owner

    async def aclose(self) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(5.0):
            try:
                await trio_asyncio.aio_as_trio(self._conn.close)()
            except Exception:
                self._conn.terminate()


async def acquire_owner_lock(
    url: str, owner: str, *, wait: float = 30.0, poll: float = 1.0
) -> OwnerLock:
    """Take the owner's lock, retrying for `wait` seconds (a predecessor that just died may
    still have its session open for a moment); raise OwnerInUse (a configuration error, exit
    2) if another daemon still holds it, DatabaseUnavailable if the database cannot be reached."""
    redactor = UrlRedactor(url)

    async def call(fn: Any, *args: Any) -> Any:
        try:
            return await trio_asyncio.aio_as_trio(fn)(*args)
        except StoreError:
            raise
        except Exception as exc:
            raise translate_exception(exc, redactor, "owner lock") from None

    conn = await call(
        functools.partial(
            asyncpg.connect,
            url,
            timeout=10.0,
            server_settings={"application_name": "ct-actors owner lock"},
        )
    )
    try:
        deadline = trio.current_time() + wait
        while True:
            if await call(conn.fetchval, TRY_LOCK, OWNER_LOCK_CLASS, owner):
                return OwnerLock(conn, owner)
            if trio.current_time() >= deadline:
                break
            await trio.sleep(poll)
        holder = await call(conn.fetchrow, HOLDER, OWNER_LOCK_CLASS, owner)
    except BaseException:
        await OwnerLock(conn, owner).aclose()
        raise
    await OwnerLock(conn, owner).aclose()
    who = (
        f"backend pid {holder['pid']} ({holder['application_name'] or 'no application_name'}"
        f", client {holder['client'] or 'local socket'}, connected {holder['backend_start']})"
        if holder is not None
        else "a session that ended just now"
    )
    raise OwnerInUse(
        f"daemon.owner {owner!r} is held by another live daemon: {who}. Give every daemon "
        "its own daemon.owner (default: hostname:pid); if that session is a leftover, "
        "pg_terminate_backend(pid) releases it"
    )
