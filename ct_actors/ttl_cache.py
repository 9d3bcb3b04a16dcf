"""A dictionary whose entries expire, on trio's clock (so MockClock tests control it)."""

from __future__ import annotations

from typing import Generic, TypeVar

import trio

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    def __init__(self, ttl: float, *, purge_at: int = 100_000) -> None:
        self.ttl = ttl
        # Expired entries are dropped in one sweep when the cache reaches `purge_at` entries,
        # which keeps memory bounded on a multi-day run without a timer task.
        self._purge_at = purge_at
        self._entries: dict[K, tuple[float, V]] = {}
        self.hits = 0
        self.misses = 0

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
            self._entries = {k: e for k, e in self._entries.items() if e[0] > now}
        self._entries[key] = (now + self.ttl, value)
