"""The `report` and `canary` subcommands, called by `ct_actors.cli` (exit codes as there)."""

from __future__ import annotations

import argparse
import sys

import trio_asyncio

from ct_actors.config import Config
from ct_actors.db.errors import (
    ConfigurationError,
    DatabaseUnavailable,
    SchemaError,
    StoreError,
)
from ct_actors.exit_codes import EXIT_CONFIG, EXIT_DATABASE, EXIT_FAILED, EXIT_OK
from ct_actors.ops.canary import (
    CanaryOptions,
    IsolationError,
    NothingToSelect,
    run_canary,
    write_report,
)
from ct_actors.ops.db import OpsDb
from ct_actors.ops.report import ReportOptions, format_report, gather_report, report_json
from ct_actors.ops.selection import OTHER, STRATA
from ct_actors.redact import redact_text
from ct_actors.toolbox import Toolbox


def _fail(cfg: Config, command: str, exc: BaseException) -> int:
    """Print a database problem (password masked) and return its exit code."""
    text = redact_text(str(exc), cfg.secrets())
    if isinstance(exc, DatabaseUnavailable):
        print(f"ct-actors {command}: database unavailable: {text}", file=sys.stderr)
        return EXIT_DATABASE
    if isinstance(exc, SchemaError):
        print(
            f"ct-actors {command}: the schema is not ct-actors' (run `ct-actors migrate`): {text}",
            file=sys.stderr,
        )
        return EXIT_CONFIG
    if isinstance(exc, ConfigurationError | IsolationError):
        print(f"ct-actors {command}: configuration error: {text}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"ct-actors {command}: {text}", file=sys.stderr)
    return EXIT_FAILED


async def report_command(cfg: Config, args: argparse.Namespace) -> int:
    try:
        options = ReportOptions(
            window_hours=args.window_hours,
            distribution_days=args.distribution_days,
            recent=args.recent,
            bucket=args.bucket,
            buckets=args.buckets,
            rate_minutes=args.rate_minutes,
        )
    except ValueError as exc:
        print(f"ct-actors report: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    async with trio_asyncio.open_loop():
        try:
            async with await OpsDb.connect(cfg.database.url) as db:
                report = await gather_report(db, options)
        except StoreError as exc:
            return _fail(cfg, "report", exc)
    print(report_json(report) if args.json else format_report(report))
    return EXIT_OK


async def canary_command(cfg: Config, toolbox: Toolbox, args: argparse.Namespace) -> int:
    try:
        options = CanaryOptions(
            size=args.size, seed=args.seed, output=args.output, timeout=args.timeout
        )
    except ValueError as exc:
        print(f"ct-actors canary: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    async with trio_asyncio.open_loop():
        try:
            run = await run_canary(cfg, toolbox, options)
        except NothingToSelect as exc:
            print(f"ct-actors canary: nothing to do: {exc}", file=sys.stderr)
            return EXIT_FAILED
        except (StoreError, IsolationError) as exc:
            return _fail(cfg, "canary", exc)
    assert run.output is not None
    path = write_report(run, run.output)
    sel = run.selection
    strata = ", ".join(
        f"{s if s != OTHER else 'other'} {sel.actual[s]}/{sel.targets[s]}" for s in STRATA
    )
    good = sum(1 for c in run.checks if c.passed)
    print(
        f"canary: {len(sel.picked)} records ({strata}); PASS {run.count('PASS')}, "
        f"FAIL {run.count('FAIL')}, not processed {len(sel.picked) - run.processed}; "
        f"{run.duration:.1f} s"
    )
    print(
        f"canary: validation {good}/{len(run.checks)} PASS — "
        + ("CANARY VALIDATED" if run.validated else "CANARY FAILED")
    )
    for note in run.notes:
        print(f"canary: note: {note}")
    for check in run.failed_checks:
        print(f"canary: check {check.number} {check.name}: {check.result}")
        for detail in check.details[:5]:
            print(f"canary:   {detail}")
    print(f"canary: report written to {path}")
    return EXIT_OK if run.validated else EXIT_FAILED
