"""TtlCache: entries expire on trio's clock; memory stays bounded without a timer task."""

from __future__ import annotations

import trio
import trio.testing

from ct_actors.ttl_cache import TtlCache


async def test_entries_expire_on_the_trio_clock(autojump_clock: trio.testing.MockClock) -> None:
    cache: TtlCache[str, int] = TtlCache(10.0)
    cache.put("a", 1)
    await trio.sleep(9.5)
    assert cache.get("a") == 1
    await trio.sleep(0.5)
    assert cache.get("a") is None
    assert (cache.hits, cache.misses) == (1, 1)


async def test_a_zero_ttl_caches_nothing(autojump_clock: trio.testing.MockClock) -> None:
    cache: TtlCache[str, int] = TtlCache(0.0)
    cache.put("a", 1)
    assert cache.get("a") is None and len(cache) == 0


async def test_full_cache_drops_expired_then_the_oldest(
    autojump_clock: trio.testing.MockClock,
) -> None:
    cache: TtlCache[int, int] = TtlCache(100.0, purge_at=8)
    for i in range(4):
        cache.put(i, i)
    await trio.sleep(150.0)  # 0..3 expire
    for i in range(4, 8):
        cache.put(i, i)
    cache.put(8, 8)  # full: the sweep drops the four expired ones, nothing live
    assert sorted(cache._entries) == [4, 5, 6, 7, 8] and cache.evicted == 0
    for i in range(9, 12):
        cache.put(i, i)
    cache.put(12, 12)  # full of live entries: the oldest go, down to 3/4 of the bound
    assert sorted(cache._entries) == [6, 7, 8, 9, 10, 11, 12]
    assert cache.evicted == 2
    assert cache.get(4) is None and cache.get(12) == 12
