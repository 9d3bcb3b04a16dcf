"""Seed a demo/bench database's spine from a simulated world.

The demo plays the upstream system here: it writes synthetic `outreach.outreach` rows (ids from
a seeded generator, so runs are repeatable) and a `ct_demo.people` table of sample names that
the daemon reads through the operator-style `probe.names_query`. The daemon itself never mints
ids or writes the spine.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from ct_actors.sim.world import World

NAMES_QUERY = "SELECT first_name, last_name FROM ct_demo.people WHERE outreach_id = $1 ORDER BY ord"

PEOPLE_DDL = """
CREATE SCHEMA IF NOT EXISTS ct_demo;
CREATE TABLE IF NOT EXISTS ct_demo.people (
    outreach_id uuid NOT NULL,
    ord int NOT NULL,
    first_name text NOT NULL,
    last_name text NOT NULL,
    PRIMARY KEY (outreach_id, ord)
);
"""

# Spine values that no normalisation may turn into a domain: expected CT-I-NO-DOMAIN.
UNUSABLE = (None, "", "   ", "n/a", "sales@", "192.0.2.10", "https://", "bob@example-sim.com")


@dataclass(frozen=True, slots=True)
class SpineRow:
    outreach_id: uuid.UUID
    raw_domain: str | None
    domain: str | None  # the world's domain this row should resolve to; None when unusable


def spine_rows(world: World, seed: int, *, shared_fraction: float = 0.1) -> list[SpineRow]:
    """One row per domain, a few domains with several rows (shared by several companies, e.g.
    subsidiaries), spine values written as messy URLs, and a few unusable values."""
    maker = SpineMaker(seed, shared_fraction=shared_fraction)
    rows = [row for name in sorted(world.domains) for row in maker.for_domain(name)]
    rows.extend(maker.unusable(len(world.domains)))
    maker.rng.shuffle(rows)
    return rows


class SpineMaker:
    """`spine_rows` one domain at a time, for a reader that streams the world (the bench):
    the rows of a domain, then the unusable rows once every domain is done. The same seed and
    the same order of domains give the same rows."""

    def __init__(self, seed: int, *, shared_fraction: float = 0.1) -> None:
        self.rng = random.Random(seed * 7919 + 1)
        self.shared_fraction = shared_fraction

    def _new_id(self) -> uuid.UUID:
        return uuid.UUID(int=self.rng.getrandbits(128), version=4)

    def for_domain(self, name: str) -> list[SpineRow]:
        rng = self.rng
        copies = 1 + (rng.randint(1, 3) if rng.random() < self.shared_fraction else 0)
        return [SpineRow(self._new_id(), _messy(rng, name), name) for _ in range(copies)]

    def unusable(self, n_domains: int) -> list[SpineRow]:
        return [
            SpineRow(self._new_id(), UNUSABLE[index % len(UNUSABLE)], None)
            for index in range(max(3, n_domains // 200))
        ]


def _messy(rng: random.Random, domain: str) -> str:
    style = rng.random()
    if style < 0.55:
        return domain
    if style < 0.70:
        return f"https://www.{domain}/"
    if style < 0.80:
        return f"http://{domain}/about-us?ref=crm"
    if style < 0.90:
        return domain.upper()
    if style < 0.95:
        return f"www.{domain}."
    return f"{domain}:443"


async def write_spine(conn: Any, world: World, rows: Sequence[SpineRow]) -> None:
    """Write the spine (`outreach.outreach`) and the demo's people table on an asyncpg
    connection (asyncio side), as upstream would; the demo, the bench and the end-to-end tests
    all seed through it (the bench chunk by chunk: `ct_actors.demo.seeding`)."""
    await conn.execute(PEOPLE_DDL)
    await copy_spine(
        conn, rows, [world.people(r.domain) if r.domain is not None else () for r in rows]
    )


async def copy_spine(
    conn: Any, rows: Sequence[SpineRow], people: Sequence[Sequence[tuple[str, str]]]
) -> None:
    """COPY `rows` and each row's `people` (same order) into the spine and the people table."""
    await conn.copy_records_to_table(
        "outreach",
        schema_name="outreach",
        columns=["outreach_id", "domain"],
        records=[(r.outreach_id, r.raw_domain) for r in rows],
    )
    await conn.copy_records_to_table(
        "people",
        schema_name="ct_demo",
        columns=["outreach_id", "ord", "first_name", "last_name"],
        records=[
            (r.outreach_id, i, first, last)
            for r, names in zip(rows, people, strict=True)
            for i, (first, last) in enumerate(names)
        ],
    )
