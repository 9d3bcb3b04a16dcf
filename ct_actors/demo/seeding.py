"""The bench's and the demo's spine, streamed: seeded from the world file a chunk at a time with
each row's expected label beside it (`ct_demo.expected`), and checked afterwards by walking the
outcomes in key order, a page at a time. The harness never holds the world, so the peak RSS it
reports is the daemon pipeline's (a world of 200,000 domains loaded whole cost ~800 MB)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ct_actors.demo.labels import domain_label, row_label
from ct_actors.demo.spine import PEOPLE_DDL, SpineMaker, SpineRow, copy_spine
from ct_actors.sim.world_file import iter_domains, read_header

EXPECTED_DDL = """
CREATE TABLE IF NOT EXISTS ct_demo.expected (
    outreach_id uuid PRIMARY KEY,
    raw_domain text,
    behaviour text NOT NULL,
    expected text NOT NULL
);
"""

SEED_CHUNK = 20_000  # spine rows per COPY: ~10 MB of Python objects at a time

CHECK_PAGE = 10_000

_UNUSABLE = "unusable"


@dataclass(frozen=True, slots=True)
class Seeded:
    records: int
    domains: int
    seconds: float


class _Chunk:
    def __init__(self) -> None:
        self.rows: list[SpineRow] = []
        self.people: list[Sequence[tuple[str, str]]] = []
        self.expected: list[tuple[Any, str | None, str, str]] = []

    def add(
        self, row: SpineRow, people: Sequence[tuple[str, str]], behaviour: str, label: str
    ) -> None:
        self.rows.append(row)
        self.people.append(people)
        self.expected.append((row.outreach_id, row.raw_domain, behaviour, label))

    async def flush(self, conn: Any) -> int:
        done = len(self.rows)
        if done:
            await copy_spine(conn, self.rows, self.people)
            await conn.copy_records_to_table(
                "expected",
                schema_name="ct_demo",
                columns=["outreach_id", "raw_domain", "behaviour", "expected"],
                records=self.expected,
            )
        self.rows, self.people, self.expected = [], [], []
        return done


async def seed_from_world_file(
    conn: Any, world_path: Path, seed: int, mode: str, *, chunk: int = SEED_CHUNK
) -> Seeded:
    """Seed the spine, the people table and the expectations from the world file on an asyncpg
    connection (asyncio side), `chunk` spine rows per COPY. Rows come in the file's domain order
    (`SpineMaker`); the daemon claims by outreach_id, which is random, so order does not matter."""
    started = time.perf_counter()
    header = read_header(world_path)
    await conn.execute(PEOPLE_DDL + EXPECTED_DDL)
    maker = SpineMaker(seed)
    pending = _Chunk()
    records = domains = 0
    for domain in iter_domains(world_path):
        domains += 1
        label, behaviour = domain_label(domain, mode), str(domain.behaviour)
        for row in maker.for_domain(domain.name):
            pending.add(row, domain.people, behaviour, label)
        if len(pending.rows) >= chunk:
            records += await pending.flush(conn)
    if domains != header.domains:
        raise ValueError(f"{world_path}: {domains} domains, its header says {header.domains}")
    for row in maker.unusable(header.domains):
        pending.add(row, (), _UNUSABLE, domain_label(None, mode))
    records += await pending.flush(conn)
    return Seeded(records, domains, time.perf_counter() - started)


@dataclass(slots=True)
class Accuracy:
    checked: int = 0
    mismatches: int = 0
    examples: list[dict[str, Any]] = field(default_factory=list)
    by_code: Counter[str] = field(default_factory=Counter)

    def add(self, row: Any) -> None:
        got = row_label(row if row["execution_status"] is not None else None)
        self.checked += 1
        self.by_code[" ".join(got.split(" ")[:2])] += 1
        if got != row["expected"]:
            self.mismatches += 1
            if len(self.examples) < 10:
                self.examples.append(
                    {
                        "outreach_id": str(row["outreach_id"]),
                        "domain": row["raw_domain"],
                        "behaviour": row["behaviour"],
                        "expected": row["expected"],
                        "got": got,
                    }
                )

    def to_dict(self) -> dict[str, Any]:
        return {
            "checked": self.checked,
            "mismatches": self.mismatches,
            "percent": round(100 * (self.checked - self.mismatches) / max(self.checked, 1), 2),
            "examples": self.examples,
        }


_PAGE_QUERY = """
SELECT x.outreach_id, x.raw_domain, x.behaviour, x.expected,
       ct.execution_status, ct.method_type, ct.confidence_score, ct.is_catchall, e.failure_code
  FROM ct_demo.expected x
  LEFT JOIN outreach.company_target ct
         ON ct.outreach_id = x.outreach_id AND ct.execution_status IN ('ready', 'failed')
  LEFT JOIN outreach.company_target_errors e
         ON e.outreach_id = ct.outreach_id AND e.resolved_at IS NULL
 WHERE x.outreach_id > $1
 ORDER BY x.outreach_id
 LIMIT $2
"""


async def check_outcomes(conn: Any, *, page: int = CHECK_PAGE) -> Accuracy:
    """Every seeded row's outcome against its expectation, `page` rows per query in key order
    (keyset: one open error per record at most, so a page boundary never splits a record)."""
    accuracy = Accuracy()
    after = "00000000-0000-0000-0000-000000000000"
    while True:
        rows = await conn.fetch(_PAGE_QUERY, after, page)
        for row in rows:
            accuracy.add(row)
        if len(rows) < page:
            return accuracy
        after = rows[-1]["outreach_id"]
