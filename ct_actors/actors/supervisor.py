"""The supervisor: builds the pipeline, starts the actors in dependency order, logs the periodic
stats line, and runs the graceful stop.

    loader --Job--> dispatcher --(resolver stage, SMTP pools)--> --Outcome--> writer

Every channel is unbuffered; a record holds a credit from claim to commit. Stopping is
channel-driven: the loader stops claiming and closes its channel; the dispatcher finishes its
domain tasks and closes its channel; the writer flushes and returns; then the resolver stage and
the pools are closed (workers QUIT their SMTP sessions). If that takes longer than the drain
deadline the rest is cancelled, and every record still holding a credit has its lease released
so it is pending again — nothing is half-written.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import structlog
import trio

from ct_actors.actors.credits import WorkCredits
from ct_actors.actors.dispatcher import Dispatcher, Job, NamesSource
from ct_actors.actors.loader import ClaimStore, LoaderActor
from ct_actors.actors.pool_manager import SmtpPoolManager
from ct_actors.actors.resolver_stage import RESOLVER_FAILURE
from ct_actors.actors.settings import PipelineSettings, Reconfigurable, Settings
from ct_actors.actors.smtp_gate import SMTP_SWITCHES
from ct_actors.actors.stages import ProbeStages
from ct_actors.actors.supervisor_statistics import (
    ChannelStatistics,
    InFlightByStage,
    SupervisorStatistics,
)
from ct_actors.actors.writer import OutcomeStore, WriterActor, WriterSettings
from ct_actors.dns.dnsbl import DnsblChecker
from ct_actors.dns.nameservers import QuerySettings
from ct_actors.dns.types import MxResolver
from ct_actors.outcome import Outcome
from ct_actors.throttle.killswitch import KillSwitches
from ct_actors.throttle.limiter import ToolThrottles
from ct_actors.verify.gate import EmailVerifier

log = structlog.get_logger("ct_actors.supervisor")

__all__ = ["PipelineSettings", "PipelineStore", "Supervisor"]


class PipelineStore(ClaimStore, OutcomeStore, Protocol):
    async def release(self, owner: str, ids: Sequence[uuid.UUID]) -> object: ...


class Supervisor:
    def __init__(
        self,
        settings: PipelineSettings,
        *,
        store: PipelineStore,
        resolver: MxResolver,
        pools: SmtpPoolManager,
        transient_db_errors: tuple[type[BaseException], ...],
        names: NamesSource | None = None,
        drain: bool = False,
        throttles: ToolThrottles | None = None,
        verifier: Callable[[KillSwitches], EmailVerifier] | None = None,
        dnsbl: DnsblChecker | None = None,
        local_address: Callable[[], str | None] | None = None,
        dns: Reconfigurable[QuerySettings] | None = None,
    ) -> None:
        self.settings = settings
        # The DNS query client behind `resolver`, when there is one to reconfigure.
        self._dns = dns
        self._store = store
        self._transient = transient_db_errors
        self.throttles = throttles
        self.stages = ProbeStages(
            resolver=resolver,
            resolver_settings=settings.resolver,
            pools=pools,
            guard_settings=settings.guard,
            throttles=throttles,
            verifier=verifier,
            dnsbl=dnsbl,
            local_address=local_address,
        )
        self.switches = self.stages.switches
        self.verifier = self.stages.verifier
        self.resolver = self.stages.resolver
        self.pools = pools
        self.guard = self.stages.guard
        self.gate = self.stages.gate
        self.credits = WorkCredits(settings.max_in_flight)
        job_send, job_recv = trio.open_memory_channel[Job](0)
        out_send, out_recv = trio.open_memory_channel[Outcome](0)
        # Kept for their statistics (the stats line's channel depths).
        self._channels: dict[str, trio.MemorySendChannel[Any]] = {
            "jobs": job_send,
            "outcomes": out_send,
        }
        self.writer = WriterActor(
            out_recv,
            store,
            owner=settings.owner,
            credits=self.credits,
            settings=_writer_settings(settings),
            transient_errors=transient_db_errors,
        )
        self.dispatcher = Dispatcher(
            job_recv, out_send, stages=self.stages, settings=settings.dispatch
        )
        # Claiming stops while a switch that stops the pipeline's work is tripped.
        self.halting = [RESOLVER_FAILURE]
        if settings.dispatch.mode == "smtp":
            self.halting.extend(SMTP_SWITCHES)
        self.loader = LoaderActor(
            job_send,
            store,
            owner=settings.owner,
            credits=self.credits,
            settings=settings.loader,
            transient_errors=transient_db_errors,
            names=names,
            drain=drain,
            pause=lambda: self.switches.wait_clear(self.halting),
            retries_due=self.dispatcher.greylist_waiting,
        )
        self._pipeline: trio.Nursery | None = None
        self._outer: trio.Nursery | None = None
        self._stop_requested = False
        self._stopping = False
        self.finished = trio.Event()
        self.started_at = 0.0
        self._last_stats = (0.0, 0)

    # -- lifecycle -------------------------------------------------------------------------

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self.started_at = trio.current_time()
        self._last_stats = (self.started_at, 0)
        async with trio.open_nursery() as outer:
            self._outer = outer
            outer.start_soon(self._stats_loop)
            try:
                async with trio.open_nursery() as pipeline:
                    self._pipeline = pipeline
                    await pipeline.start(self._run_writer)
                    await self.stages.start(pipeline)
                    await pipeline.start(self.dispatcher.run)
                    await pipeline.start(self.loader.run)
                    log.info(
                        "pipeline_ready",
                        owner=self.settings.owner,
                        max_in_flight=self.settings.max_in_flight,
                        mode=self.settings.dispatch.mode,
                    )
                    task_status.started()
                    if self._stop_requested:
                        self.request_stop()
            finally:
                await self._release_unfinished()
                if self.throttles is not None:
                    await self.throttles.release(self.settings.refund_timeout)
                if self.verifier is not None:
                    await self.verifier.aclose()
                self.log_stats(final=True)
                outer.cancel_scope.cancel()
                self.finished.set()

    async def _run_writer(self, *, task_status: trio.TaskStatus[None]) -> None:
        await self.writer.run(task_status=task_status)
        # The writer returns once every upstream stage has drained: nobody needs the resolver
        # stage or the pools any more.
        self.stages.close()

    @property
    def stop_requested(self) -> bool:
        return self._stop_requested

    def request_stop(self) -> None:
        """Graceful stop: stop claiming, let in-flight records finish up to the drain deadline."""
        self._stop_requested = True
        if self.finished.is_set():
            return  # already stopped (drained): a late signal has nothing to stop
        if self._stopping or self._pipeline is None or self._outer is None:
            return  # not running yet: applied as soon as the pipeline is ready
        self._stopping = True
        log.info(
            "stopping",
            in_flight=self.credits.in_flight,
            drain_deadline=self.settings.drain_deadline,
        )
        self.loader.stop()
        # In the outer nursery, so a pipeline that drains in time is not kept waiting by it.
        self._outer.start_soon(self._enforce_deadline)

    async def _enforce_deadline(self) -> None:
        await trio.sleep(self.settings.drain_deadline)
        log.warning("drain_deadline_reached", unfinished=self.credits.in_flight)
        if self._pipeline is not None:
            self._pipeline.cancel_scope.cancel()

    async def _release_unfinished(self) -> None:
        ids = self.credits.records()
        if not ids:
            return
        with trio.move_on_after(self.settings.release_timeout, shield=True) as scope:
            try:
                await self._store.release(self.settings.owner, ids)
            except self._transient as exc:
                log.error(
                    "lease_release_failed",
                    records=len(ids),
                    error=str(exc),
                    note="leases expire on their own after lease_seconds",
                )
                return
        if scope.cancelled_caught:
            log.error("lease_release_timeout", records=len(ids))
        else:
            log.info("leases_released", records=len(ids))

    # -- reload ----------------------------------------------------------------------------

    def reconfigure(self, settings: Settings) -> None:
        """SIGHUP, the one entry point: every component takes its part of `settings` from its
        next claim, lookup, visit, call or flush; work in flight carries on, and counters and
        per-host state carry over. Synchronous: no other task runs in between."""
        pipeline = settings.pipeline
        self.settings = pipeline
        self.loader.reconfigure(pipeline.loader)
        self.resolver.reconfigure(pipeline.resolver)
        self.dispatcher.reconfigure(pipeline.dispatch)
        self.writer.reconfigure(_writer_settings(pipeline))
        self.guard.reconfigure(pipeline.guard)
        self.pools.reconfigure(settings.pools)
        if self._dns is not None:
            self._dns.reconfigure(settings.dns)
        if self.throttles is not None:
            self.throttles.reconfigure(settings.throttles)
        if self.verifier is not None:
            self.verifier.reconfigure(settings.verifier)

    def clear_kill_switches(self) -> list[str]:
        """The operator says the cause is fixed (SIGHUP): resume, and forget old evidence."""
        cleared = self.switches.clear_all()
        self.resolver.clear()
        self.guard.clear()
        if self.verifier is not None:
            self.verifier.resume()  # a halted verifier (its key, its vendor) resumes too
        if cleared:
            self.pools.revive_hosts()
        for name in cleared:
            log.warning("kill_switch_cleared", switch=name, by="SIGHUP")
        return cleared

    # -- observability ---------------------------------------------------------------------

    def statistics(self) -> SupervisorStatistics:
        now = trio.current_time()
        done = sum(self.writer.outcomes.values())
        elapsed = max(now - self.started_at, 1e-9)
        last_t, last_done = self._last_stats
        interval = max(now - last_t, 1e-9)
        dispatcher = self.dispatcher.statistics()
        writer = self.writer.statistics()
        smtp = self.pools.statistics()
        return SupervisorStatistics(
            records_done=done,
            rate_interval=(done - last_done) / interval,
            rate_total=done / elapsed,
            in_flight=self.credits.in_flight,
            in_flight_by_stage=InFlightByStage(
                domains_probing=dispatcher.domains_in_flight,
                mx_lookups=self.resolver.busy,
                smtp_sessions=smtp.open_sessions,
                writer_buffered=writer.buffered,
            ),
            channels={name: _depth(ch) for name, ch in self._channels.items()},
            outcomes=dict(self.writer.outcomes),
            loader=self.loader.statistics(),
            dispatcher=dispatcher,
            resolver=self.resolver.statistics(),
            smtp=smtp,
            smtp_guard=self.guard.statistics(),
            writer=writer,
            throttles=self.throttles.statistics() if self.throttles is not None else None,
            kill_switches=self.switches.statistics(),
            verifier=self.verifier.statistics() if self.verifier is not None else None,
        )

    def log_stats(self, *, final: bool = False) -> None:
        stats = self.statistics()
        self._last_stats = (trio.current_time(), stats.records_done)
        # The logging edge: the one place the statistics become the line's text.
        log.info("stats_final" if final else "stats", **stats.as_log())

    async def _stats_loop(self) -> None:
        while True:
            await trio.sleep(self.settings.stats_interval)
            if self.throttles is not None:
                # Budget left is the shared count in PostgreSQL (other daemons spend it too);
                # bounded, and skipped when the database does not answer.
                with trio.move_on_after(min(5.0, self.settings.stats_interval / 2)):
                    await self.throttles.refresh(self._transient)
            self.log_stats()


def _writer_settings(settings: PipelineSettings) -> WriterSettings:
    # Another daemon's unlogged outcomes are ours to log once its leases would have lapsed too.
    return dataclasses.replace(settings.writer, recover_after=settings.loader.lease_seconds)


def _depth(channel: trio.MemorySendChannel[Any]) -> ChannelStatistics:
    stats = channel.statistics()
    return ChannelStatistics(
        buffered=stats.current_buffer_used,
        senders_waiting=stats.tasks_waiting_send,
        receivers_waiting=stats.tasks_waiting_receive,
    )
