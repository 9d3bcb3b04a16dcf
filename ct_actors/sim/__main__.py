"""`python -m ct_actors.sim`: serve a simulated world on loopback, or print its ground truth."""

from __future__ import annotations

import argparse
import functools
import ipaddress
import json
import os
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import trio

from ct_actors.gc_pace import pace_collector
from ct_actors.log import as_log
from ct_actors.sim.dns_server import BrokenDns, DnsFault, serve_dns
from ct_actors.sim.server import serve_world
from ct_actors.sim.stats import SimStats
from ct_actors.sim.world import World, ground_truth_row
from ct_actors.sim.world_file import iter_domains
from ct_actors.sim.world_generator import DEFAULT_MIX, NAMED_MIXES
from ct_actors.sim.world_types import Behaviour


def stopped_event(signal_name: str, stats: SimStats) -> dict[str, Any]:
    """The `sim_stopped` line: the logging edge of the sim's statistics."""
    return {"event": "sim_stopped", "signal": signal_name, "stats": as_log(stats.statistics())}


def _emit(event: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(event, separators=(",", ":")) + "\n")
    sys.stdout.flush()


def _parse_mix(text: str) -> dict[Behaviour, float]:
    """A named mix (`NAMED_MIXES`: default, real) or BEHAVIOUR=WEIGHT,..."""
    if text.strip() in NAMED_MIXES:
        return dict(NAMED_MIXES[text.strip()])
    mix: dict[Behaviour, float] = {}
    for item in text.split(","):
        name, sep, weight = item.partition("=")
        try:
            if not sep:
                raise ValueError(item)
            mix[Behaviour(name.strip())] = float(weight)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"bad mix item {item!r}; expected one of {', '.join(NAMED_MIXES)} or "
                "BEHAVIOUR=WEIGHT,... with BEHAVIOUR one of "
                + ", ".join(b.value for b in Behaviour)
            ) from None
    return mix


# What --broken-dns accepts: "none" would not be broken, and a healthy second resolver is a
# different test (run a second simulator).
_BROKEN_FAULTS: tuple[DnsFault, ...] = ("servfail", "silent")


class _BrokenDnsArg(NamedTuple):
    address: str
    port: int | None  # None: the --dns-port, known only once every option is parsed
    fault: DnsFault


def _parse_broken_dns(text: str) -> _BrokenDnsArg:
    """ADDRESS[:PORT]=FAULT, e.g. 127.0.53.54=servfail or 127.0.53.55:5354=silent."""
    where, sep, fault = text.partition("=")
    host, colon, port_text = where.partition(":")
    try:
        if not sep or fault not in _BROKEN_FAULTS:
            raise ValueError(text)
        # The simulator's DNS sockets are IPv4 (127.0.0.0/8 is the simulated internet).
        address = str(ipaddress.IPv4Address(host))
        port = int(port_text) if colon else None
        if port is not None and not 1 <= port <= 65535:
            raise ValueError(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"bad broken DNS listener {text!r}; expected ADDRESS[:PORT]=FAULT with an IPv4 "
            f"ADDRESS, PORT defaulting to --dns-port and FAULT one of {', '.join(_BROKEN_FAULTS)}"
        ) from None
    return _BrokenDnsArg(address, port, fault)


def _resolve_broken_dns(
    items: Sequence[_BrokenDnsArg], dns_address: str, dns_port: int
) -> list[BrokenDns]:
    """Fill in the default port; refuse a listener on the healthy one's or another's socket
    (the bind would fail anyway, with a less helpful message)."""
    taken = {(dns_address, dns_port): "the healthy DNS server"}
    out: list[BrokenDns] = []
    for item in items:
        broken = BrokenDns(item.address, dns_port if item.port is None else item.port, item.fault)
        key = (broken.address, broken.port)
        if key in taken:
            raise ValueError(f"--broken-dns {broken}: {key[0]}:{key[1]} is {taken[key]}'s too")
        taken[key] = f"--broken-dns {broken}"
        out.append(broken)
    return out


async def _serve_dns_only(
    world: World,
    *,
    broken_dns: Sequence[BrokenDns] = (),
    task_status: trio.TaskStatus[SimStats] = trio.TASK_STATUS_IGNORED,
) -> None:
    """`serve_world` without its SMTP listeners, for MX-only runs: a world of a million
    domains then costs a few sockets, not one listener per host."""
    stats = SimStats()
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_dns, world, stats)
        for broken in broken_dns:
            serve_broken = functools.partial(
                serve_dns, world, stats, address=broken.address, port=broken.port
            )
            await nursery.start(functools.partial(serve_broken, fault=broken.fault))
        task_status.started(stats)


async def _serve(
    world: World, world_file: Path, broken_dns: Sequence[BrokenDns] = (), dns_only: bool = False
) -> None:
    # Listen for signals before announcing readiness, so a SIGTERM right after the
    # sim_ready line is never lost.
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        async with trio.open_nursery() as nursery:
            serve = _serve_dns_only if dns_only else serve_world
            stats = await nursery.start(functools.partial(serve, world, broken_dns=broken_dns))
            _emit(
                {
                    "event": "sim_ready",
                    "pid": os.getpid(),
                    "seed": world.seed,
                    "domains": len(world.domains),
                    "hosts": len(world.hosts),
                    "smtp_hosts": 0 if dns_only else len(world.live_hosts()),
                    "smtp_listener": None if dns_only else stats.smtp_listener,
                    "dns": f"{world.dns_address}:{world.dns_port}",
                    "broken_dns": [str(b) for b in broken_dns],
                    "smtp_port": world.smtp_port,
                    "world_file": str(world_file),
                }
            )
            async for signum in signals:
                _emit(stopped_event(signal.Signals(signum).name, stats))
                nursery.cancel_scope.cancel()
                break


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for sub in exc.exceptions for leaf in _leaves(sub)]
    return [exc]


def _cmd_serve(args: argparse.Namespace) -> int:
    world = World.generate(
        args.seed,
        args.domains,
        mix=args.mix,
        latency_ms=args.latency_ms,
        jitter_ms=args.jitter_ms,
        smtp_port=args.smtp_port,
        dns_address=args.dns_address,
        dns_port=args.dns_port,
        greylist_delay=args.greylist_delay,
        tarpit_delay=args.tarpit_delay,
        conn_limit=args.conn_limit,
    )
    world.write_file(args.world_file)
    failed = False
    try:
        trio.run(_serve, world, args.world_file, args.broken_dns, args.dns_only)
    except* OSError as group:
        # Typically a port already in use: say so in one line rather than a traceback.
        errors = [str(exc) for exc in _leaves(group)]
        sys.stderr.write(json.dumps({"event": "sim_error", "errors": errors}) + "\n")
        failed = True
    return 1 if failed else 0


def _cmd_truth(args: argparse.Namespace) -> int:
    for domain in iter_domains(args.world_file):
        row = ground_truth_row(domain, mx_only=args.mx_only)
        sys.stdout.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m ct_actors.sim",
        description="A deterministic simulated internet (authoritative DNS + SMTP servers on "
        "127.0.0.0/8) for tests, demos and benchmarks of the prober.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser(
        "serve",
        help="generate a world, write it to --world-file and serve it until SIGTERM/SIGINT",
        description="Generate a world from --seed, write it to --world-file (JSON lines: a "
        "header, then hosts, then domains), bind DNS "
        "and one SMTP listener per live MX host, print one JSON line "
        '{"event": "sim_ready", ...} when bound, and serve until SIGTERM or SIGINT (then '
        'print {"event": "sim_stopped", "stats": ...}).',
        epilog="example: python -m ct_actors.sim serve --seed 1 --domains 1000 "
        "--world-file /tmp/world.json --smtp-port 2525 --dns-port 5353",
    )
    serve.add_argument("--seed", type=int, required=True, help="world seed (same seed, same world)")
    serve.add_argument("--domains", type=int, required=True, help="number of domains")
    serve.add_argument("--world-file", type=Path, required=True, help="where to write world JSON")
    serve.add_argument(
        "--latency-ms", type=float, default=50.0, help="mean SMTP reply delay (%(default)s)"
    )
    serve.add_argument(
        "--jitter-ms", type=float, default=25.0, help="uniform +/- around the mean (%(default)s)"
    )
    serve.add_argument(
        "--smtp-port", type=int, default=2525, help="SMTP port on every host IP (%(default)s)"
    )
    serve.add_argument(
        "--dns-address", default="127.0.53.53", help="DNS server address (%(default)s)"
    )
    serve.add_argument("--dns-port", type=int, default=5353, help="DNS UDP port (%(default)s)")
    serve.add_argument(
        "--broken-dns",
        type=_parse_broken_dns,
        action="append",
        default=[],
        metavar="ADDRESS[:PORT]=FAULT",
        help="also serve a broken resolver on ADDRESS:PORT (PORT defaults to --dns-port, as "
        "the prober asks all its nameservers on one port); FAULT is servfail (SERVFAIL to "
        "every query) or silent (never answers). Repeatable. E.g. 127.0.53.54=servfail",
    )
    serve.add_argument(
        "--greylist-delay",
        type=float,
        default=2.0,
        help="seconds before a greylisted retry is accepted (%(default)s)",
    )
    serve.add_argument(
        "--tarpit-delay", type=float, default=3.0, help="tarpit banner delay, s (%(default)s)"
    )
    serve.add_argument(
        "--conn-limit",
        type=int,
        default=4,
        help="sessions a conn_limit_421 host allows before 421 (%(default)s)",
    )
    serve.add_argument(
        "--dns-only",
        action="store_true",
        help="serve DNS only, no SMTP listener (what an MX-only prober needs; a world of any "
        "size then costs a few sockets)",
    )
    serve.add_argument(
        "--mix",
        type=_parse_mix,
        default=None,
        metavar="NAME|B=W,...",
        help="behaviour mix: 'default', 'real' (default plus real servers' defences: error "
        "limits, DHA blocker, 421 banner, postgrey 300 s, broken TLS, reply-text zoo) or "
        "weights, e.g. verifiable=0.7,catchall=0.3 (default: "
        + ",".join(f"{b.value}={w}" for b, w in DEFAULT_MIX.items())
        + ")",
    )
    serve.set_defaults(func=_cmd_serve)

    truth = sub.add_parser(
        "truth",
        help="print a world's expected outcomes as JSON lines",
        description="Read a world file written by `serve` and print one JSON object per domain "
        "with the outcome a correct prober must reach.",
    )
    truth.add_argument("--world-file", type=Path, required=True, help="world JSON from `serve`")
    truth.add_argument(
        "--mx-only", action="store_true", help="expectations for MX-only mode (no SMTP)"
    )
    truth.set_defaults(func=_cmd_truth)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    pace_collector()  # the simulator shares the two cores with the prober it serves
    if args.command == "serve":
        try:
            args.broken_dns = _resolve_broken_dns(args.broken_dns, args.dns_address, args.dns_port)
        except ValueError as exc:
            parser.error(str(exc))
    result: int = args.func(args)
    return result


if __name__ == "__main__":
    sys.exit(main())
