"""`ct-actors once OUTREACH_ID`: the single-pass gate for one record, through the same probe
and the same idempotent write as the daemon."""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

import trio

from ct_actors.app import probe_domain
from ct_actors.config import Config
from ct_actors.db.driver import Database
from ct_actors.db.names_query import NamesQuery
from ct_actors.db.usage import UsageBook
from ct_actors.db.work_queue import WorkQueue
from ct_actors.outcome import Failed, FailureCode, Outcome, result_fields
from ct_actors.probe.input_stage import Unusable, accept, input_evidence
from ct_actors.toolbox import Toolbox
from ct_actors.verify.pg_ledger import PgVerifierLedger


async def process_one(
    cfg: Config, toolbox: Toolbox, database: Database, outreach_id: uuid.UUID
) -> dict[str, Any]:
    started = trio.current_time()
    database.set_secrets(cfg.secrets())  # never stored, even when a vendor echoes one back
    store = WorkQueue(database)
    spine = await store.fetch_spine(outreach_id)
    if spine is None:
        failed = Failed(FailureCode.NOT_FOUND, "outreach_id is not in outreach.outreach")
        return await _write(store, cfg, Outcome(outreach_id, None, failed))
    status = await store.terminal_status(outreach_id)
    if status is not None:
        # Idempotent by design: report, write nothing.
        return {
            "outreach_id": str(outreach_id),
            "outcome": "ALREADY-PROCESSED",
            "failure_code": str(FailureCode.ALREADY_PROCESSED),
            "execution_status": status,
            "written": False,
        }
    domain = accept(spine.domain)
    if isinstance(domain, Unusable):
        return await _write(store, cfg, Outcome(outreach_id, None, domain.failed()))
    people: list[tuple[str, str]] = []
    if cfg.probe.names_query:
        names = NamesQuery(database)
        await names.check_names_query(cfg.probe.names_query)
        people = await names.fetch_names(
            cfg.probe.names_query, outreach_id, statement_timeout=cfg.probe.names_timeout
        )
    decided = await probe_domain(
        cfg,
        toolbox,
        domain.domain,
        people,
        usage=UsageBook(database),
        ledger=PgVerifierLedger(database),
    )
    evidence = {**decided.result.evidence, **input_evidence(spine.domain, domain)}
    result = dataclasses.replace(decided.result, evidence=evidence)
    outcome = Outcome(
        outreach_id, domain.domain, result, decided.mx_host, trio.current_time() - started
    )
    return await _write(store, cfg, outcome)


async def _write(store: WorkQueue, cfg: Config, outcome: Outcome) -> dict[str, Any]:
    report = await store.write_outcomes(cfg.daemon.owner, [outcome])
    already = outcome.outreach_id in set(report.already_terminal)
    return {
        "outreach_id": str(outcome.outreach_id),
        "domain": outcome.domain,
        **result_fields(outcome.result),
        "mx_host": outcome.mx_host,
        "written": outcome.terminal and not already,
        "already_terminal": already,
    }
