"""The tool registry's entries as this daemon reads them: `ToolSpec` (rate limits, cost, back-off,
kill switch) per tool, the `Toolbox` of our three tools and how two registries differ, and
`parse_duration`. Reading and validating the YAML file is `ct_actors.toolbox.loading`."""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from decimal import Decimal
from pathlib import Path
from typing import Literal, cast

MX_LOOKUP = "TOOL-004"
SMTP_CHECK = "TOOL-005"
EMAIL_VERIFIER = "TOOL-019"
OUR_TOOLS: tuple[str, ...] = (MX_LOOKUP, SMTP_CHECK, EMAIL_VERIFIER)

Scope = Literal["per_second", "per_minute", "per_day", "per_month", "per_domain"]
Strategy = Literal["linear", "exponential", "fixed"]

# Fixed-window scopes imply their window. A "month" is 30 days here; a budget that must follow
# the calendar month is enforced by whoever keeps the counter, not by this number.
IMPLIED_WINDOWS: dict[str, float] = {
    "per_second": 1.0,
    "per_minute": 60.0,
    "per_day": 86_400.0,
    "per_month": 30 * 86_400.0,
}
SCOPES: tuple[str, ...] = (*IMPLIED_WINDOWS, "per_domain")
STRATEGIES: tuple[str, ...] = ("linear", "exponential", "fixed")
BIGINT_MAX = 2**63 - 1

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0}


class ToolboxError(Exception):
    """The registry was refused; the message names the file, tool and dotted key path."""


@dataclass(frozen=True, slots=True)
class RateLimit:
    scope: Scope
    limit: int
    window: float | None  # seconds; implied for fixed scopes, explicit for per_domain

    def describe(self) -> str:
        return f"{self.scope} {self.limit}/{format_seconds(self.window)}"


@dataclass(frozen=True, slots=True)
class Cost:
    model: str
    per_call: Decimal
    monthly_budget_cap: Decimal | None


@dataclass(frozen=True, slots=True)
class Backoff:
    strategy: Strategy
    initial_delay: float  # seconds
    max_retries: int


@dataclass(frozen=True, slots=True)
class KillSwitch:
    trigger: str
    action: str


@dataclass(frozen=True, slots=True)
class ToolSpec:
    tool_id: str
    name: str  # the YAML key, for messages only
    tier: int
    status: str
    rate_limits: tuple[RateLimit, ...]
    cost: Cost
    backoff: Backoff
    kill_switch: KillSwitch | None
    cache_ttl: float | None  # seconds
    max_attempts_per_email: int | None
    api_key_source: str | None  # name of the environment variable holding the key

    def rate_limit(self, scope: Scope) -> RateLimit | None:
        """The first limit with this scope, or None."""
        return next((r for r in self.rate_limits if r.scope == scope), None)


@dataclass(frozen=True, slots=True)
class Toolbox:
    tools: dict[str, ToolSpec]  # by tool_id; only ours
    source: Path
    version: str

    @property
    def mx_lookup(self) -> ToolSpec:
        return self.tools[MX_LOOKUP]

    @property
    def smtp_check(self) -> ToolSpec:
        return self.tools[SMTP_CHECK]

    @property
    def email_verifier(self) -> ToolSpec:
        return self.tools[EMAIL_VERIFIER]

    def diff(self, other: Toolbox) -> list[str]:
        """Human lines describing what changed from self to other (for the SIGHUP log event).
        Empty when nothing we use changed."""
        lines: list[str] = []
        if self.version != other.version:
            lines.append(f"version: {self.version!r} -> {other.version!r}")
        if self.source != other.source:
            lines.append(f"source: {str(self.source)!r} -> {str(other.source)!r}")
        for tool_id in sorted(set(self.tools) | set(other.tools)):
            old, new = self.tools.get(tool_id), other.tools.get(tool_id)
            if old is None or new is None:
                lines.append(f"{tool_id}: {'added' if old is None else 'removed'}")
                continue
            label = f"{tool_id} ({new.name})"
            for f in fields(ToolSpec):
                a, b = getattr(old, f.name), getattr(new, f.name)
                if a == b:
                    continue
                lines.append(f"{label} {f.name}: {_render(a)} -> {_render(b)}")
        return lines


def format_seconds(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    for unit, size in (("d", 86_400.0), ("h", 3600.0), ("m", 60.0), ("s", 1.0)):
        if seconds >= size and (seconds / size).is_integer():
            return f"{int(seconds / size)}{unit}"
    if seconds < 1 and (seconds * 1000).is_integer():
        return f"{int(seconds * 1000)}ms"
    return f"{seconds:g}s"


def _render(value: object) -> str:
    if isinstance(value, tuple) and all(isinstance(v, RateLimit) for v in value):
        return "[" + ", ".join(cast(RateLimit, v).describe() for v in value) + "]"
    if isinstance(value, Cost):
        cap = "none" if value.monthly_budget_cap is None else str(value.monthly_budget_cap)
        return f"{value.model} {value.per_call}/call cap {cap}"
    if isinstance(value, Backoff):
        delay = format_seconds(value.initial_delay)
        return f"{value.strategy} {delay} x{value.max_retries}"
    if isinstance(value, KillSwitch):
        return f"{value.trigger} -> {value.action}"
    return repr(value)


def parse_duration(text: str) -> float:
    """'2s' -> 2.0, '500ms' -> 0.5, '1m' -> 60.0, '1h' -> 3600.0, '1d' -> 86400.0; ValueError
    otherwise. A bare number is refused: its unit would be a guess."""
    m = _DURATION.match(text)
    if not m:
        raise ValueError(text)
    seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
    if seconds <= 0:
        raise ValueError(text)
    return seconds
