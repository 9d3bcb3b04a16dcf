"""The SMTP layer's data: conversation stages, replies (RFC 5321 §4.2, RFC 3463 enhanced codes)
and audit entries. Pure data that every other module of `ct_actors.smtp` shares; it imports
none of them, so the parser, the errors and the client stand on it without a circle."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

Stage = Literal[
    "connect",
    "greeting",
    "ehlo",
    "starttls",
    "mail",
    "rcpt",
    "rset",
    "noop",
    "quit",
    "reply",
    "command",
]
"""Where in the conversation something happened. Two are not conversation steps: "reply" is used
by the pure parser, which does not know which command it parses a reply for (the client re-raises
with the real stage), and "command" by the formatter for a verb that has no stage (DATA...)."""


ENHANCED_RE = re.compile(r"#?([245])\.(\d{1,3})\.(\d{1,3})(?=[ \t]|$)")


@dataclass(frozen=True, slots=True)
class EnhancedStatus:
    """RFC 3463 ``class.subject.detail``."""

    klass: int
    subject: int
    detail: int

    def __str__(self) -> str:
        return f"{self.klass}.{self.subject}.{self.detail}"

    @classmethod
    def parse(cls, text: str) -> EnhancedStatus | None:
        """`EnhancedStatus.parse("5.1.1")`; None when `text` does not start with a code."""
        m = ENHANCED_RE.match(text)
        if m is None:
            return None
        return cls(int(m[1]), int(m[2]), int(m[3]))


@dataclass(frozen=True, slots=True)
class Reply:
    """One complete (possibly multi-line) reply. `lines` hold the text after the code and after
    the enhanced status code prefix."""

    code: int
    lines: tuple[str, ...]
    enhanced: EnhancedStatus | None = None

    @property
    def text(self) -> str:
        return " ".join(line for line in self.lines if line)

    @property
    def klass(self) -> int:
        return self.code // 100

    @property
    def is_positive(self) -> bool:
        return 200 <= self.code < 300

    @property
    def is_intermediate(self) -> bool:
        return 300 <= self.code < 400

    @property
    def is_transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def is_permanent(self) -> bool:
        return 500 <= self.code < 600

    @property
    def is_negative(self) -> bool:
        return self.code >= 400

    def __str__(self) -> str:
        parts = [str(self.code)]
        if self.enhanced is not None:
            parts.append(str(self.enhanced))
        if text := self.text:
            parts.append(text)
        return " ".join(parts)


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


@dataclass(frozen=True, slots=True)
class SessionStatistics:
    """One SMTP session's counters (`SmtpSession.statistics()`)."""

    address: str
    port: int
    started_at: float  # trio time
    duration: float  # seconds, until the snapshot
    commands: int
    bytes_sent: int
    bytes_received: int
    esmtp: bool
    tls: bool
    broken: str | None  # why the session cannot be used any more
