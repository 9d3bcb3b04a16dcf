"""End to end: the daemon's sd_notify messages, received on a real AF_UNIX datagram socket.

(a) `run_pipeline` in this process (the simulated world in memory, a real database), with
    NOTIFY_SOCKET / WATCHDOG_USEC set by monkeypatch and signals sent to ourselves;
(b) a real `ct-actors run` process against the simulated internet in its own process, with
    an abstract-namespace NOTIFY_SOCKET.

Both check the sequence systemd relies on: READY=1 once the pipeline runs, STATUS= lines,
WATCHDOG=1 about every WATCHDOG_USEC/2, RELOADING=1 + MONOTONIC_USEC then READY=1 on SIGHUP
(also when the new configuration is refused), STOPPING=1 on SIGTERM.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from e2e_support import DaemonProcess, SimProcess, daemon_sections, seed_spine, write_config
from structlog.testing import capture_logs

from ct_actors.app import run_pipeline
from ct_actors.config import ConfigError, load_config
from ct_actors.db import Database
from ct_actors.demo.spine import spine_rows
from ct_actors.sim.world import World
from ct_actors.testing import SimResolver, open_sim_connector
from ct_actors.toolbox import load_toolbox

pytestmark = [pytest.mark.e2e, pytest.mark.db]

StartSim = Callable[..., SimProcess]
StartDaemon = Callable[..., DaemonProcess]


def all_done(lst: NotifyListener, records: int) -> bool:
    """A STATUS line says every record was handled and nothing is in flight. "done" counts
    every write, so a greylisted record's deferred pass counts too: at least `records`."""
    for m in lst.messages("STATUS"):
        found = re.match(r"processing: (\d+) done, .*, 0 in flight", m["STATUS"])
        if found and int(found.group(1)) >= records:
            return True
    return False


class NotifyListener:
    """A bound AF_UNIX datagram socket; a thread keeps every message with its arrival time
    (CLOCK_MONOTONIC, µs) and, optionally, what `mark()` said at that moment."""

    def __init__(self, address: str, mark: Callable[[], Any] = lambda: None) -> None:
        self.address = address  # for bind: a path, or "\0name"
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(address)
        self.sock.settimeout(0.2)
        self._mark = mark
        self.received: list[tuple[int, dict[str, str], Any]] = []
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._pump, daemon=True)
        self._thread.start()

    @property
    def notify_socket(self) -> str:
        return "@" + self.address[1:] if self.address.startswith("\0") else self.address

    def _pump(self) -> None:
        while not self._closed:
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            at = time.monotonic_ns() // 1000
            fields = dict(line.partition("=")[::2] for line in data.decode().split("\n") if line)
            with self._cond:
                self.received.append((at, fields, self._mark()))
                self._cond.notify_all()

    def messages(self, key: str | None = None, after: int = 0) -> list[dict[str, str]]:
        with self._cond:
            return [m for _, m, _ in self.received[after:] if key is None or key in m]

    def count(self) -> int:
        with self._cond:
            return len(self.received)

    def wait_for(self, predicate: Callable[[], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not predicate():
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(min(remaining, 0.2))
            return True

    def wait_message(self, key: str, *, after: int = 0, timeout: float = 30.0) -> int:
        """Index of the first message at or after `after` that carries `key`."""
        found: list[int] = []

        def seen() -> bool:
            for i in range(after, len(self.received)):
                if key in self.received[i][1]:
                    found.append(i)
                    return True
            return False

        if not self.wait_for(seen, timeout):
            raise AssertionError(f"no {key} within {timeout} s; got {self.messages()}")
        return found[0]

    def close(self) -> None:
        self._closed = True
        self._thread.join(2)
        self.sock.close()


@pytest.fixture
def listener(tmp_path: Path) -> Iterator[Callable[..., NotifyListener]]:
    made: list[NotifyListener] = []

    def make(address: str, mark: Callable[[], Any] = lambda: None) -> NotifyListener:
        made.append(NotifyListener(address, mark))
        return made[-1]

    yield make
    for one in made:
        one.close()


def socket_path(tmp_path: Path) -> str:
    path = tmp_path / "notify.sock"
    if len(os.fsencode(path)) >= 108:  # sun_path's limit
        path = Path("/tmp") / f"ct-notify-{uuid.uuid4().hex[:12]}.sock"
    return str(path)


def check_pings(pings: list[int], *, interval_usec: int) -> None:
    """WATCHDOG=1 arrivals, about every `interval_usec` (sent every WATCHDOG_USEC/2)."""
    assert len(pings) >= 3, pings
    gaps = [b - a for a, b in itertools.pairwise(pings)]
    assert max(gaps) < 1.6 * interval_usec, gaps  # well inside WATCHDOG_USEC
    assert sum(gaps) / len(gaps) > 0.7 * interval_usec, gaps  # not a flood either


def check_reload(lst: NotifyListener, before_usec: int, start: int, *, refused: bool) -> int:
    """RELOADING=1 with MONOTONIC_USEC (our CLOCK_MONOTONIC), then READY=1."""
    i = lst.wait_message("RELOADING", after=start)
    reloading = lst.received[i][1]
    assert reloading["RELOADING"] == "1"
    assert before_usec <= int(reloading["MONOTONIC_USEC"]) <= time.monotonic_ns() // 1000
    j = lst.wait_message("READY", after=i + 1)
    ready = lst.received[j][1]
    assert ready["READY"] == "1"
    assert ("reload refused" in ready["STATUS"]) is refused, ready
    return j + 1


# ─── (a) in process ─────────────────────────────────────────────────────────────────────────


async def test_in_process_run_notifies_systemd(
    database: Database,
    migrated_db: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    listener: Callable[..., NotifyListener],
) -> None:
    world = World.generate(23, 30, latency_ms=5, jitter_ms=2)
    rows = spine_rows(world, 23)
    await trio.to_thread.run_sync(seed_spine, migrated_db, world, rows)
    config = write_config(
        tmp_path / "ct-actors.toml",
        daemon_sections(
            migrated_db, world, log={"format": "json", "level": "info", "stats_interval": 1.0}
        ),
    )
    cfg = load_config(config)
    toolbox = load_toolbox(cfg.toolbox.path)
    loads = []

    def load() -> Any:
        loads.append(time.monotonic())
        if len(loads) == 2:
            raise ConfigError("refused by the test")
        return load_config(config), load_toolbox(cfg.toolbox.path)

    with capture_logs() as logs:
        lst = listener(socket_path(tmp_path), mark=lambda: [e["event"] for e in list(logs)])
        monkeypatch.setenv("NOTIFY_SOCKET", lst.notify_socket)
        monkeypatch.setenv("WATCHDOG_USEC", "2000000")
        monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))

        async def wait(predicate: Callable[[], bool], seconds: float = 60.0) -> None:
            assert await trio.to_thread.run_sync(lst.wait_for, predicate, seconds), lst.messages()

        async def wait_message(key: str, after: int = 0) -> int:
            return await trio.to_thread.run_sync(lambda: lst.wait_message(key, after=after))

        with trio.fail_after(120):
            async with open_sim_connector(world) as connector, trio.open_nursery() as nursery:
                done: list[Any] = []

                async def daemon() -> None:
                    done.append(
                        await run_pipeline(
                            cfg,
                            toolbox,
                            database,
                            drain=False,
                            resolver=SimResolver(world),
                            connector=connector,
                            load=load,
                        )
                    )

                nursery.start_soon(daemon)
                ready = await wait_message("READY")
                # READY=1 only after the pipeline reported started (and "ready" was logged).
                assert {"pipeline_ready", "ready"} <= set(lst.received[ready][2])
                assert lst.messages("STATUS")[0]["STATUS"].startswith("starting")
                assert lst.received[ready][1]["STATUS"].startswith("processing: ")
                # Every record gets its outcome; the STATUS lines follow (stats_interval 1 s).
                await wait(lambda: all_done(lst, len(rows)))
                mark = lst.count()
                await trio.sleep(3.5)
                pings = [at for at, m, _ in lst.received[mark:] if "WATCHDOG" in m]
                check_pings(pings, interval_usec=1_000_000)

                before = time.monotonic_ns() // 1000
                os.kill(os.getpid(), signal.SIGHUP)
                after = await trio.to_thread.run_sync(
                    lambda: check_reload(lst, before, ready + 1, refused=False)
                )
                before = time.monotonic_ns() // 1000
                os.kill(os.getpid(), signal.SIGHUP)  # this one is refused
                after = await trio.to_thread.run_sync(
                    lambda: check_reload(lst, before, after, refused=True)
                )
                assert len(loads) == 2

                os.kill(os.getpid(), signal.SIGTERM)
                stopping = await wait_message("STOPPING", after)
                assert lst.received[stopping][1]["STATUS"].startswith("draining: ")
        assert done, "run_pipeline did not return after SIGTERM"
    assert next(m for m in lst.messages() if "READY" in m) == lst.messages()[ready]
    assert len(lst.messages("STOPPING")) == 1
    assert not [e for e in logs if e["event"] == "watchdog_unhealthy"]


# ─── (b) a real `ct-actors run` process ─────────────────────────────────────────────────────


def test_daemon_process_notifies_systemd(
    migrated_db: str,
    start_sim: StartSim,
    start_daemon: StartDaemon,
    listener: Callable[..., NotifyListener],
    tmp_path: Path,
) -> None:
    sim = start_sim(seed=29, domains=40, latency_ms=5, jitter_ms=2)
    world = sim.world
    rows = spine_rows(world, 29)
    seed_spine(migrated_db, world, rows)
    sections = daemon_sections(
        migrated_db, world, log={"format": "json", "level": "info", "stats_interval": 1.0}
    )
    config = write_config(tmp_path / "ct-actors.toml", sections)
    lst = listener(f"\0ct-actors-e2e-{uuid.uuid4().hex}")  # abstract namespace
    daemon = start_daemon(
        config, "run", env={"NOTIFY_SOCKET": lst.notify_socket, "WATCHDOG_USEC": "2000000"}
    )
    try:
        ready = lst.wait_message("READY", timeout=60)
    except AssertionError:
        raise AssertionError(daemon.diagnostics()) from None
    # The daemon logs `ready` just before READY=1 (the in-process test checks the order; here
    # the log line travels through a pipe and a reader thread, so it may arrive second).
    assert daemon.out.wait_for(lambda lines: any('"event":"ready"' in x for x in lines), 10)
    assert lst.received[ready][1]["STATUS"].startswith("processing: ")
    assert lst.wait_for(lambda: all_done(lst, len(rows)), 90), (
        lst.messages("STATUS")[-3:],
        daemon.diagnostics(),
    )

    mark = lst.count()
    time.sleep(3.5)
    pings = [at for at, m, _ in lst.received[mark:] if "WATCHDOG" in m]
    check_pings(pings, interval_usec=1_000_000)

    before = time.monotonic_ns() // 1000
    daemon.signal(signal.SIGHUP)
    after = check_reload(lst, before, ready + 1, refused=False)
    config.write_text("[daemon]\nno_such_key = 1\n", encoding="utf-8")  # refused on reload
    before = time.monotonic_ns() // 1000
    daemon.signal(signal.SIGHUP)
    after = check_reload(lst, before, after, refused=True)
    assert daemon.out.wait_for(lambda lines: any("reload_failed" in x for x in lines), 10)

    daemon.signal(signal.SIGTERM)
    stopping = lst.wait_message("STOPPING", after=after)
    assert lst.received[stopping][1]["STATUS"].startswith("draining: ")
    assert daemon.wait(60) == 0, daemon.diagnostics()
    assert len(lst.messages("STOPPING")) == 1
    assert len(lst.messages("READY")) == 3  # start, reload, refused reload
    assert not daemon.events("watchdog_unhealthy")
