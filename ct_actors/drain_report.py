"""What a `run --drain` leaves pending when it ends, and how that is told to the operator.

A drain ends when nothing more can be done without a human or the clock: nothing claimable,
nothing in flight here, nothing under another daemon's live lease — or a kill switch holds
claiming and nothing is in flight here (issue 14: before, such a drain waited for the switch
forever). What is still pending then is *held back*, and `run --drain` exits with its own code
(exit_codes.EXIT_HELD) so a script can tell "everything concluded" (0) from "stopped with work held
back" (4). Pure: the counts come from `WorkQueue.held_back`, the switches from the supervisor.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

# How many distinct deferral reasons the summary names (the rest are counted together).
TOP_REASONS = 5


@dataclass(frozen=True, slots=True)
class HeldBack:
    """Pending records at the end of a drain, by why they are not done."""

    # Deferred into the future (our own trouble: resolver, blocklisted IP, kill switch, ...).
    deferred: int = 0
    earliest_not_before: dt.datetime | None = None
    # (last_reason, count), most frequent first.
    reasons: tuple[tuple[str, int], ...] = ()
    # Under a live lease of another daemon (it may still finish them).
    leased_elsewhere: int = 0
    # Claimable but not claimed: a kill switch held claiming (or they arrived after the drain).
    claimable: int = 0
    # Under a live lease of this owner (none after a clean exit: leases are released).
    leased_here: int = 0

    @property
    def total(self) -> int:
        return self.deferred + self.leased_elsewhere + self.claimable + self.leased_here

    @classmethod
    def from_rows(cls, rows: Sequence[tuple[str, str | None, int, dt.datetime | None]]) -> HeldBack:
        """From HELD_BACK's rows: (class, reason, count, earliest not_before)."""
        counts: dict[str, int] = {}
        reasons: dict[str, int] = {}
        earliest: dt.datetime | None = None
        for klass, reason, n, first in rows:
            counts[klass] = counts.get(klass, 0) + int(n)
            if klass == "deferred":
                # Reasons name the address and reply ("our address is blocked by mx1.x: RCPT
                # a@b: 554 ..."): grouped by what comes before the first ": ", the cause.
                key = (reason or "(no reason recorded)").split(": ", 1)[0]
                reasons[key] = reasons.get(key, 0) + int(n)
                if first is not None and (earliest is None or first < earliest):
                    earliest = first
        ranked = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))
        return cls(
            deferred=counts.get("deferred", 0),
            earliest_not_before=earliest,
            reasons=tuple(ranked),
            leased_elsewhere=counts.get("leased_elsewhere", 0),
            claimable=counts.get("claimable", 0),
            leased_here=counts.get("leased_here", 0),
        )


@dataclass(frozen=True, slots=True)
class Switch:
    name: str
    reason: str | None


@dataclass(frozen=True, slots=True)
class DrainSummary:
    held: HeldBack
    # Kill switches tripped when the drain ended (they held claiming).
    switches: tuple[Switch, ...] = field(default_factory=tuple)

    @property
    def concluded(self) -> bool:
        """Nothing pending any more (a switch tripped at the very end held nothing back)."""
        return self.held.total == 0

    def fields(self) -> dict[str, Any]:
        """For the `drain_held` log event."""
        h = self.held
        return {
            "held": h.total,
            "deferred": h.deferred,
            "earliest_not_before": _iso(h.earliest_not_before),
            "deferral_reasons": dict(h.reasons[:TOP_REASONS]),
            "claimable": h.claimable,
            "leased_elsewhere": h.leased_elsewhere,
            "leased_here": h.leased_here,
            "kill_switches": {s.name: s.reason for s in self.switches},
        }

    def describe(self) -> str:
        """The operator's text (printed on stderr at the end of `run --drain`)."""
        h = self.held
        lines = [f"ct-actors: drain ended with {h.total} record(s) still pending (held back):"]
        for s in self.switches:
            lines.append(
                f"  kill switch {s.name} is tripped ({s.reason or 'no reason recorded'}): "
                "claiming stopped; fix the cause, then reload (SIGHUP) or run again"
            )
        if h.claimable:
            why = "held by the kill switch" if self.switches else "arrived after the drain"
            lines.append(f"  {h.claimable} claimable, not claimed ({why})")
        if h.deferred:
            lines.append(
                f"  {h.deferred} deferred (our own trouble, retried later), earliest due "
                f"{_iso(h.earliest_not_before)}:"
            )
            for reason, n in h.reasons[:TOP_REASONS]:
                lines.append(f"    {n:>6}  {reason[:160]}")
            rest = sum(n for _reason, n in h.reasons[TOP_REASONS:])
            if rest:
                lines.append(f"    {rest:>6}  (other reasons)")
        if h.leased_elsewhere:
            lines.append(f"  {h.leased_elsewhere} leased by another daemon (still in progress)")
        if h.leased_here:
            lines.append(f"  {h.leased_here} still leased by this daemon")
        return "\n".join(lines)


def _iso(value: dt.datetime | None) -> str | None:
    if value is None:
        return None
    return value.astimezone(dt.UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
