"""The sd_notify protocol, spoken directly (no `systemd` package): datagrams of newline-separated
`KEY=VALUE` assignments sent to the AF_UNIX socket named by `$NOTIFY_SOCKET`.

* A path starting with `/` is a socket in the file system; one starting with `@` is in the
  abstract namespace (the `@` stands for a leading NUL byte). Anything else (`vsock:` for
  VMs, garbage) disables notification with one warning.
* Without `$NOTIFY_SOCKET` (not started by systemd, or `Type=exec`) every call is a no-op.
* `WATCHDOG_USEC` (set when the unit has `WatchdogSec=`) asks for `WATCHDOG=1` at least that
  often; `WATCHDOG_PID`, when set, names the process it is meant for (not us: no watchdog).

Sending never raises and never blocks the event loop for long: the socket has a short timeout
and a failure is logged (once per kind of failure) and reported as False.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

import structlog

log = structlog.get_logger("ct_actors.service")

SEND_TIMEOUT = 0.5  # seconds; systemd reads its notify socket promptly, this is a safety net


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds: what `MONOTONIC_USEC=` carries (not trio's clock)."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def socket_address(value: str) -> str | None:
    """The address to `sendto` for a `$NOTIFY_SOCKET` value; None if unusable."""
    if value.startswith("/"):
        return value
    if value.startswith("@") and len(value) > 1:
        return "\0" + value[1:]
    return None


def one_line(text: str) -> str:
    """A value fit for one assignment: no newlines (they would start a new assignment)."""
    return " ".join(text.split())


class Notifier:
    """Sends sd_notify messages to one socket address; a disabled notifier does nothing."""

    def __init__(self, address: str | None) -> None:
        self.address = address  # as for sendto: a path, or "\0name" (abstract)
        self._sock: socket.socket | None = None
        self._failures: set[str] = set()
        self.sent = 0

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> Notifier:
        env = os.environ if environ is None else environ
        value = env.get("NOTIFY_SOCKET", "")
        if not value:
            return cls(None)
        address = socket_address(value)
        if address is None:
            log.warning(
                "sd_notify_failed",
                socket=value,
                error="unsupported NOTIFY_SOCKET address (expected /path or @abstract)",
            )
        return cls(address)

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def notify(self, *assignments: str, **fields: object) -> bool:
        """Send one datagram: each positional `KEY=VALUE`, then `KEY=value` per keyword (in
        order). True if it was sent; False when disabled or on failure."""
        if self.address is None:
            return False
        lines = [*assignments, *(f"{key}={value}" for key, value in fields.items())]
        message = "\n".join(lines).encode("utf-8", "replace")
        try:
            if self._sock is None:
                self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                self._sock.settimeout(SEND_TIMEOUT)
            self._sock.sendto(message, self.address)
        except OSError as exc:
            kind = type(exc).__name__
            if kind not in self._failures:  # once per kind: pings must not flood the log
                self._failures.add(kind)
                log.warning(
                    "sd_notify_failed",
                    socket=self.address.replace("\0", "@"),
                    error=str(exc) or kind,
                )
            return False
        self.sent += 1
        return True

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None


def watchdog_usec(environ: Mapping[str, str] | None = None, pid: int | None = None) -> int | None:
    """The watchdog period systemd asks for, in µs, or None if the watchdog is off or meant for
    another process (sd_watchdog_enabled's rules)."""
    env = os.environ if environ is None else environ
    raw = env.get("WATCHDOG_USEC", "")
    try:
        usec = int(raw)
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = env.get("WATCHDOG_PID", "")
    if owner:
        try:
            if int(owner) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec
