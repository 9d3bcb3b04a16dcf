"""EmailVerifier's gate under MockClock with the in-memory ledger and a scripted client: one
attempt per address across daemons, the verdict cache, the money cap and its kill switch, the
vendor's credits, back-off, the per_second / per_month limits through ToolLimiter, and what
happens to the ledger row when a call never completes."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections import deque
from collections.abc import Iterable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from structlog.testing import capture_logs

from ct_actors.db.errors import DatabaseUnavailable
from ct_actors.testing import MemoryUsageStore, MemoryVerifierLedger
from ct_actors.throttle.calendar import UtcClock
from ct_actors.throttle.killswitch import KillSwitches
from ct_actors.throttle.limiter import ToolLimiter
from ct_actors.toolbox import ToolSpec, load_toolbox
from ct_actors.verify.answer import VendorVerdict, VerifierAnswer
from ct_actors.verify.decision import DecisionKind, SkipReason, normalise_address
from ct_actors.verify.errors import (
    RejectedKind,
    UnavailableKind,
    VerifierRejected,
    VerifierUnavailable,
)
from ct_actors.verify.gate import BUDGET_CAP_REACHED, EmailVerifier, GateSettings
from ct_actors.verify.ledger import LedgerStatus, SpendRow, VerifierEntry
from tests.verify_support import with_spec

pytestmark = pytest.mark.timeout(60)

BOUND = 10_000_000  # virtual seconds: autojump makes waits instant in wall time
SPEC = load_toolbox(Path(__file__).parent.parent / "config" / "SNAP_ON_TOOLBOX.yaml").email_verifier
NOON = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)
NOVEMBER = dt.datetime(2026, 11, 1, tzinfo=dt.UTC)
DECEMBER = dt.datetime(2026, 12, 1, tzinfo=dt.UTC)
PER_CALL = Decimal("0.004")


def ok(address: str, result: str = "ok", credits: int = 5000) -> VerifierAnswer:
    verdicts = {
        "ok": VendorVerdict.VALID,
        "invalid": VendorVerdict.INVALID,
        "unknown": VendorVerdict.UNKNOWN,
        "catch_all": VendorVerdict.CATCH_ALL,
        "disposable": VendorVerdict.DISPOSABLE,
    }
    return VerifierAnswer(address, verdicts[result], result, credits, subresult=result)


def timeout() -> VerifierUnavailable:
    return VerifierUnavailable("no answer", kind=UnavailableKind.TIMEOUT, may_have_billed=True)


def too_many(retry_after: float | None = None) -> VerifierUnavailable:
    return VerifierUnavailable(
        "429", kind=UnavailableKind.RATE_LIMITED, may_have_billed=False, retry_after=retry_after
    )


def refused() -> VerifierUnavailable:
    return VerifierUnavailable(
        "connection refused", kind=UnavailableKind.CONNECTION, may_have_billed=False
    )


@dataclasses.dataclass
class Slow:
    seconds: float
    then: Any


class ScriptedClient:
    """Per-address scripts of answers / results ("ok", "invalid"...) / exceptions / Slow."""

    def __init__(self, default: str = "ok") -> None:
        self.default = default
        self.scripts: dict[str, deque[Any]] = {}
        self.calls: list[tuple[str, float]] = []
        self.closed = False

    def script(self, address: str, *items: Any) -> None:
        self.scripts.setdefault(address, deque()).extend(items)

    def count(self, address: str | None = None) -> int:
        return sum(1 for a, _ in self.calls if address is None or a == address)

    def times(self, address: str) -> list[float]:
        return [t for a, t in self.calls if a == address]

    async def verify(self, address: str) -> VerifierAnswer:
        self.calls.append((address, trio.current_time()))
        queue = self.scripts.get(address)
        item: Any = queue.popleft() if queue else self.default
        while isinstance(item, Slow):
            await trio.sleep(item.seconds)
            item = item.then
        await trio.lowlevel.checkpoint()
        if isinstance(item, BaseException):
            raise item
        if isinstance(item, VerifierAnswer):
            return item
        return ok(address, item)

    async def aclose(self) -> None:
        self.closed = True


def switches() -> KillSwitches:
    return KillSwitches({BUDGET_CAP_REACHED: "halt_and_alert"})


def gate(
    client: ScriptedClient,
    ledger: MemoryVerifierLedger | None = None,
    *,
    spec: ToolSpec = SPEC,
    owner: str = "daemon-1",
    kill: KillSwitches | None = None,
    limiter: ToolLimiter | None = None,
    origin: dt.datetime = NOON,
    settings: GateSettings | None = None,
) -> EmailVerifier:
    return EmailVerifier(
        spec,
        client=client,
        ledger=ledger if ledger is not None else MemoryVerifierLedger(),
        switches=kill if kill is not None else switches(),
        clock=UtcClock(origin, 0.0),
        owner=owner,
        limiter=limiter,
        settings=settings,
    )


def events(logs: Iterable[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [e for e in logs if e["event"] == name]


def test_the_registry_entry_is_what_the_gate_is_built_for() -> None:
    assert SPEC.max_attempts_per_email == 1
    assert SPEC.cost.per_call == PER_CALL and SPEC.cost.monthly_budget_cap == Decimal(50)
    assert (SPEC.backoff.strategy, SPEC.backoff.initial_delay, SPEC.backoff.max_retries) == (
        "linear", 0.5, 2
    )
    assert SPEC.cache_ttl == 90 * 86_400
    assert SPEC.kill_switch is not None and SPEC.kill_switch.trigger == BUDGET_CAP_REACHED
    assert SPEC.api_key_source == "MILLIONVERIFIER_API_KEY"


def test_normalise_address() -> None:
    assert normalise_address("  Ann.Lee@ACME.com ") == "ann.lee@acme.com"
    for bad in ("", "acme.com", "@acme.com", "ann@", "a b@acme.com"):
        with pytest.raises(ValueError):
            normalise_address(bad)


def test_the_kill_switch_must_be_registered() -> None:
    with pytest.raises(ValueError, match="budget_cap_reached"):
        gate(ScriptedClient(), kill=KillSwitches({"resolver_failure": "switch_resolver"}))


async def test_verdict_is_recorded_and_reused(autojump_clock: trio.testing.MockClock) -> None:
    client, ledger = ScriptedClient(), MemoryVerifierLedger()
    client.script("ann.lee@acme.com", "invalid")
    g = gate(client, ledger)
    with trio.fail_after(BOUND):
        first = await g.check("Ann.Lee@acme.com")
        second = await g.check("ann.lee@acme.com")
    assert first.kind is DecisionKind.VERIFIED and first.verdict is VendorVerdict.INVALID
    assert first.requests == 1
    assert second.kind is DecisionKind.CACHED and second.verdict is VendorVerdict.INVALID
    assert client.count() == 1
    row = ledger.entries["ann.lee@acme.com"]
    assert (row.status, row.verdict, row.result, row.cost, row.owner) == (
        LedgerStatus.DONE, "invalid", "invalid", PER_CALL, "daemon-1"
    )
    assert ledger.spend[(SPEC.tool_id, NOVEMBER)] == SpendRow(1, PER_CALL)
    stats = g.statistics()
    assert stats.decisions[DecisionKind.VERIFIED] == 1
    assert stats.decisions[DecisionKind.CACHED] == 1
    assert stats.verdicts[VendorVerdict.INVALID] == 2 and stats.requests == 1
    # The stats line's `verifier` object keeps its flat keys (docs/monitoring.md).
    line = stats.as_log()
    assert line["decision_verified"] == 1 and line["decision_cached"] == 1
    assert line["verdict_invalid"] == 2 and line["requests"] == 1
    assert line["skipped_budget"] == 0 and line["spent_here"] == str(PER_CALL)
    assert line["paused_until"] is None and line["budget_switch"] is False
    await g.aclose()  # shutdown closes the client (its pooled connections)
    assert client.closed


async def test_one_attempt_per_address_across_two_daemons(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """Two daemons (two gates, one ledger) check the same address at the same moment: one
    calls, the other waits for its verdict."""
    client, ledger = ScriptedClient(), MemoryVerifierLedger()
    client.script("ann.lee@acme.com", Slow(3.0, "ok"))
    daemons = [gate(client, ledger, owner="daemon-1"), gate(client, ledger, owner="daemon-2")]
    decisions: list[Any] = []

    async def one(g: EmailVerifier) -> None:
        decisions.append(await g.check("ann.lee@acme.com"))

    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            for g in daemons:
                nursery.start_soon(one, g)
    assert client.count() == 1
    assert sorted(d.kind.value for d in decisions) == ["cached", "verified"]
    assert {d.verdict for d in decisions} == {VendorVerdict.VALID}
    assert ledger.spend[(SPEC.tool_id, NOVEMBER)].calls == 1


async def test_one_attempt_for_concurrent_checks_in_one_daemon(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client = ScriptedClient()
    client.script("info@acme.com", Slow(1.0, "unknown"))
    g = gate(client)
    kinds: list[str] = []

    async def one() -> None:
        kinds.append((await g.check("info@acme.com")).kind.value)

    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            for _ in range(5):
                nursery.start_soon(one)
    assert client.count() == 1
    assert sorted(kinds) == ["cached"] * 4 + ["verified"]


async def test_cache_ttl(autojump_clock: trio.testing.MockClock) -> None:
    client = ScriptedClient()
    g = gate(client)
    with trio.fail_after(BOUND):
        assert (await g.check("ann.lee@acme.com")).kind is DecisionKind.VERIFIED
        await trio.sleep(90 * 86_400 - 1)
        cached = await g.check("ann.lee@acme.com")
        await trio.sleep(1)
        stale = await g.check("ann.lee@acme.com")
    assert cached.kind is DecisionKind.CACHED and cached.verdict is VendorVerdict.VALID
    # Past the TTL the verdict is not trusted any more, and the one attempt is spent.
    assert stale.kind is DecisionKind.SKIPPED and stale.reason is SkipReason.STALE
    assert stale.verdict is None
    assert client.count() == 1


async def test_a_fresh_verdict_answers_even_when_the_budget_is_spent(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, kill = ScriptedClient(), switches()
    g = gate(client, kill=kill)
    with trio.fail_after(BOUND):
        await g.check("ann.lee@acme.com")
        kill.trip(BUDGET_CAP_REACHED, "test", 0.0)
        cached = await g.check("ann.lee@acme.com")
        skipped = await g.check("bob.ray@acme.com")
    assert cached.kind is DecisionKind.CACHED
    assert skipped.kind is DecisionKind.SKIPPED and skipped.reason is SkipReason.BUDGET
    assert client.count() == 1


@pytest.mark.parametrize(("cap", "calls"), [("0.012", 3), ("0.010", 2), ("0.004", 1)])
async def test_money_cap_trips_exactly_at_the_cap(
    autojump_clock: trio.testing.MockClock, cap: str, calls: int
) -> None:
    """spend = calls this month x 0.004: the call that reaches the cap trips the switch, and no
    call is ever made after it; records are skipped, never failed."""
    client, ledger, kill = ScriptedClient(), MemoryVerifierLedger(), switches()
    g = gate(client, ledger, spec=with_spec(SPEC, monthly_budget_cap=Decimal(cap)), kill=kill)
    decisions = []
    with capture_logs() as logs, trio.fail_after(BOUND):
        for i in range(calls + 3):
            decisions.append(await g.check(f"person{i}@acme.com"))
            if i == calls - 1:
                assert kill.is_tripped(BUDGET_CAP_REACHED)  # tripped by the last call itself
    assert client.count() == calls
    assert [d.kind for d in decisions] == (
        [DecisionKind.VERIFIED] * calls + [DecisionKind.SKIPPED] * 3
    )
    assert {d.reason for d in decisions[calls:]} == {SkipReason.BUDGET}
    spend = ledger.spend[(SPEC.tool_id, NOVEMBER)]
    assert spend == SpendRow(calls, PER_CALL * calls)
    assert spend.spent <= Decimal(cap)
    (trip,) = events(logs, "kill_switch_tripped")
    assert trip["switch"] == BUDGET_CAP_REACHED and trip["action"] == "halt_and_alert"
    assert trip["log_level"] == "critical" and trip["tool"] == SPEC.tool_id
    # Skipped addresses left no ledger row: they may be verified next month.
    assert set(ledger.entries) == {f"person{i}@acme.com" for i in range(calls)}


async def test_cap_refusal_when_the_switch_was_cleared(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """SIGHUP clears every switch; the cap is in the shared spend row, so the next check is
    refused by it (no call) and trips the switch again."""
    client, ledger, kill = ScriptedClient(), MemoryVerifierLedger(), switches()
    g = gate(client, ledger, spec=with_spec(SPEC, monthly_budget_cap=PER_CALL), kill=kill)
    with trio.fail_after(BOUND):
        await g.check("a@acme.com")
        assert kill.clear(BUDGET_CAP_REACHED)
        refused_ = await g.check("b@acme.com")
    assert refused_.reason is SkipReason.BUDGET
    assert kill.is_tripped(BUDGET_CAP_REACHED)
    assert client.count() == 1
    assert "b@acme.com" not in ledger.entries
    assert ledger.spend[(SPEC.tool_id, NOVEMBER)] == SpendRow(1, PER_CALL)


async def test_the_cap_is_shared_by_all_daemons(autojump_clock: trio.testing.MockClock) -> None:
    client, ledger = ScriptedClient(), MemoryVerifierLedger()
    spec = with_spec(SPEC, monthly_budget_cap=Decimal("0.02"))  # 5 calls
    daemons = [gate(client, ledger, spec=spec, owner=f"d{i}", kill=switches()) for i in range(3)]

    async def run(g: EmailVerifier, index: int) -> None:
        for j in range(4):
            await g.check(f"p{index}-{j}@acme.com")

    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            for i, g in enumerate(daemons):
                nursery.start_soon(run, g, i)
    assert client.count() == 5
    assert ledger.spend[(SPEC.tool_id, NOVEMBER)] == SpendRow(5, Decimal("0.020"))


async def test_the_cap_switch_clears_itself_next_month(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, ledger, kill = ScriptedClient(), MemoryVerifierLedger(), switches()
    g = gate(client, ledger, spec=with_spec(SPEC, monthly_budget_cap=PER_CALL), kill=kill)
    with capture_logs() as logs, trio.fail_after(BOUND):
        await g.check("a@acme.com")
        assert (await g.check("b@acme.com")).reason is SkipReason.BUDGET
        await trio.sleep(3 * 86_400)  # 2 December
        december = await g.check("b@acme.com")
    assert december.kind is DecisionKind.VERIFIED
    assert client.count() == 2
    assert ledger.spend[(SPEC.tool_id, DECEMBER)] == SpendRow(1, PER_CALL)
    (cleared,) = events(logs, "kill_switch_cleared")
    assert cleared["by"] == "new budget month"
    # December's cap is one call too: that call reached it and tripped the switch again.
    assert kill.is_tripped(BUDGET_CAP_REACHED)
    trips = [e["reason"] for e in events(logs, "kill_switch_tripped")]
    assert len(trips) == 2
    assert "2026-11 (UTC)" in trips[0] and "2026-12 (UTC)" in trips[1]


async def test_vendor_credits_exhausted_trips_the_switch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, ledger, kill = ScriptedClient(), MemoryVerifierLedger(), switches()
    client.script(
        "a@acme.com",
        VerifierRejected("Insufficient credits", kind=RejectedKind.CREDITS_EXHAUSTED),
    )
    g = gate(client, ledger, kill=kill)
    with capture_logs() as logs, trio.fail_after(BOUND):
        first = await g.check("a@acme.com")
        second = await g.check("b@acme.com")
        await trio.sleep(3 * 86_400)  # a new month does not top up the vendor's credits
        third = await g.check("c@acme.com")
    assert first.kind is DecisionKind.SKIPPED and first.reason is SkipReason.BUDGET
    assert first.requests == 1
    assert second.reason is SkipReason.BUDGET and third.reason is SkipReason.BUDGET
    assert client.count() == 1
    assert kill.is_tripped(BUDGET_CAP_REACHED)
    # The refused request was not billed: no attempt recorded, the money given back.
    assert ledger.entries == {}
    assert ledger.spend[(SPEC.tool_id, NOVEMBER)] == SpendRow(0, Decimal(0))
    (trip,) = events(logs, "kill_switch_tripped")
    assert "credits" in trip["reason"] and "top up" in trip["clear"]


async def test_zero_credits_left_after_a_verdict_trips_the_switch(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, kill = ScriptedClient(), switches()
    client.script("a@acme.com", ok("a@acme.com", "ok", credits=0))
    g = gate(client, kill=kill)
    with trio.fail_after(BOUND):
        decision = await g.check("a@acme.com")
        after = await g.check("b@acme.com")
    assert decision.kind is DecisionKind.VERIFIED and decision.verdict is VendorVerdict.VALID
    assert kill.is_tripped(BUDGET_CAP_REACHED)
    assert after.reason is SkipReason.BUDGET
    assert client.count() == 1


async def test_invalid_key_halts_until_resumed(autojump_clock: trio.testing.MockClock) -> None:
    client, ledger = ScriptedClient(), MemoryVerifierLedger()
    client.script("a@acme.com", VerifierRejected("Apikey not found", kind=RejectedKind.INVALID_KEY))
    g = gate(client, ledger)
    with capture_logs() as logs, trio.fail_after(BOUND):
        first = await g.check("a@acme.com")
        second = await g.check("b@acme.com")
        assert g.resume()
        third = await g.check("a@acme.com")
    assert (first.reason, second.reason) == (SkipReason.HALTED, SkipReason.HALTED)
    assert third.kind is DecisionKind.VERIFIED  # no attempt was spent on the refused key
    assert client.count() == 2
    (halt,) = events(logs, "verifier_halted")
    assert halt["log_level"] == "critical"


async def test_linear_backoff_then_verdict(autojump_clock: trio.testing.MockClock) -> None:
    client, ledger = ScriptedClient(), MemoryVerifierLedger()
    client.script("a@acme.com", timeout(), too_many(), "ok")
    g = gate(client, ledger)
    with trio.fail_after(BOUND):
        decision = await g.check("a@acme.com")
    assert decision.kind is DecisionKind.VERIFIED and decision.requests == 3
    assert client.times("a@acme.com") == [0.0, 0.5, 1.5]  # linear: 500 ms, then 1000 ms
    # Billed: the timeout (maybe) and the verdict; the 429 was refunded.
    assert ledger.entries["a@acme.com"].cost == 2 * PER_CALL
    assert ledger.spend[(SPEC.tool_id, NOVEMBER)] == SpendRow(2, 2 * PER_CALL)


async def test_retry_after_is_honoured_within_bounds(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client = ScriptedClient()
    client.script("a@acme.com", too_many(3.0), "ok")
    client.script("b@acme.com", too_many(60.0), "ok")
    g = gate(client)
    with trio.fail_after(BOUND):
        a = await g.check("a@acme.com")
        b = await g.check("b@acme.com")
    assert a.kind is DecisionKind.VERIFIED
    assert client.times("a@acme.com")[1] - client.times("a@acme.com")[0] == 3.0
    # A minute-long Retry-After is not waited for inside a pass.
    assert b.kind is DecisionKind.UNAVAILABLE and client.count("b@acme.com") == 1


async def test_transient_failure_that_may_have_billed_spends_the_attempt(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, ledger = ScriptedClient(), MemoryVerifierLedger()
    client.script("a@acme.com", timeout(), timeout(), timeout())
    g = gate(client, ledger)
    with trio.fail_after(BOUND):
        first = await g.check("a@acme.com")
        later = await g.check("a@acme.com")
    assert first.kind is DecisionKind.UNAVAILABLE and first.verdict is None
    assert first.requests == 3
    row = ledger.entries["a@acme.com"]
    assert row.status is LedgerStatus.UNAVAILABLE and row.cost == 3 * PER_CALL
    assert row.detail == "no answer"
    assert later.kind is DecisionKind.SKIPPED and later.reason is SkipReason.ATTEMPTED
    assert client.count() == 3
    assert ledger.spend[(SPEC.tool_id, NOVEMBER)] == SpendRow(3, 3 * PER_CALL)


async def test_transient_failure_never_billed_releases_the_address(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, ledger = ScriptedClient(), MemoryVerifierLedger()
    client.script("a@acme.com", too_many(), refused(), too_many(), "invalid")
    g = gate(client, ledger)
    with trio.fail_after(BOUND):
        first = await g.check("a@acme.com")
        assert "a@acme.com" not in ledger.entries
        assert ledger.spend[(SPEC.tool_id, NOVEMBER)] == SpendRow(0, Decimal(0))
        later = await g.check("a@acme.com")
    assert first.kind is DecisionKind.UNAVAILABLE and first.requests == 3
    assert later.kind is DecisionKind.VERIFIED and later.verdict is VendorVerdict.INVALID
    assert ledger.spend[(SPEC.tool_id, NOVEMBER)] == SpendRow(1, PER_CALL)


async def test_mixed_failures_keep_only_what_may_have_been_billed(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, ledger = ScriptedClient(), MemoryVerifierLedger()
    client.script("a@acme.com", too_many(), timeout(), too_many())
    g = gate(client, ledger)
    with trio.fail_after(BOUND):
        decision = await g.check("a@acme.com")
    assert decision.kind is DecisionKind.UNAVAILABLE
    assert ledger.entries["a@acme.com"].status is LedgerStatus.UNAVAILABLE
    assert ledger.entries["a@acme.com"].cost == PER_CALL
    assert ledger.spend[(SPEC.tool_id, NOVEMBER)] == SpendRow(1, PER_CALL)


async def test_max_attempts_above_one_reopens_unavailable_rows(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, ledger = ScriptedClient(), MemoryVerifierLedger()
    client.script("a@acme.com", timeout(), timeout(), timeout(), "ok")
    g = gate(client, ledger, spec=dataclasses.replace(SPEC, max_attempts_per_email=2))
    with trio.fail_after(BOUND):
        assert (await g.check("a@acme.com")).kind is DecisionKind.UNAVAILABLE
        second = await g.check("a@acme.com")
    assert second.kind is DecisionKind.VERIFIED
    row = ledger.entries["a@acme.com"]
    assert (row.attempts, row.status, row.cost) == (2, LedgerStatus.DONE, 4 * PER_CALL)


async def test_per_second_limit_through_the_limiter(
    autojump_clock: trio.testing.MockClock,
) -> None:
    clock = UtcClock(NOON, 0.0)
    limiter = ToolLimiter(SPEC, clock=clock, usage=MemoryUsageStore())
    client = ScriptedClient()
    g = gate(client, limiter=limiter)
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            for i in range(120):
                nursery.start_soon(g.check, f"p{i}@acme.com")
                await trio.lowlevel.checkpoint()
    times = sorted(t for _, t in client.calls)
    assert times == [0.0] * 50 + [1.0] * 50 + [2.0] * 20


async def test_per_month_limit_through_the_limiter(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The month's calls spent: the check gives up after acquire_timeout instead of holding the
    record until the 1st, and later checks skip at once; the address keeps no ledger row."""
    limits = tuple(
        dataclasses.replace(r, limit=2) if r.scope == "per_month" else r for r in SPEC.rate_limits
    )
    spec = dataclasses.replace(SPEC, rate_limits=limits)
    usage = MemoryUsageStore()
    limiter = ToolLimiter(spec, clock=UtcClock(NOON, 0.0), usage=usage, budget_block=1)
    client, ledger = ScriptedClient(), MemoryVerifierLedger()
    g = gate(client, ledger, spec=spec, limiter=limiter)
    with capture_logs() as logs, trio.fail_after(BOUND):
        first = [await g.check(f"p{i}@acme.com") for i in range(2)]
        started = trio.current_time()
        third = await g.check("p2@acme.com")
        waited = trio.current_time() - started
        started = trio.current_time()
        fourth = await g.check("p3@acme.com")
        immediate = trio.current_time() - started
        paused = g.statistics()
        await trio.sleep(3 * 86_400)  # December: a fresh month of calls
        december = await g.check("p2@acme.com")
    assert [d.kind for d in first] == [DecisionKind.VERIFIED] * 2
    assert third.kind is DecisionKind.SKIPPED and third.reason is SkipReason.THROTTLED
    assert waited == pytest.approx(5.0)  # GateSettings.acquire_timeout
    assert fourth.reason is SkipReason.THROTTLED and immediate == 0.0
    assert december.kind is DecisionKind.VERIFIED
    assert client.count() == 3
    assert "p3@acme.com" not in ledger.entries
    assert events(logs, "verifier_throttled")[0]["paused_until"] == DECEMBER.isoformat()
    assert paused.paused_until == DECEMBER  # a datetime; text only in the stats line
    assert paused.as_log()["paused_until"] == DECEMBER.isoformat()
    assert g.statistics().paused_until is None  # December: the pause is over
    assert usage.used[(SPEC.tool_id, "per_month", NOVEMBER)] == 2


async def test_ledger_unavailable_means_no_call(autojump_clock: trio.testing.MockClock) -> None:
    client, ledger = ScriptedClient(), MemoryVerifierLedger()
    g = gate(client, ledger)
    with trio.fail_after(BOUND):
        ledger.fail_calls = 1  # the read
        read = await g.check("a@acme.com")
        ledger.fail_calls = 0
        ledger.calls.clear()

        async def fail_claim(*_args: Any) -> int | None:
            raise DatabaseUnavailable("down")

        real_claim = ledger.verifier_claim
        ledger.verifier_claim = fail_claim  # type: ignore[method-assign]
        claim = await g.check("a@acme.com")
        ledger.verifier_claim = real_claim  # type: ignore[method-assign]
        back = await g.check("a@acme.com")
    assert read.reason is SkipReason.LEDGER and claim.reason is SkipReason.LEDGER
    assert back.kind is DecisionKind.VERIFIED
    assert client.count() == 1


async def test_ledger_failure_after_the_call_keeps_the_verdict(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, ledger = ScriptedClient(), MemoryVerifierLedger()
    client.script("a@acme.com", Slow(1.0, "invalid"))
    g = gate(client, ledger)
    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(g.check, "a@acme.com")
            await trio.sleep(0.5)  # the call is out
            ledger.fail_calls = 1  # the verdict write
        later = await g.check("a@acme.com")
    assert client.count() == 1
    # The row stayed pending under our own name: counted as the attempt, never re-sent.
    assert ledger.entries["a@acme.com"].status is LedgerStatus.PENDING
    assert later.reason is SkipReason.ATTEMPTED


async def test_cancelled_mid_call_spends_the_attempt(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, ledger = ScriptedClient(), MemoryVerifierLedger()
    client.script("a@acme.com", Slow(10.0, "ok"))
    g = gate(client, ledger)
    with trio.fail_after(BOUND):
        with trio.move_on_after(2.0):
            await g.check("a@acme.com")
        row = ledger.entries["a@acme.com"]
        assert row.status is LedgerStatus.UNAVAILABLE and row.detail == "interrupted"
        assert row.cost == PER_CALL
        assert (await g.check("a@acme.com")).reason is SkipReason.ATTEMPTED
    assert client.count() == 1


async def test_cancelled_before_the_call_releases_the_address(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, ledger = ScriptedClient(), MemoryVerifierLedger()
    client.script("a@acme.com", refused(), "ok")
    g = gate(client, ledger)
    with trio.fail_after(BOUND):
        with trio.move_on_after(0.2):  # during the 500 ms back-off, nothing in flight
            await g.check("a@acme.com")
        assert "a@acme.com" not in ledger.entries
        assert (await g.check("a@acme.com")).kind is DecisionKind.VERIFIED


async def test_pending_rows_of_dead_or_earlier_owners(
    autojump_clock: trio.testing.MockClock,
) -> None:
    client, ledger = ScriptedClient(), MemoryVerifierLedger()
    g = gate(client, ledger, owner="daemon-1")
    at = NOON - dt.timedelta(seconds=601)
    ledger.entries["old@acme.com"] = VerifierEntry(
        "old@acme.com", "daemon-9", LedgerStatus.PENDING, 1, at
    )
    ledger.entries["mine@acme.com"] = VerifierEntry(
        "mine@acme.com", "daemon-1", LedgerStatus.PENDING, 1, NOON
    )
    ledger.entries["busy@acme.com"] = VerifierEntry(
        "busy@acme.com", "daemon-2", LedgerStatus.PENDING, 1, NOON
    )
    with trio.fail_after(BOUND):
        old = await g.check("old@acme.com")
        mine = await g.check("mine@acme.com")
        started = trio.current_time()
        busy = await g.check("busy@acme.com")
        waited = trio.current_time() - started
    assert old.reason is SkipReason.ATTEMPTED and mine.reason is SkipReason.ATTEMPTED
    assert busy.reason is SkipReason.IN_FLIGHT and waited == pytest.approx(30.0)
    assert client.count() == 0


async def test_waiting_for_a_peer_that_gives_up_then_claiming(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The other daemon's attempt ends without billing (row deleted): the waiter claims."""
    client, ledger = ScriptedClient(), MemoryVerifierLedger()
    ledger.entries["a@acme.com"] = VerifierEntry(
        "a@acme.com", "daemon-2", LedgerStatus.PENDING, 1, NOON
    )
    g = gate(client, ledger)

    async def peer_gives_up() -> None:
        await trio.sleep(2.0)
        assert await ledger.verifier_release("a@acme.com", "daemon-2")

    with trio.fail_after(BOUND):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(peer_gives_up)
            decision = await g.check("a@acme.com")
    assert decision.kind is DecisionKind.VERIFIED
    assert client.times("a@acme.com")[0] == pytest.approx(2.0, abs=0.5)


async def test_a_refunded_last_request_does_not_trip_the_cap(
    autojump_clock: trio.testing.MockClock,
) -> None:
    """The request that would reach the cap was answered 429 (refunded): the month is not full
    yet, so the switch stays clear and the retry takes that last call."""
    client, ledger, kill = ScriptedClient(), MemoryVerifierLedger(), switches()
    client.script("b@acme.com", too_many(), "ok")
    g = gate(client, ledger, spec=with_spec(SPEC, monthly_budget_cap=Decimal("0.008")), kill=kill)
    with trio.fail_after(BOUND):
        await g.check("a@acme.com")
        assert not kill.is_tripped(BUDGET_CAP_REACHED)
        decision = await g.check("b@acme.com")
    assert decision.kind is DecisionKind.VERIFIED and decision.requests == 2
    assert kill.is_tripped(BUDGET_CAP_REACHED)  # by the retry that did reach it
    assert ledger.spend[(SPEC.tool_id, NOVEMBER)] == SpendRow(2, Decimal("0.008"))
    assert client.count() == 3
