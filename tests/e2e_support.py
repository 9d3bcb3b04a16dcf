"""Helpers for the end-to-end and CLI tests: the simulated internet and the daemon as real
processes on real loopback sockets, a seeded spine in a real PostgreSQL database, and the
comparison of what the daemon wrote with the world's ground truth. The simulator's process
class (`SimProcess`, with `LineReader` and `json_events`) is the package's, shared with the demo.

Everything here is synchronous (subprocesses, reader threads, `asyncio.run` for the database),
so the tests read as a script of what an operator would do. The fixtures are in `e2e_fixtures`
(registered by tests/conftest.py); importing a plugin module from a test
module defeats pytest's assertion rewriting, hence the split, as with dbfixtures/conftest_db.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import asyncpg

from ct_actors.demo.labels import PENDING, expected_label, fail_label, pass_label
from ct_actors.demo.spine import NAMES_QUERY, SpineRow, write_spine
from ct_actors.sim.process import LineReader, SimProcess, json_events
from ct_actors.sim.world import SIM_NETWORK, World

REPO = Path(__file__).resolve().parents[1]
TOOLBOX = REPO / "config" / "SNAP_ON_TOOLBOX.yaml"
HELO_NAME = "prober.ct-actors-sim.test"
MAIL_FROM = "postmaster@prober.ct-actors-sim.test"
# The operations runbook ships outside this repository; its queries are copied in the tests and
# compared with it when it is there.


# ─── processes ──────────────────────────────────────────────────────────────────────────────


def free_port(kind: socket.SocketKind = socket.SOCK_STREAM) -> int:
    """A port free on every address right now (the simulator's listener is a wildcard)."""
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


def _is_outcome(line: str) -> bool:
    """A canonical line of an outcome this process committed (not a `recovered` one, logged on
    start for an outcome a killed process committed without its line)."""
    return ('"event":"outcome"' in line or '"event": "outcome"' in line) and (
        '"recovered":true' not in line and '"recovered": true' not in line
    )


def drain_exit_code(expected: Iterable[str]) -> int:
    """What `run --drain` exits with for a world whose ground truth is `expected` (labels):
    4 (held back) when some record's truth is to stay pending (deferred), else 0."""
    return 4 if "PENDING" in set(expected) else 0


# The simulator's defaults, made short where a test waits for them in real time.
SIM_TEST_OPTIONS: dict[str, Any] = {
    "latency_ms": 5.0,
    "jitter_ms": 2.0,
    "greylist_delay": 1.0,
    "tarpit_delay": 1.0,
}


def start_sim_process(workdir: Path, *, seed: int, domains: int, **options: Any) -> SimProcess:
    """A SimProcess on random ports (retried on a clash), its world file in `workdir`, with the
    tests' short delays unless `options` (SimProcess.start's) say otherwise."""
    return SimProcess.start(
        workdir / f"world-{seed}-{domains}.json",
        seed=seed,
        domains=domains,
        cwd=REPO,
        **{**SIM_TEST_OPTIONS, **options},
    )


class DaemonProcess:
    """`python -m ct_actors --config CONFIG ARGS...` with its JSON log lines collected."""

    def __init__(self, config: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ct_actors", "--config", str(config), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=REPO,
            env={**os.environ, **(env or {})},
        )
        self.out = LineReader(self.proc.stdout)
        self.err = LineReader(self.proc.stderr)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        events = json_events(self.out.lines)
        return events if name is None else [e for e in events if e.get("event") == name]

    def outcomes(self) -> list[dict[str, Any]]:
        """The `outcome` lines of what this process committed."""
        return [e for e in self.events("outcome") if not e.get("recovered")]

    def recovered(self) -> list[dict[str, Any]]:
        """`outcome` lines logged on start for outcomes an earlier (killed) process committed."""
        return [e for e in self.events("outcome") if e.get("recovered")]

    def wait_for_outcomes(self, count: int, timeout: float) -> bool:
        """Wait until `count` canonical `outcome` lines have been logged."""
        return self.out.wait_for(lambda lines: sum(map(_is_outcome, lines)) >= count, timeout)

    def wait(self, timeout: float) -> int:
        """Wait for a normal exit; on timeout kill it and fail with its output."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(
                f"ct-actors {' '.join(self.args)} did not exit within {timeout} s\n"
                + self.diagnostics()
            ) from None
        self.out.join(5)
        self.err.join(5)
        return rc

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(sig)

    def diagnostics(self, tail: int = 30) -> str:
        return (
            "--- stdout (tail) ---\n"
            + "\n".join(self.out.lines[-tail:])
            + "\n--- stderr (tail) ---\n"
            + "\n".join(self.err.lines[-tail:])
        )

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def __enter__(self) -> DaemonProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.kill()


def ct_actors_cli(
    *args: str,
    timeout: float = 60.0,
    env: dict[str, str] | None = None,
    module: bool = False,
) -> subprocess.CompletedProcess[str]:
    """Run the `ct-actors` console script (or `python -m ct_actors` with module=True)."""
    if module:
        command = [sys.executable, "-m", "ct_actors", *args]
    else:
        script = Path(sys.executable).with_name("ct-actors")
        assert script.exists(), f"console script not installed next to {sys.executable}"
        command = [str(script), *args]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=REPO,
        env={**os.environ, **(env or {})},
        check=False,
    )


# ─── configuration ──────────────────────────────────────────────────────────────────────────


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path):
        return json.dumps(str(value))  # a TOML basic string for everything we write
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def toml_text(sections: dict[str, dict[str, Any]]) -> str:
    return "".join(
        f"[{name}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in keys.items()) + "\n"
        for name, keys in sections.items()
    )


def daemon_sections(
    db_url: str,
    world: World,
    *,
    mode: str = "smtp",
    lease_seconds: int = 300,
    owner: str | None = None,
    **overrides: dict[str, Any],
) -> dict[str, dict[str, Any]]:
    """A complete daemon configuration against `world` (served by a SimProcess)."""
    sections: dict[str, dict[str, Any]] = {
        "database": {"url": db_url, "lease_seconds": lease_seconds},
        "dns": {
            "nameservers": [world.dns_address],
            "port": world.dns_port,
            "timeout": 2.0,
            "attempts": 2,
        },
        "smtp": {
            "port": world.smtp_port,
            "helo_name": HELO_NAME,
            "mail_from": MAIL_FROM,
            "starttls": "never",
            "connect_timeout": 5.0,
            "command_timeout": 5.0,
            "quit_timeout": 2.0,
            "max_connections": 64,
            "max_connections_per_host": 2,
            "greylist_retry_delay": world.greylist_delay + 0.5,
            "greylist_max_retries": 2,
            # The default world has no directory-harvest blockers and a few hot shared hosts:
            # lifted like the demo does (test_actors_probe covers the budget's pacing).
            "max_rejected_rcpts_per_host": 1_000_000,
            "dead_host_backoff": 60.0,
            # The simulated internet lives on loopback, which production refuses.
            "allow_networks": [SIM_NETWORK],
        },
        "probe": {"mode": mode, "names_query": NAMES_QUERY, "claim_batch": 100},
        "writer": {"batch_size": 100, "flush_interval": 0.1},
        "toolbox": {"path": TOOLBOX},
        "log": {"format": "json", "level": "info", "stats_interval": 5.0},
        "daemon": {"drain_deadline": 15.0},
    }
    if owner is not None:
        sections["daemon"]["owner"] = owner
    for name, keys in overrides.items():
        sections.setdefault(name, {}).update(keys)
    return sections


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> Path:
    path.write_text(toml_text(sections), encoding="utf-8")
    return path


# ─── database ───────────────────────────────────────────────────────────────────────────────


def db_run(url: str, fn: Callable[[Any], Any]) -> Any:
    """Run `await fn(conn)` on a fresh asyncpg connection to `url` (outside trio)."""

    async def run() -> Any:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            return await fn(conn)
        finally:
            await conn.close()

    return asyncio.run(run())


def db_fetch(url: str, sql: str, *args: Any) -> list[dict[str, Any]]:
    async def fetch(conn: Any) -> list[dict[str, Any]]:
        return [dict(r) for r in await conn.fetch(sql, *args)]

    result: list[dict[str, Any]] = db_run(url, fetch)
    return result


def db_val(url: str, sql: str, *args: Any) -> Any:
    async def fetchval(conn: Any) -> Any:
        return await conn.fetchval(sql, *args)

    return db_run(url, fetchval)


def seed_spine(url: str, world: World, rows: Sequence[SpineRow]) -> None:
    """Write the spine (`outreach.outreach`) and the demo's people table, as upstream would."""
    db_run(url, lambda conn: write_spine(conn, world, rows))


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Everything the daemon wrote, keyed by outreach_id."""

    targets: dict[uuid.UUID, dict[str, Any]]  # outreach.company_target
    errors: dict[uuid.UUID, list[dict[str, Any]]]  # outreach.company_target_errors
    leases: dict[uuid.UUID, dict[str, Any]]  # ct_actors.lease, with live/deferred flags

    def label(self, outreach_id: uuid.UUID) -> str:
        """The record's outcome as a label comparable with `expected_label`."""
        ct = self.targets.get(outreach_id)
        errors = self.errors.get(outreach_id, [])
        if ct is not None and ct["execution_status"] == "ready":
            return pass_label(ct["method_type"], ct["confidence_score"], ct["is_catchall"])
        if errors:
            return fail_label(errors[0]["failure_code"])
        return PENDING


def snapshot(url: str) -> Snapshot:
    targets = db_fetch(
        url,
        """SELECT outreach_id, email_method, method_type, confidence_score, execution_status,
                  imo_completed_at, is_catchall, domain_normalised, mx_host,
                  evidence::text AS evidence
             FROM outreach.company_target""",
    )
    errors = db_fetch(
        url,
        """SELECT error_id, outreach_id, pipeline_stage, failure_code, blocking_reason, severity,
                  imo_stage, retry_allowed, created_at, resolved_at, evidence::text AS evidence
             FROM outreach.company_target_errors ORDER BY error_id""",
    )
    leases = db_fetch(
        url,
        """SELECT outreach_id, owner, expires_at, attempts, not_before, last_reason,
                  expires_at > now() AS live,
                  coalesce(not_before > now(), false) AS deferred
             FROM ct_actors.lease""",
    )
    by_error: dict[uuid.UUID, list[dict[str, Any]]] = {}
    for row in errors:
        row["evidence"] = json.loads(row["evidence"]) if row["evidence"] else None
        by_error.setdefault(row["outreach_id"], []).append(row)
    for row in targets:
        row["evidence"] = json.loads(row["evidence"]) if row["evidence"] else None
    return Snapshot(
        targets={r["outreach_id"]: r for r in targets},
        errors=by_error,
        leases={r["outreach_id"]: r for r in leases},
    )


# ─── ground truth ───────────────────────────────────────────────────────────────────────────


def mismatches(
    world: World, rows: Sequence[SpineRow], snap: Snapshot, mode: str = "smtp"
) -> list[dict[str, str]]:
    out = []
    for row in rows:
        want, got = expected_label(world, row, mode), snap.label(row.outreach_id)
        if want != got:
            behaviour = str(world.domain(row.domain).behaviour) if row.domain else "unusable"
            out.append(
                {
                    "outreach_id": str(row.outreach_id),
                    "raw_domain": repr(row.raw_domain),
                    "behaviour": behaviour,
                    "expected": want,
                    "got": got,
                }
            )
    return out


# ─── database outages ───────────────────────────────────────────────────────────────────────


def database_name(url: str) -> str:
    """The database a PostgreSQL URL names."""
    return urlsplit(url).path.lstrip("/")


def url_with_database(url: str, name: str) -> str:
    """`url` with its database replaced (e.g. `postgres`, to administer the one `url` names)."""
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, parts.fragment))


def url_via(url: str, host: str, port: int) -> str:
    """`url` pointing at host:port instead (e.g. a `TcpProxy`), user and everything else kept."""
    parts = urlsplit(url)
    user = parts.netloc.rpartition("@")[0]
    netloc = f"{user}@{host}:{port}" if user else f"{host}:{port}"
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def lock_out_database(url: str) -> int:
    """An outage of the database `url` names, on a server other suites share: refuse new
    connections (`ALLOW_CONNECTIONS false`) and terminate the existing ones. Run from the
    server's `postgres` database. Returns how many backends were terminated. Undo it with
    `let_in_database`, always (a `finally`)."""
    name = database_name(url)

    async def cut(conn: Any) -> int:
        await conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
        terminated = await conn.fetchval(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = $1 AND pid <> pg_backend_pid()",
            name,
        )
        return int(terminated or 0)

    result: int = db_run(url_with_database(url, "postgres"), cut)
    return result


def let_in_database(url: str) -> None:
    """Undo `lock_out_database` (idempotent)."""
    name = database_name(url)

    async def restore(conn: Any) -> None:
        await conn.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')

    db_run(url_with_database(url, "postgres"), restore)


class TcpProxy:
    """A loopback TCP forwarder in front of a server (PostgreSQL), so that a test can take the
    link down and bring it back without touching a server other suites share.

    `cut()`: every established connection is reset and new ones are accepted and reset at once
    (a crashed database, or a host that refuses: the client sees ECONNRESET at once).
    `cut(blackhole=True)`: nothing is answered any more, established connections and new ones
    stay open and silent (a partition, a host powered off: the client sees only its own
    timeouts). `restore()`: connections are forwarded again (after a blackhole, the silenced
    ones are reset first, as a real partition's would be once it heals). The listening port
    never changes. Threads only, so it works next to synchronous test code; `close()` (or
    `with`) tears it down.
    """

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self._upstream = (upstream_host, upstream_port)
        self._lock = threading.Lock()
        self._pairs: set[tuple[socket.socket, ...]] = set()
        self._state = "up"  # "up" | "reset" | "blackhole"
        self._closed = False
        self.accepted = 0  # connections forwarded
        self.refused = 0  # connections reset or silenced while down
        self.reset = 0  # established connections reset or silenced by a cut
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self._listener.settimeout(0.1)
        self.host, self.port = "127.0.0.1", self._listener.getsockname()[1]
        self._thread = threading.Thread(target=self._accept_loop, daemon=True)
        self._thread.start()

    @classmethod
    def for_url(cls, url: str) -> TcpProxy:
        parts = urlsplit(url)
        return cls(parts.hostname or "127.0.0.1", parts.port or 5432)

    def url(self, url: str) -> str:
        """`url` through this proxy."""
        return url_via(url, self.host, self.port)

    @property
    def up(self) -> bool:
        return self._state == "up"

    def cut(self, *, blackhole: bool = False) -> None:
        with self._lock:
            self._state = "blackhole" if blackhole else "reset"
            self.reset += len(self._pairs)
            if blackhole:
                return  # the pumps see the state and drop everything from now on
            pairs, self._pairs = self._pairs, set()
        _reset_all(pairs)

    def restore(self) -> None:
        with self._lock:
            was, self._state = self._state, "up"
            pairs = set()
            if was == "blackhole":
                pairs, self._pairs = self._pairs, set()
        _reset_all(pairs)

    def close(self) -> None:
        self._closed = True
        self.cut()
        self._thread.join(5)
        self._listener.close()

    def __enter__(self) -> TcpProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                client, _addr = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            client.settimeout(None)
            if self._state == "reset":
                self.refused += 1
                _reset(client)
                continue
            upstream: socket.socket | None = None
            if self._state == "up":
                try:
                    upstream = socket.create_connection(self._upstream, timeout=5)
                except OSError:
                    _reset(client)
                    continue
                upstream.settimeout(None)
            pair = (client,) if upstream is None else (client, upstream)
            with self._lock:
                if self._state == "reset" or (upstream is not None and self._state != "up"):
                    self.refused += 1
                    _reset_all([pair])
                    continue
                self._pairs.add(pair)
                if upstream is None:
                    self.refused += 1
                else:
                    self.accepted += 1
            threading.Thread(target=self._pump, args=(client, upstream, pair), daemon=True).start()
            if upstream is not None:
                threading.Thread(
                    target=self._pump, args=(upstream, client, pair), daemon=True
                ).start()

    def _pump(
        self, src: socket.socket, dst: socket.socket | None, pair: tuple[socket.socket, ...]
    ) -> None:
        try:
            while data := src.recv(65536):
                if dst is not None and self._state == "up":
                    dst.sendall(data)
                # else: blackholed, dropped
        except OSError:
            pass
        with self._lock:
            self._pairs.discard(pair)
        for sock in pair:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


def _reset_all(pairs: Any) -> None:
    for pair in pairs:
        for sock in pair:
            _reset(sock)


def _reset(sock: socket.socket) -> None:
    """Close with a TCP RST (SO_LINGER 0), waking any thread blocked on the socket."""
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)
    sock.close()
