"""The progress bar of `ct-actors run --drain` on a terminal: done / total, rate and ETA.

Rendering is pure (`render`); `progress_loop` redraws one line on stderr (carriage return, no
newline) so the JSON or console log lines on stdout stay untouched. Only used when stderr is a
TTY: under systemd the journal gets the stats lines instead.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from typing import TextIO

import trio


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "--:--"
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def render(done: int, total: int | None, rate: float, width: int = 30, note: str = "") -> str:
    """One line: `[#####.....]  1234/5000  24.7%  56.3 rec/s  ETA 01:07` (no total: no bar)."""
    rate_text = f"{rate:,.1f} rec/s"
    if not total:
        line = f"{done:,} done  {rate_text}"
    else:
        frac = min(1.0, done / total)
        filled = int(frac * width)
        bar = "#" * filled + "." * (width - filled)
        eta = (total - done) / rate if rate > 0 else math.inf
        line = (
            f"[{bar}] {done:,}/{total:,} {100 * frac:5.1f}%  {rate_text}  "
            f"ETA {_duration(eta)}"
        )
    return f"{line}  {note}".rstrip()


class RateMeter:
    """Records/s over a sliding window of samples (trio time), so the ETA follows the
    current pace rather than the average since start."""

    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()

    def add(self, now: float, done: int) -> float:
        self._samples.append((now, done))
        while len(self._samples) > 2 and now - self._samples[0][0] > self.window:
            self._samples.popleft()
        t0, d0 = self._samples[0]
        return (done - d0) / (now - t0) if now > t0 else 0.0


async def progress_loop(
    read: Callable[[], tuple[int, str]],
    total: int | None,
    stream: TextIO,
    *,
    interval: float = 0.5,
) -> None:
    """Redraw until cancelled. `read()` returns (records done, a short status note)."""
    meter = RateMeter()
    try:
        while True:
            done, note = read()
            line = render(done, total, meter.add(trio.current_time(), done), note=note)
            stream.write("\r" + line + "\x1b[K")
            stream.flush()
            await trio.sleep(interval)
    finally:
        # A last frame with the final count, so the bar does not stop one interval short.
        done, note = read()
        stream.write("\r" + render(done, total, meter.add(trio.current_time(), done), note=note))
        stream.write("\x1b[K\n")
        stream.flush()
