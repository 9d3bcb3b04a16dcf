"""The world streamed: the world file read line by line, the generator's order, the bench's
seeding in COPY chunks with the expectations beside, and the check that walks the outcomes a page
at a time (issue 13)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from e2e_support import db_fetch, db_run

from ct_actors.demo.labels import PENDING, expected_label
from ct_actors.demo.seeding import check_outcomes, seed_from_world_file
from ct_actors.demo.spine import SpineMaker, SpineRow, spine_rows
from ct_actors.sim.world import REAL_SERVER_MIX, World, WorldHeader
from ct_actors.sim.world_file import iter_domains, read_header
from ct_actors.sim.world_generator import NetworkParams, behaviour_counts, iter_network
from ct_actors.sim.world_types import Behaviour, SimDomain, SimHost

pytestmark = pytest.mark.timeout(60)

_NETWORK = NetworkParams(mix=REAL_SERVER_MIX, blocklist_hosts=2)


def test_the_generator_streams_every_host_before_its_first_domain() -> None:
    seen_hosts: set[str] = set()
    domains: list[SimDomain] = []
    for item in iter_network(5, 1500, _NETWORK):
        if isinstance(item, SimHost):
            assert item.name not in seen_hosts
            seen_hosts.add(item.name)
        else:
            assert {h for _, h in item.mx if h != "."} <= seen_hosts, item.name
            domains.append(item)
    world = World.generate(5, 1500, mix=REAL_SERVER_MIX, blocklist_hosts=2)
    assert [d.name for d in domains] == list(world.domains)
    assert seen_hosts == set(world.hosts)
    assert world.header().behaviours == {
        str(b): n for b, n in behaviour_counts(1500, REAL_SERVER_MIX).items() if n
    }


def test_world_file_is_json_lines_read_one_domain_at_a_time(tmp_path: Path) -> None:
    world = World.generate(9, 400, latency_ms=7, smtp_port=2599)
    path = tmp_path / "world.jsonl"
    world.write_file(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1 + len(world.hosts) + len(world.domains)
    kinds = [next(iter(json.loads(line))) for line in lines[1:]]
    # Hosts first, then domains: a reader that wants only the domains skips a prefix.
    assert kinds == ["host"] * len(world.hosts) + ["domain"] * len(world.domains)
    header = read_header(path)
    assert header == world.header()
    assert (header.domains, header.latency_ms, header.smtp_port) == (400, 7.0, 2599)
    assert list(iter_domains(path)) == list(world.domains.values())
    assert World.read_file(path) == world
    assert World.from_json(world.to_json()).to_json() == path.read_text(encoding="utf-8")


def test_an_older_world_file_is_refused_with_its_version() -> None:
    with pytest.raises(ValueError, match="unsupported world version 1"):
        World.from_json(json.dumps({"version": 1, "seed": 1, "hosts": [], "domains": []}))


def test_spine_maker_gives_spine_rows_one_domain_at_a_time() -> None:
    world = World.generate(4, 900)
    maker = SpineMaker(4)
    streamed = [row for name in sorted(world.domains) for row in maker.for_domain(name)]
    streamed += maker.unusable(len(world.domains))
    maker.rng.shuffle(streamed)
    assert streamed == spine_rows(world, 4)
    assert sum(1 for r in streamed if r.domain is None) == 900 // 200


def _inserted_outcomes(conn: Any, passed: SpineRow, failed: SpineRow) -> Any:
    async def insert() -> None:
        await conn.execute(
            "INSERT INTO outreach.company_target (outreach_id, execution_status, method_type, "
            "confidence_score, is_catchall) VALUES ($1, 'ready', 'first.last', 0.70, false)",
            passed.outreach_id,
        )
        await conn.execute(
            "INSERT INTO outreach.company_target (outreach_id, execution_status) "
            "VALUES ($1, 'failed')",
            failed.outreach_id,
        )
        await conn.execute(
            "INSERT INTO outreach.company_target_errors (outreach_id, failure_code) "
            "VALUES ($1, 'CT-M-NO-MX')",
            failed.outreach_id,
        )

    return insert()


@pytest.mark.db
def test_seeding_streams_the_world_file_in_chunks_and_the_check_walks_pages(
    migrated_db: str, tmp_path: Path
) -> None:
    world = World.generate(12, 700)
    path = tmp_path / "world.jsonl"
    world.write_file(path)
    seeded = db_run(
        migrated_db, lambda conn: seed_from_world_file(conn, path, 12, "mx-only", chunk=97)
    )
    maker = SpineMaker(12)
    rows = [row for name in world.domains for row in maker.for_domain(name)]
    rows += maker.unusable(len(world.domains))
    assert (seeded.records, seeded.domains) == (len(rows), 700)

    spine = db_fetch(migrated_db, "SELECT outreach_id, domain FROM outreach.outreach")
    assert sorted((r["outreach_id"], r["domain"]) for r in spine) == sorted(
        (r.outreach_id, r.raw_domain) for r in rows
    )
    people = db_fetch(
        migrated_db,
        "SELECT outreach_id, ord, first_name, last_name FROM ct_demo.people "
        "ORDER BY outreach_id, ord",
    )
    want_people = sorted(
        (r.outreach_id, i, first, last)
        for r in rows
        if r.domain is not None
        for i, (first, last) in enumerate(world.people(r.domain))
    )
    assert [tuple(p.values()) for p in people] == want_people
    expected = {
        r["outreach_id"]: r["expected"]
        for r in db_fetch(migrated_db, "SELECT outreach_id, expected FROM ct_demo.expected")
    }
    assert expected == {r.outreach_id: expected_label(world, r, "mx-only") for r in rows}

    # Nothing written yet: every record reads PENDING, and a page boundary loses none.
    accuracy = db_run(migrated_db, lambda conn: check_outcomes(conn, page=50))
    assert accuracy.checked == len(rows)
    assert accuracy.by_code == {PENDING: len(rows)}
    assert accuracy.mismatches == len(rows)
    assert len(accuracy.examples) == 10

    passing = next(r for r in rows if expected[r.outreach_id].startswith("PASS"))
    failing = next(r for r in rows if expected[r.outreach_id] == "FAIL CT-M-NO-MX")
    db_run(migrated_db, lambda conn: _inserted_outcomes(conn, passing, failing))
    accuracy = db_run(migrated_db, lambda conn: check_outcomes(conn, page=50))
    assert accuracy.mismatches == len(rows) - 2
    assert accuracy.by_code["PASS first.last"] == 1
    assert accuracy.by_code["FAIL CT-M-NO-MX"] == 1


def test_header_says_which_behaviours_the_world_has() -> None:
    header = World.generate(3, 300, mix=REAL_SERVER_MIX).header()
    assert isinstance(header, WorldHeader)
    assert sum(header.behaviours.values()) == 300
    assert header.has(Behaviour.DHA_BLOCK) and header.has(Behaviour.GREYLIST_300)
    assert not World.generate(3, 300).header().has(Behaviour.DHA_BLOCK)
