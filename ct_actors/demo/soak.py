"""`bench --soak`: sample the process's resident memory and the records written every few
seconds during a long run, print each sample, and judge whether memory stays flat.

Warm-up: the first 10 % of the run or its first 60 s, whichever is longer. Caches, pools,
windows and the allocator's arenas fill during it; a leak is memory that keeps growing after.
"Flat" means the RSS samples after warm-up lie within 10 % of their minimum.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import trio

WARMUP_FRACTION = 0.10
WARMUP_SECONDS = 60.0
FLAT_TOLERANCE = 0.10

_BLOCKS = "▁▂▃▄▅▆▇█"

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def current_rss_mb() -> float:
    """Resident set size now (not the peak), from /proc/self/statm."""
    with open("/proc/self/statm", encoding="ascii") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * _PAGE_SIZE / 2**20


@dataclass(frozen=True, slots=True)
class Sample:
    t: float  # seconds since the sampler started
    rss_mb: float
    records: int  # records written so far
    rate: float  # records/s since the previous sample


class Sampler:
    """Every `interval` seconds: RSS and records written (from `attach`ed counter), printed
    to `out` when given. `peak_mb` is the highest RSS seen."""

    def __init__(
        self,
        interval: float,
        *,
        read_rss: Callable[[], float] = current_rss_mb,
        out: TextIO | None = None,
    ) -> None:
        if interval <= 0:
            raise ValueError("the sample interval must be positive")
        self.interval = interval
        self.samples: list[Sample] = []
        self.peak_mb = 0.0
        self._read_rss = read_rss
        self._read_records: Callable[[], int] = lambda: 0
        self._out = out
        self._started = 0.0

    def attach(self, read_records: Callable[[], int]) -> None:
        self._read_records = read_records

    def sample(self) -> Sample:
        t = trio.current_time() - self._started
        records = self._read_records()
        last_t, last_records = (
            (self.samples[-1].t, self.samples[-1].records) if self.samples else (0.0, 0)
        )
        rate = (records - last_records) / (t - last_t) if t > last_t else 0.0
        taken = Sample(t, self._read_rss(), records, rate)
        self.samples.append(taken)
        self.peak_mb = max(self.peak_mb, taken.rss_mb)
        if self._out is not None:
            print(
                f"[soak] t={taken.t:7.0f} s  rss {taken.rss_mb:7.1f} MB  "
                f"records {taken.records:>9}  {taken.rate:8.1f} records/s",
                file=self._out,
                flush=True,
            )
        return taken

    async def run(self) -> None:
        """Sample on a fixed grid (start + k·interval, no drift) until cancelled."""
        self._started = trio.current_time()
        tick = 1
        while True:
            await trio.sleep_until(self._started + tick * self.interval)
            self.sample()
            tick += 1


@dataclass(frozen=True, slots=True)
class Flatness:
    warmup_s: float
    samples: int  # after warm-up
    min_mb: float
    max_mb: float
    spread_pct: float  # (max - min) / min

    @property
    def flat(self) -> bool:
        return self.spread_pct <= FLAT_TOLERANCE * 100

    def verdict(self) -> str:
        return (
            f"RSS after warm-up: min {self.min_mb:.1f} MB, max {self.max_mb:.1f} MB, spread "
            f"{self.spread_pct:.1f}% (flat within {FLAT_TOLERANCE:.0%}: "
            f"{'yes' if self.flat else 'no'})"
        )


def flatness(samples: Sequence[Sample]) -> Flatness | None:
    """The RSS spread after warm-up (module docstring); None without a sample after it."""
    if not samples:
        return None
    warmup = max(WARMUP_SECONDS, WARMUP_FRACTION * samples[-1].t)
    after = [s.rss_mb for s in samples if s.t > warmup]
    if not after:
        return None
    low, high = min(after), max(after)
    return Flatness(warmup, len(after), low, high, 100 * (high - low) / low)


def sparkline(values: Sequence[float], width: int = 60) -> str:
    """Unicode blocks from the lowest value (▁) to the highest (█); more values than `width`
    are averaged in equal buckets."""
    if not values:
        return ""
    if len(values) > width:
        buckets = [
            values[i * len(values) // width : (i + 1) * len(values) // width] for i in range(width)
        ]
        values = [sum(b) / len(b) for b in buckets]
    low, high = min(values), max(values)
    if high == low:
        return _BLOCKS[0] * len(values)
    top = len(_BLOCKS) - 1
    return "".join(_BLOCKS[round((v - low) / (high - low) * top)] for v in values)


def report(samples: Sequence[Sample], chart: Path) -> list[str]:
    """The end of a soak: a PNG chart at `chart` if matplotlib is importable, else sparklines;
    then the verdict."""
    lines = []
    judged = flatness(samples)
    if judged is None:
        verdict = (
            f"RSS after warm-up: no sample after the warm-up (the first {WARMUP_SECONDS:.0f} s or "
            f"{WARMUP_FRACTION:.0%} of the run); run longer or sample more often"
        )
    else:
        verdict = judged.verdict()
    if samples and _plot(samples, chart, judged):
        lines.append(f"[soak] chart: {chart}")
    elif samples:
        rss = [s.rss_mb for s in samples]
        rates = [s.rate for s in samples]
        lines.append(f"[soak] RSS       {sparkline(rss)}  {min(rss):.0f}-{max(rss):.0f} MB")
        lines.append(f"[soak] records/s {sparkline(rates)}  {min(rates):.0f}-{max(rates):.0f}")
        lines.append("[soak] (matplotlib is not installed: no PNG chart)")
    lines.append(verdict)
    if judged is not None:
        after = f"{judged.samples} samples after"
        lines.append(f"[soak] warm-up: first {judged.warmup_s:.0f} s; {after}")
    return lines


def _plot(samples: Sequence[Sample], chart: Path, judged: Flatness | None) -> bool:
    try:
        matplotlib: Any = importlib.import_module("matplotlib")
    except ImportError:
        return False
    matplotlib.use("Agg")  # no display on a server
    pyplot: Any = importlib.import_module("matplotlib.pyplot")
    t = [s.t for s in samples]
    figure, rss_axis = pyplot.subplots(figsize=(10, 4))
    rss_axis.plot(t, [s.rss_mb for s in samples], color="tab:blue")
    rss_axis.set_xlabel("seconds")
    rss_axis.set_ylabel("RSS (MB)", color="tab:blue")
    rate_axis = rss_axis.twinx()
    rate_axis.plot(t, [s.rate for s in samples], color="tab:orange")
    rate_axis.set_ylabel("records/s", color="tab:orange")
    if judged is not None:
        rss_axis.axvspan(0, judged.warmup_s, color="0.9")  # the warm-up, not judged
        rss_axis.set_title(judged.verdict(), fontsize=9)
    figure.tight_layout()
    figure.savefig(chart)
    pyplot.close(figure)
    return True
