"""backoff_delay: the three registry strategies, attempt 0 being the first retry."""

from __future__ import annotations

import pytest

from ct_actors.throttle.backoff import backoff_delay


@pytest.mark.parametrize(
    ("strategy", "expected"),
    [
        ("fixed", [2.0, 2.0, 2.0, 2.0]),
        ("linear", [2.0, 4.0, 6.0, 8.0]),
        ("exponential", [2.0, 4.0, 8.0, 16.0]),
    ],
)
def test_strategies(strategy: str, expected: list[float]) -> None:
    assert [backoff_delay(strategy, 2.0, attempt) for attempt in range(4)] == expected


def test_returns_float_for_int_initial() -> None:
    delay = backoff_delay("linear", 3, 1)
    assert delay == 6.0
    assert isinstance(delay, float)


def test_zero_initial_is_allowed() -> None:
    assert backoff_delay("exponential", 0.0, 5) == 0.0


@pytest.mark.parametrize(
    ("strategy", "initial", "attempt", "message"),
    [
        ("random", 1.0, 0, "unknown backoff strategy 'random'"),
        ("Exponential", 1.0, 0, "unknown backoff strategy"),
        ("fixed", 1.0, -1, "attempt must be >= 0"),
        ("fixed", -1.0, 0, "initial delay must be >= 0"),
    ],
)
def test_refusals(strategy: str, initial: float, attempt: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        backoff_delay(strategy, initial, attempt)
