"""Is a postmaster already running on a data directory? Its lock file `postmaster.pid`
(PostgreSQL docs, "Database File Layout") and /proc answer; and the flock that serialises our
own start and stop decisions on one data directory (`ct_actors.db.embedded`).
"""

from __future__ import annotations

import fcntl
import os
from dataclasses import dataclass
from pathlib import Path
from typing import IO

__all__ = ["FileLock", "Postmaster", "is_postmaster_of", "parse_postmaster_pid", "process_alive"]


@dataclass(frozen=True, slots=True)
class Postmaster:
    """The first lines of `postmaster.pid` (PostgreSQL docs, "Database File Layout")."""

    pid: int
    data_dir: str
    port: int | None
    status: str  # "starting", "ready", "stopping", "standby"; "" while the file is being written


def parse_postmaster_pid(text: str) -> Postmaster | None:
    lines = text.splitlines()
    if len(lines) < 4 or not lines[0].strip().isdigit():
        return None
    port = lines[3].strip()
    return Postmaster(
        pid=int(lines[0].strip()),
        data_dir=lines[1].strip(),
        port=int(port) if port.isdigit() else None,
        status=lines[7].strip() if len(lines) > 7 else "",
    )


def is_postmaster_of(pid: int, data_dir: Path, proc: Path = Path("/proc")) -> bool:
    """True if `pid` is a live postgres serving `data_dir`: its command line (from /proc) names
    postgres, and its working directory is the data directory (the postmaster chdirs there:
    src/backend/utils/init/miscinit.c ChangeToDataDir), whatever path spelling started it.
    A zombie has an empty command line: not running."""
    try:
        argv = (proc / str(pid) / "cmdline").read_bytes().split(b"\0")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    if not argv or not os.path.basename(argv[0]).startswith(b"postgres"):
        return False
    if os.fsencode(str(data_dir)) in argv:
        return True
    try:
        return os.path.samefile(proc / str(pid) / "cwd", data_dir)
    except OSError:
        return False


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie (our exited child, not yet reaped) counts as gone.
    try:
        return b") Z " not in Path(f"/proc/{pid}/stat").read_bytes()
    except FileNotFoundError:
        return False


class FileLock:
    """An exclusive flock held for a start or stop decision (not for the server's lifetime)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[bytes] | None = None

    def __enter__(self) -> FileLock:
        self._file = self.path.open("ab")
        fcntl.flock(self._file, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
