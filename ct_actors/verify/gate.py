"""The registry's gate around the vendor: `EmailVerifier.check(address) -> VerifyDecision`.

What `check` guarantees, in the order it applies them:

1. **A fresh verdict is reused** (`cache_ttl_days`, 90): the ledger row of the address, written by
   any daemon, answers without a call, even while the budget is spent. A verdict older than the
   TTL is not used any more — and not renewed either (rule 2): the decision is "skipped: stale".
2. **At most one attempt per address, ever** (`max_attempts_per_email: 1`), shared by all
   daemons: before calling, a `pending` row is inserted with `ON CONFLICT DO NOTHING`; whoever
   does not get the row does not call. A daemon that finds another's row still pending waits
   for its verdict (`peer_wait`, polling) and uses it; a pending row older than
   `abandoned_after`, or one of our own name from before a restart, is an attempt whose owner
   died mid-call: it counts, no verdict ("skipped: attempted").
3. **Budget kill switch** (`budget_cap_reached` -> `halt_and_alert`): while it is tripped no call
   is made and every check is "skipped: budget"; a record is never failed for it (the PASS
   stands with its SMTP-only confidence). It trips (a) when the month's money would pass
   `monthly_budget_cap` — tripped by the call that reaches it, so the call after is never
   made — and (b) when the vendor says its credits are spent (an "Insufficient credits" answer,
   HTTP 402, or `credits: 0` left after a verdict). (a) clears itself on the 1st of the next
   month (UTC); (b) waits for the operator (top up, then SIGHUP).
4. **Money**: each request first adds `estimated_cost_per_call` to the month's row in
   `ct_actors.verifier_spend` with one guarded statement that never passes the cap, shared by all
   daemons and kept across restarts. A request the vendor provably did not bill (refused
   connection, 429, 503, an error answer) is refunded.
5. **Rates** (`per_second` 50, `per_month` 10,000): the tool's `ToolLimiter`, per request. A
   wait longer than `acquire_timeout` (the month's calls are spent) skips instead of holding the
   record for weeks: "skipped: throttled", and further checks skip at once until the limiter's
   `paused_until`.
6. **Back-off** (linear 500 ms, 2 retries): transient vendor errors (`VerifierUnavailable`) are
   retried inside the pass, each retry being another request (throttled and paid like the
   first); a `Retry-After` longer than `max_retry_after` ends the retries. Then the decision is
   "unavailable": no verdict, never a FAIL.
7. **Refusals** (`VerifierRejected`): a refused key, a test-mode key or an HTTP status that says
   our request is wrong halts the verifier in this process ("skipped: halted", logged
   critical) until `resume()` (SIGHUP) — the registry has no kill switch for it, and calling on
   would only repeat the refusal.

**What a transport failure does to the one attempt.** An *attempt* is a request the vendor may
have processed — and billed: the gate exists to never pay twice for one address and to not ask
the vendor twice about it. So the ledger row's fate after the retries follows what the vendor
may have seen:

* some request may have been processed (a timeout after the request was sent, a 500/502/504,
  a garbled 200, a cancellation mid-request): the row becomes `unavailable` — the attempt is
  spent, the address is never sent again, its cost stays on the month;
* no request can have been processed (connection refused before sending, every answer a 429 /
  503 / error answer, or no request made at all because the throttle or the budget said no):
  the row is deleted — nothing was spent, so a later pass may try the address again.

Erring this way can only cost a verification we could have had, never a second payment.
The ledger itself being unreachable means no call at all ("skipped: ledger_unavailable"): the
one-attempt rule cannot be kept without it.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Protocol

import structlog
import trio

from ct_actors.db.errors import StoreError
from ct_actors.throttle.backoff import backoff_delay
from ct_actors.throttle.calendar import UtcClock, window_start
from ct_actors.throttle.killswitch import KillSwitches
from ct_actors.throttle.limiter import ToolLimiter
from ct_actors.toolbox import ToolSpec
from ct_actors.verify.answer import VerifierAnswer
from ct_actors.verify.decision import (
    DETAIL_MAX,
    DecisionKind,
    NextStep,
    SkipReason,
    VerifyDecision,
    judge_ledger_row,
    normalise_address,
    skipped,
)
from ct_actors.verify.errors import UnavailableKind, VerifierRejected, VerifierUnavailable
from ct_actors.verify.ledger import LedgerStatus, SpendRow, VerifierLedger
from ct_actors.verify.statistics import DecisionCounters, VerifierStatistics
from ct_actors.verify.stops import BUDGET_CAP_REACHED, VerifierStops

__all__ = [
    "BUDGET_CAP_REACHED",
    "EmailVerifier",
    "GateSettings",
    "VerifierClient",
]

log = structlog.get_logger("ct_actors.verify")


class VerifierClient(Protocol):
    async def verify(self, address: str) -> VerifierAnswer: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class GateSettings:
    # Longest wait for a ToolLimiter call; longer means the month's calls are spent.
    acquire_timeout: float = 5.0
    # How long a check waits for another daemon's verification of the same address.
    peer_wait: float = 30.0
    peer_poll: float = 0.5
    # A pending row older than this belongs to a daemon that died mid-call.
    abandoned_after: float = 600.0
    # A Retry-After above this ends the retries at once (the pass does not wait minutes).
    max_retry_after: float = 10.0
    # Bound on the shielded ledger clean-up when a check is cancelled.
    cleanup_timeout: float = 5.0


@dataclass(slots=True)
class _Attempt:
    """Bookkeeping of one attempt (up to 1 + max_retries requests)."""

    requests: int = 0
    cost: Decimal = Decimal(0)  # spent on this address (billed or maybe billed)
    billed: bool = False  # some request may have been processed by the vendor
    in_flight: bool = False  # a request is out right now (cancellation: maybe billed)
    last_error: VerifierUnavailable | None = None
    blocked: SkipReason | None = None
    blocked_detail: str = ""


class EmailVerifier:
    """The gate of TOOL-019. One per daemon; `spec` is the registry's entry (reloadable with
    `reconfigure`), `switches` the pipeline's (must know `budget_cap_reached`), `limiter` the tool's
    `ToolLimiter` (None: no rate limits, tests only), `clock` the UtcClock the limiter uses,
    `owner` the daemon's unique owner name (as for leases)."""

    def __init__(
        self,
        spec: ToolSpec,
        *,
        client: VerifierClient,
        ledger: VerifierLedger,
        switches: KillSwitches,
        clock: UtcClock,
        owner: str,
        limiter: ToolLimiter | None = None,
        settings: GateSettings | None = None,
        ledger_errors: tuple[type[BaseException], ...] = (StoreError,),
    ) -> None:
        self.spec = spec
        self._client = client
        self._ledger = ledger
        self._stops = VerifierStops(spec, switches)
        self._clock = clock
        self.owner = owner
        self._limiter = limiter
        self.settings = settings or GateSettings()
        self._ledger_errors = ledger_errors
        self._local: dict[str, trio.Event] = {}  # addresses being checked in this process
        self.spent_here = Decimal(0)
        self._counters = DecisionCounters()

    # ── configuration ──────────────────────────────────────────────────────────────────────
    def reconfigure(self, spec: ToolSpec) -> None:
        """A reloaded registry entry: cost, cap, back-off, TTL, attempts apply from the next
        check (the kill switch name is fixed at start-up)."""
        self.spec = spec

    def resume(self) -> bool:
        """Lift a halt (after the operator fixed the key; call it on SIGHUP) and forget the
        limiter's remembered pause. True if the verifier was halted."""
        return self._stops.resume()

    @property
    def halted(self) -> str | None:
        return self._stops.halted

    @property
    def _max_attempts(self) -> int:
        return self.spec.max_attempts_per_email or 1

    # ── the check ──────────────────────────────────────────────────────────────────────────
    async def check(self, address: str) -> VerifyDecision:
        """Verify one concrete address under the gate. Never raises for vendor or ledger
        trouble (those are decisions); ValueError if `address` is not an address."""
        addr = normalise_address(address)
        self._counters.checks += 1
        # One check per address at a time in this process; the ledger does it across daemons.
        while (busy := self._local.get(addr)) is not None:
            await busy.wait()
        done = self._local[addr] = trio.Event()
        try:
            decision = await self._check(addr)
        finally:
            del self._local[addr]
            done.set()
        self._counters.count(decision)
        return decision

    def _now(self) -> dt.datetime:
        return self._clock.utc_at(trio.current_time())

    def _ledger_down(self, addr: str, what: str, exc: BaseException) -> VerifyDecision:
        log.warning(
            "verifier_ledger_unavailable", address=addr, operation=what,
            error=f"{type(exc).__name__}: {exc}",
        )
        return skipped(addr, SkipReason.LEDGER, f"ledger {what} failed: {type(exc).__name__}")

    async def _check(self, addr: str) -> VerifyDecision:
        waiting_since: float | None = None
        lost_races = 0
        while True:
            try:
                entry = await self._ledger.verifier_entry(addr)
            except self._ledger_errors as exc:
                return self._ledger_down(addr, "read", exc)
            if entry is not None:
                judged = judge_ledger_row(
                    addr, entry, now=self._now(), owner=self.owner,
                    cache_ttl=self.spec.cache_ttl, max_attempts=self._max_attempts,
                    abandoned_after=self.settings.abandoned_after,
                )
                if isinstance(judged, VerifyDecision):
                    return judged
                if judged is NextStep.WAIT_FOR_PEER:
                    now = trio.current_time()
                    if waiting_since is None:
                        waiting_since = now
                    if now - waiting_since >= self.settings.peer_wait:
                        return skipped(
                            addr, SkipReason.IN_FLIGHT,
                            f"{entry.owner} has been verifying it since "
                            f"{entry.attempted_at.isoformat()}",
                        )
                    await trio.sleep(self.settings.peer_poll)
                    continue
                # NextStep.CLAIM: an unavailable row with attempts left; claim it below.
            if (blocked := self._stops.blocked(addr, self._now())) is not None:
                return blocked
            try:
                attempt = await self._ledger.verifier_claim(
                    addr, self.owner, self._now(), self._max_attempts
                )
            except self._ledger_errors as exc:
                return self._ledger_down(addr, "claim", exc)
            if attempt is not None:
                return await self._attempt(addr)
            # Another daemon inserted the row between our read and our claim: read it.
            lost_races += 1
            if lost_races > 5:
                return skipped(addr, SkipReason.IN_FLIGHT, "the ledger row keeps changing")

    # ── one attempt ────────────────────────────────────────────────────────────────────────
    async def _attempt(self, addr: str) -> VerifyDecision:
        st = _Attempt()
        try:
            return await self._requests(addr, st)
        except BaseException:
            # Cancelled (shutdown) or a bug: leave the ledger truthful before unwinding.
            if st.in_flight:
                self._billed(st)
            with trio.CancelScope(shield=True), trio.move_on_after(self.settings.cleanup_timeout):
                await self._close_unfinished(addr, st, "interrupted")
            raise

    async def _requests(self, addr: str, st: _Attempt) -> VerifyDecision:
        backoff = self.spec.backoff
        for number in range(1 + backoff.max_retries):
            if number:
                delay = backoff_delay(backoff.strategy, backoff.initial_delay, number - 1)
                hint = st.last_error.retry_after if st.last_error is not None else None
                if hint is not None:
                    if hint > self.settings.max_retry_after:
                        break
                    delay = max(delay, hint)
                await trio.sleep(delay)
                if self._stops.stopped:
                    break
            if not await self._acquire():
                st.blocked = SkipReason.THROTTLED
                st.blocked_detail = "the tool's rate limits gave no call in time"
                break
            month = window_start("per_month", self._now())
            per_call, cap = self.spec.cost.per_call, self.spec.cost.monthly_budget_cap
            try:
                total = await self._ledger.verifier_reserve_spend(
                    self.spec.tool_id, month, per_call, cap
                )
            except self._ledger_errors as exc:
                self._cancel_call()
                log.warning(
                    "verifier_ledger_unavailable", address=addr, operation="reserve spend",
                    error=f"{type(exc).__name__}: {exc}",
                )
                st.blocked = SkipReason.LEDGER
                st.blocked_detail = f"ledger reserve spend failed: {type(exc).__name__}"
                break
            if total is None:
                self._cancel_call()
                self._stops.trip(
                    f"monthly budget cap {cap} of {self.spec.tool_id} reached for "
                    f"{month:%Y-%m} (UTC)",
                    month=month,
                )
                st.blocked = SkipReason.BUDGET
                st.blocked_detail = f"monthly budget cap {cap} reached"
                break
            st.requests += 1
            st.in_flight = True
            try:
                answer = await self._client.verify(addr)
            except VerifierUnavailable as exc:
                st.in_flight = False
                st.last_error = exc
                await self._settle(month, st, billed=exc.may_have_billed, exc=exc)
                if exc.may_have_billed:
                    self._reached(month, total)
                log.warning(
                    "verifier_unavailable", address=addr, kind=exc.kind.value, error=str(exc),
                    request=number + 1, retries_left=backoff.max_retries - number,
                    may_have_billed=exc.may_have_billed,
                )
                continue
            except VerifierRejected as exc:
                st.in_flight = False
                await self._settle(month, st, billed=False, exc=None)
                return await self._rejected(addr, st, exc)
            st.in_flight = False
            self._billed(st)
            self._reached(month, total)
            return await self._verified(addr, st, answer)
        return await self._no_verdict(addr, st)

    def _reached(self, month: dt.datetime, total: Decimal) -> None:
        """After a request that stays on the month (billed or maybe billed): if no further
        request fits under the cap, trip now, so the next check never asks. Requests already
        in flight elsewhere are refused by the guarded spend statement anyway."""
        per_call, cap = self.spec.cost.per_call, self.spec.cost.monthly_budget_cap
        if cap is not None and total + per_call > cap:
            self._stops.trip(
                f"monthly budget cap {cap} of {self.spec.tool_id} reached for "
                f"{month:%Y-%m} (UTC): spent {total}",
                month=month,
            )

    def _billed(self, st: _Attempt) -> None:
        st.billed = True
        st.cost += self.spec.cost.per_call
        self.spent_here += self.spec.cost.per_call

    async def _settle(
        self, month: dt.datetime, st: _Attempt, *, billed: bool, exc: VerifierUnavailable | None
    ) -> None:
        """After a request without a verdict: keep its money if the vendor may have billed it,
        refund it otherwise."""
        if billed:
            self._billed(st)
            return
        if exc is not None and exc.kind is UnavailableKind.CONNECTION:
            self._cancel_call()  # it never reached the vendor: not a call for its limits either
        try:
            await self._ledger.verifier_refund_spend(
                self.spec.tool_id, month, self.spec.cost.per_call
            )
        except self._ledger_errors as err:
            # The month keeps the money: over-counted, never over-spent.
            log.warning(
                "verifier_refund_failed", tool=self.spec.tool_id,
                error=f"{type(err).__name__}: {err}",
            )

    async def _verified(
        self, addr: str, st: _Attempt, answer: VerifierAnswer
    ) -> VerifyDecision:
        at = self._now()
        try:
            await self._ledger.verifier_finish(
                addr, self.owner, status=LedgerStatus.DONE, at=at,
                verdict=answer.verdict.value, result=answer.result,
                credits_after=answer.credits, cost=st.cost,
                detail=(answer.subresult or None),
            )
        except self._ledger_errors as exc:
            # The row stays pending: the attempt counts, the verdict is used for this pass only.
            log.warning(
                "verifier_ledger_unavailable", address=addr, operation="record verdict",
                error=f"{type(exc).__name__}: {exc}",
            )
        log.info(
            "verifier_verdict", address=addr, verdict=answer.verdict.value,
            vendor_result=answer.result, credits_left=answer.credits, requests=st.requests,
        )
        if answer.credits == 0:
            self._stops.trip(f"vendor credits of {self.spec.tool_id} exhausted (0 left)")
        return VerifyDecision(
            addr, DecisionKind.VERIFIED, verdict=answer.verdict, vendor_result=answer.result,
            checked_at=at, requests=st.requests, answer=answer,
            detail=answer.subresult or "",
        )

    async def _rejected(
        self, addr: str, st: _Attempt, exc: VerifierRejected
    ) -> VerifyDecision:
        if exc.exhausted:
            self._stops.trip(f"vendor credits of {self.spec.tool_id} exhausted: {exc}")
            reason = SkipReason.BUDGET
        else:
            self._stops.halt(str(exc))
            reason = SkipReason.HALTED
        await self._close_unfinished(addr, st, str(exc))
        return skipped(addr, reason, str(exc), requests=st.requests)

    async def _no_verdict(self, addr: str, st: _Attempt) -> VerifyDecision:
        if st.last_error is not None:
            detail = str(st.last_error)
        else:
            detail = st.blocked_detail or "no request was made"
        await self._close_unfinished(addr, st, detail)
        if st.requests == 0 and st.blocked is not None:
            return skipped(addr, st.blocked, detail)
        return VerifyDecision(
            addr, DecisionKind.UNAVAILABLE, detail=detail[:DETAIL_MAX], requests=st.requests
        )

    async def _close_unfinished(self, addr: str, st: _Attempt, detail: str) -> None:
        """No verdict: keep the row as the spent attempt if the vendor may have billed a
        request, delete it otherwise (see the module docstring)."""
        try:
            if st.billed:
                await self._ledger.verifier_finish(
                    addr, self.owner, status=LedgerStatus.UNAVAILABLE, at=self._now(),
                    cost=st.cost, detail=detail[:DETAIL_MAX],
                )
            else:
                await self._ledger.verifier_release(addr, self.owner)
        except self._ledger_errors as exc:
            # A pending row stays behind: it counts as an attempt (abandoned_after).
            log.warning(
                "verifier_ledger_unavailable", address=addr,
                operation="record no verdict" if st.billed else "release",
                error=f"{type(exc).__name__}: {exc}",
            )

    # ── throttle ────────────────────────────────────────────────────────
    async def _acquire(self) -> bool:
        if self._limiter is None:
            await trio.lowlevel.checkpoint()
            return True
        with trio.move_on_after(self.settings.acquire_timeout) as scope:
            await self._limiter.acquire()
        if not scope.cancelled_caught:
            return True
        paused = self._stops.paused_until = self._limiter.paused_until
        log.warning(
            "verifier_throttled", tool=self.spec.tool_id, waited=self.settings.acquire_timeout,
            paused_until=paused.isoformat() if paused is not None else None,
        )
        return False

    def _cancel_call(self) -> None:
        if self._limiter is not None:
            self._limiter.cancel_call()

    # ── monitoring ─────────────────────────────────────────────────────────────────────────
    async def month_spend(self) -> SpendRow:
        """This UTC month's calls and money, all daemons together."""
        month = window_start("per_month", self._now())
        return await self._ledger.verifier_spend(self.spec.tool_id, month)

    def statistics(self) -> VerifierStatistics:
        return VerifierStatistics(
            checks=self._counters.checks,
            requests=self._counters.requests,
            decisions=dict(self._counters.decisions),
            skipped=dict(self._counters.skipped),
            verdicts=dict(self._counters.verdicts),
            spent_here=self.spent_here,
            halted=self._stops.halted,
            paused_until=self._stops.paused_until,
            budget_switch=self._stops.budget_tripped,
        )

    async def aclose(self) -> None:
        """Shutdown: close the client's pooled connections."""
        await self._client.aclose()

