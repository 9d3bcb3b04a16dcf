"""Issue 12: no module of the package over 500 lines (split by job instead)."""

from __future__ import annotations

from pathlib import Path

import pytest

import ct_actors

pytestmark = pytest.mark.timeout(10)

LIMIT = 500


def test_no_package_module_is_over_the_limit() -> None:
    root = Path(ct_actors.__file__).parent
    modules = sorted(root.rglob("*.py"))
    assert len(modules) > 100  # the whole package was looked at
    over = {
        str(path.relative_to(root)): lines
        for path in modules
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > LIMIT
    }
    assert over == {}
