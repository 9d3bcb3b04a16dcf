"""Compact audit entries for one SMTP conversation (what we sent, what came back, how long)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ct_actors.smtp.errors import Stage

TEXT_LIMIT = 120


@dataclass(frozen=True, slots=True)
class TranscriptEntry:
    stage: Stage
    command: str | None  # as sent, without CRLF; None for the greeting
    code: int | None  # None when no reply came (timeout, disconnect, refused locally)
    enhanced: str | None
    text: str  # first TEXT_LIMIT chars of the reply text, or the error reason
    started_at: float  # trio.current_time() when the step started
    elapsed: float  # seconds, trio clock

    def as_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "command": self.command,
            "code": self.code,
            "enhanced": self.enhanced,
            "text": self.text,
            "started_at": round(self.started_at, 6),
            "elapsed": round(self.elapsed, 6),
        }
