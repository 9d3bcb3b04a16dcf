"""Where the source documents live in CI and on a checkout: `../shared` beside the repository.

A test that needs them and cannot find them fails under CI (`CI` set): a skip there would prove
nothing. On a developer's machine without them it skips, saying why.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parent.parent.parent / "shared"
RUNBOOK = SHARED / "seeds" / "operations-runbook.md"
REFERENCE_TOOLBOX = SHARED / "reference" / "SNAP_ON_TOOLBOX.yaml"


def skip_unless_ci(reason: str) -> None:
    """Skip locally; fail in CI, where every resource must be there."""
    if os.environ.get("CI"):
        pytest.fail(f"{reason} (CI is set: nothing may be skipped)")
    pytest.skip(reason)
