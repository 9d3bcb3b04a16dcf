"""`ct-actors canary`: select a stratified canary of pending records, run exactly those through
the real pipeline (`run_pipeline`, the actors of `ct-actors run`), validate the results with the
canary report's eight checks and write the report.

The pipeline gets its work queue as `ScopedQueue`, which restricts the claim (and the drain's
wait for other daemons' leases) to the selected ids with `WorkQueue.claim_among` /
`WorkQueue.pending_elsewhere_among`; everything else (writes, lease renewal and release, names
query, tool budgets) is the daemon's own code. It runs as a restricted database role (see
`ct_actors.ops.isolation`) for check 8, with drain (stop when nothing selected is claimable
and nothing is in flight) and a timeout.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import secrets
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import trio

from ct_actors import __version__
from ct_actors.actors.supervisor_statistics import SupervisorStatistics
from ct_actors.app import run_pipeline
from ct_actors.config import Config
from ct_actors.db import queries as daemon_queries
from ct_actors.db.driver import Database, open_database
from ct_actors.db.errors import StoreError
from ct_actors.db.queue_types import ClaimedRecord
from ct_actors.db.work_queue import WorkQueue
from ct_actors.dns.types import MxResolver
from ct_actors.net.connector import Connector
from ct_actors.ops import queries as oq
from ct_actors.ops.canary_facts import SovereignProof, fetch_facts
from ct_actors.ops.canary_run import CanaryRun
from ct_actors.ops.checks import evaluate
from ct_actors.ops.db import OpsDb
from ct_actors.ops.isolation import (
    IsolationError,
    RestrictedRole,
    create_restricted_role,
    drop_role,
    role_proof,
    scan_statements,
)
from ct_actors.ops.markdown import render_canary_report
from ct_actors.ops.selection import Selection, StratifiedSampler
from ct_actors.redact import redact_url
from ct_actors.toolbox import Toolbox

# Rows fetched per cursor round trip while selecting.
_SELECT_PREFETCH = 5000
# The role may live this long past the timeout (then its password expires on its own).
_ROLE_GRACE = 3600.0


class NothingToSelect(Exception):
    """No claimable pending record: there is nothing to run a canary on."""


@dataclasses.dataclass(frozen=True, slots=True)
class CanaryOptions:
    size: int = 100
    seed: int | None = None  # None: a random seed, written into the report
    output: Path | None = None  # None: canary-report-<UTC timestamp>.md in the working dir
    timeout: float = 3600.0

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError(f"size must be at least 1, got {self.size}")
        if not self.timeout > 0:
            raise ValueError("timeout must be positive")


def default_output(now: dt.datetime, directory: Path | None = None) -> Path:
    stamp = now.astimezone(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    return (directory or Path.cwd()) / f"canary-report-{stamp}.md"


class ScopedQueue(WorkQueue):
    """The work queue as the canary's pipeline sees it: claims, and the drain's wait for other
    daemons' leases, are restricted to the selected records; everything else is the work
    queue's own."""

    def __init__(self, database: Database, ids: Sequence[uuid.UUID]) -> None:
        super().__init__(database)
        self._ids = sorted(set(ids))

    async def claim(self, owner: str, limit: int, lease_seconds: float) -> list[ClaimedRecord]:
        return await self.claim_among(owner, self._ids, limit, lease_seconds)

    async def pending_elsewhere(self, owner: str) -> int:
        return await self.pending_elsewhere_among(owner, self._ids)


async def select(db: OpsDb, size: int, seed: int) -> Selection:
    """Stream the claimable pending records through the sampler (one snapshot)."""
    sampler = StratifiedSampler(size, seed)

    async def body(conn: Any) -> Selection:
        async for row in conn.cursor(oq.CLAIMABLE_PENDING, prefetch=_SELECT_PREFETCH):
            sampler.add(row["outreach_id"], row["domain"])
        return sampler.selection()

    return await db.snapshot("canary selection", body)


def _permission_denied(exc: BaseException) -> str | None:
    """The first insufficient_privilege (42501) in `exc` (exception groups included)."""
    if isinstance(exc, StoreError) and exc.sqlstate == "42501":
        return str(exc)
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _permission_denied(inner)
            if found:
                return found
    cause = exc.__cause__ or exc.__context__
    return _permission_denied(cause) if cause is not None and cause is not exc else None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"


async def run_canary(
    cfg: Config,
    toolbox: Toolbox,
    options: CanaryOptions,
    *,
    resolver: MxResolver | None = None,
    connector: Connector | None = None,
    handle_signals: bool = True,
) -> CanaryRun:
    """The whole canary; must run inside `trio_asyncio.open_loop()`. Raises StoreError
    subclasses for database trouble outside the pipeline, IsolationError when the restricted
    role cannot be set up, NothingToSelect when nothing is pending."""
    seed = options.seed if options.seed is not None else secrets.randbelow(2**31)
    started_at = dt.datetime.now(dt.UTC)
    output = options.output or default_output(started_at)
    owner = f"{cfg.daemon.owner}:canary"
    canary_cfg = dataclasses.replace(cfg, daemon=dataclasses.replace(cfg.daemon, owner=owner))
    static = scan_statements([daemon_queries, oq])

    async with await OpsDb.connect(cfg.database.url, application_name="ct-actors-canary") as db:
        await db.fetchval("schema check", oq.SCHEMA_PROBE)
        selection = await select(db, options.size, seed)
        ids = selection.ids
        if not ids:
            raise NothingToSelect(f"no claimable pending record in {redact_url(cfg.database.url)}")
        role: RestrictedRole = await create_restricted_role(
            db,
            cfg.database.url,
            connections=cfg.database.max_connections + 2,
            valid_for=options.timeout + _ROLE_GRACE,
        )
        notes: list[str] = []
        pipeline_error: str | None = None
        denied: str | None = None
        stats: SupervisorStatistics | None = None
        timed_out = False
        duration = 0.0
        proof_role = None
        role_error: str | None = None
        try:
            run_started = await db.fetchval("clock", oq.CLOCK)
            try:
                database: Database | None = await open_database(
                    role.url,
                    min_size=cfg.database.min_connections,
                    max_size=cfg.database.max_connections,
                    application_name="ct-actors-canary",
                )
            except StoreError as exc:
                database = None
                role_error = f"could not connect as the restricted role: {exc}"
                pipeline_error = role_error
            if database is not None:
                try:
                    t0 = time.perf_counter()
                    with trio.move_on_after(options.timeout) as scope:
                        try:
                            supervisor = await run_pipeline(
                                canary_cfg,
                                toolbox,
                                database,
                                queue=ScopedQueue(database, ids),
                                drain=True,
                                resolver=resolver,
                                connector=connector,
                                handle_signals=handle_signals,
                            )
                            stats = supervisor.statistics()
                        except Exception as exc:
                            pipeline_error = _describe(exc)
                            denied = _permission_denied(exc)
                    timed_out = scope.cancelled_caught
                    duration = time.perf_counter() - t0
                    # While the pool is still open: the role's sessions are visible.
                    proof_role = await role_proof(db, role)
                finally:
                    await database.aclose()
            run_finished = await db.fetchval("clock", oq.CLOCK)
        finally:
            with trio.CancelScope(shield=True):
                try:
                    await drop_role(db, role.name)
                except StoreError as exc:
                    notes.append(
                        f"The restricted role {role.name} could not be dropped ({exc}); its "
                        "password expires on its own (VALID UNTIL). Remove it with DROP OWNED "
                        f"BY {role.name}; DROP ROLE {role.name};"
                    )
        proof = SovereignProof(static, proof_role, role_error, denied)
        facts = await fetch_facts(db, ids, run_started, run_finished)
        pending_after = int(await db.fetchval("pending count", oq.PENDING_COUNT))

    checks = evaluate(ids, facts, cfg.probe.mode, proof)
    if timed_out:
        notes.append(f"The canary stopped at its timeout ({options.timeout:g} s).")
    processed = sum(1 for i in ids if facts.outcome(i) in ("PASS", "FAIL"))
    if stats is not None:
        ours = sum(n for k, n in stats.outcomes.items() if k != "DEFERRED")
        if ours < processed:
            notes.append(
                f"{processed - ours} of the {processed} outcomes were written by another "
                "daemon on this database, not by the canary's pipeline (and so not under its "
                "restricted role): run the canary while no other daemon is running."
            )
    run = CanaryRun(
        started_at=started_at,
        version=__version__,
        database=redact_url(cfg.database.url),
        mode=cfg.probe.mode,
        owner=owner,
        selection=selection,
        facts=facts,
        checks=checks,
        proof=proof,
        duration=duration,
        pending_after=pending_after,
        claim_batch=cfg.probe.claim_batch,
        max_in_flight=cfg.probe.max_in_flight,
        timeout=options.timeout,
        timed_out=timed_out,
        pipeline=stats,
        pipeline_error=pipeline_error,
        output=output,
        notes=tuple(notes),
    )
    return run


def write_report(run: CanaryRun, path: Path) -> Path:
    text = render_canary_report(dataclasses.replace(run, output=path))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path


__all__ = [
    "CanaryOptions",
    "IsolationError",
    "NothingToSelect",
    "ScopedQueue",
    "default_output",
    "run_canary",
    "select",
    "write_report",
]
