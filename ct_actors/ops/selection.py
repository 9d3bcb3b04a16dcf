"""The canary's stratified selection (pure).

Strata are those of the canary report: .com 40 %, .io 20 %, .org 20 %, other 20 %. A record's
stratum is the top-level label of its domain *as the daemon will probe it*
(`normalise_domain`: scheme, www., path, port, case, trailing dot and IDNA undone), so
`https://www.Acme.IO/about` is .io. A spine value the daemon cannot use (NULL, an e-mail
address, an IP, ...) is "other" (it will FAIL with CT-I-NO-DOMAIN, which the canary should
see too); so are .net, .co.uk, .de and every other TLD.

Rounding: the targets are the largest-remainder apportionment of `size` by the weights, so
they always add up to `size`: every stratum gets floor(size x weight), and the records left
over go one each to the strata with the largest remainders, ties in the order .com, .io, .org,
other. `--size 100` gives 40/20/20/20, 20 gives 8/4/4/4, 7 gives 3/2/1/1, 1 gives 1/0/0/0.

Shortfall: when a stratum has fewer claimable pending records than its target, all of them are
taken and the shortfall is reported; it is NOT filled from another stratum (the canary stays
smaller than requested rather than silently skewing the mix), and the report says so.

Determinism: within a stratum the records with the smallest SHA-256(f"{seed}:{outreach_id}")
are taken. The choice depends only on the seed and the set of claimable records (not on the
order the database returns them), and it streams: at most `target` records per stratum are
kept in memory, whatever the size of the spine.
"""

from __future__ import annotations

import hashlib
import heapq
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from ct_actors.probe.normalise import UnusableDomain, normalise_domain

OTHER = "other"
STRATA: tuple[str, ...] = (".com", ".io", ".org", OTHER)
# Percent, so that the apportionment is exact integer arithmetic.
WEIGHTS_PERCENT: Mapping[str, int] = {".com": 40, ".io": 20, ".org": 20, OTHER: 20}


def stratum_targets(size: int, weights: Mapping[str, int] = WEIGHTS_PERCENT) -> dict[str, int]:
    """Largest-remainder apportionment of `size` over the strata (see the module docstring)."""
    if size < 0:
        raise ValueError(f"size must not be negative, got {size}")
    total = sum(weights.values())
    if total <= 0:
        raise ValueError("weights must add up to a positive number")
    floors = {s: size * w // total for s, w in weights.items()}
    remainders = {s: size * w % total for s, w in weights.items()}
    order = list(weights)
    left = size - sum(floors.values())
    by_remainder = sorted(order, key=lambda s: (-remainders[s], order.index(s)))
    for s in by_remainder[:left]:
        floors[s] += 1
    return floors


def stratum_of(raw_domain: str | None) -> tuple[str, str | None]:
    """(stratum, normalised domain or None when the value is unusable)."""
    try:
        domain = normalise_domain(raw_domain).domain
    except UnusableDomain:
        return OTHER, None
    tld = "." + domain.rsplit(".", 1)[-1]
    return (tld if tld in STRATA else OTHER), domain


def selection_key(seed: int, outreach_id: uuid.UUID) -> bytes:
    return hashlib.sha256(f"{seed}:{outreach_id}".encode()).digest()


@dataclass(frozen=True, slots=True)
class Picked:
    outreach_id: uuid.UUID
    raw_domain: str | None
    domain: str | None  # normalised; None when unusable
    stratum: str


@dataclass(frozen=True, slots=True)
class Selection:
    seed: int
    size: int  # requested
    targets: dict[str, int]
    available: dict[str, int]  # claimable pending records per stratum
    picked: tuple[Picked, ...]  # ordered by stratum (STRATA order), then outreach_id

    @property
    def ids(self) -> list[uuid.UUID]:
        return [p.outreach_id for p in self.picked]

    @property
    def actual(self) -> dict[str, int]:
        counts = dict.fromkeys(self.targets, 0)
        for p in self.picked:
            counts[p.stratum] = counts.get(p.stratum, 0) + 1
        return counts

    @property
    def shortfalls(self) -> dict[str, int]:
        """Strata that got fewer records than their target: {stratum: missing}."""
        actual = self.actual
        return {s: t - actual[s] for s, t in self.targets.items() if actual[s] < t}

    @property
    def unusable(self) -> int:
        return sum(1 for p in self.picked if p.domain is None)

    def by_id(self) -> dict[uuid.UUID, Picked]:
        return {p.outreach_id: p for p in self.picked}


@dataclass
class StratifiedSampler:
    """Feed claimable pending records with `add`; `selection()` gives the canary."""

    size: int
    seed: int
    weights: Mapping[str, int] = field(default_factory=lambda: dict(WEIGHTS_PERCENT))

    def __post_init__(self) -> None:
        self.targets = stratum_targets(self.size, self.weights)
        self._available = dict.fromkeys(self.targets, 0)
        # Per stratum a max-heap (negated keys) of the `target` smallest keys seen so far.
        self._heaps: dict[str, list[tuple[bytes, uuid.UUID, Picked]]] = {
            s: [] for s in self.targets
        }

    def add(self, outreach_id: uuid.UUID, raw_domain: str | None) -> None:
        stratum, domain = stratum_of(raw_domain)
        if stratum not in self.targets:
            stratum = OTHER
        self._available[stratum] += 1
        target = self.targets[stratum]
        if target == 0:
            return
        key = _negate(selection_key(self.seed, outreach_id))
        entry = (key, outreach_id, Picked(outreach_id, raw_domain, domain, stratum))
        heap = self._heaps[stratum]
        if len(heap) < target:
            heapq.heappush(heap, entry)
        elif entry[:2] > heap[0][:2]:  # a smaller original key than the largest kept
            heapq.heapreplace(heap, entry)

    def selection(self) -> Selection:
        picked: list[Picked] = []
        for stratum in self.targets:
            picked.extend(sorted((e[2] for e in self._heaps[stratum]), key=lambda p: p.outreach_id))
        return Selection(
            seed=self.seed,
            size=self.size,
            targets=dict(self.targets),
            available=dict(self._available),
            picked=tuple(picked),
        )


def _negate(key: bytes) -> bytes:
    """Order-reversing map on equal-length byte strings (for a max-heap on heapq)."""
    return bytes(255 - b for b in key)


def select_canary(rows: Iterable[tuple[uuid.UUID, str | None]], size: int, seed: int) -> Selection:
    sampler = StratifiedSampler(size, seed)
    for outreach_id, raw_domain in rows:
        sampler.add(outreach_id, raw_domain)
    return sampler.selection()
