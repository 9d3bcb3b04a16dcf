"""Why the EmailVerifier must not call right now, and the operator's side of it: the budget kill
switch (`budget_cap_reached`: the month's money cap, or the vendor's credits), the halt after
the vendor refused our key or request, and the tool's calendar budget spent until a moment.
Synchronous state; the gate (`verify.gate`) asks `blocked()` before each attempt."""

from __future__ import annotations

import datetime as dt
from typing import Final

import structlog
import trio

from ct_actors.throttle.calendar import window_start
from ct_actors.throttle.killswitch import KillSwitches
from ct_actors.toolbox import ToolSpec
from ct_actors.verify.decision import SkipReason, VerifyDecision, skipped

__all__ = ["BUDGET_CAP_REACHED", "HALT_AND_ALERT", "VerifierStops"]

log = structlog.get_logger("ct_actors.verify")

BUDGET_CAP_REACHED: Final = "budget_cap_reached"
HALT_AND_ALERT: Final = "halt_and_alert"
_EFFECT: Final = "verification skipped; records keep their SMTP-only confidence"


class VerifierStops:
    """The stop conditions of one EmailVerifier. `switches` are the pipeline's and must know
    the registry's trigger for the tool (`budget_cap_reached`)."""

    def __init__(self, spec: ToolSpec, switches: KillSwitches) -> None:
        ks = spec.kill_switch
        self.trigger = ks.trigger if ks is not None else BUDGET_CAP_REACHED
        self._action = ks.action if ks is not None else HALT_AND_ALERT
        if self.trigger not in switches.names:
            raise ValueError(
                f"kill switch {self.trigger!r} of {spec.tool_id} is not registered with the "
                f"pipeline's KillSwitches (known: {', '.join(switches.names) or 'none'})"
            )
        self._tool = spec.tool_id
        self._switches = switches
        self._cap_month: dt.datetime | None = None  # the month our cap trip belongs to
        self.paused_until: dt.datetime | None = None  # the limiter's calendar budget, UTC
        self.halted: str | None = None  # why the vendor refused us

    @property
    def budget_tripped(self) -> bool:
        return self._switches.is_tripped(self.trigger)

    @property
    def stopped(self) -> bool:
        """No further request in this attempt (retries stop too)."""
        return self.halted is not None or self.budget_tripped

    def blocked(self, addr: str, now: dt.datetime) -> VerifyDecision | None:
        """The skip decision for a check at `now` (UTC), or None: calling is allowed."""
        if self.halted is not None:
            return skipped(addr, SkipReason.HALTED, self.halted)
        self._new_month(now)
        if self.budget_tripped:
            reason = next(
                (s.reason for s in self._switches.tripped() if s.name == self.trigger), None
            )
            return skipped(addr, SkipReason.BUDGET, reason or self.trigger)
        if self.paused_until is not None:
            if now < self.paused_until:
                return skipped(
                    addr, SkipReason.THROTTLED,
                    f"the tool's calendar budget is spent until {self.paused_until.isoformat()}",
                )
            self.paused_until = None
        return None

    def resume(self) -> bool:
        """Lift a halt and forget the limiter's remembered pause (SIGHUP). True if halted."""
        was = self.halted is not None
        self.halted = None
        self.paused_until = None
        return was

    def trip(self, reason: str, *, month: dt.datetime | None = None) -> None:
        """Trip the budget switch: for `month` only (the money cap), or until an operator
        clears it (the vendor's credits, `month` None)."""
        if not self._switches.trip(self.trigger, reason, trio.current_time()):
            return
        self._cap_month = month
        clear = (
            "calls resume on the 1st of next month (UTC), or at once after the cap is raised "
            "and SIGHUP (systemctl reload ct-actors)"
            if month is not None
            else "top up the vendor's credits, then SIGHUP (systemctl reload ct-actors)"
        )
        log.critical(
            "kill_switch_tripped", switch=self.trigger, action=self._action,
            tool=self._tool, reason=reason, clear=clear, effect=_EFFECT,
        )

    def _new_month(self, now: dt.datetime) -> None:
        """A cap trip holds for its month only."""
        if self._cap_month is None:
            return
        if window_start("per_month", now) == self._cap_month:
            return
        self._cap_month = None
        if self._switches.clear(self.trigger):
            log.warning(
                "kill_switch_cleared", switch=self.trigger, tool=self._tool,
                by="new budget month",
            )

    def halt(self, reason: str) -> None:
        if self.halted is None:
            log.critical(
                "verifier_halted", tool=self._tool, action=HALT_AND_ALERT, reason=reason,
                clear="fix the API key / base URL, then SIGHUP (systemctl reload ct-actors) "
                "or restart",
                effect=_EFFECT,
            )
        self.halted = reason
