"""The `ct-actors` command line's grammar: `build_parser` (every command, option and help text)
and its argument types. What the commands do is `ct_actors.cli`."""

from __future__ import annotations

import argparse
import uuid
from pathlib import Path

from ct_actors import __version__


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
    _add_sim_ports(demo)

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
    _add_sim_ports(bench)
    bench.add_argument(
        "--processes",
        type=_positive_int,
        metavar="N",
        help="run N real `ct-actors run --drain` daemon processes (each its own daemon.owner) "
        "against the same database and simulated internet, and report the fleet's records/s "
        "(first start to last exit), per-process records and CPU (default: 1 pipeline in this "
        "process)",
    )
    bench.add_argument(
        "--soak",
        action="store_true",
        help="a long run that shows whether memory stays flat: every --sample-seconds print "
        "the process's current RSS and the records/s since the previous sample; at the end "
        "draw both (a PNG chart beside the daemon log if matplotlib is importable, else text "
        "sparklines) and judge the RSS after warm-up (the first 10%% of the run or its first "
        "60 s, whichever is longer): flat when every later sample is within 10%% of the "
        "lowest. E.g. bench --soak --mode mx-only --domains 1000000 (not with --processes)",
    )
    bench.add_argument(
        "--sample-seconds",
        type=_positive_float,
        default=10.0,
        metavar="S",
        help="seconds between --soak samples (10)",
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


def _port_pair(text: str) -> tuple[int, int]:
    try:
        smtp, dns = (int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SMTP,DNS ports, got {text!r}") from None
    if not (1 <= smtp <= 65535 and 1 <= dns <= 65535):
        raise argparse.ArgumentTypeError(f"ports must be 1-65535, got {text!r}")
    return smtp, dns


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be above 0, got {value}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _add_sim_ports(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--sim-ports",
        type=_port_pair,
        metavar="SMTP,DNS",
        help="the simulated internet's SMTP and DNS ports (default 2525,5353); other ports let "
        "two demos or benches run on one machine at once",
    )
