"""The simulated internet in its own process (`python -m ct_actors.sim serve`), as remote servers
would be: started and waited for until it says it is ready, stopped with its statistics. One
class for the demo, the bench and the end-to-end tests.

Synchronous (a subprocess and reader threads), so that the e2e tests drive it as an operator's
script; trio callers (demo, bench) use `open`/`aclose`, which run the blocking parts in a worker
thread.
"""

from __future__ import annotations

import contextlib
import functools
import json
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import trio

from ct_actors.sim.world import World
from ct_actors.sim.world_file import WorldHeader, read_header

# Random ports (random_ports=True) are drawn below the ephemeral range, so that they never clash
# with the kernel's outgoing ports; a clash with another simulator is retried on other ports.
_PORT_LOW, _PORT_HIGH = 20000, 26000
_DNS_OFFSET = 6000


class LineReader:
    """Drains a pipe in a daemon thread (so the child never blocks on a full pipe) and keeps
    every line for inspection."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self._lines: list[str] = []
        self._cond = threading.Condition()
        self._eof = False
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        try:
            for raw in iter(self._stream.readline, b""):
                with self._cond:
                    self._lines.append(raw.decode("utf-8", "replace").rstrip("\r\n"))
                    self._cond.notify_all()
        finally:
            with self._cond:
                self._eof = True
                self._cond.notify_all()

    @property
    def lines(self) -> list[str]:
        with self._cond:
            return list(self._lines)

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    def wait_for(self, predicate: Callable[[list[str]], bool], timeout: float) -> bool:
        """Wait until `predicate(lines)` holds; False on EOF or timeout."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate(self._lines):
                remaining = deadline - time.monotonic()
                if self._eof or remaining <= 0:
                    return predicate(self._lines)
                self._cond.wait(min(remaining, 0.5))
            return True

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)


def json_events(lines: Sequence[str]) -> list[dict[str, Any]]:
    """The JSON objects among `lines` (log lines); anything else is skipped."""
    out = []
    for line in lines:
        if line.startswith("{"):
            with contextlib.suppress(ValueError):
                out.append(json.loads(line))
    return out


def stop_process(proc: subprocess.Popen[bytes], sig: int, timeout: float) -> int:
    """Send `sig` (if still running) and wait; SIGKILL after `timeout`. Returns the exit code."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(10)


class SimProcess:
    """`python -m ct_actors.sim serve` in its own process. `header` is its world file's header
    (ports, counts); `world` the whole world it serves, read back from the world file on first
    use (a bench of a million domains never loads it: docs/performance.md, "Scale and soak")."""

    def __init__(
        self,
        proc: subprocess.Popen[bytes],
        world_file: Path,
        header: WorldHeader,
        out: LineReader,
        err: LineReader,
        ready: dict[str, Any] | None = None,
    ) -> None:
        self.proc = proc
        self.world_file = world_file
        self.header = header
        self.out = out
        self.err = err
        self.ready = ready or {}  # its `sim_ready` line
        self.stats: dict[str, Any] | None = None
        self._world: World | None = None

    @property
    def world(self) -> World:
        if self._world is None:
            self._world = World.read_file(self.world_file)
        return self._world

    @classmethod
    def start(
        cls,
        world_file: Path,
        *,
        seed: int,
        domains: int,
        latency_ms: float | None = None,
        jitter_ms: float | None = None,
        greylist_delay: float | None = None,
        tarpit_delay: float | None = None,
        mix: str | None = None,
        broken_dns: Sequence[str] = (),
        random_ports: bool = True,
        smtp_port: int | None = None,
        dns_port: int | None = None,
        dns_only: bool = False,
        attempts: int = 6,
        ready_timeout: float = 60.0,
        cwd: Path | None = None,
    ) -> SimProcess:
        """Start it and wait (up to `ready_timeout` seconds) for its `sim_ready` line. An option
        left at None is the simulator's own default.

        `random_ports`: SMTP and DNS on random loopback ports, another pair tried (up to
        `attempts` in all) when a pair is taken, so that several suites or checkouts can run at
        once; False: `smtp_port`/`dns_port`, tried once (None: the simulator's fixed defaults,
        which the demo's documentation names). `dns_only`: no SMTP listener, for MX-only runs.
        `broken_dns`: extra broken resolvers, each `ADDRESS[:PORT]=FAULT`
        as the simulator's `--broken-dns` takes it. Raises RuntimeError, with the simulator's
        stderr, when it does not start."""
        options: list[str] = []
        for flag, value in (
            ("--latency-ms", latency_ms),
            ("--jitter-ms", jitter_ms),
            ("--greylist-delay", greylist_delay),
            ("--tarpit-delay", tarpit_delay),
            ("--mix", mix),
        ):
            if value is not None:
                options += [flag, str(value)]
        for broken in broken_dns:
            options += ["--broken-dns", broken]
        if dns_only:
            options.append("--dns-only")  # an MX-only prober never connects to port 25
        failures: list[str] = []
        for _ in range(attempts if random_ports else 1):
            ports: list[str] = []
            if random_ports:
                smtp_port = random.randrange(_PORT_LOW, _PORT_HIGH)
                dns_port = smtp_port + _DNS_OFFSET
            if smtp_port is not None:
                ports += ["--smtp-port", str(smtp_port)]
            if dns_port is not None:
                ports += ["--dns-port", str(dns_port)]
            command = [
                sys.executable, "-m", "ct_actors.sim", "serve",
                "--seed", str(seed), "--domains", str(domains), "--world-file", str(world_file),
                *ports, *options,
            ]  # fmt: skip
            proc = subprocess.Popen(
                command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd
            )
            out, err = LineReader(proc.stdout), LineReader(proc.stderr)
            if out.wait_for(lambda lines: any('"sim_ready"' in x for x in lines), ready_timeout):
                ready = next(e for e in json_events(out.lines) if e.get("event") == "sim_ready")
                header = read_header(world_file)
                if smtp_port is not None and header.smtp_port != smtp_port:
                    stop_process(proc, signal.SIGKILL, 10)
                    raise RuntimeError(f"{world_file} is not the world the simulator serves")
                return cls(proc, world_file, header, out, err, ready)
            stop_process(proc, signal.SIGKILL, 10)
            err.join(5)
            where = " ".join(ports) or "default ports"
            failures.append(f"{where}: {err.text.strip()[-500:] or 'no output'}")
        raise RuntimeError("the simulated internet did not start: " + "; ".join(failures))

    @classmethod
    async def open(cls, world_file: Path, **options: Any) -> SimProcess:
        """`start` from trio: the wait for readiness runs in a worker thread."""
        return await trio.to_thread.run_sync(functools.partial(cls.start, world_file, **options))

    def stop(self, timeout: float = 30.0) -> dict[str, Any]:
        """SIGTERM (SIGKILL after `timeout`); returns the `stats` of its `sim_stopped` line
        (empty if it had to be killed). Safe to call twice."""
        if self.stats is not None:
            return self.stats
        stop_process(self.proc, signal.SIGTERM, timeout)
        self.out.join(5)
        self.err.join(5)
        for event in json_events(self.out.lines):
            if event.get("event") == "sim_stopped":
                self.stats = dict(event.get("stats", {}))
                break
        else:
            self.stats = {}
        return self.stats

    async def aclose(self) -> dict[str, Any]:
        """`stop` from trio, shielded: the simulator is stopped even when the caller was
        cancelled."""
        with trio.CancelScope(shield=True):
            stats = await trio.to_thread.run_sync(self.stop)
        return stats

    def __enter__(self) -> SimProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

