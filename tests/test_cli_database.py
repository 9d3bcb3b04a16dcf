"""Which database each command uses (issue 11), through the real console script: production
commands refuse without `database.url`, `database.url = "embedded"` runs a single-box
installation on the embedded server, and `demo` starts the embedded server itself (twice in a
row on the same state directory)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_support import TOOLBOX, ct_actors_cli, free_port, toml_text

from ct_actors.db.postmaster import is_postmaster_of, parse_postmaster_pid

# The environment must not name a database for these tests (a developer may export one): an
# empty CT_DATABASE_URL overrides the file with "unset"; tests that name one in the file drop
# the variables instead (`no_database_env`).
NO_URL = {"CT_DATABASE_URL": "", "CT_DATABASE_DATA_DIRECTORY": ""}


@pytest.fixture
def no_database_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("CT_DATABASE_URL", "CT_DATABASE_DATA_DIRECTORY", "CT_CONFIG"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def state_dir() -> Iterator[Path]:
    """Reachable by the unprivileged account that runs PostgreSQL when we are root."""
    base = Path(tempfile.mkdtemp(prefix="ct-actors-cli-db-test-"))
    os.chmod(base, 0o711)
    yield base
    subprocess.run(["rm", "-rf", str(base)], check=False)


def config(path: Path, **database: str) -> Path:
    sections = {"probe": {"mode": "mx-only"}, "toolbox": {"path": str(TOOLBOX)}}
    if database:
        sections = {"database": dict(database), **sections}
    path.write_text(toml_text(sections), encoding="utf-8")
    return path


def server_stopped(data_dir: Path) -> bool:
    pid_file = data_dir / "postmaster.pid"
    if not pid_file.exists():
        return True
    info = parse_postmaster_pid(pid_file.read_text())
    return info is None or not is_postmaster_of(info.pid, data_dir)


@pytest.mark.parametrize(
    "command",
    [["migrate"], ["run", "--drain"], ["once", str(uuid.UUID(int=7))], ["report"], ["canary"]],
    ids=lambda c: c[0],
)
def test_production_commands_without_a_database_refuse(tmp_path: Path, command: list[str]) -> None:
    result = ct_actors_cli("--config", str(config(tmp_path / "c.toml")), *command, env=NO_URL)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert f"ct-actors {command[0]}: no database named" in result.stderr
    assert "database.url" in result.stderr and "CT_DATABASE_URL" in result.stderr
    assert '"embedded"' in result.stderr and "database.data_directory" in result.stderr


def test_embedded_needs_a_data_directory(tmp_path: Path, no_database_env: None) -> None:
    path = config(tmp_path / "c.toml", url="embedded")
    result = ct_actors_cli("--config", str(path), "migrate")
    assert result.returncode == 2, result.stderr
    assert '"embedded" needs database.data_directory' in result.stderr
    path = config(tmp_path / "d.toml", url="postgresql://u@127.0.0.1:1/x", data_directory="/x")
    result = ct_actors_cli("--config", str(path), "migrate")
    assert result.returncode == 2, result.stderr
    assert 'only used with database.url = "embedded"' in result.stderr


@pytest.mark.timeout(120)
def test_single_box_installation_on_the_embedded_server(
    state_dir: Path, no_database_env: None
) -> None:
    data = state_dir / "pg"
    path = config(state_dir / "c.toml", url="embedded", data_directory=str(data))
    migrated = ct_actors_cli("--config", str(path), "migrate", timeout=100)
    assert migrated.returncode == 0, migrated.stderr
    assert "database ct_actors on the embedded PostgreSQL (started" in migrated.stderr
    assert re.search(r"psql -h 127\.0\.0\.1 -p \d+ -U postgres ct_actors", migrated.stderr)
    assert (data / "PG_VERSION").exists()
    assert server_stopped(data)  # stopped when the command exited
    report = ct_actors_cli("--config", str(path), "report", "--json", timeout=100)
    assert report.returncode == 0, report.stderr
    assert '"pending"' in report.stdout or "pending" in report.stdout
    assert "initialised a new cluster" not in report.stderr  # the same cluster, kept
    assert server_stopped(data)


@pytest.mark.e2e
@pytest.mark.timeout(240)

def test_two_demos_one_after_another_on_the_embedded_server(state_dir: Path) -> None:
    env = {**NO_URL, "XDG_STATE_HOME": str(state_dir)}
    data = state_dir / "ct-actors" / "pg"
    # Ports of their own: the simulator's wildcard listener would clash with another test's.
    ports = f"{free_port(socket.SOCK_STREAM)},{free_port(socket.SOCK_DGRAM)}"
    runs = [
        ct_actors_cli("demo", "--domains", "40", "--sim-ports", ports, env=env, timeout=110),
        ct_actors_cli("demo", "--domains", "40", "--sim-ports", ports, env=env, timeout=110),
    ]
    for result in runs:
        assert result.returncode == 0, result.stderr[-3000:]
        assert re.search(r"^accuracy\s+100\.0% ", result.stdout, re.MULTILINE), result.stdout
        assert f"data in {data}" in result.stderr
        assert "look inside with: " in result.stderr
    assert "initialised a new cluster" in runs[0].stderr
    assert "initialised a new cluster" not in runs[1].stderr  # warm start on the kept cluster
    assert server_stopped(data)
