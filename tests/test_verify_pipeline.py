"""The Tier-2 EmailVerifier wired into the pipeline: weak PASSes (mx-only here) are checked once
per address; invalid ends the pass with CT-M-VERIFY-FAIL, valid raises the confidence, and the
verifier's own trouble (the monthly money cap) never fails a record."""

from __future__ import annotations

import dataclasses
import datetime as dt
from decimal import Decimal
from pathlib import Path

import pytest
import trio

from ct_actors.actors.supervisor import Supervisor
from ct_actors.outcome import Failed, FailureCode, Passed
from ct_actors.sim.world import World
from ct_actors.testing import (
    FakeStore,
    MemoryUsageStore,
    MemoryVerifierLedger,
)
from ct_actors.testing.verifier import open_fake_api
from ct_actors.throttle.calendar import UtcClock
from ct_actors.throttle.killswitch import KillSwitches
from ct_actors.throttle.limiter import ToolThrottles
from ct_actors.toolbox import EMAIL_VERIFIER, ToolSpec, load_toolbox
from ct_actors.verify.factory import make_email_verifier
from ct_actors.verify.gate import BUDGET_CAP_REACHED, EmailVerifier
from tests.pipeline_support import SimPipelines, pipeline_settings, spine_for

pytestmark = pytest.mark.timeout(60)
REGISTRY = load_toolbox(Path(__file__).parent.parent / "config" / "SNAP_ON_TOOLBOX.yaml")
NOON = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)


async def run(
    pipelines: SimPipelines,
    world: World,
    store: FakeStore,
    base_url: str,
    api_key: str,
    spec: ToolSpec | None = None,
) -> Supervisor:
    spec = spec or REGISTRY.email_verifier
    clock = UtcClock(NOON, trio.current_time())
    throttles = ToolThrottles(
        {**REGISTRY.tools, EMAIL_VERIFIER: spec}, clock=clock, usage=MemoryUsageStore()
    )
    ledger = MemoryVerifierLedger()

    def verifier(switches: KillSwitches) -> EmailVerifier:
        return make_email_verifier(
            spec,
            api_key=api_key,
            ledger=ledger,
            switches=switches,
            clock=clock,
            owner="test:1",
            limiter=throttles[EMAIL_VERIFIER],
            base_url=base_url,
            timeout=5.0,
        )

    return await pipelines.run(
        world,
        store,
        settings=pipeline_settings("mx-only"),
        max_connections=8,
        throttles=throttles,
        verifier=verifier,
    )


async def test_invalid_fails_valid_raises_and_each_address_is_asked_once(
    sim_pipeline: SimPipelines,
) -> None:
    world = World.generate(3, 12, latency_ms=0, jitter_ms=0)
    mail = sorted(d for d in world.domains if world.domain(d).has_mx)
    bad, good = mail[0], mail[1]
    spine, owner = spine_for(world, copies=2)  # every domain twice: one question per address
    store = FakeStore(spine)
    with trio.fail_after(30):
        async with open_fake_api() as api:
            api.set_result(f"info@{bad}", "invalid", subresult="mailbox_not_found")
            api.set_result(f"info@{good}", "ok")
            assert api.base_url is not None
            await run(sim_pipeline, world, store, api.base_url, api.api_key)
            asked = {r.address for r in api.requests}
            counts = {a: api.count(a) for a in asked}
    assert counts == {f"info@{d}": 1 for d in mail}  # role address: no sample names here
    by_domain = {owner[oid]: o.result for oid, o in store.terminal.items()}
    failed = by_domain[bad]
    assert isinstance(failed, Failed) and failed.code is FailureCode.VERIFY_FAIL
    passed = by_domain[good]
    assert isinstance(passed, Passed) and passed.confidence == Decimal("0.75")
    assert passed.evidence["verifier"]["verdict"] == "valid"


async def run_money_capped(
    pipelines: SimPipelines, world: World, store: FakeStore, cap_calls: int
) -> tuple[Supervisor, int]:
    """The pipeline with the verifier's monthly money cap at `cap_calls` calls' worth and every
    address invalid: the supervisor, and how many calls reached the vendor."""
    mail = sorted(d for d in world.domains if world.domain(d).has_mx)
    spec = REGISTRY.email_verifier
    cost = dataclasses.replace(spec.cost, monthly_budget_cap=spec.cost.per_call * cap_calls)
    async with open_fake_api() as api:
        for d in mail:
            api.set_result(f"info@{d}", "invalid")
        assert api.base_url is not None
        capped = dataclasses.replace(spec, cost=cost)
        supervisor = await run(pipelines, world, store, api.base_url, api.api_key, capped)
        return supervisor, api.count()


async def test_money_cap_stops_calls_and_never_fails_a_record(sim_pipeline: SimPipelines) -> None:
    world = World.generate(4, 20, latency_ms=0, jitter_ms=0)
    mail = sorted(d for d in world.domains if world.domain(d).has_mx)
    spine, owner = spine_for(world)
    store = FakeStore(spine)
    with trio.fail_after(30):
        supervisor, calls = await run_money_capped(sim_pipeline, world, store, cap_calls=3)
    assert calls == 3  # the cap, in money: 3 x estimated_cost_per_call
    assert supervisor.switches.is_tripped(BUDGET_CAP_REACHED)
    results = [store.terminal[oid].result for oid in spine if owner[oid] in mail]
    verify_fails = [r for r in results if isinstance(r, Failed)]
    assert len(verify_fails) == 3  # only the verdicts that were actually obtained
    unverified = [r for r in results if isinstance(r, Passed)]
    assert len(unverified) == len(mail) - 3
    assert all(r.confidence == Decimal("0.70") for r in unverified)
