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

from ct_actors import __version__
from ct_actors.config import EMBEDDED_URL, Config, ConfigError, load_config
from ct_actors.exit_codes import (
    EXIT_CONFIG,
    EXIT_DATABASE,
    EXIT_DEFERRED,
    EXIT_HELD,
    EXIT_OK,
)
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ct-actors",
        description=(
            "Company Target prober daemon: for every outreach_id in outreach.outreach, look up "
            "the domain's MX hosts, probe them over SMTP (EHLO, MAIL FROM, RCPT TO, RSET, QUIT; "
            "never DATA) and write one terminal PASS row (outreach.company_target) or FAIL row "
            "(outreach.company_target_errors)."
        ),
        epilog=(
            "Configuration: TOML file (--config, $CT_CONFIG, else ./config/ct-actors.toml if it "
            "exists), overridden by CT_<SECTION>_<KEY> environment variables such as "
            "CT_DATABASE_URL. See docs/configuration.md. Exit codes: 0 ok, 1 checks failed, "
            "2 bad configuration, 3 database unavailable, 4 `run --drain` ended with records "
            "still pending, held back by a tripped kill switch or deferred (what and why is "
            "printed on stderr; docs/operations.md), or probe/once reached no verdict "
            "(DEFERRED)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"ct-actors {__version__}")
    parser.add_argument("--config", type=Path, help="TOML config file")
    parser.add_argument(
        "--log-format",
        choices=("json", "console"),
        help="override log.format (json lines for production)",
    )
    parser.add_argument(
        "--log-level", choices=("debug", "info", "warning", "error"), help="override log.level"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    sub.add_parser(
        "migrate",
        help="create or upgrade the schema (idempotent, safe to rerun)",
        description="Apply sql/*.sql migrations once each, under an advisory lock.",
    )

    run = sub.add_parser(
        "run",
        help="run the daemon",
        description="Claim pending records and probe them until stopped "
        "(SIGTERM/SIGINT: graceful drain).",
    )
    run.add_argument(
        "--drain",
        action="store_true",
        help="exit once nothing more can be done: 0 when nothing is pending any more; 4 when "
        "records are still pending but held back (a tripped kill switch stops claiming, or they "
        "are deferred for later): the summary on stderr says what and why",
    )

    once = sub.add_parser(
        "once",
        help="process one outreach_id and print its outcome",
        description="Run the single-pass gate for one outreach_id.",
    )
    once.add_argument("outreach_id", type=uuid.UUID, metavar="OUTREACH_ID")

    probe = sub.add_parser(
        "probe",
        help="print the decision for a domain as JSON (no database)",
        description="Normalise DOMAIN, look up its MX hosts and probe them; "
        "prints the decision as JSON and writes nothing.",
    )
    probe.add_argument("domain", metavar="DOMAIN")
    probe.add_argument(
        "--name",
        action="append",
        default=[],
        metavar="'FIRST LAST'",
        help="sample person for pattern candidates (repeat, at most 3); split at the first "
        "space, or write 'FIRST,LAST' when a name has several words ('Mary Ann,Lee')",
    )
    probe.add_argument("--mode", choices=("smtp", "mx-only"), help="override probe.mode")

    demo = sub.add_parser(
        "demo",
        help="simulated end-to-end run with an accuracy summary",
        description="Create a fresh database, generate a simulated internet on "
        "loopback, run the daemon until drained and compare every "
        "outcome with the ground truth.",
    )
    demo.add_argument("--domains", type=int, default=3000, help="simulated domains (3000)")
    demo.add_argument("--seed", type=int, default=7, help="world seed (7)")
    demo.add_argument("--mode", choices=("smtp", "mx-only"), default="smtp")
    demo.add_argument(
        "--database",
        default="ct_actors_demo",
        help="database to (re)create on the configured server (ct_actors_demo)",
    )
    demo.add_argument(
        "--latency-ms", type=float, default=20.0, help="simulated per-command SMTP latency (20)"
    )
    demo.add_argument("--mix", choices=SIM_MIXES, default="default", help=_MIX_HELP)

    bench = sub.add_parser(
        "bench",
        help="throughput benchmark against the simulated internet",
        description="Like demo, with 5,000 domains, 50±25 ms per SMTP command "
        "and permissive throttles; prints records/s, latency "
        "p50/p99, CPU per record, peak RSS, connections/domain.",
    )
    bench.add_argument("--domains", type=int, default=5000)
    bench.add_argument("--seed", type=int, default=11)
    bench.add_argument("--mode", choices=("smtp", "mx-only"), default="smtp")
    bench.add_argument("--database", default="ct_actors_bench")
    bench.add_argument("--json", action="store_true", help="print the result as one JSON object")
    bench.add_argument("--mix", choices=SIM_MIXES, default="default", help=_MIX_HELP)
    bench.add_argument(
        "--processes",
        type=_positive_int,
        metavar="N",
        help="run N real `ct-actors run --drain` daemon processes (each its own daemon.owner) "
        "against the same database and simulated internet, and report the fleet's records/s "
        "(first start to last exit), per-process records and CPU (default: 1 pipeline in this "
        "process)",
    )

    report = sub.add_parser(
        "report",
        help="pass rate, failures, throughput and ETA from the database",
        description="Read the outcome tables and the spine (nothing else; writes nothing): the "
        "runbook's pass rate and failure distribution, the latest failures, outcomes per hour "
        "or minute, the pending count and how long the rest takes at the current rate.",
    )
    report.add_argument("--json", action="store_true", help="print one JSON object")
    report.add_argument(
        "--window-hours", type=float, default=24.0, help="pass-rate window, hours (24)"
    )
    report.add_argument(
        "--distribution-days", type=float, default=7.0, help="failure-distribution window (7)"
    )
    report.add_argument("--recent", type=int, default=20, help="recent failures listed (20)")
    report.add_argument(
        "--bucket", choices=("hour", "minute"), default="hour", help="throughput bucket (hour)"
    )
    report.add_argument("--buckets", type=int, default=24, help="throughput buckets shown (24)")
    report.add_argument(
        "--rate-minutes",
        type=float,
        default=60.0,
        help="the current rate is the outcomes of the last N minutes (60)",
    )

    canary = sub.add_parser(
        "canary",
        help="validate a release on a stratified canary of pending records",
        description="Select --size pending records (.com 40 %%, .io 20 %%, .org 20 %%, other "
        "20 %%), process exactly those through the real pipeline as a restricted database role "
        "that cannot read sovereign_id, run the canary report's 8 validation checks and write "
        "the report as Markdown. Exit 0 only if all 8 checks pass.",
    )
    canary.add_argument("--size", type=int, default=100, help="records to select (100)")
    canary.add_argument(
        "--seed", type=int, help="selection seed (default: random, written in the report)"
    )
    canary.add_argument(
        "--output",
        type=Path,
        metavar="PATH",
        help="Markdown report (default: ./canary-report-<UTC timestamp>.md)",
    )
    canary.add_argument("--mode", choices=("smtp", "mx-only"), help="override probe.mode")
    canary.add_argument(
        "--timeout", type=float, default=3600.0, help="stop the pipeline after N seconds (3600)"
    )
    return parser


# The simulated internet's named mixes (ct_actors.sim.world.NAMED_MIXES; not imported here so
# that the daemon's start-up does not load the simulator).
SIM_MIXES = ("default", "real")
_MIX_HELP = (
    "simulated internet: 'default', or 'real' to add the real servers' defences (error limits, "
    "DHA blocker, 421 banner, postgrey 300 s, broken TLS, reply-text zoo) (default)"
)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
            await database.aclose()


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
