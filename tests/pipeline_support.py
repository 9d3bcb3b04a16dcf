"""The whole actor pipeline on an in-memory simulated world: the set-up the MockClock pipeline
tests share, behind the `sim_pipeline` fixture (tests/conftest.py).

`SimPipelines.open(world, store, ...)` wires a `Supervisor` as the daemon does (resolver, SMTP
pools, store, names query) onto the world's in-memory connector and resolver, starts it, and on
leaving the block waits until it ends (drained, or stopped by the block). `build` is the wiring
alone, for a test that runs the supervisor its own way; `run` is `open` to the end.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from typing import Any

import trio

from ct_actors.actors.dispatcher import DispatchSettings
from ct_actors.actors.loader import LoaderSettings
from ct_actors.actors.pool_manager import SmtpPoolManager
from ct_actors.actors.pool_settings import PoolSettings
from ct_actors.actors.supervisor import PipelineSettings, Supervisor
from ct_actors.actors.writer import WriterSettings
from ct_actors.demo.labels import result_label
from ct_actors.dns.types import MxResolver
from ct_actors.net.connector import Connector
from ct_actors.outcome import Deferred, Failed, Passed
from ct_actors.probe.domain_probe import RetryPolicy
from ct_actors.sim.stats import SimStats
from ct_actors.sim.world import World
from ct_actors.testing import SimResolver, Unavailable, open_sim_connector

# The pools' settings against the simulated internet; a test about pool behaviour passes its own.
SIM_POOL = PoolSettings(
    port=2525,
    helo_name="prober.ct-actors-sim.test",
    mail_from="postmaster@prober.ct-actors-sim.test",
    connect_timeout=5.0,
    command_timeout=10.0,
    starttls="never",
    max_connections_per_host=2,
    session_reuse_seconds=30.0,
    pool_idle_seconds=30.0,
    dead_host_backoff=300.0,
)

Names = Callable[[Sequence[uuid.UUID]], Awaitable[Mapping[uuid.UUID, Any]]]
PoolsFactory = Callable[[Connector], SmtpPoolManager]


def pipeline_settings(mode: str = "smtp", **kw: object) -> PipelineSettings:
    """Small batches, quick greylist retries (the simulator greylists for 2 s), stats lines
    off."""
    return PipelineSettings(
        owner="test:1",
        max_in_flight=64,
        drain_deadline=60.0,
        stats_interval=1000.0,
        loader=LoaderSettings(claim_batch=20, lease_seconds=600.0),
        dispatch=DispatchSettings(
            mode=mode,  # type: ignore[arg-type]
            retry=RetryPolicy(
                greylist_delay=2.5,
                greylist_retries=2,
                throttle_delay=2.0,
                throttle_retries=2,
                defer_seconds=600.0,
            ),
        ),
        writer=WriterSettings(batch_size=50, flush_interval=0.2),
        **kw,  # type: ignore[arg-type]
    )


def spine_for(
    world: World, copies: int = 1
) -> tuple[dict[uuid.UUID, str | None], dict[uuid.UUID, str]]:
    """A spine with `copies` records per domain of `world` (the later copies as messy URLs of
    it), and each record's domain name."""
    spine: dict[uuid.UUID, str | None] = {}
    owner: dict[uuid.UUID, str] = {}
    for i, name in enumerate(sorted(world.domains)):
        for c in range(copies):
            oid = uuid.UUID(int=(i << 8) + c + 1)
            spine[oid] = name if c == 0 else f"https://www.{name.upper()}/about"
            owner[oid] = name
    return spine, owner


def names_for(world: World, owner: Mapping[uuid.UUID, str]) -> Names:
    """The loader's names query: the world's sample people for each record's domain."""

    async def fetch(ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, list[tuple[str, str]]]:
        await trio.lowlevel.checkpoint()
        return {i: world.people(owner[i]) for i in ids}

    return fetch


def label(result: object) -> str:
    """A pipeline result as a label comparable with `expected_label`."""
    assert isinstance(result, Passed | Failed | Deferred)
    return result_label(result)


class SimPipelines:
    """Builds, starts and runs pipelines on in-memory simulated worlds (the `sim_pipeline`
    fixture). Every keyword has the value most of the tests want; a test names what its
    scenario changes."""

    def build(
        self,
        world: World,
        store: Any,
        connector: Connector,
        *,
        settings: PipelineSettings | None = None,
        pool: PoolSettings = SIM_POOL,
        max_connections: int = 32,
        pools: PoolsFactory | None = None,
        resolver: MxResolver | None = None,
        owner: Mapping[uuid.UUID, str] | None = None,
        names: Names | None = None,
        transient_db_errors: tuple[type[BaseException], ...] = (Unavailable,),
        drain: bool = True,
        **supervisor: Any,
    ) -> Supervisor:
        """The supervisor, not started. `owner` (each record's domain) gives the names query
        `names_for(world, owner)` unless `names` is given; with neither there is none. `pools`
        builds the pool manager from the connector (e.g. a subclass that records, or one
        behind a firewall), else `SmtpPoolManager(pool, connector, max_connections)`. The rest
        (`throttles`, `verifier`, ...) go to `Supervisor` as they are."""
        if names is None and owner is not None:
            names = names_for(world, owner)
        return Supervisor(
            settings if settings is not None else pipeline_settings(),
            store=store,
            resolver=resolver if resolver is not None else SimResolver(world),
            pools=(
                pools(connector)
                if pools is not None
                else SmtpPoolManager(pool, connector, max_connections=max_connections)
            ),
            transient_db_errors=transient_db_errors,
            names=names,
            drain=drain,
            **supervisor,
        )

    @asynccontextmanager
    async def open(
        self,
        world: World,
        store: Any,
        *,
        stats: SimStats | None = None,
        connector: Connector | None = None,
        **options: Any,
    ) -> AsyncIterator[Supervisor]:
        """The supervisor (`build(**options)`), started on the world's in-memory connector (or
        `connector`, e.g. one an earlier run used); leaving the block waits until its `run`
        returns: a drain's end, or a stop the block requested."""
        if connector is None:
            async with (
                open_sim_connector(world, stats) as sim,
                self.open(world, store, connector=sim, **options) as supervisor,
            ):
                yield supervisor
            return
        supervisor = self.build(world, store, connector, **options)
        async with trio.open_nursery() as nursery:
            await nursery.start(supervisor.run)
            yield supervisor

    async def run(
        self,
        world: World,
        store: Any,
        *,
        script: Callable[[Supervisor], Awaitable[None]] | None = None,
        **options: Any,
    ) -> Supervisor:
        """`open` to the end: until the drain ends, or, with `script`, until the script has
        run (alongside the pipeline) and the stop it leads to has finished."""
        async with self.open(world, store, **options) as supervisor:
            if script is not None:
                await script(supervisor)
                supervisor.request_stop()
        return supervisor
