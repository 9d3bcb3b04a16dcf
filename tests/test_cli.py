"""The `ct-actors` command line, run as an operator runs it: the installed console script (and
`python -m ct_actors`) in a subprocess, against a real PostgreSQL and the simulated internet."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (
    SimProcess,
    ct_actors_cli,
    daemon_sections,
    db_fetch,
    db_run,
    db_val,
    json_events,
    snapshot,
    toml_text,
    write_config,
)

from ct_actors.demo.spine import PEOPLE_DDL
from ct_actors.sim.world import Behaviour, SimDomain, World

StartSim = Callable[..., SimProcess]

SUBCOMMANDS = ("migrate", "run", "once", "probe", "demo", "bench")
# argparse wraps help to the terminal width: a wide one keeps phrases on one line.
WIDE = {"COLUMNS": "200"}
PASSWORD = "S3cr3t-Pa55w0rd"
UNREACHABLE = f"postgresql://ct_actors:{PASSWORD}@127.0.0.1:1/outreach"
TOOLBOX = str(Path(__file__).resolve().parents[1] / "config" / "SNAP_ON_TOOLBOX.yaml")
NOT_THERE = World(seed=0, domains={}, hosts={}, smtp_port=1, dns_port=1)


def config_file(tmp_path: Path, db_url: str, world: World = NOT_THERE, **sections: Any) -> Path:
    return write_config(tmp_path / "ct-actors.toml", daemon_sections(db_url, world, **sections))


def cli(config: Path, *args: str, **kwargs: Any) -> Any:
    return ct_actors_cli("--config", str(config), *args, **kwargs)


def last_json(stdout: str) -> dict[str, Any]:
    """The command's printed result: the last JSON object on stdout (log lines come before)."""
    start = stdout.rfind("\n{")
    text = stdout[start + 1 :] if start >= 0 else stdout
    result: dict[str, Any] = json.loads(text)
    return result


# ─── help ───────────────────────────────────────────────────────────────────────────────────


HELP_PHRASES: dict[str, tuple[str, ...]] = {
    "": (*SUBCOMMANDS, "--config", "CT_DATABASE_URL", "Exit codes", "never DATA", "4 `run"),
    "migrate": ("migrations", "advisory lock"),
    "run": ("--drain", "SIGTERM", "held back"),
    "once": ("OUTREACH_ID", "single-pass"),
    "probe": ("DOMAIN", "--name", "--mode", "writes nothing"),
    "demo": ("--domains", "--seed", "ground truth"),
    "bench": ("--domains", "records/s", "--json", "--soak", "--sample-seconds", "--sim-ports"),
}


@pytest.mark.parametrize("command", HELP_PHRASES)
def test_help_explains_every_command(command: str) -> None:
    args = [command, "--help"] if command else ["--help"]
    result = ct_actors_cli(*args, env=WIDE)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: ct-actors {command}".rstrip())
    for phrase in HELP_PHRASES[command]:
        assert phrase in result.stdout, f"{phrase!r} missing from `ct-actors {command} --help`"
    assert result.stderr == ""


def test_python_dash_m_is_the_same_program() -> None:
    for args in (["--help"], ["probe", "--help"], ["--version"]):
        script = ct_actors_cli(*args, env=WIDE)
        module = ct_actors_cli(*args, env=WIDE, module=True)
        assert script.returncode == module.returncode == 0
        assert module.stdout == script.stdout
    assert ct_actors_cli("--version").stdout.startswith("ct-actors ")
    # A usage error is exit 2 from both.
    assert ct_actors_cli("frobnicate").returncode == 2
    assert ct_actors_cli("frobnicate", module=True).returncode == 2


# ─── configuration and database errors ──────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("toml", "env", "named"),
    [
        ("[smtp]\nmax_conections = 3\n", {}, ("smtp.max_conections", "smtp.max_connections")),
        ("[smtp]\nport = 'twenty-five'\n", {}, ("smtp.port", "integer")),
        ("[dns]\ntimeout = true\n", {}, ("dns.timeout", "boolean")),
        ("[smpt]\nport = 25\n", {}, ("smpt",)),
        ("", {"CT_SMTP_PORT": "abc"}, ("CT_SMTP_PORT",)),
        ("[probe]\nmode = 'smtp-only'\n", {}, ("probe.mode", "mx-only")),
    ],
    ids=["unknown-key", "bad-type", "bool-for-number", "unknown-section", "env", "bad-choice"],
)
def test_bad_configuration_exits_2_naming_the_key(
    tmp_path: Path, toml: str, env: dict[str, str], named: tuple[str, ...]
) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(toml_text({"database": {"url": UNREACHABLE}}) + toml, encoding="utf-8")
    result = cli(config, "run", env=env)
    assert result.returncode == 2, (result.stdout, result.stderr)
    for name in named:
        assert name in result.stderr
    assert PASSWORD not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "smtp",
    [
        {},
        {"helo_name": "prober.ct-actors-sim.test"},
        {"helo_name": "probe.example.net", "mail_from": "postmaster@probe.example.net"},
    ],
    ids=["no-identity", "no-mail-from", "placeholders"],
)
def test_smtp_mode_without_an_identity_exits_2_and_says_why(
    tmp_path: Path, smtp: dict[str, str]
) -> None:
    sections = {
        "database": {"url": UNREACHABLE},
        "probe": {"mode": "smtp"},
        "toolbox": {"path": TOOLBOX},
        "smtp": smtp,
    }
    config = write_config(tmp_path / "ct-actors.toml", sections)
    result = cli(config, "run")
    assert result.returncode == 2, (result.stdout, result.stderr)
    if "helo_name" not in smtp:
        assert "smtp.helo_name is not set" in result.stderr
    if "mail_from" not in smtp:
        assert "smtp.mail_from is not set" in result.stderr
    if "example.net" in str(smtp):
        assert "example.net" in result.stderr
    assert "mx-only" in result.stderr  # the way out, for an operator who only wants MX checks
    # mx-only mode needs no identity: the same file then gets as far as the database.
    assert cli(config, "run", env={"CT_PROBE_MODE": "mx-only"}).returncode == 3


@pytest.mark.parametrize(
    "command", [["migrate"], ["run", "--drain"], ["once", str(uuid.UUID(int=7))]]
)
def test_unreachable_database_exits_3_and_never_shows_the_password(
    tmp_path: Path, command: list[str]
) -> None:
    def url(port: int) -> str:
        return f"postgresql://ct_actors:{PASSWORD}@127.0.0.1:{port}/outreach"

    # From the file, and from the environment (as the README recommends for the password).
    in_file = config_file(tmp_path, url(1))
    for config, env, port in ((in_file, {}, 1), (in_file, {"CT_DATABASE_URL": url(59999)}, 59999)):
        result = cli(config, *command, env=env)
        assert result.returncode == 3, (result.stdout, result.stderr)
        assert "database unavailable" in result.stderr
        assert f"127.0.0.1:{port}" in result.stderr
        assert PASSWORD not in result.stdout + result.stderr


# ─── migrate ────────────────────────────────────────────────────────────────────────────────


@pytest.mark.db
def test_migrate_twice_is_idempotent(fresh_db: str, tmp_path: Path) -> None:
    config = config_file(tmp_path, fresh_db)
    first = cli(config, "migrate")
    assert first.returncode == 0, first.stderr
    (migrated,) = [e for e in json_events(first.stdout.splitlines()) if e["event"] == "migrated"]
    assert migrated["applied"] == [
        "001_outreach",
        "002_ct_actors",
        "003_tool_usage",
        "004_verifier",
        "005_terminal_guard",
        "006_outcome_log",
    ]
    versions = db_fetch(fresh_db, "SELECT * FROM ct_actors.schema_migrations ORDER BY version")
    second = cli(config, "migrate")
    assert second.returncode == 0, second.stderr
    (again,) = [e for e in json_events(second.stdout.splitlines()) if e["event"] == "migrated"]
    assert again["applied"] == []
    assert db_fetch(fresh_db, "SELECT * FROM ct_actors.schema_migrations ORDER BY version") == (
        versions
    )
    for table in (
        "outreach.outreach",
        "outreach.company_target",
        "ct_actors.lease",
        "ct_actors.tool_usage",
    ):
        assert db_val(fresh_db, "SELECT to_regclass($1) IS NOT NULL", table)


# ─── run --drain: 0 only when everything concluded ──────────────────────────────────────────


@pytest.mark.db
def test_drain_exits_4_and_says_what_is_held_back(migrated_db: str, tmp_path: Path) -> None:
    done, held = uuid.uuid4(), uuid.uuid4()
    for outreach_id in (done, held):
        db_val(
            migrated_db,
            "INSERT INTO outreach.outreach (outreach_id, domain) VALUES ($1, NULL) RETURNING 1",
            outreach_id,
        )
    # `held` was deferred by an earlier run (our IP was blocklisted) until an hour from now.
    db_val(
        migrated_db,
        "INSERT INTO ct_actors.lease (outreach_id, owner, expires_at, not_before, last_reason) "
        "VALUES ($1, 'earlier:1', now(), now() + interval '1 hour', 'our IP is blocklisted') "
        "RETURNING 1",
        held,
    )
    config = config_file(tmp_path, migrated_db)
    env = {"CT_PROBE_MODE": "mx-only", "CT_PROBE_NAMES_QUERY": ""}
    result = cli(config, "run", "--drain", env=env)
    assert result.returncode == 4, (result.stdout, result.stderr)
    assert "drain ended with 1 record(s) still pending" in result.stderr
    assert "1 deferred (our own trouble, retried later), earliest due " in result.stderr
    assert "our IP is blocklisted" in result.stderr
    (event,) = [e for e in json_events(result.stdout.splitlines()) if e["event"] == "drain_held"]
    assert (event["held"], event["deferred"], event["kill_switches"]) == (1, 1, {})
    assert snapshot(migrated_db).errors[done][0]["failure_code"] == "CT-I-NO-DOMAIN"
    # Once the deferred record is concluded too, the drain exits 0.
    db_val(
        migrated_db,
        "UPDATE ct_actors.lease SET not_before = now() WHERE outreach_id = $1 RETURNING 1",
        held,
    )
    again = cli(config, "run", "--drain", env=env)
    assert again.returncode == 0, (again.stdout, again.stderr)
    assert "still pending" not in again.stderr


# ─── once ───────────────────────────────────────────────────────────────────────────────────


@pytest.mark.db
def test_once_unknown_id_writes_not_found(migrated_db: str, tmp_path: Path) -> None:
    config = config_file(tmp_path, migrated_db)
    unknown = uuid.uuid4()
    result = cli(config, "once", str(unknown))
    assert result.returncode == 0, result.stderr
    printed = last_json(result.stdout)
    assert printed["outreach_id"] == str(unknown)
    assert (printed["outcome"], printed["failure_code"]) == ("FAIL", "CT-I-NOT-FOUND")
    assert printed["written"] is True
    snap = snapshot(migrated_db)
    (err,) = snap.errors[unknown]
    assert (err["failure_code"], err["imo_stage"], err["retry_allowed"]) == (
        "CT-I-NOT-FOUND",
        "I",
        False,
    )
    assert snap.targets == {}  # no spine row to hang a company_target row on
    # Asking again changes nothing.
    again = last_json(cli(config, "once", str(unknown)).stdout)
    assert again["written"] is False
    assert len(snapshot(migrated_db).errors[unknown]) == 1


@pytest.mark.db
@pytest.mark.parametrize("domain", [None, "", "   ", "sales@"], ids=["null", "empty", "blank", "@"])
def test_once_without_a_usable_domain_writes_no_domain(
    migrated_db: str, tmp_path: Path, domain: str | None
) -> None:
    outreach_id = uuid.uuid4()
    db_val(
        migrated_db,
        "INSERT INTO outreach.outreach (outreach_id, domain) VALUES ($1, $2) RETURNING 1",
        outreach_id,
        domain,
    )
    config = config_file(tmp_path, migrated_db)
    result = cli(config, "once", str(outreach_id))
    assert result.returncode == 0, result.stderr
    printed = last_json(result.stdout)
    assert (printed["outcome"], printed["failure_code"], printed["written"]) == (
        "FAIL",
        "CT-I-NO-DOMAIN",
        True,
    )
    snap = snapshot(migrated_db)
    (err,) = snap.errors[outreach_id]
    assert (err["failure_code"], err["imo_stage"], err["pipeline_stage"]) == (
        "CT-I-NO-DOMAIN",
        "I",
        "input",
    )
    assert snap.targets[outreach_id]["execution_status"] == "failed"


def some_domain(world: World, behaviour: Behaviour) -> SimDomain:
    """The first domain with `behaviour`, by name (deterministic for a given world)."""
    return min(world.by_behaviour(behaviour), key=lambda d: d.name)


@pytest.mark.db
@pytest.mark.e2e
def test_once_probes_writes_once_then_reports_already_processed(
    migrated_db: str, start_sim: StartSim, tmp_path: Path
) -> None:
    sim = start_sim(seed=12, domains=30)
    world = sim.world
    domain = some_domain(world, Behaviour.VERIFIABLE)
    want = world.expected(domain.name)
    outreach_id = uuid.uuid4()

    async def seed(conn: Any) -> None:
        await conn.execute(
            "INSERT INTO outreach.outreach (outreach_id, domain) VALUES ($1, $2)",
            outreach_id,
            f"https://www.{domain.name}/",
        )

    db_run(migrated_db, seed)
    # The daemon's names query reads the demo's people table.
    db_run(migrated_db, lambda conn: _people(conn, outreach_id, domain))
    config = config_file(tmp_path, migrated_db, world)

    result = cli(config, "once", str(outreach_id))
    assert result.returncode == 0, result.stderr
    printed = last_json(result.stdout)
    assert printed["outcome"] == "PASS" and printed["written"] is True
    assert (printed["method_type"], printed["confidence_score"]) == (
        want.method_type,
        str(want.confidence),
    )
    before = snapshot(migrated_db)
    ct = before.targets[outreach_id]
    assert ct["execution_status"] == "ready"
    assert ct["email_method"] == printed["email_method"] and "{" in ct["email_method"]
    assert ct["evidence"]["raw_domain"] == f"https://www.{domain.name}/"

    again = cli(config, "once", str(outreach_id))
    assert again.returncode == 0, again.stderr
    printed = last_json(again.stdout)
    assert printed == {
        "outreach_id": str(outreach_id),
        "outcome": "ALREADY-PROCESSED",
        "failure_code": "CT-I-ALREADY-PROCESSED",
        "execution_status": "ready",
        "written": False,
    }
    assert snapshot(migrated_db) == before  # nothing written, not even an error row
    sim_stats = sim.stop()
    assert sim_stats["connections"] == 1  # the second `once` did not probe again


async def _people(conn: Any, outreach_id: uuid.UUID, domain: SimDomain) -> None:
    await conn.execute(PEOPLE_DDL)
    await conn.executemany(
        "INSERT INTO ct_demo.people (outreach_id, ord, first_name, last_name) "
        "VALUES ($1, $2, $3, $4)",
        [(outreach_id, i, first, last) for i, (first, last) in enumerate(domain.people)],
    )


# ─── probe ──────────────────────────────────────────────────────────────────────────────────


@pytest.mark.e2e
def test_probe_prints_the_decision_and_touches_no_database(
    start_sim: StartSim, tmp_path: Path
) -> None:
    sim = start_sim(seed=13, domains=40)
    world = sim.world
    # An unreachable database: any attempt to use it would exit 3.
    config = config_file(tmp_path, UNREACHABLE, world)

    def probe(domain: str, *args: str, module: bool = False) -> dict[str, Any]:
        result = cli(config, "probe", domain, *args, module=module)
        assert result.returncode == 0, result.stderr
        assert PASSWORD not in result.stdout + result.stderr
        return last_json(result.stdout)

    def names(domain: SimDomain) -> list[str]:
        # The comma form carries two-word first names ('Mary Ann,Lee') intact.
        return [arg for first, last in domain.people for arg in ("--name", f"{first},{last}")]

    verifiable = some_domain(world, Behaviour.VERIFIABLE)
    got = probe(verifiable.name.upper(), "--mode", "mx-only")
    assert (got["domain"], got["mode"], got["outcome"]) == (verifiable.name, "mx-only", "PASS")
    assert (got["method_type"], got["confidence_score"]) == ("first.last", "0.70")
    assert got["normalised"] == ["case"]
    assert [h["name"] for h in got["evidence"]["mx_hosts"]] == [h for _, h in verifiable.mx]

    want = world.expected(verifiable.name)
    got = probe(f"https://www.{verifiable.name}/contact", *names(verifiable))
    assert (got["mode"], got["outcome"], got["method_type"], got["confidence_score"]) == (
        "smtp",
        "PASS",
        want.method_type,
        str(want.confidence),
    )
    assert got["email_method"].endswith("@" + verifiable.name) and "{" in got["email_method"]
    assert any(" -> 250" in r for v in got["evidence"]["visits"] for r in v["replies"])

    catchall = some_domain(world, Behaviour.CATCHALL)
    got = probe(catchall.name, *names(catchall))
    assert (got["outcome"], got["is_catchall"], got["confidence_score"]) == ("PASS", True, "0.50")

    no_mx = some_domain(world, Behaviour.NXDOMAIN)
    got = probe(no_mx.name, module=True)  # `python -m ct_actors` is the same program
    assert (got["outcome"], got["failure_code"]) == ("FAIL", "CT-M-NO-MX")

    got = probe("bob@" + verifiable.name)
    assert (got["outcome"], got["code"]) == ("FAIL", "CT-I-NO-DOMAIN")

    stats = sim.stop()
    assert stats["data_attempts"] == 0
    assert stats["rcpt_domains"] == 2  # the two smtp-mode probes; mx-only sent nothing


# ─── our resolver down (issue 10, item 8) ───────────────────────────────────────────────────

# NOT_THERE's resolver is port 1 of a loopback address where nothing listens: every query times
# out. A short timeout keeps these tests at ~2 s instead of ~17 s; what they check (the exit code,
# the printed decision, nothing written) does not depend on its length.
DEAD_RESOLVER = {"timeout": 0.25}


@pytest.mark.timeout(60)
def test_probe_when_dns_fails_prints_the_deferred_decision(tmp_path: Path) -> None:
    config = config_file(tmp_path, UNREACHABLE, dns=DEAD_RESOLVER)
    result = cli(config, "probe", "example.com")
    assert result.returncode == 4, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr and "ExceptionGroup" not in result.stderr
    printed = last_json(result.stdout)
    assert printed["outcome"] == "DEFERRED"
    assert printed["reason"].startswith("our resolver could not answer: ")
    assert printed["retry_after"] > 0
    assert printed["domain"] == "example.com"


@pytest.mark.db
@pytest.mark.timeout(60)
def test_once_when_dns_fails_prints_and_records_the_deferral(
    migrated_db: str, tmp_path: Path
) -> None:
    outreach_id = uuid.uuid4()
    db_val(
        migrated_db,
        "INSERT INTO outreach.outreach (outreach_id, domain) VALUES ($1, $2) RETURNING 1",
        outreach_id,
        "example.com",
    )
    config = config_file(
        tmp_path, migrated_db, probe={"mode": "smtp", "names_query": ""}, dns=DEAD_RESOLVER
    )
    result = cli(config, "once", str(outreach_id))
    assert result.returncode == 4, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    printed = last_json(result.stdout)
    assert (printed["outcome"], printed["written"]) == ("DEFERRED", False)
    assert printed["reason"].startswith("our resolver could not answer: ")
    snap = snapshot(migrated_db)
    assert snap.targets == {} and snap.errors == {}  # still pending: no verdict was written


@pytest.mark.db
@pytest.mark.timeout(60)
def test_run_refuses_a_names_query_of_the_wrong_shape(migrated_db: str, tmp_path: Path) -> None:
    # Issue 10, item 6: a one-column query used to make `run` read the wrapper's row number as
    # the last name (PASS first.last at 0.95). Its columns are known only to the database, so
    # they are checked there before anything is claimed: exit 2, nothing written.
    outreach_id = uuid.uuid4()
    db_val(
        migrated_db,
        "INSERT INTO outreach.outreach (outreach_id, domain) VALUES ($1, 'a.example') "
        "RETURNING 1",
        outreach_id,
    )
    one_column = "SELECT 'Ann'::text AS first_name WHERE $1::uuid IS NOT NULL"
    config = config_file(tmp_path, migrated_db, probe={"mode": "smtp", "names_query": one_column})
    for command in (["run", "--drain"], ["once", str(outreach_id)]):
        result = cli(config, *command)
        assert result.returncode == 2, (command, result.stdout, result.stderr)
        assert "configuration error: probe.names_query returns 1 column (first_name)" in (
            result.stderr
        )
    assert db_val(migrated_db, "SELECT count(*) FROM ct_actors.lease") == 0
    snap = snapshot(migrated_db)
    assert snap.targets == {} and snap.errors == {}


@pytest.mark.db
@pytest.mark.timeout(60)
def test_run_refuses_an_owner_name_another_live_daemon_holds(
    migrated_db: str, tmp_path: Path
) -> None:
    # Issue 10 (tidy): two daemons with one daemon.owner took over each other's live leases.
    async def hold_then_run(conn: Any) -> Any:
        from ct_actors.db.owner_lock import OWNER_LOCK_CLASS, TRY_LOCK

        assert await conn.fetchval(TRY_LOCK, OWNER_LOCK_CLASS, "prober-1")
        config = config_file(
            tmp_path, migrated_db, daemon={"owner": "prober-1", "owner_lock_wait": 1.0}
        )
        return await asyncio.to_thread(cli, config, "run", "--drain")

    result = db_run(migrated_db, hold_then_run)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert "configuration error: daemon.owner 'prober-1' is held by another live daemon" in (
        result.stderr
    )
    assert db_val(migrated_db, "SELECT count(*) FROM ct_actors.lease") == 0
