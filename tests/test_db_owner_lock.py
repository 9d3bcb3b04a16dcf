"""One live daemon per daemon.owner (issue 10, tidy): a PostgreSQL session advisory lock.

Before: two daemons configured with one owner name took over each other's live leases (each
treats leases of its name from before its start as a crashed predecessor's) and probed the
same records twice."""

from __future__ import annotations

from typing import Any

import pytest
import trio

from ct_actors.db.owner_lock import OwnerInUse, acquire_owner_lock

pytestmark = [pytest.mark.db, pytest.mark.timeout(60)]


async def test_a_second_daemon_with_the_same_owner_is_refused(
    aio_loop: Any, migrated_db: str
) -> None:
    first = await acquire_owner_lock(migrated_db, "host-a")
    try:
        other = await acquire_owner_lock(migrated_db, "host-b")  # another name: fine
        await other.aclose()
        started = trio.current_time()
        with pytest.raises(OwnerInUse) as info:
            await acquire_owner_lock(migrated_db, "host-a", wait=0.6, poll=0.2)
        assert trio.current_time() - started >= 0.6  # it waited for a predecessor to go
        message = str(info.value)
        assert "daemon.owner 'host-a' is held by another live daemon: backend pid " in message
        assert "ct-actors owner lock" in message and "pg_terminate_backend" in message
    finally:
        await first.aclose()
    # The session ended: the name is free again at once.
    again = await acquire_owner_lock(migrated_db, "host-a", wait=0)
    await again.aclose()


async def test_the_lock_is_taken_as_soon_as_the_holder_goes(
    aio_loop: Any, migrated_db: str
) -> None:
    first = await acquire_owner_lock(migrated_db, "host-a")

    async def release_later() -> None:
        await trio.sleep(0.5)
        await first.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(release_later)
        second = await acquire_owner_lock(migrated_db, "host-a", wait=10, poll=0.1)
    await second.aclose()
