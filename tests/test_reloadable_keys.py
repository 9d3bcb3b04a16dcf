"""Every key SIGHUP is said to apply reaches a component, and defaults live in one place.

* Walk: for every config key marked reloadable (KeySpec.reload) and every registry field our
  tools use, a pipeline is built from a config, the key is changed, the daemon's `Reloader`
  (the SIGHUP handler) reloads, and what the running components hold is compared before and
  after. A key that changes nothing a component holds fails, naming the key; so does one whose
  new value is nowhere in what changed.
* Behaviour: for a handful, the change is observed in what the component does (under
  MockClock): the MXLookup rate, the DNS query timeout, the global SMTP connection cap.
* Defaults: every component's settings defaults equal what `Settings.from_config` builds from
  an empty config (`Config()`) and the shipped registry.
"""

from __future__ import annotations

import dataclasses
import inspect
import socket
from collections.abc import Callable, Iterator, Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from ct_actors import app
from ct_actors.actors.dispatcher import DispatchSettings
from ct_actors.actors.loader import LoaderSettings
from ct_actors.actors.pool_settings import PoolSettings
from ct_actors.actors.resolver_stage import ResolverSettings
from ct_actors.actors.settings import PipelineSettings, Settings
from ct_actors.actors.smtp_gate import GuardSettings
from ct_actors.actors.supervisor import Supervisor
from ct_actors.actors.writer import WriterSettings
from ct_actors.config import Config, ConfigError, KeySpec, key_specs, load_config
from ct_actors.dns.client import UdpDnsClient
from ct_actors.dns.dnsbl import DnsblChecker
from ct_actors.dns.nameservers import QuerySettings
from ct_actors.dns.types import DnsUnavailable, MxLookup
from ct_actors.probe.domain_probe import RetryPolicy
from ct_actors.throttle.calendar import UtcClock
from ct_actors.throttle.host_window import HostWindowSettings
from ct_actors.throttle.limiter import ThrottleSettings, ToolLimiter, ToolThrottles
from ct_actors.toolbox import (
    EMAIL_VERIFIER,
    MX_LOOKUP,
    SMTP_CHECK,
    Toolbox,
    ToolSpec,
    load_toolbox,
)
from ct_actors.verify.factory import make_email_verifier
from ct_actors.verify.gate import EmailVerifier

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parent.parent
REGISTRY_PATH = REPO / "config" / "SNAP_ON_TOOLBOX.yaml"
REGISTRY = load_toolbox(REGISTRY_PATH)
BOUND = 10_000.0  # virtual seconds
BASE = {
    "smtp.helo_name": "probe.acme-corp.io",
    "smtp.mail_from": "postmaster@acme-corp.io",
    "toolbox.path": str(REGISTRY_PATH),
}
# New values the arithmetic rule (see changed_value) cannot make.
NEW_VALUES: dict[str, object] = {
    "dns.health_check_name": "k.root-servers.net",
    "killswitch.dnsbl_address": "8.8.4.4",  # never contacted: a value to hold, no zone is set
    "log.level": "debug",
}
RELOADABLE = [key for key, spec in key_specs().items() if spec.reload]


# ─── the pipeline, and what its components hold ─────────────────────────────────────────────


class NoStore:
    """Nothing is claimed or written: the pipeline is built, never run."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the store was used ({name})")


class NoResolver:
    async def lookup(self, domain: str) -> MxLookup:
        raise AssertionError("the resolver was used")


class Daemon:
    """A pipeline built from a config as `run_pipeline` builds it (not started), with the
    daemon's SIGHUP handler over it; `reload(cfg, toolbox)` is one SIGHUP that finds them."""

    def __init__(self, cfg: Config, toolbox: Toolbox) -> None:
        self.files: tuple[Config, Toolbox] = (cfg, toolbox)
        self.throttles = app.make_throttles(cfg, toolbox, None, UtcClock.from_wall())
        self.dns = UdpDnsClient(
            ["127.0.0.1"], timeout=cfg.dns.timeout, attempts=cfg.dns.attempts
        )
        settings = Settings.from_config(cfg, toolbox)
        self.supervisor = Supervisor(
            settings.pipeline,
            store=NoStore(),  # type: ignore[arg-type]
            resolver=NoResolver(),
            pools=app.make_pools(cfg),
            transient_db_errors=(),
            throttles=self.throttles,
            verifier=lambda switches: EmailVerifier(
                toolbox.email_verifier,
                client=None,  # type: ignore[arg-type]
                ledger=None,  # type: ignore[arg-type]
                switches=switches,
                clock=UtcClock.from_wall(),
                owner=cfg.daemon.owner,
                limiter=self.throttles[EMAIL_VERIFIER],
            ),
            dns=self.dns,
        )
        # A host the pools have met: its window is kept, and must follow a reload too.
        self.window = self.supervisor.pools._window_for("192.0.2.25")
        self.reloader = app.Reloader(self.supervisor, cfg, toolbox, lambda: self.files)

    def reload(self, cfg: Config, toolbox: Toolbox) -> None:
        self.files = (cfg, toolbox)
        assert self.reloader(), "the reload was refused"

    def held(self, levels: list[str]) -> dict[str, Any]:
        """What the components hold: their settings, and the values they copied out of them
        when they were built (a reload must reach those too). `levels`: set_level's calls."""
        sup = self.supervisor
        resolver, dispatcher, guard, pools = sup.resolver, sup.dispatcher, sup.guard, sup.pools
        own = sup.settings
        return {
            "supervisor": {
                name: getattr(own, name)
                for name in ("max_in_flight", "drain_deadline", "stats_interval")
            },
            "loader": sup.loader.settings,
            "resolver": resolver.settings,
            "resolver.cache": resolver._cache.ttl,
            "resolver.failures": resolver._failures.threshold,
            "resolver.health": {
                "name": resolver._health.name,
                "interval": resolver._health.interval,
            },
            "dispatcher": dispatcher.settings,
            "dispatcher.verdicts": dispatcher._verdicts.ttl,
            "dispatcher.dns_broken": {
                "retries": dispatcher._dns_broken.retries,
                "delay": dispatcher._dns_broken.delay,
            },
            "writer": sup.writer.settings,
            "guard": guard.settings,
            "guard.evidence": guard._evidence.window,
            "guard.give_up": guard._streaks.give_up,
            "guard.unreachable": guard._unreachable.threshold,
            "pools": pools.settings,
            "pools.connections": pools.connections.total_tokens,
            "pools.slow_connections": pools.slow_connections.total_tokens,
            "pools.window": self.window.settings,
            "dns": {"timeout": self.dns._timeout, "attempts": self.dns._attempts},
            "throttles": {
                tool: (limiter.spec, limiter._block)
                for tool, limiter in self.throttles.by_tool.items()
            },
            "verifier": sup.verifier.spec if sup.verifier is not None else None,
            "log": levels[-1] if levels else None,
        }


def leaves(value: object, path: str = "") -> Iterator[tuple[str, object]]:
    """(dotted path, value) for every plain value inside dataclasses, mappings and tuples."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            yield from leaves(getattr(value, f.name), f"{path}.{f.name}")
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from leaves(v, f"{path}.{k}")
    elif isinstance(value, tuple | list) and any(
        dataclasses.is_dataclass(v) or isinstance(v, tuple | Mapping) for v in value
    ):
        for i, v in enumerate(value):
            yield from leaves(v, f"{path}[{i}]")
    else:
        yield path.lstrip("."), value


def changes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, tuple[object, object]]:
    old, new = dict(leaves(before)), dict(leaves(after))
    return {p: (old.get(p), new.get(p)) for p in new if old.get(p) != new.get(p)}


def changed_value(key: str, spec: KeySpec, old: object) -> object:
    """A valid value other than `old` (cross-key rules hold at the defaults' scale)."""
    if key in NEW_VALUES:
        return NEW_VALUES[key]
    if spec.kind == "int":
        assert isinstance(old, int)
        new_int = old + 1
        return new_int if spec.le is None or new_int <= spec.le else old - 1
    if spec.kind == "float":
        assert isinstance(old, float)
        new_float = old * 2 if old else 1.0
        return new_float if spec.le is None or new_float <= spec.le else old / 2
    raise AssertionError(f"{key} ({spec.kind}): add a new value for it to NEW_VALUES")


def load(**overrides: object) -> Config:
    values = {**BASE, **{k.replace("__", "."): v for k, v in overrides.items()}}
    return load_config(None, env={}, overrides=values)


@pytest.fixture
def levels(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The levels the Reloader set, instead of setting them (other tests log at info)."""
    calls: list[str] = []
    monkeypatch.setattr(app, "set_level", calls.append)
    return calls


# ─── the walk: config keys ──────────────────────────────────────────────────────────────────


def registry_copy(tmp_path: Path, old: str, new: str) -> Path:
    text = REGISTRY_PATH.read_text(encoding="utf-8")
    assert text.count(old) >= 1, old
    path = tmp_path / "SNAP_ON_TOOLBOX.yaml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


@pytest.mark.parametrize("key", RELOADABLE)
async def test_a_reloadable_key_reaches_a_component(
    key: str, tmp_path: Path, levels: list[str]
) -> None:
    spec = key_specs()[key]
    cfg = load()
    old = cfg.value(key)
    if key == "toolbox.path":
        # A registry elsewhere, differing in MXLookup's per_second limit.
        new: object = str(
            registry_copy(
                tmp_path, '{scope: "per_second", limit: 50}', '{scope: "per_second", limit: 7}'
            )
        )
    else:
        new = changed_value(key, spec, old)
    try:
        new_cfg = load_config(None, env={}, overrides={**BASE, key: new})
    except ConfigError as exc:
        raise AssertionError(f"{key} = {new!r} was refused: {exc}") from None
    assert new_cfg.value(key) != old, key
    if key == "toolbox.path":
        new = Path(str(new))
    daemon = Daemon(cfg, REGISTRY)
    before = daemon.held(levels)
    daemon.reload(new_cfg, load_toolbox(new_cfg.toolbox.path))
    changed = changes(before, daemon.held(levels))
    assert changed, (
        f"{key} is marked reloadable (KeySpec.reload) but a reload changed nothing any "
        f"component holds: wire it (Settings.from_config, Supervisor.reconfigure) or mark it "
        "restart-only"
    )
    if key == "toolbox.path":
        assert changed == {
            f"throttles.{MX_LOOKUP}[0].rate_limits[0].limit": (50, 7)
        }, changed
        return
    assert any(now == new for _, now in changed.values()), (
        f"{key}: {old!r} -> {new!r} reached no component with its new value; what changed: "
        f"{changed}"
    )


def test_the_walk_covers_the_keys_reload_says_it_applies() -> None:
    # The reload log line says "reloaded" for exactly these; the walk above takes each.
    old = load_config(None, env={}, overrides=BASE)
    for key in RELOADABLE:
        if key == "toolbox.path":
            continue
        value = changed_value(key, key_specs()[key], old.value(key))
        new = load_config(None, env={}, overrides={**BASE, key: value})
        (line,) = old.reloadable_diff(new)
        assert line.startswith(f"{key}: ") and line.endswith("(reloaded)"), line


# ─── the walk: the registry ─────────────────────────────────────────────────────────────────


def _doubled(spec: ToolSpec, field: str) -> ToolSpec:
    value = getattr(spec, field)
    if field == "rate_limits":
        first = dataclasses.replace(value[0], limit=value[0].limit * 2)
        return dataclasses.replace(spec, rate_limits=(first, *value[1:]))
    if field == "backoff":
        return dataclasses.replace(
            spec, backoff=dataclasses.replace(value, initial_delay=value.initial_delay * 2 + 1)
        )
    if field == "cost":
        return dataclasses.replace(spec, cost=dataclasses.replace(value, per_call=Decimal("0.5")))
    assert value is not None, f"{spec.tool_id} has no {field} in the shipped registry"
    return dataclasses.replace(spec, **{field: value * 2})


# (tool, registry field) -> the part of the pipeline that must take it (besides the throttle,
# which holds every field of its tool's entry).
REGISTRY_FIELDS = {
    (MX_LOOKUP, "rate_limits"): "throttles",
    (MX_LOOKUP, "backoff"): "resolver",
    (MX_LOOKUP, "cache_ttl"): "resolver",
    (SMTP_CHECK, "rate_limits"): "throttles",
    (SMTP_CHECK, "backoff"): "dispatcher",
    (SMTP_CHECK, "cache_ttl"): "dispatcher",
    (EMAIL_VERIFIER, "rate_limits"): "throttles",
    (EMAIL_VERIFIER, "backoff"): "verifier",
    (EMAIL_VERIFIER, "cost"): "verifier",
    (EMAIL_VERIFIER, "cache_ttl"): "verifier",
    (EMAIL_VERIFIER, "max_attempts_per_email"): "verifier",
}


@pytest.mark.parametrize(("tool", "field"), sorted(REGISTRY_FIELDS))
async def test_a_registry_field_reaches_the_throttles_and_its_user(
    tool: str, field: str, tmp_path: Path, levels: list[str]
) -> None:
    cfg = load()
    changed_tools = {**REGISTRY.tools, tool: _doubled(REGISTRY.tools[tool], field)}
    new_registry = dataclasses.replace(REGISTRY, tools=changed_tools)
    daemon = Daemon(cfg, REGISTRY)
    before = daemon.held(levels)
    daemon.reload(cfg, new_registry)
    reached = {path.split(".")[0] for path in changes(before, daemon.held(levels))}
    user = REGISTRY_FIELDS[(tool, field)]
    assert "throttles" in reached and user in reached, (
        f"{tool} {field} changed in the registry; a reload changed only {sorted(reached)}"
    )


# ─── behaviour after a reload ───────────────────────────────────────────────────────────────


async def test_a_reloaded_lookup_rate_paces_the_next_lookups(
    autojump_clock: trio.testing.MockClock, tmp_path: Path, levels: list[str]
) -> None:
    def paced(per_second: int) -> Toolbox:
        spec = REGISTRY.mx_lookup
        limits = tuple(
            dataclasses.replace(r, limit=per_second) if r.scope == "per_second" else r
            for r in spec.rate_limits
        )
        mx = dataclasses.replace(spec, rate_limits=limits)
        return dataclasses.replace(REGISTRY, tools={**REGISTRY.tools, MX_LOOKUP: mx})

    async def hundred_lookups(limiter: ToolLimiter) -> float:
        start = trio.current_time()
        for i in range(100):
            await limiter.acquire(f"d{i}.test")
        return trio.current_time() - start

    cfg = load()
    with trio.fail_after(BOUND):
        daemon = Daemon(cfg, paced(10))
        limiter = daemon.supervisor.throttles[MX_LOOKUP]  # type: ignore[index]
        # 10 a second: the first 10 at once, then one every 0.1 s.
        assert await hundred_lookups(limiter) == pytest.approx(9.0)
        await trio.sleep(1.0)
        daemon.reload(cfg, paced(50))
        assert await hundred_lookups(limiter) == pytest.approx(1.0)


@pytest.fixture
def silent_nameserver() -> Iterator[str]:
    """A UDP socket on loopback that takes queries and never answers."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"127.0.0.1:{sock.getsockname()[1]}"


async def test_a_reloaded_dns_timeout_and_attempts_bound_the_next_query(
    autojump_clock: trio.testing.MockClock,
    tmp_path: Path,
    levels: list[str],
    silent_nameserver: str,
) -> None:
    host, port = silent_nameserver.split(":")
    cfg = load()
    with trio.fail_after(BOUND):
        daemon = Daemon(cfg, REGISTRY)
        # The daemon's client, as open_resolver opens it, pointed at the silent server.
        daemon.dns = UdpDnsClient(
            [host], port=int(port), timeout=cfg.dns.timeout, attempts=cfg.dns.attempts
        )
        daemon.supervisor._dns = daemon.dns
        async with daemon.dns as client:

            async def given_up_after() -> float:
                start = trio.current_time()
                with pytest.raises(DnsUnavailable):
                    await client.exchange("silent.test", "MX")
                return trio.current_time() - start

            assert await given_up_after() == pytest.approx(2 * 2.0)  # the defaults
            daemon.reload(load(dns__timeout=0.5, dns__attempts=3), REGISTRY)
            assert await given_up_after() == pytest.approx(3 * 0.5)


async def test_a_reloaded_connection_cap_bounds_the_next_sessions(levels: list[str]) -> None:
    cfg = load(smtp__max_connections=8, smtp__max_connections_per_host=4)
    daemon = Daemon(cfg, REGISTRY)
    connections = daemon.supervisor.pools.connections
    held = [object() for _ in range(8)]
    for session in held:
        connections.acquire_on_behalf_of_nowait(session)
    daemon.reload(load(smtp__max_connections=4, smtp__max_connections_per_host=4), REGISTRY)
    # Nobody is cut off; the sessions closing first make room only down to the new cap.
    for session in held[:4]:
        connections.release_on_behalf_of(session)
    with pytest.raises(trio.WouldBlock):
        connections.acquire_nowait()
    connections.release_on_behalf_of(held[4])
    connections.acquire_nowait()
    await trio.lowlevel.checkpoint()


# ─── defaults live in one place ─────────────────────────────────────────────────────────────


def differences(component: object, config: object) -> list[str]:
    mine, theirs = dict(leaves(component)), dict(leaves(config))
    return [
        f"{path}: component default {mine[path]!r}, config default {theirs[path]!r}"
        for path in mine
        if mine[path] != theirs.get(path)
    ]


def test_component_settings_defaults_are_the_configs() -> None:
    settings = Settings.from_config(Config(), REGISTRY)
    pipeline = settings.pipeline
    # DispatchSettings.addresses: None means "no address check", for tests that talk to
    # documentation addresses; the daemon always sets it from smtp.allow_networks.
    dispatch = dataclasses.replace(DispatchSettings(), addresses=pipeline.dispatch.addresses)
    checks: list[tuple[str, object, object]] = [
        ("PipelineSettings", PipelineSettings(owner=pipeline.owner, dispatch=dispatch), pipeline),
        ("LoaderSettings", LoaderSettings(), pipeline.loader),
        ("ResolverSettings", ResolverSettings(), pipeline.resolver),
        ("DispatchSettings", dispatch, pipeline.dispatch),
        ("RetryPolicy", RetryPolicy(), pipeline.dispatch.retry),
        ("WriterSettings", WriterSettings(), pipeline.writer),
        ("GuardSettings", GuardSettings(), pipeline.guard),
        ("PoolSettings", PoolSettings(), settings.pools),
        ("HostWindowSettings", HostWindowSettings(), settings.pools.window()),
        ("QuerySettings", QuerySettings(), settings.dns),
        ("ThrottleSettings", ThrottleSettings(tools=settings.throttles.tools), settings.throttles),
    ]
    wrong = [f"{name}.{d}" for name, mine, theirs in checks for d in differences(mine, theirs)]
    assert wrong == [], "\n".join(wrong)


def test_daemon_stop_timeout_bounds_each_database_step_of_a_stop() -> None:
    # Not reloadable (a restart applies it), but it must reach every step it bounds.
    base = Config()
    cfg = dataclasses.replace(base, daemon=dataclasses.replace(base.daemon, stop_timeout=3.0))
    pipeline = Settings.from_config(cfg, REGISTRY).pipeline
    assert pipeline.writer.final_flush_timeout == 3.0
    assert pipeline.release_timeout == 3.0
    assert pipeline.refund_timeout == 1.5


def defaults_of(call: Callable[..., object], *names: str) -> dict[str, object]:
    params = inspect.signature(call).parameters
    return {name: params[name].default for name in names}


def test_defaults_of_components_built_from_arguments_are_the_configs() -> None:
    cfg = Config()
    dns, ks, verifier = cfg.dns, cfg.killswitch, cfg.verifier
    budget = cfg.throttle.budget_block
    assert defaults_of(UdpDnsClient, "port", "timeout", "attempts") == {
        "port": dns.port,
        "timeout": dns.timeout,
        "attempts": dns.attempts,
    }
    assert defaults_of(ToolLimiter, "budget_block") == {"budget_block": budget}
    assert defaults_of(ToolThrottles, "budget_block") == {"budget_block": budget}
    # The budget refunds at a stop: half of daemon.stop_timeout, when the caller names none.
    assert defaults_of(ToolThrottles.release, "within") == {"within": cfg.daemon.stop_timeout / 2}
    assert defaults_of(DnsblChecker, "cache_ttl") == {"cache_ttl": ks.dnsbl_cache}
    assert defaults_of(make_email_verifier, "timeout", "vendor_timeout") == {
        "timeout": verifier.timeout,
        "vendor_timeout": verifier.vendor_timeout,
    }
