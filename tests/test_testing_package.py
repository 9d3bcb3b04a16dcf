"""`ct_actors.testing` holds the test doubles; what the daemon runs must not depend on them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import ct_actors.testing

pytestmark = pytest.mark.timeout(30)

PACKAGE = Path(ct_actors.__file__).parent
# The DNS micro-benchmark's responder is the doubles' FakeDnsServer; nothing the daemon runs
# (`run`, `once`, `probe`, `canary`, ...) reaches that module.
ALLOWED = {"demo/dns_bench.py"}


def imports_testing(path: Path) -> bool:
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        else:
            continue
        if any(n == "ct_actors.testing" or n.startswith("ct_actors.testing.") for n in names):
            return True
    return False


def test_only_the_doubles_and_the_dns_benchmark_import_the_testing_package() -> None:
    importers = {
        path.relative_to(PACKAGE).as_posix()
        for path in PACKAGE.rglob("*.py")
        if imports_testing(path)
    }
    outside = sorted(p for p in importers if not p.startswith("testing/"))
    assert outside == sorted(ALLOWED)

