"""A one-shot reply slot: how an actor answers a request sent over a memory channel."""

from __future__ import annotations

from typing import Generic, TypeVar

import trio

T = TypeVar("T")


class ReplySlot(Generic[T]):
    __slots__ = ("_event", "_value")

    def __init__(self) -> None:
        self._event = trio.Event()
        self._value: T | None = None

    def set(self, value: T) -> None:
        if self._event.is_set():
            raise RuntimeError("reply already set")
        self._value = value
        self._event.set()

    @property
    def is_set(self) -> bool:
        return self._event.is_set()

    async def wait(self) -> T:
        await self._event.wait()
        return self._value  # type: ignore[return-value]
