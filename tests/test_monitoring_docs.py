"""The event catalogue in docs/monitoring.md names every event the daemon can log."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parent.parent
# log.info("name", ...) and log.info(\n    "name", ...), also with a conditional name.
CALL = re.compile(
    r"\blog\.(?:debug|info|warning|error|critical|exception)\(\s*"
    r"(?:(?P<expr>\"[a-z_]+\"\s+if\s+[^\n]+?\s+else\s+\"[a-z_]+\")|\"(?P<name>[a-z_]+)\")"
)


def emitted_events() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "ct_actors").rglob("*.py"):
        for m in CALL.finditer(path.read_text()):
            if m.group("name"):
                names.add(m.group("name"))
            else:
                names.update(re.findall(r"\"([a-z_]+)\"", m.group("expr")))
    return names


def test_every_emitted_event_is_in_the_catalogue() -> None:
    events = emitted_events()
    assert {"outcome", "stats", "stats_final", "kill_switch_tripped"} <= events
    catalogue = (ROOT / "docs" / "monitoring.md").read_text()
    missing = sorted(e for e in events if f"`{e}`" not in catalogue)
    assert missing == [], f"document these events in docs/monitoring.md: {missing}"
