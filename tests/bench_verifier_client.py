"""CPU per call of MillionVerifierClient against the loopback fake API.

    .venv/bin/python tests/bench_verifier_client.py [calls]

The fake runs in a child process, so the CPU time measured here (time.process_time of this
process) is the client's alone: request building, HTTP exchange, answer parsing. Sequential
calls, one address each; loopback only.
"""

from __future__ import annotations

import subprocess
import sys
import time

import trio

from ct_actors.verify.client import MillionVerifierClient

KEY = "bench-key-0123456789"
SERVER = f"""
import sys, trio
from ct_actors.testing.verifier import FakeMillionVerifier
async def main():
    fake = FakeMillionVerifier(api_key={KEY!r}, credits=10**9)
    async with trio.open_nursery() as n:
        url = await n.start(fake.serve)
        print(url, flush=True)
        await trio.sleep_forever()
trio.run(main)
"""


async def bench(base_url: str, calls: int) -> tuple[float, float]:
    client = MillionVerifierClient(base_url, KEY, timeout=5.0, vendor_timeout=3)
    for i in range(20):  # warm-up (imports, first connection, caches)
        await client.verify(f"warm{i}@acme.com")
    cpu, wall = time.process_time(), time.perf_counter()
    for i in range(calls):
        answer = await client.verify(f"p{i}@acme.com")
        assert answer.result == "ok"
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    close = getattr(client, "aclose", None)
    if close is not None:
        await close()
    return cpu, wall


def main() -> None:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        base_url = server.stdout.readline().strip()
        cpu, wall = trio.run(bench, base_url, calls)
    finally:
        server.terminate()
        server.wait()
    print(
        f"{calls} calls: client CPU {cpu / calls * 1e6:.0f} us/call, "
        f"wall {wall / calls * 1e3:.2f} ms/call"
    )


if __name__ == "__main__":
    main()
