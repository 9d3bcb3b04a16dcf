"""Kill switches: detectors that decide when to trip, and the registry of tripped switches.

The detectors look for failures spread over many *distinct* keys, because one broken domain or
MX host says nothing about us, while the same failure across many unrelated ones points at our
side: a dead resolver, a dropped route, an IP on a blocklist. Callers log and trip; this module
only counts.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import trio

from ct_actors.log import as_log


def _check_threshold(threshold: int) -> None:
    if threshold < 1:
        raise ValueError(f"threshold must be at least 1, got {threshold}")


@dataclass(frozen=True, slots=True)
class DistinctFailuresStatistics:
    threshold: int
    distinct: int  # distinct keys failed since the last success
    tripped: bool
    trips: int
    failures: int
    successes: int


class DistinctFailures:
    """Trips after failures on `threshold` distinct keys with no success in between."""

    def __init__(self, threshold: int) -> None:
        _check_threshold(threshold)
        self.threshold = threshold
        self._keys: set[str] = set()
        self._tripped = False
        self.trips = 0
        self.failures = 0
        self.successes = 0

    @property
    def tripped(self) -> bool:
        return self._tripped

    def failure(self, key: str) -> bool:
        """Count a failure; True exactly when this one trips the detector."""
        self.failures += 1
        if self._tripped:
            # Nothing more to learn until re-armed, and the set must not grow without bound.
            return False
        self._keys.add(key)
        if len(self._keys) < self.threshold:
            return False
        self._tripped = True
        self.trips += 1
        return True

    def success(self) -> None:
        self.successes += 1
        self._keys.clear()
        self._tripped = False

    def reset(self) -> None:
        self._keys.clear()
        self._tripped = False

    def statistics(self) -> DistinctFailuresStatistics:
        return DistinctFailuresStatistics(
            threshold=self.threshold,
            distinct=len(self._keys),
            tripped=self._tripped,
            trips=self.trips,
            failures=self.failures,
            successes=self.successes,
        )


@dataclass
class SwitchState:
    name: str
    action: str
    tripped: bool
    tripped_at: float | None
    reason: str | None
    trips: int


@dataclass(frozen=True, slots=True)
class SwitchStatistics:
    action: str
    tripped: bool
    since: float | None  # trio time of the trip
    reason: str | None
    trips: int


@dataclass(frozen=True, slots=True)
class KillSwitchesStatistics:
    switches: Mapping[str, SwitchStatistics]  # by switch name

    def as_log(self) -> dict[str, Any]:
        return {name: as_log(s) for name, s in self.switches.items()}


class KillSwitches:
    """Named switches, each tripped until an operator (or a reload) clears it."""

    def __init__(self, names_and_actions: dict[str, str]) -> None:
        self._states = {
            name: SwitchState(name, action, False, None, None, 0)
            for name, action in names_and_actions.items()
        }
        # One event per tripped switch, set when it is cleared. A new event per trip, because a
        # trio.Event cannot be un-set and an old waiter must still see its own clearing.
        self._cleared: dict[str, trio.Event] = {}

    def _state(self, name: str) -> SwitchState:
        try:
            return self._states[name]
        except KeyError:
            raise KeyError(f"unknown kill switch {name!r}") from None

    @property
    def names(self) -> list[str]:
        return list(self._states)

    def trip(self, name: str, reason: str, now: float) -> bool:
        """Trip a switch; True if it was not tripped already (the first reason is kept)."""
        state = self._state(name)
        if state.tripped:
            return False
        state.tripped = True
        state.tripped_at = now
        state.reason = reason
        state.trips += 1
        self._cleared[name] = trio.Event()
        return True

    def clear(self, name: str) -> bool:
        """Clear a switch; True if it was tripped."""
        state = self._state(name)
        if not state.tripped:
            return False
        state.tripped = False
        state.tripped_at = None
        state.reason = None
        self._cleared.pop(name).set()
        return True

    def clear_all(self) -> list[str]:
        return [name for name in list(self._states) if self.clear(name)]

    def is_tripped(self, name: str) -> bool:
        return self._state(name).tripped

    def tripped(self) -> list[SwitchState]:
        # Copies, so a caller cannot trip or clear by editing what it was given.
        return [dataclasses.replace(s) for s in self._states.values() if s.tripped]

    async def wait_clear(self, names: Iterable[str]) -> None:
        """Return once none of `names` is tripped (at once if none is).

        A switch cleared and tripped again while we wait for another one is waited for again:
        the caller needs all of them clear at the same moment.
        """
        wanted = list(names)
        for name in wanted:
            self._state(name)
        # Trio's rule: every async call is a checkpoint, even when it need not wait. It comes
        # first so that the final check below and the return happen without yielding between.
        await trio.lowlevel.checkpoint()
        while True:
            pending = [self._cleared[n] for n in wanted if self._states[n].tripped]
            if not pending:
                return
            for event in pending:
                await event.wait()

    def statistics(self) -> KillSwitchesStatistics:
        return KillSwitchesStatistics(
            {
                name: SwitchStatistics(s.action, s.tripped, s.tripped_at, s.reason, s.trips)
                for name, s in self._states.items()
            }
        )
