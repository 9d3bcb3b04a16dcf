"""`ct-actors canary` and `ct-actors report` as an operator runs them: the installed console
script in a subprocess, a real PostgreSQL database per test, the simulated internet in its own
process, a spine seeded from the simulated world (its domains are .com 40 %, .io 20 %, .org
20 %, .net/.co.uk/.de 20 %, so every stratum exists).

Every figure the report prints is checked against the database and against the world's ground
truth; the selection against an independent classification of the spine by the world's TLDs.
"""

from __future__ import annotations

import json
import random
import subprocess
import sys
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from decimal import Decimal
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
    expected_label,
    seed_spine,
    snapshot,
    write_config,
)

from ct_actors.db.migrate import migrate
from ct_actors.demo.spine import UNUSABLE, SpineRow, spine_rows
from ct_actors.ops.selection import select_canary
from ct_actors.ops.text import parse_markdown_table
from ct_actors.sim.world import Behaviour, World

pytestmark = [pytest.mark.db, pytest.mark.e2e]

StartSim = Callable[..., SimProcess]
WIDE = {"COLUMNS": "200"}
SIZE = 20
TARGETS = {".com": 8, ".io": 4, ".org": 4, "other": 4}
PASSWORD = "S3cr3t-Pa55w0rd"
UNREACHABLE = f"postgresql://ct_actors:{PASSWORD}@127.0.0.1:1/outreach"


# ─── set-up ─────────────────────────────────────────────────────────────────────────────────


def world_stratum(row: SpineRow) -> str:
    """The stratum by the world's own domain name (independent of the daemon's normaliser)."""
    if row.domain is None:
        return "other"
    tld = "." + row.domain.rsplit(".", 1)[1]
    return tld if tld in (".com", ".io", ".org") else "other"


def build_spine(world: World, seed: int, *, blocklisted: bool = False) -> list[SpineRow]:
    """The demo's spine (messy URLs, shared domains, unusable values) plus a few more unusable
    values so the "other" stratum has CT-I-NO-DOMAIN candidates; without the BLOCKLIST domains
    (their records are Deferred in smtp mode, which a passing canary must not contain) unless
    `blocklisted`."""
    rows = [
        r
        for r in spine_rows(world, seed)
        if blocklisted
        or r.domain is None
        or world.domain(r.domain).behaviour is not Behaviour.BLOCKLIST
    ]
    rng = random.Random(seed)
    for value in UNUSABLE[:6]:
        rows.append(SpineRow(uuid.UUID(int=rng.getrandbits(128), version=4), value, None))
    return rows


def pick_seed(
    world: World, rows: Sequence[SpineRow], mode: str, want: Callable[[list[str]], bool]
) -> int:
    """The first canary seed whose selection's expected outcomes satisfy `want` (the test
    chooses an interesting canary; the canary itself is then checked independently)."""
    by_id = {r.outreach_id: r for r in rows}
    for seed in range(500):
        selection = select_canary([(r.outreach_id, r.raw_domain) for r in rows], SIZE, seed)
        labels = [expected_label(world, by_id[i], mode) for i in selection.ids]
        if want(labels):
            return seed
    raise AssertionError("no canary seed gives the wanted mix")


def interesting(mode: str) -> Callable[[list[str]], bool]:
    def want(labels: list[str]) -> bool:
        codes = Counter(label for label in labels if label.startswith("FAIL"))
        ok = "FAIL CT-I-NO-DOMAIN" in codes and "FAIL CT-M-NO-MX" in codes
        if mode == "smtp":
            ok = (
                ok
                and any("catchall" in label for label in labels)
                and (len({label.split()[1] for label in labels if label.startswith("PASS")}) >= 3)
                and "PENDING" not in labels
            )
        return ok

    return want


def setup(
    start_sim: StartSim,
    db_url: str,
    tmp_path: Path,
    mode: str,
    *,
    sim_seed: int = 21,
    blocklisted: bool = False,
    **sections: dict[str, Any],
) -> tuple[World, list[SpineRow], Path]:
    sim = start_sim(seed=sim_seed, domains=120, latency_ms=3, jitter_ms=1)
    world = sim.world
    db_run(db_url, migrate)
    rows = build_spine(world, sim_seed, blocklisted=blocklisted)
    seed_spine(db_url, world, rows)
    config = write_config(
        tmp_path / "ct-actors.toml", daemon_sections(db_url, world, mode=mode, **sections)
    )
    return world, rows, config


def canary(config: Path, *args: str, timeout: float = 240) -> Any:
    return ct_actors_cli("--config", str(config), "canary", *args, timeout=timeout)


# ─── reading the report ─────────────────────────────────────────────────────────────────────


def section(text: str, title: str) -> str:
    start = text.index(title)
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def table(text: str, title: str) -> list[list[str]]:
    return parse_markdown_table(section(text, title))[1:]


def report_figures(text: str) -> dict[str, Any]:
    return {
        "summary": dict(table(text, "## Executive Summary")),
        "selection": {r[0]: r[1:] for r in table(text, "## Canary Selection Criteria")},
        "checks": {int(r[0]): r[2] for r in table(text, "## Validation Checklist")},
        "codes": {r[0]: int(r[1]) for r in table(text, "### Error Codes")},
        "methods": {r[0]: int(r[1]) for r in table(text, "### Method Type Distribution")},
        "confidence": dict(table(text, "### Confidence Score")),
        "estimates": dict(table(text, "## Production Run Estimates")),
        "ids": {uuid.UUID(r[0]): r[1:] for r in table(text, "## Canary IDs")},
    }


def check_against_database(
    text: str, db_url: str, world: World, rows: Sequence[SpineRow], mode: str
) -> dict[str, Any]:
    """Every figure of a passing canary report against the database and the ground truth."""
    fig = report_figures(text)
    by_id = {r.outreach_id: r for r in rows}
    ids = list(fig["ids"])
    assert len(ids) == SIZE == len(set(ids))

    # Selection: 8/4/4/4 by an independent classification, out of the pending spine.
    strata = Counter(world_stratum(by_id[i]) for i in ids)
    assert dict(strata) == TARGETS
    available = Counter(world_stratum(r) for r in rows)
    assert fig["selection"] == {
        ".com": ["8", "8", str(available[".com"])],
        ".io": ["4", "4", str(available[".io"])],
        ".org": ["4", "4", str(available[".org"])],
        "Other": ["4", "4", str(available["other"])],
        "**Total**": ["20", "20", str(len(rows))],
    }
    for i, (raw, stratum, _outcome, _detail) in fig["ids"].items():
        assert stratum == world_stratum(by_id[i])
        assert raw == (by_id[i].raw_domain if by_id[i].raw_domain is not None else "(NULL)")

    # Outcomes: the database's rows, and the world's ground truth.
    snap = snapshot(db_url)
    labels = {i: snap.label(i) for i in ids}
    for i in ids:
        assert labels[i] == expected_label(world, by_id[i], mode), i
    passes = [i for i in ids if labels[i].startswith("PASS")]
    fails = [i for i in ids if labels[i].startswith("FAIL")]
    assert len(passes) + len(fails) == SIZE
    for i, (_raw, _stratum, outcome, detail) in fig["ids"].items():
        if outcome == "PASS":
            ct = snap.targets[i]
            assert detail.split()[:2] == [ct["method_type"], f"{ct['confidence_score']:.2f}"]
        else:
            assert outcome == "FAIL" and detail == snap.errors[i][0]["failure_code"]
    # Exactly the canary was processed: nothing else in the outcome tables.
    assert set(snap.targets) == set(ids)
    assert set(snap.errors) == set(fails)
    assert not set(snap.leases) & set(ids)

    summary = fig["summary"]
    assert summary["**Canary Size**"] == "20 IDs (requested 20)"
    assert summary["**PASS**"] == f"{len(passes)} ({100 * len(passes) / SIZE:.0f}%)"
    assert summary["**FAIL**"] == f"{len(fails)} ({100 * len(fails) / SIZE:.0f}%)"
    assert summary["**Not processed**"] == "0 (0%)"
    assert summary["**Validation**"] == "**8/8 PASS**"
    assert "CANARY VALIDATED - Ready for production run" in text

    assert fig["codes"] == dict(Counter(snap.errors[i][0]["failure_code"] for i in fails))
    assert fig["methods"] == dict(
        Counter(
            snap.targets[i]["method_type"]
            + (" (catch-all)" if snap.targets[i]["is_catchall"] else "")
            for i in passes
        )
    )
    confidences = [snap.targets[i]["confidence_score"] for i in passes]
    avg = (sum(confidences, Decimal(0)) / len(confidences)).quantize(Decimal("0.01"))
    assert fig["confidence"] == {
        "Min": f"{min(confidences):.2f}",
        "Max": f"{max(confidences):.2f}",
        "Avg": f"{avg:.2f}",
    }
    pending = db_val(
        db_url,
        """SELECT count(*) FROM outreach.outreach o
            WHERE NOT EXISTS (SELECT 1 FROM outreach.company_target ct
                              WHERE ct.outreach_id = o.outreach_id
                                AND ct.execution_status IN ('ready', 'failed'))
              AND NOT EXISTS (SELECT 1 FROM outreach.company_target_errors e
                              WHERE e.outreach_id = o.outreach_id AND e.resolved_at IS NULL)""",
    )
    assert pending == len(rows) - SIZE
    assert fig["estimates"]["Records to process"] == f"{pending:,} (pending after this canary)"

    # Checks: all eight pass, with the counts of this canary.
    checks = fig["checks"]
    assert checks[1] == f"PASS ({SIZE}/{SIZE})"
    assert checks[2] == f"PASS ({len(passes)}/{len(passes)})"
    assert checks[3] == f"PASS ({len(fails)}/{len(fails)})"
    assert checks[4] == f"PASS ({len(fails)}/{len(fails)})"
    assert checks[5] == f"PASS ({SIZE}/{SIZE})"
    assert checks[6] == f"PASS ({len(passes)}/{len(passes)})"
    assert checks[7] == f"PASS ({len(passes)}/{len(passes)} in model, range 0.50-0.95)"
    assert checks[8].startswith("PASS (static 0/")
    # The restricted role was used, verified and dropped.
    role = role_of(text)
    assert f"pipeline ran as role {role} (" in text
    assert "SELECT on 0/1 sovereign_id column(s), superuser=False" in text
    assert db_val(db_url, "SELECT count(*) FROM pg_roles WHERE rolname = $1", role) == 0
    return {"ids": ids, "passes": passes, "fails": fails, "snap": snap, "pending": pending}


def role_of(text: str) -> str:
    marker = "pipeline ran as role "
    start = text.index(marker) + len(marker)
    return text[start : text.index(" ", start)]


# ─── canary: passing runs ───────────────────────────────────────────────────────────────────


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["mx-only", "smtp"])
def test_canary_validates_a_stratified_run(
    migrated_db: str, start_sim: StartSim, tmp_path: Path, mode: str
) -> None:
    world, rows, config = setup(start_sim, migrated_db, tmp_path, mode)
    seed = pick_seed(world, rows, mode, interesting(mode))
    output = tmp_path / "out" / "canary.md"
    result = canary(config, "--size", str(SIZE), "--seed", str(seed), "--output", str(output))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "canary: validation 8/8 PASS — CANARY VALIDATED" in result.stdout
    assert f"canary: report written to {output}" in result.stdout
    text = output.read_text(encoding="utf-8")
    assert f"**Mode**: {mode}" in text and f"**Seed**: {seed} " in text
    found = check_against_database(text, migrated_db, world, rows, mode)
    assert any(
        found["snap"].errors[i][0]["failure_code"] == "CT-I-NO-DOMAIN" for i in found["fails"]
    )
    flow = section(text, "## Pipeline Flow Verified")
    assert "Load from outreach.outreach spine      ✓  20/20 claimed" in flow
    if mode == "smtp":
        assert "SMTP Validation (TOOL-005)" in flow and "mx-only mode: not run" not in flow
        assert len({found["snap"].targets[i]["method_type"] for i in found["passes"]}) >= 2
    else:
        assert "mx-only mode: not run" in flow
        assert "> Note: an mx-only run writes confidence 0.70" in text
    # Same seed, same selection, while the records are pending: now they are not, so a second
    # canary picks other records and still validates.
    again = canary(
        config, "--size", str(SIZE), "--seed", str(seed), "--output", str(tmp_path / "again.md")
    )
    assert again.returncode == 0, again.stdout[-2000:] + again.stderr[-2000:]
    second = set(report_figures((tmp_path / "again.md").read_text())["ids"])
    assert not second & set(found["ids"])


@pytest.mark.timeout(120)
def test_canary_default_output_and_random_seed(
    migrated_db: str, start_sim: StartSim, tmp_path: Path
) -> None:
    # The configuration says smtp; --mode overrides it, as for `probe`.
    _world, _rows, config = setup(start_sim, migrated_db, tmp_path, "smtp")
    workdir = tmp_path / "cwd"
    workdir.mkdir()
    script = Path(sys.executable).with_name("ct-actors")
    result = subprocess.run(
        [str(script), "--config", str(config), "canary", "--size", "5", "--mode", "mx-only"],
        capture_output=True,
        text=True,
        timeout=100,
        cwd=workdir,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (report,) = workdir.glob("canary-report-*.md")
    assert report.name.endswith("Z.md") and len(report.name) == len("canary-report-") + 16 + 3
    text = report.read_text()
    assert "**Seed**: " in text and "**Mode**: mx-only" in text
    # 5 -> targets 2/1/1/1
    assert [r[1] for r in table(text, "## Canary Selection Criteria")] == ["2", "1", "1", "1", "5"]


# ─── canary: failing checks ─────────────────────────────────────────────────────────────────


@pytest.mark.timeout(180)
def test_a_tampered_row_fails_its_checks_and_the_exit_code(
    migrated_db: str, start_sim: StartSim, tmp_path: Path
) -> None:
    world, rows, config = setup(start_sim, migrated_db, tmp_path, "mx-only")
    seed = pick_seed(world, rows, "mx-only", interesting("mx-only"))
    selection = select_canary([(r.outreach_id, r.raw_domain) for r in rows], SIZE, seed)
    by_id = {r.outreach_id: r for r in rows}
    victim = next(
        i for i in selection.ids if expected_label(world, by_id[i], "mx-only").startswith("PASS")
    )
    # Something between the daemon and the table rewrites one PASS row as it is written.
    db_run(
        migrated_db,
        lambda conn: conn.execute(
            f"""
            CREATE FUNCTION public.tamper() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.outreach_id = '{victim}' AND NEW.execution_status = 'ready' THEN
                    NEW.method_type := 'guessed';
                    NEW.confidence_score := 0.99;
                END IF;
                RETURN NEW;
            END $$;
            CREATE TRIGGER tamper BEFORE INSERT OR UPDATE ON outreach.company_target
                FOR EACH ROW EXECUTE FUNCTION public.tamper();
            """
        ),
    )
    output = tmp_path / "tampered.md"
    result = canary(config, "--size", str(SIZE), "--seed", str(seed), "--output", str(output))
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    assert "canary: validation 6/8 PASS — CANARY FAILED" in result.stdout
    text = output.read_text()
    fig = report_figures(text)
    passes = sum(1 for v in fig["ids"].values() if v[2] == "PASS")
    assert fig["checks"][6] == f"FAIL ({passes - 1}/{passes})"
    assert fig["checks"][7] == f"FAIL ({passes - 1}/{passes} in model, range 0.50-0.95)"
    assert all(fig["checks"][n].startswith("PASS") for n in (1, 2, 3, 4, 5, 8))
    assert f"- {victim}: method_type 'guessed'" in text
    assert f"- {victim}: confidence 0.9900 (model: 0.70); outside 0.50-0.95" in text
    assert "CANARY FAILED - 2 of 8 checks failed (#6, #7); not ready for production" in text
    assert fig["methods"]["guessed"] == 1
    assert fig["confidence"]["Max"] == "0.99"


@pytest.mark.timeout(180)
def test_a_statement_reading_sovereign_id_is_refused_and_fails_check_8(
    migrated_db: str, start_sim: StartSim, tmp_path: Path
) -> None:
    # The operator's names query is configuration, not code: the static scan cannot see it;
    # the restricted role refuses it at run time.
    leaky = "SELECT sovereign_id::text, domain FROM outreach.outreach WHERE outreach_id = $1"
    _world, _rows, config = setup(
        start_sim, migrated_db, tmp_path, "mx-only", probe={"names_query": leaky}
    )
    output = tmp_path / "leak.md"
    result = canary(config, "--size", str(SIZE), "--seed", "1", "--output", str(output))
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    text = output.read_text()
    fig = report_figures(text)
    assert fig["checks"][8] == "FAIL (see details)"
    assert "runtime: the pipeline was refused:" in text and "permission denied" in text
    assert "; 0 name sovereign_id or select a wildcard" in text  # the static part was clean
    assert fig["checks"][1] == "FAIL (0/20)"  # nothing got through
    assert "**Pipeline error**:" in text
    assert db_val(migrated_db, "SELECT count(*) FROM outreach.company_target") == 0
    role = role_of(text)
    assert db_val(migrated_db, "SELECT count(*) FROM pg_roles WHERE rolname = $1", role) == 0


@pytest.mark.timeout(180)
def test_a_deferred_record_is_not_processed_and_fails_checks_1_and_5(
    migrated_db: str, start_sim: StartSim, tmp_path: Path
) -> None:
    world, rows, config = setup(start_sim, migrated_db, tmp_path, "smtp", blocklisted=True)
    seed = pick_seed(world, rows, "smtp", lambda labels: labels.count("PENDING") == 1)
    output = tmp_path / "deferred.md"
    result = canary(config, "--size", str(SIZE), "--seed", str(seed), "--output", str(output))
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    text = output.read_text()
    fig = report_figures(text)
    assert fig["checks"][1] == f"FAIL ({SIZE - 1}/{SIZE})"
    assert fig["checks"][5] == f"FAIL ({SIZE - 1}/{SIZE})"
    assert all(fig["checks"][n].startswith("PASS") for n in (2, 3, 4, 6, 7, 8))
    (pending,) = [i for i, v in fig["ids"].items() if v[2] == "NOT PROCESSED"]
    lease = db_fetch(
        migrated_db,
        "SELECT not_before > now() AS deferred, last_reason FROM ct_actors.lease "
        "WHERE outreach_id = $1",
        pending,
    )
    assert lease and lease[0]["deferred"]
    assert f"- {pending}: not processed: deferred until" in text
    assert "blocked" in lease[0]["last_reason"]
    assert fig["summary"]["**Not processed**"] == "1 (5%)"


@pytest.mark.timeout(120)
def test_a_canary_cut_short_by_its_timeout_releases_its_records_and_fails(
    migrated_db: str, start_sim: StartSim, tmp_path: Path
) -> None:
    # Greylisting holds a record for greylist_retry_delay (1.5 s here) before it can finish.
    world, rows, config = setup(start_sim, migrated_db, tmp_path, "smtp")
    greylisted = {d.name for d in world.by_behaviour(Behaviour.GREYLIST)}
    by_id = {r.outreach_id: r for r in rows}
    for candidate in range(500):
        sel = select_canary([(r.outreach_id, r.raw_domain) for r in rows], SIZE, candidate)
        if any(by_id[i].domain in greylisted for i in sel.ids):
            seed = candidate
            break
    else:
        pytest.fail("no seed selects a greylisted domain")
    output = tmp_path / "timeout.md"
    result = canary(
        config,
        "--size",
        str(SIZE),
        "--seed",
        str(seed),
        "--timeout",
        "0.8",
        "--output",
        str(output),
    )
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    text = output.read_text()
    fig = report_figures(text)
    assert "**Timeout**: the pipeline was stopped after 0.8 s" in text
    assert "The canary stopped at its timeout (0.8 s)." in text
    assert fig["checks"][1].startswith("FAIL (")
    not_processed = [i for i, v in fig["ids"].items() if v[2] == "NOT PROCESSED"]
    assert not_processed
    # Released, not left leased: claimable again at once.
    live = db_val(
        migrated_db,
        "SELECT count(*) FROM ct_actors.lease WHERE expires_at > now() "
        "AND outreach_id = ANY($1::uuid[])",
        not_processed,
    )
    assert live == 0
    assert (
        db_val(migrated_db, "SELECT count(*) FROM pg_roles WHERE rolname = $1", role_of(text)) == 0
    )


# ─── canary: refusals ───────────────────────────────────────────────────────────────────────


@pytest.mark.timeout(60)
def test_canary_refusals_and_their_exit_codes(
    migrated_db: str, fresh_db: str, tmp_path: Path
) -> None:
    def config_for(url: str) -> Path:
        return write_config(
            tmp_path / f"c{abs(hash(url))}.toml",
            daemon_sections(
                url, World(seed=0, domains={}, hosts={}, smtp_port=1, dns_port=1), mode="mx-only"
            ),
        )

    # Unreachable database: 3, password never shown.
    result = canary(config_for(UNREACHABLE), "--size", "5")
    assert result.returncode == 3 and "database unavailable" in result.stderr
    assert PASSWORD not in result.stdout + result.stderr
    # No schema: 2, says to migrate.
    result = canary(config_for(fresh_db), "--size", "5")
    assert result.returncode == 2 and "ct-actors migrate" in result.stderr
    # Nothing pending: 1.
    result = canary(config_for(migrated_db), "--size", "5")
    assert result.returncode == 1 and "nothing to do" in result.stderr
    # Bad size: 2 (argparse or ours).
    assert canary(config_for(migrated_db), "--size", "0").returncode == 2
    assert canary(config_for(migrated_db), "--size", "x").returncode == 2


# ─── report ─────────────────────────────────────────────────────────────────────────────────


def report_cli(config: Path, *args: str) -> Any:
    return ct_actors_cli("--config", str(config), "report", *args, timeout=60)


@pytest.mark.timeout(240)
def test_report_json_after_a_canary_matches_the_database(
    migrated_db: str, start_sim: StartSim, tmp_path: Path
) -> None:
    world, rows, config = setup(start_sim, migrated_db, tmp_path, "mx-only")
    seed = pick_seed(world, rows, "mx-only", interesting("mx-only"))
    assert (
        canary(
            config, "--size", str(SIZE), "--seed", str(seed), "--output", str(tmp_path / "c.md")
        ).returncode
        == 0
    )
    # Some history: a FAIL 3 days ago (in the distribution, not in the pass rate).
    old = next(
        r.outreach_id
        for r in rows
        if r.domain is None
        and r.outreach_id not in report_figures((tmp_path / "c.md").read_text())["ids"]
    )
    db_run(
        migrated_db,
        lambda conn: conn.execute(
            """
            INSERT INTO outreach.company_target (outreach_id, execution_status, imo_completed_at,
                                                 updated_at)
            VALUES ($1, 'failed', now() - interval '3 days', now() - interval '3 days');
            INSERT INTO outreach.company_target_errors (outreach_id, failure_code, imo_stage,
                                                        pipeline_stage, blocking_reason,
                                                        created_at)
            VALUES ($1, 'CT-I-NO-DOMAIN', 'I', 'input', 'old', now() - interval '3 days');
            """.replace("$1", f"'{old}'")
        ),
    )

    result = report_cli(config, "--json", "--recent", "5")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout.strip().splitlines()[-1])

    rate = db_fetch(
        migrated_db,
        """SELECT count(*) FILTER (WHERE execution_status = 'ready') AS passed,
                  count(*) FILTER (WHERE execution_status = 'failed') AS failed,
                  count(*) AS total
             FROM outreach.company_target WHERE imo_completed_at > now() - interval '24 hours'""",
    )[0]
    assert data["pass_rate"]["window_hours"] == 24.0
    assert (
        data["pass_rate"]["passed"],
        data["pass_rate"]["failed"],
        data["pass_rate"]["total"],
    ) == (rate["passed"], rate["failed"], rate["total"])
    assert rate["total"] == SIZE
    assert data["pass_rate"]["pass_rate"] == round(100 * rate["passed"] / rate["total"], 2)

    codes = db_fetch(
        migrated_db,
        "SELECT failure_code, count(*) AS n FROM outreach.company_target_errors "
        "WHERE created_at > now() - interval '7 days' GROUP BY failure_code",
    )
    assert sorted(
        (c["failure_code"], c["count"]) for c in data["failure_distribution"]["codes"]
    ) == sorted((c["failure_code"], c["n"]) for c in codes)
    counts = [c["count"] for c in data["failure_distribution"]["codes"]]
    assert counts == sorted(counts, reverse=True)

    recent = db_fetch(
        migrated_db,
        "SELECT outreach_id, failure_code FROM outreach.company_target_errors "
        "ORDER BY created_at DESC, error_id DESC LIMIT 5",
    )
    assert [(f["outreach_id"], f["failure_code"]) for f in data["recent_failures"]] == [
        (str(r["outreach_id"]), r["failure_code"]) for r in recent
    ]

    buckets = data["throughput"]["buckets"]
    assert data["throughput"]["bucket"] == "hour" and len(buckets) == 24
    assert sum(b["outcomes"] for b in buckets) == SIZE  # the 3-day-old one is older
    # All in the current hour (or the one before, if the canary ran across an hour boundary).
    assert all(b["outcomes"] == 0 for b in buckets[:-2])
    assert sum(b["passed"] for b in buckets) == rate["passed"]

    pending = db_val(
        migrated_db,
        """SELECT count(*) FROM outreach.outreach o
            WHERE NOT EXISTS (SELECT 1 FROM outreach.company_target ct
                              WHERE ct.outreach_id = o.outreach_id
                                AND ct.execution_status IN ('ready', 'failed'))
              AND NOT EXISTS (SELECT 1 FROM outreach.company_target_errors e
                              WHERE e.outreach_id = o.outreach_id AND e.resolved_at IS NULL)""",
    )
    assert data["pending"] == pending == len(rows) - SIZE - 1
    assert data["rate"] == {"window_minutes": 60.0, "outcomes": SIZE, "per_hour": float(SIZE)}
    assert data["estimate"]["hours"] == round(pending / SIZE, 3)
    assert data["estimate"]["text"].startswith(
        f"{pending} pending, about {pending / SIZE:.1f} hours at the current rate"
    )

    minute = json.loads(
        report_cli(
            config, "--json", "--bucket", "minute", "--buckets", "90", "--rate-minutes", "30"
        )
        .stdout.strip()
        .splitlines()[-1]
    )
    assert len(minute["throughput"]["buckets"]) == 90
    assert sum(b["outcomes"] for b in minute["throughput"]["buckets"]) == SIZE
    assert minute["rate"]["per_hour"] == float(2 * SIZE)

    text = report_cli(config)
    assert text.returncode == 0, text.stderr
    assert "Pass rate (last 24 h, runbook definition)" in text.stdout
    assert f"Pending: {pending}" in text.stdout
    assert "CT-I-NO-DOMAIN" in text.stdout


@pytest.mark.timeout(60)
def test_report_on_an_idle_spine_and_its_refusals(
    migrated_db: str, fresh_db: str, tmp_path: Path
) -> None:
    db_run(
        migrated_db,
        lambda conn: conn.execute(
            "INSERT INTO outreach.outreach (outreach_id, domain) "
            "SELECT gen_random_uuid(), 'd' || i || '.com' FROM generate_series(1, 7) i"
        ),
    )

    def config_for(url: str, **sections: dict[str, Any]) -> Path:
        return write_config(
            tmp_path / f"r{abs(hash(url))}.toml",
            daemon_sections(
                url, World(seed=0, domains={}, hosts={}, smtp_port=1, dns_port=1), **sections
            ),
        )

    # smtp mode without an identity: `report` never talks to a mail server, so it runs.
    idle = config_for(migrated_db, smtp={"helo_name": "", "mail_from": ""})
    result = report_cli(idle, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["pass_rate"] == {
        "window_hours": 24.0,
        "passed": 0,
        "failed": 0,
        "total": 0,
        "pass_rate": None,
    }
    assert data["pending"] == 7 and data["rate"]["per_hour"] is None
    assert data["estimate"]["hours"] is None
    assert data["estimate"]["text"].startswith("7 pending, duration unknown")
    text = report_cli(idle)
    assert text.returncode == 0 and "no data" in text.stdout and "unknown" in text.stdout

    result = report_cli(config_for(UNREACHABLE))
    assert result.returncode == 3 and PASSWORD not in result.stdout + result.stderr
    result = report_cli(config_for(fresh_db))
    assert result.returncode == 2 and "ct-actors migrate" in result.stderr
    assert report_cli(config_for(migrated_db), "--buckets", "0").returncode == 2


@pytest.mark.timeout(30)
@pytest.mark.parametrize(
    ("command", "phrases"),
    [
        (
            "report",
            (
                "--json",
                "--window-hours",
                "--recent",
                "--bucket",
                "--rate-minutes",
                "writes nothing",
            ),
        ),
        (
            "canary",
            (
                "--size",
                "--seed",
                "--output",
                "--mode",
                "--timeout",
                ".com 40 %",
                "sovereign_id",
                "Exit 0 only if all 8 checks pass",
            ),
        ),
    ],
)
def test_help(command: str, phrases: tuple[str, ...]) -> None:
    result = ct_actors_cli(command, "--help", env=WIDE)
    assert result.returncode == 0, result.stderr
    for phrase in phrases:
        assert phrase in result.stdout, phrase
    top = ct_actors_cli("--help", env=WIDE)
    assert command in top.stdout
