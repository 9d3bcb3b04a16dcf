"""The world file: JSON lines, so that a world of a million domains is written and read one
domain at a time instead of as one document (which cost the reader ~4 KB of memory per domain).

Line 1 is the `WorldHeader` (the serving parameters, the domain count and how many domains have
each behaviour); then one `{"host": {...}}` line per host and one `{"domain": {...}}` line per
domain. Every host comes before the first domain that names it, so a reader can stream.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ct_actors.sim.world_types import Behaviour, SimDomain, SimHost

JSON_VERSION = 2


@dataclass(frozen=True, slots=True)
class WorldHeader:
    """What a world file says before its hosts and domains: enough to configure a prober
    against the world and to know its mix, without reading the world."""

    seed: int
    latency_ms: float
    jitter_ms: float
    smtp_port: int
    dns_address: str
    dns_port: int
    greylist_delay: float
    tarpit_delay: float
    conn_limit: int
    domains: int
    behaviours: Mapping[str, int] = field(default_factory=dict)

    def has(self, behaviour: Behaviour) -> bool:
        return self.behaviours.get(str(behaviour), 0) > 0

    def to_json(self) -> str:
        doc = {"version": JSON_VERSION, **asdict(self), "behaviours": dict(self.behaviours)}
        return json.dumps(doc, ensure_ascii=False, separators=(",", ":"))

    @classmethod
    def from_dict(cls, doc: Mapping[str, Any]) -> WorldHeader:
        if doc.get("version") != JSON_VERSION:
            raise ValueError(f"unsupported world version {doc.get('version')!r}")
        return cls(
            seed=doc["seed"],
            latency_ms=doc["latency_ms"],
            jitter_ms=doc["jitter_ms"],
            smtp_port=doc["smtp_port"],
            dns_address=doc["dns_address"],
            dns_port=doc["dns_port"],
            greylist_delay=doc["greylist_delay"],
            tarpit_delay=doc["tarpit_delay"],
            conn_limit=doc["conn_limit"],
            domains=doc["domains"],
            behaviours=dict(doc["behaviours"]),
        )


def behaviour_histogram(domains: Iterable[SimDomain]) -> dict[str, int]:
    """Domains per behaviour, in `Behaviour` order (the header is compared byte-wise)."""
    counts = dict.fromkeys((str(b) for b in Behaviour), 0)
    for d in domains:
        counts[str(d.behaviour)] += 1
    return {name: n for name, n in counts.items() if n}


def _line(kind: str, doc: Mapping[str, Any]) -> str:
    return json.dumps({kind: doc}, ensure_ascii=False, separators=(",", ":")) + "\n"


def world_lines(
    header: WorldHeader, hosts: Iterable[SimHost], domains: Iterable[SimDomain]
) -> Iterator[str]:
    """The file's lines: header, hosts, domains (each line ends with a newline)."""
    yield header.to_json() + "\n"
    for host in hosts:
        yield _line("host", host.to_dict())
    for domain in domains:
        yield _line("domain", domain.to_dict())


def write_world_file(path: Path, lines: Iterable[str]) -> None:
    """Write `lines` to `path` atomically: a reader polling for the file never sees half a
    world."""
    tmp = path.with_name(path.name + ".tmp")
    with tmp.open("w", encoding="utf-8") as out:
        out.writelines(lines)
    os.replace(tmp, path)


def parse_world_lines(
    lines: Iterable[str],
) -> tuple[WorldHeader, list[SimHost], list[SimDomain]]:
    """A whole world file's header, hosts and domains."""
    it = iter(lines)
    header = WorldHeader.from_dict(json.loads(next(it)))
    hosts: list[SimHost] = []
    domains: list[SimDomain] = []
    for line in it:
        if not line.strip():
            continue
        doc = json.loads(line)
        if "host" in doc:
            hosts.append(SimHost.from_dict(doc["host"]))
        else:
            domains.append(SimDomain.from_dict(doc["domain"]))
    return header, hosts, domains


def read_header(path: Path) -> WorldHeader:
    with path.open(encoding="utf-8") as lines:
        return WorldHeader.from_dict(json.loads(lines.readline()))


def iter_domains(path: Path) -> Iterator[SimDomain]:
    """The file's domains one by one, in file order (host lines are skipped unparsed)."""
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            if line.startswith('{"domain":'):
                yield SimDomain.from_dict(json.loads(line)["domain"])
