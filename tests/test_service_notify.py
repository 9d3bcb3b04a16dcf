"""The sd_notify protocol against real AF_UNIX datagram sockets (a path and an abstract name),
the watchdog environment, and the unit file (`systemd-analyze verify` when it is installed)."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from ct_actors.config import load_config
from ct_actors.service import Notifier, SystemdService
from ct_actors.service.notify import monotonic_usec, one_line, socket_address, watchdog_usec
from tests.shared_docs import skip_unless_ci

REPO = Path(__file__).resolve().parents[1]
UNIT = REPO / "systemd" / "ct-actors.service"


@pytest.fixture
def receiver(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A datagram socket bound in tmp_path: (its NOTIFY_SOCKET value, the socket)."""
    path = tmp_path / "notify.sock"
    if len(os.fsencode(path)) >= 108:  # sun_path's limit
        path = Path("/tmp") / f"ct-notify-{uuid.uuid4().hex[:12]}.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(5)
    yield str(path), sock
    sock.close()
    path.unlink(missing_ok=True)


def test_sends_to_a_socket_in_the_file_system(receiver: tuple[str, socket.socket]) -> None:
    name, sock = receiver
    notifier = Notifier.from_environment({"NOTIFY_SOCKET": name})
    assert notifier.enabled
    assert notifier.notify("READY=1", STATUS="processing: 0 done")
    assert sock.recv(4096) == b"READY=1\nSTATUS=processing: 0 done"
    assert notifier.notify("WATCHDOG=1")
    assert sock.recv(4096) == b"WATCHDOG=1"
    notifier.close()


def test_sends_to_an_abstract_namespace_socket() -> None:
    name = f"ct-actors-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(5)
    try:
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": "@" + name})
        assert notifier.address == "\0" + name
        assert notifier.notify("STOPPING=1")
        assert sock.recv(4096) == b"STOPPING=1"
    finally:
        sock.close()


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = Notifier.from_environment({})
    assert not notifier.enabled
    assert notifier.notify("READY=1") is False
    service = SystemdService.from_environment({"WATCHDOG_USEC": "2000000"})
    assert not service.enabled and service.watchdog_interval is None
    service.starting()
    service.reloading()
    service.reloaded()
    service.stopping()
    assert service.notifier.sent == 0


def test_unusable_addresses_and_a_missing_listener_are_logged_not_raised(tmp_path: Path) -> None:
    assert socket_address("vsock:2:1234") is None and socket_address("@") is None
    assert socket_address("relative/path") is None
    with capture_logs() as logs:
        assert not Notifier.from_environment({"NOTIFY_SOCKET": "vsock:2:1234"}).enabled
        gone = Notifier.from_environment({"NOTIFY_SOCKET": str(tmp_path / "nobody.sock")})
        assert gone.notify("WATCHDOG=1") is False
        assert gone.notify("WATCHDOG=1") is False  # the same failure is logged once
    failures = [e for e in logs if e["event"] == "sd_notify_failed"]
    assert len(failures) == 2


def test_watchdog_environment() -> None:
    me = os.getpid()
    assert watchdog_usec({}) is None
    assert watchdog_usec({"WATCHDOG_USEC": "60000000"}) == 60_000_000
    assert watchdog_usec({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(me)}) == 2_000_000
    assert watchdog_usec({"WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(me + 1)}) is None
    assert watchdog_usec({"WATCHDOG_USEC": "0"}) is None
    assert watchdog_usec({"WATCHDOG_USEC": "soon"}) is None
    service = SystemdService.from_environment(
        {"NOTIFY_SOCKET": "@x", "WATCHDOG_USEC": "2000000", "WATCHDOG_PID": str(me)}
    )
    assert service.watchdog_interval == 1.0


def test_monotonic_usec_is_clock_monotonic_and_status_is_one_line() -> None:
    before = time.monotonic_ns() // 1000
    value = monotonic_usec()
    assert before <= value <= time.monotonic_ns() // 1000
    assert one_line("paused:\n kill switch\r\nx") == "paused: kill switch x"


# ─── the unit file ──────────────────────────────────────────────────────────────────────────


def unit_settings() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in UNIT.read_text(encoding="utf-8").splitlines():
        if line and not line.startswith(("#", "[")) and "=" in line:
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


def test_unit_file_speaks_notify_with_watchdog_and_hardening() -> None:
    unit = unit_settings()
    assert unit["Type"] == ["notify"]
    assert unit["ExecReload"] == ["/bin/kill -HUP $MAINPID"]
    assert unit["Restart"] == ["on-failure"]
    assert int(unit["WatchdogSec"][0]) >= 10
    assert unit["EnvironmentFile"] and unit["User"] and unit["Group"]
    assert unit["CapabilityBoundingSet"] == [""]
    assert set(unit["RestrictAddressFamilies"][0].split()) == {"AF_INET", "AF_INET6", "AF_UNIX"}
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):
        assert unit[key] == ["yes"], key
    assert unit["ProtectSystem"] == ["strict"]
    # The stop timeout covers the drain deadline plus the bounded final flush and release.
    cfg = load_config(None, probing=False)
    assert int(unit["TimeoutStopSec"][0]) >= cfg.daemon.drain_deadline + 10 + 10
    # The secrets are named in a comment, never set in the unit.
    assert "Environment" not in unit
    text = UNIT.read_text(encoding="utf-8")
    assert "CT_DATABASE_URL" in text and "MILLIONVERIFIER_API_KEY" in text


def test_unit_file_bounds_restarts_memory_and_addresses() -> None:
    # Issue 10: a crash loop ends in a failed unit (5 starts in 10 minutes at RestartSec=10);
    # a runaway is capped; link-local (cloud metadata) and multicast are unreachable.
    unit = unit_settings()
    assert unit["StartLimitIntervalSec"] == ["600"] and unit["StartLimitBurst"] == ["5"]
    assert int(unit["StartLimitBurst"][0]) * int(unit["RestartSec"][0]) < int(
        unit["StartLimitIntervalSec"][0]
    )
    assert unit["MemoryMax"] == ["1G"]
    assert unit["IPAddressDeny"] == ["link-local multicast"]
    assert "IPAddressAllow" not in unit  # PostgreSQL/DNS may be on loopback or private nets
    assert unit["RestartPreventExitStatus"] == ["2"]  # configuration errors do not loop


def test_unit_file_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    """`systemd-analyze verify` on a copy whose ExecStart names an executable that exists here
    (the installed path /opt/ct-actors/... does not on a development machine)."""
    if shutil.which("systemd-analyze") is None:
        skip_unless_ci("systemd-analyze not here")
    text = UNIT.read_text(encoding="utf-8")
    program = re.search(r"^ExecStart=(\S+)", text, re.M)
    assert program is not None and program.group(1) == "/opt/ct-actors/.venv/bin/ct-actors"
    copy = tmp_path / "ct-actors.service"
    copy.write_text(text.replace(program.group(1), sys.executable, 1), encoding="utf-8")
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, output
    # Warnings (an unknown directive, a type this systemd does not know) exit 0 too.
    ours = [line for line in output.splitlines() if "ct-actors" in line]
    assert ours == [], output
