"""The SNAP-ON tool registry (`SNAP_ON_TOOLBOX.yaml`): throttles, costs, back-off and kill
switches for the three tools this daemon implements.

The registry is shared by ~20 tools across several projects; we read only ours, picked by
`tool_id` (the YAML key is a display name that other teams rename freely), and ignore every other
tool and every field we do not use. What we do read is validated strictly: a limit that silently
became 0, a negative number or an unparsable window would either stop the prober or let it flood
mail servers, so the loader refuses the file and names the exact key instead (e.g.
`tools.SMTPCheck(TOOL-005).throttle.rate_limits[0].limit: must be a positive number, got -1`).
On SIGHUP the daemon keeps the old registry when the new one is refused.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, Literal, cast

import yaml

__all__ = [
    "EMAIL_VERIFIER",
    "MX_LOOKUP",
    "SMTP_CHECK",
    "Backoff",
    "Cost",
    "KillSwitch",
    "RateLimit",
    "ToolSpec",
    "Toolbox",
    "ToolboxError",
    "load_toolbox",
    "parse_duration",
]

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
        return f"{self.scope} {self.limit}/{_fmt_seconds(self.window)}"


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


def _fmt_seconds(seconds: float | None) -> str:
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
        delay = _fmt_seconds(value.initial_delay)
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


# ─── loading ─────────────────────────────────────────────────────────────────────────────────


def _construct_mapping(loader: yaml.SafeLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    """Refuse duplicate mapping keys. Plain PyYAML keeps the last duplicate silently, so a
    second `SMTPCheck:` block pasted further down would quietly replace ours."""
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {key!r}",
                key_node.start_mark,
            )
        seen.add(key)
    return loader.construct_mapping(node)


class _UniqueKeySafeLoader(yaml.SafeLoader):
    """yaml.safe_load semantics plus the duplicate-key refusal."""


# The libyaml-backed loader when PyYAML was built with it: ~10x faster on this 700-line file,
# which matters for tests and SIGHUP, not for correctness.
_LOADER: type[Any] = _UniqueKeySafeLoader
if getattr(yaml, "__with_libyaml__", False):

    class _UniqueKeyCSafeLoader(yaml.CSafeLoader):
        """Same as _UniqueKeySafeLoader, parsed by libyaml."""

    _LOADER = _UniqueKeyCSafeLoader

_UniqueKeySafeLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping
)
_LOADER.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


class _Reader:
    """Typed access into the parsed YAML that reports errors with the file and dotted path."""

    def __init__(self, source: Path) -> None:
        self.source = source

    def fail(self, path: str, message: str) -> ToolboxError:
        return ToolboxError(f"{self.source}: {path}: {message}")

    def mapping(self, value: object, path: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(path, f"expected a mapping, got {_type_name(value)}")
        return value

    def child(self, parent: dict[str, Any], key: str, path: str, *, required: bool = True) -> Any:
        if key not in parent or parent[key] is None:
            if required:
                raise self.fail(f"{path}.{key}", "is missing")
            return None
        return parent[key]

    def string(self, value: object, path: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(path, f"must be a non-empty string, got {value!r}")
        return value

    def positive(self, value: object, path: str) -> float:
        # bool is an int subclass; `limit: true` is a typo, not the number 1.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(path, f"must be a positive number, got {value!r}")
        if not math.isfinite(value) or value <= 0:
            raise self.fail(path, f"must be a positive number, got {value!r}")
        return float(value)

    def positive_int(self, value: object, path: str) -> int:
        number = self.positive(value, path)
        if not number.is_integer():
            raise self.fail(path, f"must be a positive whole number, got {value!r}")
        # Exact for an int (a float would round 2**63 - 1 up past the bound).
        whole = value if isinstance(value, int) else int(number)
        return self._in_bigint(whole, value, path)

    def non_negative_int(self, value: object, path: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.fail(path, f"must be a whole number >= 0, got {value!r}")
        return self._in_bigint(value, value, path)

    def _in_bigint(self, whole: int, value: object, path: str) -> int:
        # Counts are kept in PostgreSQL bigint columns (ct_actors.tool_usage.used); a larger
        # limit would pass here and fail at the first reservation, every restart.
        if whole > BIGINT_MAX:
            raise self.fail(
                path, f"must be at most {BIGINT_MAX} (PostgreSQL bigint), got {value!r}"
            )
        return whole

    def non_negative_number(self, value: object, path: str) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise self.fail(path, f"must be a number >= 0, got {value!r}")
        if not math.isfinite(value) or value < 0:
            raise self.fail(path, f"must be a number >= 0, got {value!r}")
        return float(value)

    def decimal(self, value: object, path: str) -> Decimal:
        if isinstance(value, bool) or not isinstance(value, int | float | str):
            raise self.fail(path, f"must be a number >= 0, got {value!r}")
        try:
            # str() first: Decimal(0.004) would carry the binary float's 0.00400000000000000008.
            number = Decimal(str(value))
        except InvalidOperation:
            raise self.fail(path, f"must be a number >= 0, got {value!r}") from None
        if not number.is_finite() or number < 0:
            raise self.fail(path, f"must be a number >= 0, got {value!r}")
        return number


def _type_name(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return f"the string {value!r}"
    return f"{type(value).__name__} {value!r}"


def _parse_rate_limit(r: _Reader, raw: object, path: str) -> RateLimit:
    item = r.mapping(raw, path)
    scope = r.child(item, "scope", path)
    if scope not in SCOPES:
        options = ", ".join(SCOPES)
        raise r.fail(f"{path}.scope", f"unknown scope {scope!r} (expected one of {options})")
    limit = r.positive_int(r.child(item, "limit", path), f"{path}.limit")
    raw_window = r.child(item, "window", path, required=False)
    window: float | None = None
    if raw_window is not None:
        if not isinstance(raw_window, str):
            raise r.fail(
                f"{path}.window",
                f"expected a duration like '2s', '500ms', '1m', '1h', got {raw_window!r}",
            )
        try:
            window = parse_duration(raw_window)
        except ValueError:
            raise r.fail(
                f"{path}.window",
                f"cannot parse duration {raw_window!r} (expected e.g. '2s', '500ms', '1m', '1h')",
            ) from None
    if scope == "per_domain":
        if window is None:
            raise r.fail(f"{path}.window", "is missing (per_domain needs e.g. window: '2s')")
    else:
        implied = IMPLIED_WINDOWS[scope]
        if window is not None and window != implied:
            raise r.fail(
                f"{path}.window",
                f"{raw_window!r} contradicts scope {scope} (implies {_fmt_seconds(implied)})",
            )
        window = implied
    return RateLimit(scope=cast(Scope, scope), limit=limit, window=window)


def _parse_tool(r: _Reader, name: str, raw: dict[str, Any], base: str) -> ToolSpec:
    tool_id: str = raw["tool_id"]
    tier_raw = r.child(raw, "tier", base)
    tier = r.non_negative_int(tier_raw, f"{base}.tier")
    status = r.string(r.child(raw, "status", base), f"{base}.status")

    throttle_path = f"{base}.throttle"
    throttle = r.mapping(r.child(raw, "throttle", base), throttle_path)

    limits_path = f"{throttle_path}.rate_limits"
    limits_raw = r.child(throttle, "rate_limits", throttle_path)
    if not isinstance(limits_raw, list) or not limits_raw:
        raise r.fail(limits_path, f"must be a non-empty list, got {_type_name(limits_raw)}")
    rate_limits = tuple(
        _parse_rate_limit(r, item, f"{limits_path}[{i}]") for i, item in enumerate(limits_raw)
    )

    cost_path = f"{throttle_path}.cost"
    cost_raw = r.mapping(r.child(throttle, "cost", throttle_path), cost_path)
    per_call_raw = r.child(cost_raw, "estimated_cost_per_call", cost_path)
    cap_raw = r.child(cost_raw, "monthly_budget_cap", cost_path, required=False)
    cost = Cost(
        model=r.string(r.child(cost_raw, "model", cost_path), f"{cost_path}.model"),
        per_call=r.decimal(per_call_raw, f"{cost_path}.estimated_cost_per_call"),
        monthly_budget_cap=(
            None if cap_raw is None else r.decimal(cap_raw, f"{cost_path}.monthly_budget_cap")
        ),
    )

    bo_path = f"{throttle_path}.backoff"
    bo_raw = r.mapping(r.child(throttle, "backoff", throttle_path), bo_path)
    strategy = r.child(bo_raw, "strategy", bo_path)
    if strategy not in STRATEGIES:
        options = ", ".join(STRATEGIES)
        raise r.fail(
            f"{bo_path}.strategy", f"unknown strategy {strategy!r} (expected one of {options})"
        )
    delay_ms = r.non_negative_number(
        r.child(bo_raw, "initial_delay_ms", bo_path), f"{bo_path}.initial_delay_ms"
    )
    backoff = Backoff(
        strategy=cast(Strategy, strategy),
        initial_delay=delay_ms / 1000.0,
        max_retries=r.non_negative_int(
            r.child(bo_raw, "max_retries", bo_path), f"{bo_path}.max_retries"
        ),
    )

    guard_path = f"{base}.guardrails"
    guard = r.child(raw, "guardrails", base, required=False)
    kill_switch: KillSwitch | None = None
    cache_ttl: float | None = None
    if guard is not None:
        guard = r.mapping(guard, guard_path)
        ks_raw = r.child(guard, "kill_switch", guard_path, required=False)
        if ks_raw is not None:
            ks_path = f"{guard_path}.kill_switch"
            ks = r.mapping(ks_raw, ks_path)
            kill_switch = KillSwitch(
                trigger=r.string(r.child(ks, "trigger", ks_path), f"{ks_path}.trigger"),
                action=r.string(r.child(ks, "action", ks_path), f"{ks_path}.action"),
            )
        dq_raw = r.child(guard, "data_quality", guard_path, required=False)
        if dq_raw is not None:
            dq_path = f"{guard_path}.data_quality"
            dq = r.mapping(dq_raw, dq_path)
            hours = r.child(dq, "cache_ttl_hours", dq_path, required=False)
            days = r.child(dq, "cache_ttl_days", dq_path, required=False)
            if hours is not None and days is not None:
                raise r.fail(dq_path, "has both cache_ttl_hours and cache_ttl_days; keep one")
            if hours is not None:
                cache_ttl = r.positive(hours, f"{dq_path}.cache_ttl_hours") * 3600.0
            elif days is not None:
                cache_ttl = r.positive(days, f"{dq_path}.cache_ttl_days") * 86_400.0

    max_attempts: int | None = None
    gate = r.child(raw, "gate", base, required=False)
    if gate is not None:
        gate = r.mapping(gate, f"{base}.gate")
        attempts_raw = r.child(gate, "max_attempts_per_email", f"{base}.gate", required=False)
        if attempts_raw is not None:
            max_attempts = r.positive_int(attempts_raw, f"{base}.gate.max_attempts_per_email")

    api_key_source: str | None = None
    software = r.child(raw, "software", base, required=False)
    if software is not None:
        software = r.mapping(software, f"{base}.software")
        src = r.child(software, "api_key_source", f"{base}.software", required=False)
        if src is not None:
            api_key_source = r.string(src, f"{base}.software.api_key_source")

    return ToolSpec(
        tool_id=tool_id,
        name=name,
        tier=tier,
        status=status,
        rate_limits=rate_limits,
        cost=cost,
        backoff=backoff,
        kill_switch=kill_switch,
        cache_ttl=cache_ttl,
        max_attempts_per_email=max_attempts,
        api_key_source=api_key_source,
    )


def load_toolbox(path: Path | str) -> Toolbox:
    """Parse and validate the registry; raises ToolboxError naming the file and key path."""
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ToolboxError(f"{source}: cannot read tool registry: {reason}") from None
    try:
        # yaml.safe_load semantics (a SafeLoader subclass) plus the duplicate-key refusal.
        doc = yaml.load(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = " ".join(p for p in (exc.context, exc.problem) if p)
        raise ToolboxError(f"{source}: invalid YAML{where}: {problem}") from None
    except yaml.YAMLError as exc:
        raise ToolboxError(f"{source}: invalid YAML: {exc}") from None

    r = _Reader(source)
    root = r.mapping(doc, "(top level)")
    version_raw = root.get("version")
    version = "unversioned" if version_raw is None else str(version_raw)
    tools_raw = r.mapping(root.get("tools"), "tools")

    found: dict[str, ToolSpec] = {}
    names: dict[str, str] = {}
    for name, raw in tools_raw.items():
        if not isinstance(raw, dict):
            continue  # not ours to judge: only our three tools are validated
        tool_id = raw.get("tool_id")
        if tool_id not in OUR_TOOLS:
            continue
        assert isinstance(tool_id, str)
        base = f"tools.{name}({tool_id})"
        if tool_id in names:
            raise r.fail(base, f"duplicate tool_id {tool_id} (also used by tools.{names[tool_id]})")
        names[tool_id] = str(name)
        found[tool_id] = _parse_tool(r, str(name), raw, base)

    missing = [t for t in OUR_TOOLS if t not in found]
    if missing:
        raise r.fail("tools", f"no tool with tool_id {', '.join(missing)} (required by ct-actors)")
    # Fixed order (ours), so equality and diffs do not depend on YAML order.
    return Toolbox(tools={t: found[t] for t in OUR_TOOLS}, source=source, version=version)
