"""A dictionary whose entries expire, on trio's clock (so MockClock tests control it)."""

from __future__ import annotations

from typing import Generic, TypeVar

import trio

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    def __init__(self, ttl: float, *, purge_at: int = 200_000) -> None:
        self.ttl = ttl
        # At `purge_at` entries, expired ones are dropped in one sweep; if that frees less than
        # a quarter, the oldest quarter goes too (insertion order is expiry order while the TTL
        # is constant). Memory stays bounded on a multi-day run, and the sweep stays amortised
        # O(1) per put even when nothing has expired yet (a 24 h TTL at hundreds per second).
        self._purge_at = purge_at
        self._entries: dict[K, tuple[float, V]] = {}
        self.hits = 0
        self.misses = 0
        self.evicted = 0  # live entries dropped for room

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: K) -> V | None:
        entry = self._entries.get(key)
        if entry is not None and entry[0] > trio.current_time():
            self.hits += 1
            return entry[1]
        self.misses += 1
        return None

    def put(self, key: K, value: V) -> None:
        if self.ttl <= 0:
            return
        now = trio.current_time()
        if len(self._entries) >= self._purge_at:
            live = {k: e for k, e in self._entries.items() if e[0] > now}
            excess = len(live) - (self._purge_at * 3) // 4
            if excess > 0:
                live = dict(list(live.items())[excess:])
            self._entries = live
            self.evicted += excess if excess > 0 else 0
        self._entries[key] = (now + self.ttl, value)
