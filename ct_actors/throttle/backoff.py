"""Retry delays for the registry's backoff strategies (fixed, linear, exponential)."""

from __future__ import annotations

STRATEGIES: tuple[str, ...] = ("fixed", "linear", "exponential")


def backoff_delay(strategy: str, initial: float, attempt: int) -> float:
    """Seconds to wait before retry number `attempt` (0 is the first retry)."""
    if attempt < 0:
        raise ValueError(f"attempt must be >= 0, got {attempt}")
    if initial < 0:
        raise ValueError(f"initial delay must be >= 0, got {initial}")
    if strategy == "fixed":
        return float(initial)
    if strategy == "linear":
        return float(initial * (attempt + 1))
    if strategy == "exponential":
        return float(initial * 2**attempt)
    raise ValueError(f"unknown backoff strategy {strategy!r} (expected one of {STRATEGIES})")
