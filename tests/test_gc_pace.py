"""The collector's pace (ct_actors/gc_pace.py): young collections less often, older ratios kept."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from ct_actors.gc_pace import YOUNG_THRESHOLD, pace_collector

pytestmark = pytest.mark.timeout(10)


@pytest.fixture
def thresholds() -> Iterator[None]:
    saved = gc.get_threshold()
    try:
        yield
    finally:
        gc.set_threshold(*saved)


@pytest.mark.usefixtures("thresholds")
def test_only_the_young_threshold_changes() -> None:
    gc.set_threshold(700, 10, 10)
    pace_collector()
    assert gc.get_threshold() == (YOUNG_THRESHOLD, 10, 10)
    pace_collector()
    assert gc.get_threshold() == (YOUNG_THRESHOLD, 10, 10)


@pytest.mark.usefixtures("thresholds")
def test_cycles_are_still_collected_at_that_pace() -> None:
    pace_collector()

    class Node:
        def __init__(self) -> None:
            self.me = self

    gc.collect()
    created = YOUNG_THRESHOLD * 3
    for _ in range(created):
        Node()  # each one a cycle: only the collector frees it
    alive = sum(isinstance(o, Node) for o in gc.get_objects())
    assert alive < created // 2  # young collections ran on the way and freed them
