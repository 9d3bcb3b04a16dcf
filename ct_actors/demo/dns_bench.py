"""Micro-benchmark: MX lookups per second through UdpDnsClient + DnsMxResolver on loopback.

    python -m ct_actors.demo.dns_bench [--lookups 20000] [--concurrency 500] [--separate-process]

By default the responder (FakeDnsServer) runs in this process: "cpu_ms_per_lookup" includes
it, and "client_cpu_ms_per_lookup" subtracts the time it spends decoding queries and encoding
replies (not its socket calls, so the estimate is slightly pessimistic). With --separate-process
the responder runs in a child process and "cpu_ms_per_lookup" is the client side alone: what the
daemon would pay against a real resolver. Wall-clock figures depend on what else the machine is
doing; CPU per lookup is the number to compare.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

import dns.message
import trio

from ct_actors.dns.client import UdpDnsClient
from ct_actors.dns.mx import DnsMxResolver
from ct_actors.dns.types import MxStatus
from ct_actors.log import fields_as_log
from ct_actors.testing.dns import FakeDnsServer, Records

HOST = "127.0.77.1"


def bench_records(domains: int, mx_hosts: int) -> Records:
    """`domains` domains with two MX each, drawn from a pool of `mx_hosts` shared hosts."""
    records: dict[str, list[tuple[str, str]]] = {
        f"mx{j}.bench-mx.example": [("A", f"10.77.{j >> 8}.{j & 255}")] for j in range(mx_hosts)
    }
    for i in range(domains):
        records[f"d{i}.bench.example"] = [
            ("MX", f"10 mx{i % mx_hosts}.bench-mx.example."),
            ("MX", f"20 mx{(i + 1) % mx_hosts}.bench-mx.example."),
        ]
    return records


class _TimedServer(FakeDnsServer):
    """Accounts the CPU spent decoding queries and encoding replies, to separate the
    responder's share from the client's."""

    cpu_seconds = 0.0

    async def handle_udp(self, data: bytes, address: Any) -> None:
        start = time.thread_time()
        try:
            reply = self.udp_reply(dns.message.from_wire(data))
        finally:
            self.cpu_seconds += time.thread_time() - start
        await self.send(reply, address)


async def _run_lookups(port: int, lookups: int, concurrency: int) -> dict[str, float]:
    async with UdpDnsClient([HOST], port=port, max_in_flight=concurrency) as client:
        resolver = DnsMxResolver(client)
        next_index = iter(range(lookups))
        bad: list[str] = []

        async def worker() -> None:
            for i in next_index:
                result = await resolver.lookup(f"d{i}.bench.example")
                if result.status is not MxStatus.FOUND or not result.hosts[0].addresses:
                    bad.append(result.domain)

        wall0, cpu0 = time.perf_counter(), time.process_time()
        async with trio.open_nursery() as nursery:
            for _ in range(concurrency):
                nursery.start_soon(worker)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        stats = client.statistics()
        print(f"  receive buffer: {client.receive_buffer_bytes} bytes")
    if bad:
        raise SystemExit(f"{len(bad)} lookups failed, e.g. {bad[:3]}")
    return {
        "lookups": lookups,
        "seconds": wall,
        "lookups_per_s": lookups / wall,
        "cpu_ms_per_lookup": cpu * 1000 / lookups,
        **{f"client.{k}": v for k, v in fields_as_log(stats).items()},
        **{f"mx.{k}": v for k, v in fields_as_log(resolver.statistics()).items()},
    }


async def _bench_in_process(records: Records, lookups: int, concurrency: int) -> dict[str, float]:
    server = _TimedServer(records, host=HOST)
    async with trio.open_nursery() as nursery:
        port: int = await nursery.start(server.serve)
        result = await _run_lookups(port, lookups, concurrency)
        nursery.cancel_scope.cancel()
    client_ms = result["cpu_ms_per_lookup"] - server.cpu_seconds * 1000 / lookups
    return {**result, "client_cpu_ms_per_lookup": client_ms}


async def _serve_forever(records: Records) -> None:
    server = FakeDnsServer(records, host=HOST)
    async with trio.open_nursery() as nursery:
        port = await nursery.start(server.serve)
        print(port, flush=True)


def _bench_separate_process(
    args: argparse.Namespace, lookups: int, concurrency: int
) -> dict[str, float]:
    child = subprocess.Popen(
        [sys.executable, "-m", "ct_actors.demo.dns_bench", "--serve", *_record_args(args)],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        port = int(child.stdout.readline())
        return trio.run(_run_lookups, port, lookups, concurrency)
    finally:
        child.terminate()
        child.wait()


def _record_args(args: argparse.Namespace) -> list[str]:
    return ["--lookups", str(args.lookups), "--mx-hosts", str(args.mx_hosts)]


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--lookups", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=500)
    parser.add_argument("--mx-hosts", type=int, default=50, help="distinct MX hosts shared")
    parser.add_argument("--separate-process", action="store_true")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    records = bench_records(args.lookups, args.mx_hosts)
    if args.serve:
        trio.run(_serve_forever, records)
        return
    if args.separate_process:
        result = _bench_separate_process(args, args.lookups, args.concurrency)
        where = "responder in a child process (client CPU only)"
    else:
        result = trio.run(_bench_in_process, records, args.lookups, args.concurrency)
        where = "responder in this process (CPU includes it)"
    print(f"{args.lookups} MX lookups, concurrency {args.concurrency}, {where}")
    for key, value in result.items():
        print(f"  {key:>18}: {value:,.3f}" if isinstance(value, float) else f"  {key:>18}: {value}")


if __name__ == "__main__":
    main()
