"""End to end: the real daemon process against the simulated internet (its own process, real
loopback sockets) and a real PostgreSQL database; every row it writes is checked against the
world's ground truth."""

from __future__ import annotations

import re
import uuid
from collections import Counter
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from e2e_support import (
    DaemonProcess,
    SimProcess,
    Snapshot,
    daemon_sections,
    db_fetch,
    drain_exit_code,
    expected_label,
    mismatches,
    seed_spine,
    snapshot,
    write_config,
)

from ct_actors.demo.spine import SpineRow, spine_rows
from ct_actors.probe.patterns import candidates
from ct_actors.sim.world import DEFAULT_MIX, Behaviour, World, local_part
from tests.shared_docs import RUNBOOK, skip_unless_ci

pytestmark = [pytest.mark.e2e, pytest.mark.db]

StartSim = Callable[..., SimProcess]
StartDaemon = Callable[..., DaemonProcess]

# The operations runbook's three queries, verbatim (compared with the runbook when it is there).
RUNBOOK_RECENT_FAILURES = """\
SELECT outreach_id, failure_code, blocking_reason, created_at
FROM outreach.company_target_errors
WHERE created_at > NOW() - INTERVAL '24 hours'
ORDER BY created_at DESC
LIMIT 100;"""
RUNBOOK_FAILURE_DISTRIBUTION = """\
SELECT failure_code, COUNT(*) as count
FROM outreach.company_target_errors
WHERE created_at > NOW() - INTERVAL '7 days'
GROUP BY failure_code
ORDER BY count DESC;"""
RUNBOOK_PASS_RATE = """\
SELECT
  COUNT(*) FILTER (WHERE execution_status = 'ready') as passed,
  COUNT(*) FILTER (WHERE execution_status = 'failed') as failed,
  ROUND(100.0 * COUNT(*) FILTER (WHERE execution_status = 'ready') / COUNT(*), 2) as pass_rate
FROM outreach.company_target
WHERE imo_completed_at > NOW() - INTERVAL '24 hours';"""

FAILURE_CODES = {
    "CT-I-NOT-FOUND",
    "CT-I-NO-DOMAIN",
    "CT-I-ALREADY-PROCESSED",
    "CT-M-NO-MX",
    "CT-M-NO-PATTERN",
    "CT-M-SMTP-FAIL",
    "CT-M-VERIFY-FAIL",
}
# The contract's templates, restated here rather than imported from the code under test.
TEMPLATES = {
    "first.last": "{first}.{last}",
    "firstlast": "{first}{last}",
    "f.last": "{f}.{last}",
    "first.l": "{first}.{l}",
    "first": "{first}",
    "last": "{last}",
    "info": "info",
    "contact": "contact",
}
SMTP_VERBS = {"EHLO", "HELO", "MAIL", "RCPT", "RSET", "QUIT", "NOOP"}


def run_to_completion(
    start_daemon: StartDaemon,
    config: Path,
    expected: list[str],
    timeout: float = 90.0,
) -> DaemonProcess:
    """`run --drain` to its end; `expected` are the ground-truth labels: it exits 4 (held back)
    when some records are to stay deferred, else 0."""
    daemon = start_daemon(config, "run", "--drain")
    rc = daemon.wait(timeout)
    assert rc == drain_exit_code(expected), daemon.diagnostics()
    return daemon


def check_fail_rows(snap: Snapshot, rows: list[SpineRow]) -> None:
    """Every FAIL: one open error row with a runbook code, the right stage, retry_allowed false,
    and company_target.execution_status = 'failed'."""
    spine_ids = {r.outreach_id for r in rows}
    for outreach_id, errors in snap.errors.items():
        assert outreach_id in spine_ids
        assert len(errors) == 1, errors
        (err,) = errors
        code = err["failure_code"]
        assert code in FAILURE_CODES
        stage = "I" if code.startswith("CT-I-") else "M"
        assert err["imo_stage"] == stage
        assert err["pipeline_stage"] == {"I": "input", "M": "middle"}[stage]
        assert err["retry_allowed"] is False
        assert err["resolved_at"] is None
        assert err["blocking_reason"]
        assert err["created_at"] is not None
        ct = snap.targets[outreach_id]
        assert ct["execution_status"] == "failed"
        assert ct["email_method"] is None and ct["confidence_score"] is None


def check_pass_row(world: World, row: SpineRow, ct: dict[str, Any], mode: str) -> None:
    assert row.domain is not None
    domain = world.domain(row.domain)
    method = ct["method_type"]
    assert ct["execution_status"] == "ready"
    assert ct["imo_completed_at"] is not None
    assert Decimal(0) <= ct["confidence_score"] <= Decimal(1)
    assert ct["domain_normalised"] == domain.name
    assert ct["email_method"] == f"{TEMPLATES[method]}@{domain.name}"
    if method not in ("info", "contact"):
        assert "{" in ct["email_method"]
    # Never one of the sample people's real addresses.
    people_addresses = {
        f"{local_part(fmt, first, last)}@{domain.name}"
        for first, last in domain.people
        for fmt in ("first.last", "firstlast", "f.last", "first.l", "first", "last")
    }
    assert ct["email_method"] not in people_addresses
    evidence = ct["evidence"]
    assert evidence["raw_domain"] == row.raw_domain
    mx_names = {h["name"] for h in evidence["mx_hosts"]}
    assert mx_names == {host for _, host in domain.mx}
    assert all(h["addresses"] for h in evidence["mx_hosts"] if h["name"] in world.hosts)
    if mode == "mx-only":
        return
    assert ct["mx_host"] in mx_names
    replies = [reply for visit in evidence["visits"] for reply in visit["replies"]]
    assert any(r.startswith("RCPT ") and " -> 250" in r for r in replies), replies
    if ct["is_catchall"]:
        probe = evidence["catchall_probe"]
        assert any(r.startswith(f"RCPT {probe} -> 250") for r in replies), replies


def log_kind(label: str) -> str:
    """An expected label as the `outcome` log line tells it: PASS, DEFERRED or the code."""
    if label == "PENDING":
        return "DEFERRED"
    return label.split(" ")[1] if label.startswith("FAIL") else "PASS"


def runbook_sql_blocks() -> list[str]:
    text = RUNBOOK.read_text(encoding="utf-8")
    return [block.strip() for block in re.findall(r"```sql\n(.*?)```", text, re.DOTALL)]


def test_runbook_queries_are_the_runbooks() -> None:
    if not RUNBOOK.exists():
        skip_unless_ci(f"{RUNBOOK} is not on this machine")
    assert runbook_sql_blocks() == [
        RUNBOOK_RECENT_FAILURES,
        RUNBOOK_FAILURE_DISTRIBUTION,
        RUNBOOK_PASS_RATE,
    ]


@pytest.mark.timeout(180)
def test_every_behaviour_ends_in_the_right_row(
    fresh_db: str, start_sim: StartSim, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    seed = 3
    sim = start_sim(seed=seed, domains=150, latency_ms=5, jitter_ms=2)
    world = sim.world
    assert {d.behaviour for d in world.domains.values()} == set(DEFAULT_MIX)
    config = write_config(tmp_path / "ct-actors.toml", daemon_sections(fresh_db, world))

    migrate = start_daemon(config, "migrate")
    assert migrate.wait(60) == 0, migrate.diagnostics()
    rows = spine_rows(world, seed)
    assert any(r.domain is None for r in rows)  # unusable spine values are in the mix
    seed_spine(fresh_db, world, rows)

    daemon = run_to_completion(start_daemon, config, [expected_label(world, r) for r in rows])
    sim_stats = sim.stop()
    snap = snapshot(fresh_db)

    assert mismatches(world, rows, snap) == []
    check_fail_rows(snap, rows)
    deferred_ids = set()
    for row in rows:
        want = expected_label(world, row)
        ct = snap.targets.get(row.outreach_id)
        if want.startswith("PASS"):
            assert ct is not None
            assert row.outreach_id not in snap.errors
            check_pass_row(world, row, ct, "smtp")
        elif want == "PENDING":
            # Blocklisted: our fault, not the domain's. No terminal row; the lease is released
            # with a future not_before, so it is claimed again later.
            assert row.domain is not None
            assert world.domain(row.domain).behaviour is Behaviour.BLOCKLIST
            assert ct is None or ct["execution_status"] not in ("ready", "failed")
            assert row.outreach_id not in snap.errors
            lease = snap.leases[row.outreach_id]
            assert lease["deferred"] and not lease["live"], lease
            assert "block" in lease["last_reason"]
            deferred_ids.add(row.outreach_id)
    assert deferred_ids
    # Finished records keep no lease.
    assert set(snap.leases) == deferred_ids

    # Manners, seen from the far side: never DATA, nothing but the probe's verbs, every session
    # ended by QUIT (except where the server hung up on us).
    assert sim_stats["data_attempts"] == 0
    assert set(sim_stats["commands"]) <= SMTP_VERBS
    assert sim_stats["open_connections"] == 0
    assert (
        sim_stats["commands"]["QUIT"] + sim_stats["dropped"] + sim_stats["rejected_421"]
        == sim_stats["connections"]
    ), sim_stats

    # The canonical log line: one `outcome` per record and pass, the last one agreeing with the
    # database (a greylisted record logs its DEFERRED pass first, then its outcome).
    last: dict[str, str] = {}
    for e in daemon.outcomes():
        last[e["outreach_id"]] = e["code"] or e["outcome"]
    assert Counter(last.values()) == Counter(log_kind(expected_label(world, r)) for r in rows)
    greylisted = {d.name for d in world.by_behaviour(Behaviour.GREYLIST)}
    deferred_then_done = Counter(e["outreach_id"] for e in daemon.outcomes())
    assert all(
        n == 1 or world.domain(r.domain).behaviour is Behaviour.GREYLIST  # type: ignore[arg-type]
        for r in rows
        for n in [deferred_then_done[str(r.outreach_id)]]
    ), greylisted

    # The runbook's queries run unchanged and agree with the rows.
    recent = db_fetch(fresh_db, RUNBOOK_RECENT_FAILURES)
    n_errors = sum(len(e) for e in snap.errors.values())
    assert len(recent) == min(n_errors, 100)
    assert all(r["failure_code"] in FAILURE_CODES and r["blocking_reason"] for r in recent)
    distribution = db_fetch(fresh_db, RUNBOOK_FAILURE_DISTRIBUTION)
    assert {r["failure_code"]: r["count"] for r in distribution} == Counter(
        e["failure_code"] for errs in snap.errors.values() for e in errs
    )
    (rate,) = db_fetch(fresh_db, RUNBOOK_PASS_RATE)
    passed = sum(1 for ct in snap.targets.values() if ct["execution_status"] == "ready")
    assert (rate["passed"], rate["failed"]) == (passed, n_errors)
    assert rate["pass_rate"] == round(Decimal(100) * passed / (passed + n_errors), 2)


def test_mx_only_mode_passes_every_domain_with_mx(
    migrated_db: str, start_sim: StartSim, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    seed = 4
    sim = start_sim(seed=seed, domains=80)
    world = sim.world
    config = write_config(
        tmp_path / "ct-actors.toml", daemon_sections(migrated_db, world, mode="mx-only")
    )
    rows = spine_rows(world, seed)
    seed_spine(migrated_db, world, rows)

    run_to_completion(
        start_daemon, config, [expected_label(world, r, "mx-only") for r in rows]
    )
    sim_stats = sim.stop()
    snap = snapshot(migrated_db)

    assert mismatches(world, rows, snap, mode="mx-only") == []
    check_fail_rows(snap, rows)
    for row in rows:
        if row.domain is not None and world.domain(row.domain).has_mx:
            ct = snap.targets[row.outreach_id]
            assert (ct["method_type"], ct["confidence_score"]) == ("first.last", Decimal("0.70"))
            assert ct["is_catchall"] is False
            check_pass_row(world, row, ct, "mx-only")
    assert snap.leases == {}  # nothing deferred in mx-only mode
    # MX-only touches no mail server at all.
    assert sim_stats["connections"] == 0 and sim_stats["rcpts"] == 0
    assert sim_stats["dns_queries"]["MX"] == len(world.domains)


def spellings(name: str) -> list[str]:
    """Twenty ways a CRM might hold the same company domain."""
    return [
        name, name.upper(), name.capitalize(), f"  {name}  ", f"\t{name}\n", f"{name}.",
        f"{name}/", f"{name}:443", f"www.{name}.", f"www.{name}/careers",
        f"http://www.{name}", f"https://{name}", f"https://{name}/", f"https://www.{name}/",
        f"http://{name}/about-us?ref=crm", f"HTTPS://WWW.{name.upper()}/CONTACT",
        f"https://{name}:8443/path?q=1#frag", f"http://{name.upper()}:80/",
        f"https://www.{name}/index.html?utm_source=x", f"HTTP://WWW.{name}./",
    ]  # fmt: skip


def test_a_domain_shared_by_many_records_is_probed_once(
    migrated_db: str, start_sim: StartSim, start_daemon: StartDaemon, tmp_path: Path
) -> None:
    sim = start_sim(seed=5, domains=20)
    world = sim.world
    domain = min(world.by_behaviour(Behaviour.VERIFIABLE), key=lambda d: d.name)
    (host,) = (h for _, h in domain.mx)
    raw = spellings(domain.name)
    assert len(set(raw)) == 20
    rows = [SpineRow(uuid.uuid4(), spelling, domain.name) for spelling in raw]
    seed_spine(migrated_db, world, rows)
    config = write_config(
        tmp_path / "ct-actors.toml",
        daemon_sections(migrated_db, world, probe={"claim_batch": 4}),
    )

    daemon = run_to_completion(start_daemon, config, [expected_label(world, r) for r in rows])
    sim_stats = sim.stop()
    snap = snapshot(migrated_db)

    assert mismatches(world, rows, snap) == []
    methods = {snap.targets[r.outreach_id]["email_method"] for r in rows}
    assert len(methods) == 1 and snap.errors == {}
    for row in rows:
        assert snap.targets[row.outreach_id]["evidence"]["raw_domain"] == row.raw_domain
    # One probe, as the mail server saw it: one domain, one probe's RCPTs, on as many sessions
    # as the per-session error budget (smtp.max_errors_per_session, 8) needs for them.
    assert set(sim_stats["connections_by_host"]) == {host}
    assert sim_stats["connections_by_host"][host] <= 1 + sim_stats["rcpts"] // 5
    assert sim_stats["rcpt_domains"] == 1
    assert sim_stats["rcpts"] <= 1 + len(candidates(domain.name, domain.people))
    assert sim_stats["dns_queries"]["MX"] == 1
    (final,) = daemon.events("stats_final")
    assert final["dispatcher"]["domains_probed"] == 1
    assert final["dispatcher"]["jobs"] == 20
