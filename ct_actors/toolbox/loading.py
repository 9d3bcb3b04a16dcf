"""Reading the registry file (`load_toolbox`): YAML without duplicate keys, only our tools (by
`tool_id`), every field we use validated strictly with its dotted path in the error."""

from __future__ import annotations

import math
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, cast

import yaml

from ct_actors.toolbox.spec import (
    BIGINT_MAX,
    IMPLIED_WINDOWS,
    OUR_TOOLS,
    SCOPES,
    STRATEGIES,
    Backoff,
    Cost,
    KillSwitch,
    RateLimit,
    Scope,
    Strategy,
    Toolbox,
    ToolboxError,
    ToolSpec,
    format_seconds,
    parse_duration,
)


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
                f"{raw_window!r} contradicts scope {scope} (implies {format_seconds(implied)})",
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
