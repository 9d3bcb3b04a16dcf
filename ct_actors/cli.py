"""`ct-actors` command line: migrate, run, once, probe, demo, bench, report, canary.

Exit codes: 0 success; 1 the command ran but its checks failed; 2 bad configuration or usage;
3 the database is unavailable; 4 no verdict: `probe`/`once` reached none (DEFERRED: our side's
trouble, such as the resolver not answering; the printed JSON says why), or `run --drain` ended
with work held back (a tripped kill switch, deferred records: see ct_actors.drain_report).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import structlog
import trio
import trio_asyncio

from ct_actors.cli_parser import build_parser
from ct_actors.config import EMBEDDED_URL, Config, ConfigError, load_config
from ct_actors.exit_codes import (
    EXIT_CONFIG,
    EXIT_DATABASE,
    EXIT_DEFERRED,
    EXIT_HELD,
    EXIT_OK,
)
from ct_actors.gc_pace import pace_collector
from ct_actors.log import configure_logging
from ct_actors.redact import redact_text
from ct_actors.toolbox import Toolbox, ToolboxError, load_toolbox

# Commands that work on the operator's database: they use database.url and nothing else.
PRODUCTION_COMMANDS = ("migrate", "run", "once", "report", "canary")
NO_DATABASE = (
    "ct-actors {command}: no database named. Set database.url in the config file (or "
    "CT_DATABASE_URL) to a postgresql:// URL, or to \"embedded\" with database.data_directory "
    "for a single-box installation on the embedded PostgreSQL (docs/operations.md). Only demo, "
    "bench and the tests start a database of their own."
)

DEFAULT_CONFIG = Path("config/ct-actors.toml")

log = structlog.get_logger("ct_actors.cli")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    pace_collector()
    try:
        cfg = _load(args)
        toolbox = load_toolbox(cfg.toolbox.path)
    except (ConfigError, ToolboxError) as exc:
        print(f"ct-actors: configuration error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    configure_logging(cfg.log.format, cfg.log.level, secrets=cfg.secrets())
    try:
        return _with_database(cfg, toolbox, args)
    except KeyboardInterrupt:
        return 130
    except BaseExceptionGroup as group:
        # Ctrl-C inside a trio nursery arrives wrapped, next to what it broke on its way out.
        if group.subgroup(KeyboardInterrupt) is not None:
            return 130
        raise


def _with_database(cfg: Config, toolbox: Toolbox, args: argparse.Namespace) -> int:
    """Name the database (starting the embedded server if that is the choice), then run the
    command. The server is started here, in the main thread and outside trio, and stopped when
    the command returns or is interrupted."""
    from ct_actors.db.choice import PRODUCTION_DATABASE, choose_database, ensure_database
    from ct_actors.db.embedded import EmbeddedPostgresError

    command = args.command
    try:
        if command in ("demo", "bench"):
            with choose_database("demo") as chosen:
                demo_db = dataclasses.replace(cfg.database, url=chosen.url, data_directory=None)
                return _dispatch(dataclasses.replace(cfg, database=demo_db), toolbox, args, chosen)
        if command in PRODUCTION_COMMANDS:
            if not cfg.database.url:
                print(NO_DATABASE.format(command=command), file=sys.stderr)
                return EXIT_CONFIG
            if cfg.database.url == EMBEDDED_URL:
                with choose_database(
                    "production", url=cfg.database.url, data_dir=cfg.database.data_directory
                ) as chosen:
                    url = ensure_database(chosen.url, PRODUCTION_DATABASE)
                    print(f"ct-actors: {chosen.describe(PRODUCTION_DATABASE)}", file=sys.stderr)
                    local = dataclasses.replace(cfg.database, url=url)
                    return _dispatch(dataclasses.replace(cfg, database=local), toolbox, args)
    except EmbeddedPostgresError as exc:
        print(f"ct-actors {command}: embedded PostgreSQL: {exc}", file=sys.stderr)
        return EXIT_DATABASE
    return _dispatch(cfg, toolbox, args)


def _dispatch(
    cfg: Config, toolbox: Toolbox, args: argparse.Namespace, chosen: Any = None
) -> int:
    command = args.command
    if command == "migrate":
        return trio.run(_migrate, cfg)
    if command == "run":
        return trio.run(_run, cfg, toolbox, args)
    if command == "once":
        return trio.run(_once, cfg, toolbox, args.outreach_id)
    if command == "probe":
        return trio.run(_probe, cfg, toolbox, args)
    if command in ("demo", "bench"):
        from ct_actors.demo.harness import run_bench, run_demo

        runner = run_demo if command == "demo" else run_bench
        return trio.run(runner, cfg, toolbox, args, chosen)
    if command == "report":
        return trio.run(_report, cfg, args)
    if command == "canary":
        return trio.run(_canary, cfg, toolbox, args)
    raise AssertionError(command)


def _load(args: argparse.Namespace) -> Config:
    path: Path | None = args.config
    if path is None and os.environ.get("CT_CONFIG"):
        path = Path(os.environ["CT_CONFIG"])
    if path is None and DEFAULT_CONFIG.exists():
        path = DEFAULT_CONFIG
    overrides: dict[str, object] = {}
    if args.log_format:
        overrides["log.format"] = args.log_format
    elif sys.stdout.isatty():
        overrides["log.format"] = "console"
    if args.log_level:
        overrides["log.level"] = args.log_level
    mode = getattr(args, "mode", None)
    if args.command in ("probe", "canary") and mode:
        overrides["probe.mode"] = mode
    if args.command in ("demo", "bench"):
        # The demo builds its own complete configuration on top of this one.
        overrides.setdefault("probe.mode", "mx-only")
    return load_config(path, overrides=overrides, probing=args.command not in ("migrate", "report"))


async def _with_open_database(cfg: Config, body: Any, *, unbounded: bool = False) -> int:
    """`await body(database)` on the configured database (a `ct_actors.db.driver.Database`).
    `unbounded`: no per-statement timeout (migrate: an index build on a big production table
    may take long; lock waits are bounded by the migration's lock_timeout instead)."""
    from ct_actors.db.driver import open_database
    from ct_actors.db.errors import ConfigurationError, DatabaseUnavailable

    async with trio_asyncio.open_loop():
        try:
            database = await open_database(
                cfg.database.url,
                min_size=cfg.database.min_connections,
                max_size=cfg.database.max_connections,
                command_timeout=None if unbounded else cfg.database.command_timeout,
            )
        except DatabaseUnavailable as exc:
            print(
                f"ct-actors: database unavailable: {redact_text(str(exc), cfg.secrets())}",
                file=sys.stderr,
            )
            return EXIT_DATABASE
        try:
            result: int = await body(database)
            return result
        except ConfigurationError as exc:
            # Found against the database (e.g. probe.names_query's columns): still the
            # configuration's fault, so exit 2 like any other configuration error.
            print(
                f"ct-actors: configuration error: {redact_text(str(exc), cfg.secrets())}",
                file=sys.stderr,
            )
            return EXIT_CONFIG
        finally:
            # Half of daemon.stop_timeout, as for the budget refunds: the pool's last step.
            await database.aclose(grace=cfg.daemon.stop_timeout / 2)


async def _migrate(cfg: Config) -> int:
    from ct_actors.db.migrate import migrate

    async def body(database: Any) -> int:
        applied = await database.migrate(migrate)
        log.info("migrated", applied=applied)
        return EXIT_OK

    return await _with_open_database(cfg, body, unbounded=True)


async def _run(cfg: Config, toolbox: Toolbox, args: argparse.Namespace) -> int:
    from ct_actors.app import run_pipeline

    def load() -> tuple[Config, Toolbox]:
        new_cfg = _load(args)
        if new_cfg.database.url == EMBEDDED_URL:
            # The running embedded server's URL stands for "embedded": not a database change.
            new_cfg = dataclasses.replace(
                new_cfg, database=dataclasses.replace(new_cfg.database, url=cfg.database.url)
            )
        return new_cfg, load_toolbox(new_cfg.toolbox.path)

    async def body(database: Any) -> int:
        from ct_actors.db.owner_lock import acquire_owner_lock
        from ct_actors.db.work_queue import WorkQueue

        log.info("daemon_starting", config=cfg.redacted(), toolbox=str(toolbox.source))
        # One live daemon per owner name (OwnerInUse: a configuration error, exit 2).
        lock = await acquire_owner_lock(
            cfg.database.url, cfg.daemon.owner, wait=cfg.daemon.owner_lock_wait
        )
        try:
            # A progress bar only for a human watching a drain; the journal gets stats lines.
            progress = sys.stderr if args.drain and sys.stderr.isatty() else None
            supervisor = await run_pipeline(
                cfg, toolbox, database, drain=args.drain, load=load, progress=progress
            )
            code = EXIT_OK
            if args.drain and supervisor.loader.drained.is_set():
                code = await drain_exit_code(supervisor, WorkQueue(database), cfg.daemon.owner)
        finally:
            await lock.aclose()
        log.info("daemon_stopped")
        return code

    return await _with_open_database(cfg, body)


async def drain_exit_code(supervisor: Any, queue: Any, owner: str) -> int:
    """After `run --drain` drained: 0 if nothing is pending any more, else EXIT_HELD with the
    summary printed on stderr and logged (`drain_held`). `queue`: the work queue."""
    from ct_actors.db.errors import DatabaseUnavailable
    from ct_actors.drain_report import DrainSummary, Switch

    # Only switches that held claiming matter (the verifier's budget switch stops no claim).
    switches = tuple(
        Switch(s.name, s.reason)
        for s in supervisor.switches.tripped()
        if supervisor.loader.drained_while_paused and s.name in supervisor.halting
    )
    try:
        held = await queue.held_back(owner)
    except DatabaseUnavailable as exc:
        print(f"ct-actors: drained, but the pending records could not be counted: {exc}",
              file=sys.stderr)
        # Without the count only a tripped switch proves that work is held back.
        return EXIT_HELD if switches else EXIT_DATABASE
    summary = DrainSummary(held, switches)
    if summary.concluded:
        return EXIT_OK
    log.warning("drain_held", **summary.fields())
    print(summary.describe(), file=sys.stderr)
    return EXIT_HELD


async def _once(cfg: Config, toolbox: Toolbox, outreach_id: uuid.UUID) -> int:
    from ct_actors.once import process_one

    async def body(database: Any) -> int:
        result = await process_one(cfg, toolbox, database, outreach_id)
        print(json.dumps(result, default=str))
        return EXIT_DEFERRED if result.get("outcome") == "DEFERRED" else EXIT_OK

    return await _with_open_database(cfg, body)


async def _probe(cfg: Config, toolbox: Toolbox, args: argparse.Namespace) -> int:
    from ct_actors.app import probe_domain
    from ct_actors.outcome import result_fields
    from ct_actors.probe.input_stage import Unusable, accept

    people: list[tuple[str, str]] = []
    for name in args.name[:3]:
        first, _, last = name.strip().partition("," if "," in name else " ")
        first = first.strip()
        if not first or not last.strip():
            print(f"ct-actors: --name {name!r}: expected 'FIRST LAST' or 'FIRST,LAST'",
                  file=sys.stderr)
            return EXIT_CONFIG
        people.append((first, last.strip()))
    domain = accept(args.domain)
    if isinstance(domain, Unusable):
        print(
            json.dumps(
                {
                    "domain": args.domain,
                    "outcome": "FAIL",
                    "code": "CT-I-NO-DOMAIN",
                    "reason": domain.reason,
                }
            )
        )
        return EXIT_OK
    decided = await probe_domain(cfg, toolbox, domain.domain, people)
    body = {
        "domain": domain.domain,
        "input": args.domain,
        "normalised": list(domain.changes),
        **({"mixed_script_labels": list(domain.mixed_script)} if domain.mixed_script else {}),
        "mode": cfg.probe.mode,
        **result_fields(decided.result),
        "mx_host": decided.mx_host,
        "evidence": decided.result.evidence,
    }
    print(json.dumps(body, default=str, indent=2))
    return EXIT_DEFERRED if body.get("outcome") == "DEFERRED" else EXIT_OK


async def _report(cfg: Config, args: argparse.Namespace) -> int:
    from ct_actors.ops.commands import report_command

    return await report_command(cfg, args)


async def _canary(cfg: Config, toolbox: Toolbox, args: argparse.Namespace) -> int:
    from ct_actors.ops.commands import canary_command

    return await canary_command(cfg, toolbox, args)


if __name__ == "__main__":
    sys.exit(main())
