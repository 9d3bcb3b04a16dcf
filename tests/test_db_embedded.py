"""The embedded PostgreSQL launcher (ct_actors.db.embedded) and the database choice
(ct_actors.db.choice): pure rules first, then real servers started and stopped in temporary
directories (clean start, a killed run's stale postmaster.pid, an orphaned server adopted, two
users of one directory, root and non-root)."""

from __future__ import annotations

import asyncio
import os
import pwd
import signal
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import asyncpg
import pytest

from ct_actors.db.choice import TEST_ENV, TEST_ENV_DEPRECATED, choose_database, named_url
from ct_actors.db.embedded import EmbeddedPostgres, EmbeddedPostgresError, default_data_dir
from ct_actors.db.embedded_account import Account, choose_account, unreachable_parent
from ct_actors.db.postmaster import is_postmaster_of, parse_postmaster_pid

REPO = Path(__file__).resolve().parent.parent

# ─── pure rules ──────────────────────────────────────────────────────────────────────────────

# The layout PostgreSQL writes (src/include/miscadmin.h LOCK_FILE_LINE_*): pid, data directory,
# start time, port, socket directory, listen address, shared memory key, status.
PID_FILE = "4242\n/var/lib/ct-actors/pg\n1733580000\n54321\n\n127.0.0.1\n  1234 5678\nready   \n"


def test_parse_postmaster_pid() -> None:
    info = parse_postmaster_pid(PID_FILE)
    assert info is not None
    assert (info.pid, info.data_dir, info.port, info.status) == (
        4242,
        "/var/lib/ct-actors/pg",
        54321,
        "ready",
    )
    # Written in steps while the postmaster starts: no status line yet, then "starting".
    early = parse_postmaster_pid("\n".join(PID_FILE.splitlines()[:4]))
    assert early is not None and early.status == ""
    assert parse_postmaster_pid("") is None
    assert parse_postmaster_pid("garbage\n") is None


def test_is_postmaster_of(tmp_path: Path) -> None:
    proc, data = tmp_path / "proc", tmp_path / "pg"
    data.mkdir()

    def process(pid: int, argv: list[str], cwd: Path | None = None) -> None:
        (proc / str(pid)).mkdir(parents=True)
        (proc / str(pid) / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + b"\0")
        if cwd is not None:
            (proc / str(pid) / "cwd").symlink_to(cwd)

    process(1, ["/opt/pg/bin/postgres", "-D", str(data), "-p", "5"])
    process(2, ["/opt/pg/bin/postgres", "-D", "/elsewhere/../pg"], cwd=data)  # another spelling
    process(3, ["/usr/lib/postgresql/15/bin/postgres", "-D", "/var/lib/pg15"], cwd=tmp_path)
    process(4, ["/usr/bin/python3", "-D", str(data)])  # a reused pid, not a postgres
    (proc / "5").mkdir()
    (proc / "5" / "cmdline").write_bytes(b"")  # a zombie
    assert is_postmaster_of(1, data, proc) and is_postmaster_of(2, data, proc)
    assert not is_postmaster_of(3, data, proc)  # another cluster's postmaster
    assert not is_postmaster_of(4, data, proc)
    assert not is_postmaster_of(5, data, proc)
    assert not is_postmaster_of(6, data, proc)  # gone


def _entry(name: str, uid: int, gid: int) -> Any:
    return SimpleNamespace(pw_name=name, pw_uid=uid, pw_gid=gid)


def test_choose_account() -> None:
    users = {"postgres": _entry("postgres", 101, 104), "nobody": _entry("nobody", 65534, 65534)}

    def lookup(name: str) -> Any:
        return users[name]

    def by_uid(uid: int) -> Any:
        return next(e for e in users.values() if e.pw_uid == uid)

    # Not root: ourselves, nothing to change.
    assert choose_account(1000, None, lookup, by_uid) == Account("1000")
    # Root: the first existing candidate (no ct-actors account here) ...
    assert choose_account(0, None, lookup, by_uid) == Account("postgres", 101, 104)
    # ... but an existing cluster keeps its owner.
    assert choose_account(0, 65534, lookup, by_uid) == Account("nobody", 65534, 65534)
    # A root-owned directory is not an owner to keep.
    assert choose_account(0, 0, lookup, by_uid) == Account("postgres", 101, 104)
    users.pop("postgres")
    assert choose_account(0, None, lookup, by_uid) == Account("nobody", 65534, 65534)
    # Nobody fits: None, and the launcher creates the account (and says so).
    users.clear()
    assert choose_account(0, None, lookup, by_uid) is None


def test_unreachable_parent() -> None:
    modes = {
        "/": (0, 0, 0o755),
        "/root": (0, 0, 0o700),
        "/root/state": (0, 0, 0o755),
        "/srv": (0, 50, 0o750),
        "/srv/ct": (0, 0, 0o755),
    }

    def fake_stat(path: Path) -> Any:
        if str(path) not in modes:
            raise FileNotFoundError(path)
        uid, gid, mode = modes[str(path)]
        return SimpleNamespace(st_uid=uid, st_gid=gid, st_mode=stat.S_IFDIR | mode)

    assert unreachable_parent(Path("/root/state/pg"), 101, [104], fake_stat) == Path("/root")
    assert unreachable_parent(Path("/srv/ct/pg"), 101, [104], fake_stat) == Path("/srv")
    assert unreachable_parent(Path("/srv/ct/pg"), 101, [104, 50], fake_stat) is None  # group x
    assert unreachable_parent(Path("/root/state/pg"), 0, [0], fake_stat) is None  # owner x


def test_default_data_dir() -> None:
    assert default_data_dir({"XDG_STATE_HOME": "/x/state", "HOME": "/home/a"}, 1000) == Path(
        "/x/state/ct-actors/pg"
    )
    assert default_data_dir({"HOME": "/home/a"}, 1000) == Path("/home/a/.local/state/ct-actors/pg")
    # Relative XDG paths are invalid (XDG Base Directory spec): ignored.
    assert default_data_dir({"XDG_STATE_HOME": "rel", "HOME": "/home/a"}, 1000) == Path(
        "/home/a/.local/state/ct-actors/pg"
    )
    assert default_data_dir({"HOME": "/root"}, 0) == Path("/var/lib/ct-actors/pg")


def test_named_url_precedence() -> None:
    url = "postgresql://u@127.0.0.1:5432/postgres"
    assert named_url("demo", {}) is None
    assert named_url("demo", {"CT_DATABASE_URL": url}) == (url, "CT_DATABASE_URL")
    assert named_url("demo", {"CT_DATABASE_URL": "embedded"}) is None
    assert named_url("demo", {TEST_ENV: url}) is None  # the tests' variable is not the demo's
    assert named_url("tests", {"CT_DATABASE_URL": url}) is None  # nor the other way round
    assert named_url("tests", {TEST_ENV_DEPRECATED: url}) == (url, TEST_ENV_DEPRECATED)
    assert named_url("tests", {TEST_ENV: url, TEST_ENV_DEPRECATED: "x"}) == (url, TEST_ENV)


# ─── real servers ────────────────────────────────────────────────────────────────────────────


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """A state directory the unprivileged account can reach when we are root (pytest's own
    tmp_path base is 0700)."""
    base = Path(tempfile.mkdtemp(prefix="ct-actors-embedded-test-"))
    os.chmod(base, 0o711)
    yield base
    subprocess.run(["rm", "-rf", str(base)], check=False)


def query(url: str, sql: str = "SELECT current_setting('server_version_num')::int") -> Any:
    async def run() -> Any:
        conn = await asyncpg.connect(url, timeout=10)
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    return asyncio.run(run())


def wait_gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        stat_line = Path(f"/proc/{pid}/stat").read_bytes() if Path(f"/proc/{pid}").exists() else b""
        if b") Z " in stat_line:
            return True
        time.sleep(0.02)
    return False


def postmaster_pid(data_dir: Path) -> int:
    info = parse_postmaster_pid((data_dir / "postmaster.pid").read_text())
    assert info is not None
    return info.pid


@pytest.mark.timeout(90)
def test_clean_start_query_and_stop(state_dir: Path) -> None:
    messages: list[str] = []
    pg = EmbeddedPostgres(state_dir / "pg", temporary=True, say=messages.append)
    with pg:
        assert pg.url.startswith("postgresql://postgres@127.0.0.1:")
        assert query(pg.url) >= 180000  # PostgreSQL 18
        pid = postmaster_pid(pg.data_dir)
        assert is_postmaster_of(pid, pg.data_dir)
        # TCP on loopback only, and no Unix socket.
        assert query(pg.url, "SHOW listen_addresses") == "127.0.0.1"
        assert query(pg.url, "SHOW unix_socket_directories") == ""
        assert pg.initdb_in is not None and pg.started_in is not None
        assert not pg.reused
    assert wait_gone(pid)
    assert not (pg.data_dir / "postmaster.pid").exists()
    assert any("initialised a new cluster" in m for m in messages)
    # Warm start: the cluster is kept, no initdb.
    again = EmbeddedPostgres(state_dir / "pg", temporary=True, say=messages.append)
    with again:
        assert query(again.url) >= 180000
        assert again.initdb_in is None
    print(f"cold start {pg.started_in:.2f} s (initdb {pg.initdb_in:.2f} s)")
    print(f"warm start {again.started_in:.2f} s")


@pytest.mark.timeout(90)
def test_start_after_a_killed_run_with_a_stale_postmaster_pid(state_dir: Path) -> None:
    data = state_dir / "pg"
    with EmbeddedPostgres(data, temporary=True, say=lambda m: None) as first:
        pid = postmaster_pid(data)
        # The run is killed: SIGKILL leaves postmaster.pid behind (no shutdown ran).
        os.kill(pid, signal.SIGKILL)
        assert wait_gone(pid)
        first._process = None  # its child is gone; the object must not stop anything later
        first._users = None
    assert (data / "postmaster.pid").exists()
    # Worse: the stale file names a pid that is alive but not a postgres (pid reuse after a
    # reboot). Postgres itself would refuse to start; the launcher sees it is not ours.
    text = (data / "postmaster.pid").read_text().splitlines()
    text[0] = str(os.getpid())
    (data / "postmaster.pid").write_text("\n".join(text) + "\n")
    messages: list[str] = []
    with EmbeddedPostgres(data, temporary=True, say=messages.append) as second:
        assert query(second.url) >= 180000
        assert not second.reused
    assert any("removed the stale" in m for m in messages), messages


ORPHAN = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from ct_actors.db.embedded import EmbeddedPostgres
    pg = EmbeddedPostgres(Path(sys.argv[1]), durable=False, say=lambda m: None)
    pg.start()
    print(pg.port, flush=True)
    time.sleep(600)
    """
)


@pytest.mark.timeout(90)
def test_a_server_left_by_a_killed_process_is_adopted_and_stopped(state_dir: Path) -> None:
    data = state_dir / "pg"
    proc = subprocess.Popen(
        [sys.executable, "-c", ORPHAN, str(data)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
    finally:
        proc.kill()  # the owner dies without stopping its (non-temporary) server
        proc.wait()
    pid = postmaster_pid(data)
    assert is_postmaster_of(pid, data)
    with EmbeddedPostgres(data, say=lambda m: None) as adopter:
        assert adopter.reused and adopter.port == port
        assert query(adopter.url) >= 180000
    assert wait_gone(pid)  # its last user stopped it


@pytest.mark.timeout(90)
def test_two_users_of_one_directory_the_last_one_stops_it(state_dir: Path) -> None:
    data = state_dir / "pg"
    first = EmbeddedPostgres(data, temporary=True, say=lambda m: None)
    second = EmbeddedPostgres(data, temporary=True, say=lambda m: None)
    first.start()
    try:
        second.start()
        assert second.reused and second.port == first.port
        pid = postmaster_pid(data)
        first.stop()  # the second still uses it: left running
        assert query(second.url) >= 180000
        assert is_postmaster_of(pid, data)
    finally:
        first.stop()
        second.stop()
    assert wait_gone(pid)


@pytest.mark.timeout(90)
def test_as_root_postgres_runs_as_an_unprivileged_account(state_dir: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (the non-root path is test_as_an_ordinary_user)")
    messages: list[str] = []
    with EmbeddedPostgres(state_dir / "pg", temporary=True, say=messages.append) as pg:
        owner = (state_dir / "pg").stat().st_uid
        assert owner != 0 and pg.account is not None and pg.account.uid == owner
        pid = postmaster_pid(pg.data_dir)
        assert Path(f"/proc/{pid}").stat().st_uid == owner  # the server process, too
        assert query(pg.url) >= 180000
    assert any("unprivileged user" in m for m in messages)


NON_ROOT = textwrap.dedent(
    """
    import asyncio, os, sys
    from pathlib import Path
    import asyncpg
    from ct_actors.db.embedded import EmbeddedPostgres
    if len(sys.argv) > 2:  # started as root: become the ordinary user before anything else
        uid, gid = int(sys.argv[2]), int(sys.argv[3])
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)
    messages = []
    with EmbeddedPostgres(Path(sys.argv[1]), temporary=True, say=messages.append) as pg:
        async def q():
            c = await asyncpg.connect(pg.url)
            try:
                return await c.fetchval("SELECT current_user")
            finally:
                await c.close()
        print(os.geteuid(), asyncio.run(q()), pg.account, messages)
    """
)


@pytest.mark.timeout(90)
def test_as_an_ordinary_user(state_dir: Path) -> None:
    """Not root: initdb and postgres run as ourselves. Under root, a child process that drops to
    `nobody` (uid 65534) plays the ordinary user (it drops after the interpreter has started:
    the interpreter may live where nobody cannot read, as under /root/.pyenv here); otherwise
    we are one already."""
    data = state_dir / "pg"
    if os.geteuid() == 0:
        nobody = pwd.getpwnam("nobody")
        os.chown(state_dir, nobody.pw_uid, nobody.pw_gid)
        env = {**os.environ, "HOME": str(state_dir)}
        result = subprocess.run(
            [sys.executable, "-c", NON_ROOT, str(data), str(nobody.pw_uid), str(nobody.pw_gid)],
            capture_output=True,
            text=True,
            env=env,
            cwd=state_dir,
            timeout=80,
            check=False,
        )
        assert result.returncode == 0, result.stderr
        uid, user, *_rest = result.stdout.split(" ", 2)
        assert int(uid) == nobody.pw_uid and user == "postgres"
        assert "unprivileged user" not in result.stdout
        assert data.stat().st_uid == nobody.pw_uid
    else:
        with EmbeddedPostgres(data, temporary=True, say=lambda m: None) as pg:
            assert query(pg.url, "SELECT current_user") == "postgres"
        assert data.stat().st_uid == os.geteuid()


@pytest.mark.timeout(60)
def test_an_unreachable_data_directory_is_refused_not_chmodded() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root: only root hands the cluster to another account")
    base = Path(tempfile.mkdtemp(prefix="ct-actors-embedded-closed-"))  # 0700, root's
    try:
        with pytest.raises(EmbeddedPostgresError) as info:
            EmbeddedPostgres(base / "pg", say=lambda m: None).start()
        assert str(base) in str(info.value) and "not searchable" in str(info.value)
        assert stat.S_IMODE(base.stat().st_mode) == 0o700  # left as it was
    finally:
        subprocess.run(["rm", "-rf", str(base)], check=False)


@pytest.mark.timeout(90)
def test_choose_database_for_tests_uses_a_throwaway_cluster() -> None:
    with choose_database("tests", env={}, say=lambda m: None) as chosen:
        assert chosen.server is not None and chosen.source == "embedded"
        data_dir = chosen.server.data_dir
        assert query(chosen.with_database("postgres")) >= 180000
        assert "psql -h 127.0.0.1 -p" in chosen.describe("postgres")
    assert not data_dir.parent.exists()  # removed with the session
    url = "postgresql://u@127.0.0.1:1/postgres"
    with choose_database("tests", env={TEST_ENV: url}) as named:
        assert (named.url, named.source, named.server) == (url, TEST_ENV, None)
