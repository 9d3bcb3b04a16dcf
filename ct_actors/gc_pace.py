"""The cyclic garbage collector's pace for a long-running prober (and its simulator).

CPython runs a young-generation collection every 700 net allocations by default. The pipeline
allocates briskly and almost all of it is freed by reference counting (replies, transcript
entries, trio's per-step objects), so at that pace the collector mostly re-walks live objects:
on the smtp bench it took 4.1 s of 23 s of CPU (18 %: 1,050 young, 96 middle and 9 full
collections). With the young threshold at 50,000 it took 0.65 s (8 young, 1 middle), and CPU
per record fell by about a fifth (docs/performance.md, "Garbage collection").

The older generations keep CPython's ratios (a middle collection every 10 young ones, a full
one every 10 middle ones, and then only when the objects waiting to be examined are a quarter
of the long-lived ones), so cycles (e.g. exceptions with their tracebacks) are still freed
and memory stays flat over a long run (the soak figures in docs/performance.md). A young
collection at this size pauses the loop for tens of milliseconds; SMTP and DNS timeouts are
seconds, so nothing waits on it.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000


def pace_collector() -> None:
    """Collect the young generation every `YOUNG_THRESHOLD` net allocations (idempotent)."""
    _young, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
