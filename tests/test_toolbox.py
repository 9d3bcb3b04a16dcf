"""The SNAP-ON registry loader: the real file's numbers, selection by tool_id, every refusal."""

from __future__ import annotations

import copy
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from ct_actors.toolbox import (
    Backoff,
    Cost,
    KillSwitch,
    RateLimit,
    Toolbox,
    ToolboxError,
    load_toolbox,
    parse_duration,
)
from ct_actors.toolbox import loading as toolbox_module
from tests.shared_docs import REFERENCE_TOOLBOX, skip_unless_ci

REFERENCE = REFERENCE_TOOLBOX
REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "config" / "SNAP_ON_TOOLBOX.yaml"
# The shipped copy is the same file; tests use it when shared/ is not beside the repo.
REGISTRY = REFERENCE if REFERENCE.exists() else SHIPPED


@pytest.fixture(scope="module")
def registry_doc() -> dict[str, Any]:
    doc = yaml.safe_load(REGISTRY.read_text(encoding="utf-8"))
    assert isinstance(doc, dict)
    return doc


@pytest.fixture
def write(tmp_path: Path, registry_doc: dict[str, Any]) -> Callable[..., Path]:
    """Write a mutated copy of the real registry and return its path."""

    def _write(mutate: Callable[[dict[str, Any]], None], name: str = "reg.yaml") -> Path:
        doc = copy.deepcopy(registry_doc)
        mutate(doc)
        path = tmp_path / name
        path.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
        return path

    return _write


def refused(path: Path) -> str:
    with pytest.raises(ToolboxError) as info:
        load_toolbox(path)
    return str(info.value)


# ─── the real registry ───────────────────────────────────────────────────────────────────────


def test_real_registry_mx_lookup() -> None:
    tb = load_toolbox(REGISTRY)
    mx = tb.mx_lookup
    assert mx.tool_id == "TOOL-004"
    assert mx.name == "MXLookup"
    assert mx.tier == 0
    assert mx.status == "active"
    assert mx.rate_limits == (
        RateLimit("per_second", 50, 1.0),
        RateLimit("per_day", 50000, 86400.0),
    )
    assert mx.backoff == Backoff("linear", 0.1, 2)
    assert mx.cache_ttl == 24 * 3600.0
    assert mx.cost == Cost("free", Decimal("0.0"), None)
    assert mx.kill_switch == KillSwitch("dns_resolver_failure", "switch_resolver")
    assert mx.max_attempts_per_email is None
    assert mx.api_key_source is None


def test_real_registry_smtp_check() -> None:
    tb = load_toolbox(REGISTRY)
    smtp = tb.smtp_check
    assert smtp.tool_id == "TOOL-005"
    assert smtp.rate_limits == (
        RateLimit("per_domain", 1, 2.0),
        RateLimit("per_day", 10000, 86400.0),
    )
    assert smtp.rate_limit("per_domain") == RateLimit("per_domain", 1, 2.0)
    assert smtp.rate_limit("per_second") is None
    assert smtp.backoff == Backoff("exponential", 2.0, 2)
    assert smtp.cache_ttl == 168 * 3600.0
    assert smtp.kill_switch == KillSwitch("ip_blacklist_detected", "halt_and_alert")


def test_real_registry_email_verifier() -> None:
    tb = load_toolbox(REGISTRY)
    ev = tb.email_verifier
    assert ev.tool_id == "TOOL-019"
    assert ev.tier == 2
    assert ev.rate_limits == (
        RateLimit("per_second", 50, 1.0),
        RateLimit("per_month", 10000, 30 * 86400.0),
    )
    # Decimal from the YAML text, not the binary float 0.004000000000000000083...
    assert ev.cost == Cost("per_call", Decimal("0.004"), Decimal("50"))
    assert ev.cost.per_call == Decimal("0.004")
    assert ev.backoff == Backoff("linear", 0.5, 2)
    assert ev.cache_ttl == 90 * 86400.0
    assert ev.max_attempts_per_email == 1
    assert ev.api_key_source == "MILLIONVERIFIER_API_KEY"
    assert ev.kill_switch == KillSwitch("budget_cap_reached", "halt_and_alert")


def test_real_registry_keeps_only_our_tools() -> None:
    tb = load_toolbox(REGISTRY)
    assert list(tb.tools) == ["TOOL-004", "TOOL-005", "TOOL-019"]
    assert tb.version == "1.0.0"
    assert tb.source == REGISTRY


def test_shipped_registry_is_the_reference() -> None:
    if not REFERENCE.exists():
        skip_unless_ci(f"{REFERENCE} not available")
    assert SHIPPED.read_bytes() == REFERENCE.read_bytes()


def test_real_registry_diff_with_itself_is_empty() -> None:
    assert load_toolbox(REGISTRY).diff(load_toolbox(REGISTRY)) == []


# ─── selection ───────────────────────────────────────────────────────────────────────────────


def test_tools_are_picked_by_tool_id_not_yaml_key(write: Callable[..., Path]) -> None:
    def rename(doc: dict[str, Any]) -> None:
        tools = doc["tools"]
        # Swap the display names: the YAML key must not matter.
        tools["Renamed"] = tools.pop("SMTPCheck")
        tools["SMTPCheck"] = tools.pop("MXLookup")

    tb = load_toolbox(write(rename))
    assert tb.smtp_check.name == "Renamed"
    assert tb.smtp_check.rate_limit("per_domain") == RateLimit("per_domain", 1, 2.0)
    assert tb.mx_lookup.name == "SMTPCheck"
    assert tb.mx_lookup.tool_id == "TOOL-004"


def test_other_tools_are_ignored_even_if_broken(write: Callable[..., Path]) -> None:
    def break_others(doc: dict[str, Any]) -> None:
        doc["tools"]["Firecrawl"]["throttle"]["rate_limits"][0]["limit"] = -5
        doc["tools"]["Firecrawl"]["throttle"]["backoff"]["strategy"] = "bogus"
        doc["tools"]["Junk"] = "not even a mapping"
        doc["tools"]["MXLookup"]["extra_field"] = {"anything": [1, 2]}

    tb = load_toolbox(write(break_others))
    assert set(tb.tools) == {"TOOL-004", "TOOL-005", "TOOL-019"}


# ─── refusals ────────────────────────────────────────────────────────────────────────────────


def test_refuses_missing_tool(write: Callable[..., Path]) -> None:
    path = write(lambda d: d["tools"].pop("SMTPCheck"))
    msg = refused(path)
    assert msg.startswith(f"{path}: tools: ")
    assert "TOOL-005" in msg


def test_refuses_negative_limit_with_exact_message(write: Callable[..., Path]) -> None:
    def neg(doc: dict[str, Any]) -> None:
        doc["tools"]["SMTPCheck"]["throttle"]["rate_limits"][0]["limit"] = -1

    path = write(neg)
    assert refused(path) == (
        f"{path}: tools.SMTPCheck(TOOL-005).throttle.rate_limits[0].limit: "
        "must be a positive number, got -1"
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, "must be a positive number, got 0"),
        (True, "must be a positive number, got True"),
        ("ten", "must be a positive number, got 'ten'"),
        (None, "is missing"),
        (2.5, "must be a positive whole number, got 2.5"),
        (float("inf"), "must be a positive number, got inf"),
        # Issue 10: beyond PostgreSQL's bigint a limit used to pass here and fail at the first
        # reservation (exit 1, restarted by systemd forever).
        (2**63, "must be at most 9223372036854775807 (PostgreSQL bigint), got 9223372036854775808"),
        (1e19, "must be at most 9223372036854775807 (PostgreSQL bigint), got 1e+19"),
    ],
)
def test_refuses_bad_limits(write: Callable[..., Path], value: object, expected: str) -> None:
    def bad(doc: dict[str, Any]) -> None:
        doc["tools"]["MXLookup"]["throttle"]["rate_limits"][1]["limit"] = value

    msg = refused(write(bad))
    assert "tools.MXLookup(TOOL-004).throttle.rate_limits[1].limit: " in msg
    assert msg.endswith(expected)


def test_refuses_unknown_scope(write: Callable[..., Path]) -> None:
    def bad(doc: dict[str, Any]) -> None:
        doc["tools"]["EmailVerifier"]["throttle"]["rate_limits"][0]["scope"] = "per_fortnight"

    msg = refused(write(bad))
    assert "tools.EmailVerifier(TOOL-019).throttle.rate_limits[0].scope: " in msg
    assert "unknown scope 'per_fortnight'" in msg


@pytest.mark.parametrize("window", ["2 secs", "two", "-2s", "0s", "2", "", "1w"])
def test_refuses_unparsable_window(write: Callable[..., Path], window: str) -> None:
    def bad(doc: dict[str, Any]) -> None:
        doc["tools"]["SMTPCheck"]["throttle"]["rate_limits"][0]["window"] = window

    msg = refused(write(bad))
    assert "tools.SMTPCheck(TOOL-005).throttle.rate_limits[0].window: " in msg


def test_refuses_numeric_window(write: Callable[..., Path]) -> None:
    def bad(doc: dict[str, Any]) -> None:
        doc["tools"]["SMTPCheck"]["throttle"]["rate_limits"][0]["window"] = 2

    msg = refused(write(bad))
    assert "rate_limits[0].window: expected a duration like '2s'" in msg


def test_per_domain_requires_window(write: Callable[..., Path]) -> None:
    def bad(doc: dict[str, Any]) -> None:
        del doc["tools"]["SMTPCheck"]["throttle"]["rate_limits"][0]["window"]

    msg = refused(write(bad))
    assert "tools.SMTPCheck(TOOL-005).throttle.rate_limits[0].window: is missing" in msg


def test_contradicting_implied_window_is_refused(write: Callable[..., Path]) -> None:
    def bad(doc: dict[str, Any]) -> None:
        doc["tools"]["MXLookup"]["throttle"]["rate_limits"][0]["window"] = "5s"

    assert "contradicts scope per_second" in refused(write(bad))


def test_matching_implied_window_is_accepted(write: Callable[..., Path]) -> None:
    def ok(doc: dict[str, Any]) -> None:
        doc["tools"]["MXLookup"]["throttle"]["rate_limits"][0]["window"] = "1000ms"

    assert load_toolbox(write(ok)).mx_lookup.rate_limits[0] == RateLimit("per_second", 50, 1.0)


@pytest.mark.parametrize("strategy", ["none", "random", None, 3])
def test_refuses_unknown_backoff_strategy(write: Callable[..., Path], strategy: object) -> None:
    def bad(doc: dict[str, Any]) -> None:
        doc["tools"]["MXLookup"]["throttle"]["backoff"]["strategy"] = strategy

    msg = refused(write(bad))
    assert "tools.MXLookup(TOOL-004).throttle.backoff.strategy: " in msg


def test_refuses_negative_backoff_delay(write: Callable[..., Path]) -> None:
    def bad(doc: dict[str, Any]) -> None:
        doc["tools"]["MXLookup"]["throttle"]["backoff"]["initial_delay_ms"] = -100

    assert "throttle.backoff.initial_delay_ms: must be a number >= 0, got -100" in refused(
        write(bad)
    )


def test_refuses_missing_throttle(write: Callable[..., Path]) -> None:
    path = write(lambda d: d["tools"]["EmailVerifier"].pop("throttle"))
    assert refused(path) == f"{path}: tools.EmailVerifier(TOOL-019).throttle: is missing"


def test_refuses_empty_rate_limits(write: Callable[..., Path]) -> None:
    def bad(doc: dict[str, Any]) -> None:
        doc["tools"]["SMTPCheck"]["throttle"]["rate_limits"] = []

    assert "throttle.rate_limits: must be a non-empty list" in refused(write(bad))


def test_refuses_both_ttl_units(write: Callable[..., Path]) -> None:
    def bad(doc: dict[str, Any]) -> None:
        doc["tools"]["SMTPCheck"]["guardrails"]["data_quality"]["cache_ttl_days"] = 7

    assert "guardrails.data_quality: has both" in refused(write(bad))


def test_refuses_negative_cost(write: Callable[..., Path]) -> None:
    def bad(doc: dict[str, Any]) -> None:
        doc["tools"]["EmailVerifier"]["throttle"]["cost"]["monthly_budget_cap"] = -1

    assert "throttle.cost.monthly_budget_cap: must be a number >= 0, got -1" in refused(write(bad))


def test_refuses_duplicate_tool_id(write: Callable[..., Path]) -> None:
    def dup(doc: dict[str, Any]) -> None:
        doc["tools"]["SMTPCheck2"] = copy.deepcopy(doc["tools"]["SMTPCheck"])

    msg = refused(write(dup))
    assert "duplicate tool_id TOOL-005" in msg


def test_refuses_duplicate_yaml_key(tmp_path: Path) -> None:
    # Plain yaml.safe_load would silently keep the second SMTPCheck block.
    # Insert the duplicate inside the tools mapping, right after the real SMTPCheck key line.
    text = REGISTRY.read_text(encoding="utf-8").replace(
        "  LinkedInCheck:\n", "  SMTPCheck:\n    tool_id: 'TOOL-005'\n\n  LinkedInCheck:\n", 1
    )
    path = tmp_path / "dup.yaml"
    path.write_text(text, encoding="utf-8")
    msg = refused(path)
    assert "invalid YAML at line" in msg
    assert "duplicate key 'SMTPCheck'" in msg


def test_pure_python_loader_behaves_the_same(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without libyaml the pure-Python SafeLoader subclass is used; same results, same refusals.
    monkeypatch.setattr(toolbox_module, "_LOADER", toolbox_module._UniqueKeySafeLoader)
    assert load_toolbox(REGISTRY) == toolbox_module.load_toolbox(REGISTRY)
    path = tmp_path / "dup.yaml"
    path.write_text("version: '1'\nversion: '2'\n", "utf-8")
    assert "duplicate key 'version'" in refused(path)
    path.write_text("a: [\n", "utf-8")
    assert "invalid YAML at line" in refused(path)


def test_refuses_invalid_yaml_with_position(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("version: '1'\ntools:\n  MXLookup: {tool_id: 'TOOL-004'\n  x: [\n", "utf-8")
    msg = refused(path)
    assert msg.startswith(f"{path}: invalid YAML at line ")
    assert ", column " in msg


def test_refuses_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    msg = refused(path)
    assert msg.startswith(f"{path}: cannot read tool registry:")
    assert "No such file" in msg


def test_refuses_unreadable_path(tmp_path: Path) -> None:
    # A directory cannot be read as a file (works as root too, unlike chmod 000).
    msg = refused(tmp_path)
    assert msg.startswith(f"{tmp_path}: cannot read tool registry:")


def test_refuses_non_mapping_document(tmp_path: Path) -> None:
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n", "utf-8")
    assert "expected a mapping" in refused(path)


def test_refuses_missing_tools_section(tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text("version: '1'\n", "utf-8")
    assert refused(path).startswith(f"{path}: tools: expected a mapping")


# ─── durations and diff ──────────────────────────────────────────────────────────────────────


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("2s", 2.0), ("500ms", 0.5), ("1m", 60.0), ("1h", 3600.0), ("1d", 86400.0), ("1.5s", 1.5)],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_diff_describes_changes(write: Callable[..., Path]) -> None:
    old = load_toolbox(REGISTRY)

    def change(doc: dict[str, Any]) -> None:
        doc["version"] = "1.1.0"
        smtp = doc["tools"]["SMTPCheck"]
        smtp["throttle"]["rate_limits"][0]["window"] = "5s"
        smtp["throttle"]["backoff"]["max_retries"] = 4
        del smtp["guardrails"]["kill_switch"]
        doc["tools"]["EmailVerifier"]["throttle"]["cost"]["monthly_budget_cap"] = 80
        doc["tools"]["Firecrawl"]["tier"] = 2  # not ours: not reported

    new = load_toolbox(write(change))
    lines = old.diff(new)
    assert "version: '1.0.0' -> '1.1.0'" in lines
    assert (
        "TOOL-005 (SMTPCheck) rate_limits: [per_domain 1/2s, per_day 10000/1d] -> "
        "[per_domain 1/5s, per_day 10000/1d]"
    ) in lines
    assert "TOOL-005 (SMTPCheck) backoff: exponential 2s x2 -> exponential 2s x4" in lines
    assert (
        "TOOL-005 (SMTPCheck) kill_switch: ip_blacklist_detected -> halt_and_alert -> None" in lines
    )
    assert (
        "TOOL-019 (EmailVerifier) cost: per_call 0.004/call cap 50 -> per_call 0.004/call cap 80"
    ) in lines
    assert not any("Firecrawl" in line or "TOOL-013" in line for line in lines)
    assert any(line.startswith("source: ") for line in lines)  # a different file


def test_toolbox_is_frozen() -> None:
    tb = load_toolbox(REGISTRY)
    with pytest.raises(AttributeError):
        tb.version = "x"  # type: ignore[misc]
    assert isinstance(tb, Toolbox)


def test_bigint_max_limit_is_accepted_exactly(write: Callable[..., Path]) -> None:
    def big(doc: dict[str, Any]) -> None:
        doc["tools"]["MXLookup"]["throttle"]["rate_limits"][1]["limit"] = 2**63 - 1

    toolbox = load_toolbox(write(big))
    assert toolbox.tools["TOOL-004"].rate_limits[1].limit == 2**63 - 1
