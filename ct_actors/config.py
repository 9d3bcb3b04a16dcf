"""Daemon configuration: a TOML file, then `CT_<SECTION>_<KEY>` environment variables, then
explicit overrides (the CLI), validated into frozen dataclasses.

Design points (see docs/configuration.md for the operator's view):

* Every key has one declaration (`_spec`) that carries its type, bounds and reload policy, so the
  loader, the env parser, `reloadable_diff` and the docs cannot drift apart.
* Unknown keys are refused, never ignored: a typo such as `max_conections` silently falling back
  to the default is how a prober ends up hammering mail servers. The error suggests the closest
  valid key.
* All problems are collected and reported together, so an operator fixes a config in one pass.
* SMTP identity (`helo_name`, `mail_from`) has no usable default on purpose: every probe
  introduces us to a stranger's mail server, and an identity we do not control (or a big
  provider's name) gets the probing IP blocklisted. In `smtp` mode the loader refuses to start
  without them, and refuses the shipped `example.net` placeholders.
* A relative `toolbox.path` resolves against the directory of the config file, not the working
  directory, because under systemd the working directory is `/` unless someone remembered to set
  it.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
import re
import socket
import tomllib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import unquote, urlsplit

from ct_actors.net.address_policy import parse_networks
from ct_actors.redact import redact_url

__all__ = [
    "BIG_PROVIDER_DOMAINS",
    "EMBEDDED_URL",
    "ENV_PREFIX",
    "PLACEHOLDER_DOMAINS",
    "Config",
    "ConfigError",
    "DaemonConfig",
    "DatabaseConfig",
    "DnsConfig",
    "KillSwitchConfig",
    "LogConfig",
    "ProbeConfig",
    "SmtpConfig",
    "ThrottleConfig",
    "ToolboxConfig",
    "VerifierConfig",
    "WriterConfig",
    "env_var_name",
    "key_specs",
    "load_config",
]

ENV_PREFIX = "CT_"
# The registry's EmailVerifier api_key_source; the key itself never goes into the config file.
VERIFIER_KEY_ENV = "MILLIONVERIFIER_API_KEY"

# Names we must never introduce ourselves as: claiming to be one of these in HELO or MAIL FROM
# fails their SPF/DMARC/FCrDNS checks everywhere and reads as forgery.
BIG_PROVIDER_DOMAINS: tuple[str, ...] = (
    "gmail.com",
    "googlemail.com",
    "google.com",
    "outlook.com",
    "hotmail.com",
    "live.com",
    "msn.com",
    "office365.com",
    "microsoft.com",
    "yahoo.com",
    "aol.com",
    "apple.com",
    "icloud.com",
    "me.com",
)

# The documentation domains (RFC 2606) used as placeholders in the shipped example config. They
# are refused in smtp mode so that an unedited example config cannot go live. `.test` and
# `.invalid` are deliberately allowed: the simulated internet used by the e2e tests lives there.
PLACEHOLDER_DOMAINS: tuple[str, ...] = ("example.com", "example.net", "example.org")

# `database.url = "embedded"`: the embedded PostgreSQL in `database.data_directory`.
EMBEDDED_URL = "embedded"

DEFAULT_TOOLBOX_PATH = Path("config/SNAP_ON_TOOLBOX.yaml")
# With a config file and no `toolbox.path` in it, the registry is expected next to the file
# (the shipped layout: config/ct-actors.toml + config/SNAP_ON_TOOLBOX.yaml).
DEFAULT_TOOLBOX_SIBLING = "SNAP_ON_TOOLBOX.yaml"


class ConfigError(Exception):
    """The configuration was refused. `message` is meant for the operator, verbatim; `errors`
    holds the individual problems (one line each)."""

    def __init__(self, message: str, errors: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors or (message,)


# ─── key declarations ────────────────────────────────────────────────────────────────────────

Kind = Literal[
    "int", "float", "bool", "str", "opt_str", "str_list", "choice", "path", "opt_path"
]
_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


@dataclass(frozen=True, slots=True)
class KeySpec:
    """How one key is typed, bounded and reloaded. Attached to dataclass fields as metadata."""

    kind: Kind
    reload: bool  # True: SIGHUP applies it; False: needs a restart
    doc: str
    ge: float | None = None  # inclusive lower bound
    gt: float | None = None  # exclusive lower bound
    le: float | None = None  # inclusive upper bound
    choices: tuple[str, ...] = ()
    secret: bool = False  # mask in redacted() and diffs


def _key(default: Any, spec: KeySpec) -> Any:
    return field(default=default, metadata={"spec": spec})


def _key_factory(factory: Callable[[], Any], spec: KeySpec) -> Any:
    return field(default_factory=factory, metadata={"spec": spec})


def _default_owner() -> str:
    # hostname:pid identifies the lease holder in the claim table; two daemons on one host
    # (blue/green restarts) still differ by pid.
    return f"{socket.gethostname()}:{os.getpid()}"


# ─── sections ────────────────────────────────────────────────────────────────────────────────


@dataclass(frozen=True, slots=True, repr=False)
class DatabaseConfig:
    # No default on purpose (issue 11): a production command must never pick a database the
    # operator did not name. "" = unset (refused by migrate/run/once/report/canary).
    url: str = _key(
        "",
        KeySpec(
            "str", False, 'PostgreSQL URL (asyncpg DSN), or "embedded" (single box)', secret=True
        ),
    )
    data_directory: Path | None = field(
        default=None,
        metadata={
            "spec": KeySpec(
                "opt_path", False, 'data directory of the embedded server (url = "embedded")'
            )
        },
    )
    min_connections: int = _key(1, KeySpec("int", False, "pool minimum size", ge=0))
    max_connections: int = _key(4, KeySpec("int", False, "pool maximum size", ge=1))
    # Upper bounds keep now() + interval inside PostgreSQL's timestamp range: a larger value
    # would pass here and fail every claim (exit 1, restarted forever) instead of exit 2.
    lease_seconds: int = _key(300, KeySpec("int", False, "claim lease length", ge=1, le=86_400))
    # Also how long a cancelled query can hold up a stop: asyncpg finishes cancelling a query on
    # a silent connection only after this. The daemon's statements take milliseconds.
    command_timeout: float = _key(
        15.0, KeySpec("float", False, "per-statement timeout, seconds (not migrate)", gt=0)
    )

    def __repr__(self) -> str:
        # Never let a repr (tracebacks, debuggers, f-strings) carry the DB password.
        return (
            f"DatabaseConfig(url={redact_url(self.url)!r}, data_directory={self.data_directory!r}"
            f", min_connections={self.min_connections}"
            f", max_connections={self.max_connections}, lease_seconds={self.lease_seconds})"
        )


@dataclass(frozen=True, slots=True)
class DnsConfig:
    nameservers: tuple[str, ...] = _key(
        (), KeySpec("str_list", False, "resolver IPs; empty = system resolver")
    )
    port: int = _key(53, KeySpec("int", False, "resolver port", ge=1, le=65535))
    timeout: float = _key(2.0, KeySpec("float", True, "per-query timeout, seconds", gt=0))
    attempts: int = _key(2, KeySpec("int", True, "tries per query", ge=1))
    # Restart-only: the resolver stage's workers are started once.
    max_in_flight: int = _key(256, KeySpec("int", False, "concurrent DNS queries", ge=1))
    # Asked (IN A, with `. NS`) before a failed lookup is blamed on our resolver: dnsdist's
    # default health-check query, answered through the root and net. delegations.
    health_check_name: str = _key(
        "a.root-servers.net", KeySpec("str", True, "name that must resolve on a healthy resolver")
    )
    health_check_interval: float = _key(
        30.0, KeySpec("float", True, "seconds a health-check result stands", gt=0, le=3600)
    )
    domain_failure_retries: int = _key(
        3, KeySpec("int", True, "deferrals of a domain with broken DNS before CT-M-NO-MX", ge=0)
    )
    # Past the 5 minutes a resolver may cache a failure (RFC 2308 §7.1, RFC 9520).
    domain_failure_delay: float = _key(
        1800.0,
        KeySpec("float", True, "first wait after a broken-DNS lookup (doubles)", ge=300, le=86_400),
    )


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    port: int = _key(25, KeySpec("int", False, "MX port", ge=1, le=65535))
    helo_name: str | None = _key(
        None, KeySpec("opt_str", False, "EHLO/HELO name: a FQDN you control")
    )
    # "" is the null reverse-path `<>` (written explicitly as "<>" by the operator); None = unset.
    mail_from: str | None = _key(
        None, KeySpec("opt_str", False, "MAIL FROM address at a domain you control, or <>")
    )
    source_address: str | None = _key(
        None, KeySpec("opt_str", False, "local IP to bind outgoing connections to")
    )
    # Empty: only public MX addresses are connected to (ct_actors.net.address_policy).
    allow_networks: tuple[str, ...] = _key(
        (), KeySpec("str_list", False, "non-public CIDR blocks MX hosts may be on")
    )
    connect_timeout: float = _key(10.0, KeySpec("float", True, "TCP connect + banner", gt=0))
    command_timeout: float = _key(30.0, KeySpec("float", True, "per SMTP command", gt=0))
    quit_timeout: float = _key(5.0, KeySpec("float", True, "QUIT reply wait", gt=0))
    starttls: Literal["opportunistic", "never"] = _key(
        "opportunistic",
        KeySpec("choice", False, "STARTTLS policy", choices=("opportunistic", "never")),
    )
    max_connections: int = _key(64, KeySpec("int", True, "global SMTP connection cap", ge=1))
    initial_connections_per_host: int = _key(
        1, KeySpec("int", True, "adaptive per-MX-host window: starting size", ge=1)
    )
    max_connections_per_host: int = _key(
        4, KeySpec("int", True, "adaptive per-MX-host window: upper bound", ge=1)
    )
    max_recipients_per_session: int = _key(
        10, KeySpec("int", True, "RCPT commands per mail transaction", ge=1, le=100)
    )
    session_reuse_seconds: int = _key(
        30, KeySpec("int", True, "max age of a session reused for new RCPTs", ge=0)
    )
    session_idle_seconds: float = _key(
        2.0, KeySpec("float", True, "keep an idle session open for the next domain", ge=0)
    )
    pool_idle_seconds: int = _key(
        60, KeySpec("int", True, "retire an idle MX host pool after", ge=0)
    )
    dead_host_backoff: float = _key(
        300.0, KeySpec("float", True, "skip an unreachable MX host for (first time)", ge=0)
    )
    dead_host_backoff_max: float = _key(
        3600.0, KeySpec("float", True, "dead-host backoff doubles up to", ge=0)
    )
    greylist_retry_delay: float = _key(
        300.0, KeySpec("float", True, "first wait after a greylisted pass (doubles)", ge=0)
    )
    greylist_max_retries: int = _key(
        4, KeySpec("int", True, "greylisted passes retried before CT-M-SMTP-FAIL", ge=0)
    )
    max_errors_per_session: int = _key(
        8, KeySpec("int", True, "rejected commands one session may take", ge=1, le=1000)
    )
    max_fresh_sessions: int = _key(
        3, KeySpec("int", True, "fresh sessions in a row a domain may lose unanswered", ge=1)
    )
    remote_attempts: int = _key(
        3, KeySpec("int", True, "MX walks per pass when the hosts fail transiently", ge=1)
    )
    domain_time_budget: float = _key(
        900.0, KeySpec("float", True, "seconds one domain's pass may spend at its MX hosts", gt=0)
    )
    max_rejected_rcpts_per_host: int = _key(
        8, KeySpec("int", True, "rejected RCPTs per MX host per window (DHA safety)", ge=1)
    )
    rejected_rcpts_window: float = _key(
        60.0, KeySpec("float", True, "sliding window of that budget, seconds", gt=0)
    )
    # Slow hosts (tarpits) must not starve max_connections (docs/throttles.md, "Slow hosts").
    slow_reply_seconds: float = _key(
        10.0, KeySpec("float", True, "a reply slower than this marks the host slow", gt=0)
    )
    slow_host_seconds: float = _key(
        3600.0, KeySpec("float", True, "a host stays slow this long after a slow reply", ge=0)
    )
    slow_connections_share: float = _key(
        0.25, KeySpec("float", True, "share of max_connections slow hosts may hold", gt=0, le=1)
    )

    @property
    def reverse_path(self) -> str:
        """The MAIL FROM argument with its angle brackets: `<addr>`, or `<>` for the null
        reverse-path (written explicitly). Raises ValueError when mail_from is unset rather than
        quietly probing with `<>`."""
        if self.mail_from is None:
            raise ValueError("smtp.mail_from is not set")
        return f"<{self.mail_from}>"


@dataclass(frozen=True, slots=True)
class ProbeConfig:
    mode: Literal["smtp", "mx-only"] = _key(
        "smtp", KeySpec("choice", False, "probe depth", choices=("smtp", "mx-only"))
    )
    names_query: str = _key("", KeySpec("str", False, "SQL for candidate names; $1 = company"))
    names_timeout: float = _key(
        5.0, KeySpec("float", False, "names query seconds per record", gt=0, le=300)
    )
    names_failures: int = _key(
        5, KeySpec("int", False, "names query failures in a row before alert + pause", ge=1)
    )
    names_pause: float = _key(
        120.0, KeySpec("float", False, "claim pause after names_failures", gt=0, le=300)
    )
    max_in_flight: int = _key(512, KeySpec("int", False, "records in the pipeline", ge=1))
    claim_batch: int = _key(200, KeySpec("int", True, "records claimed per query", ge=1))
    defer_seconds: int = _key(
        600, KeySpec("int", True, "re-claim delay after Deferred", ge=1, le=2_592_000)
    )


@dataclass(frozen=True, slots=True)
class WriterConfig:
    batch_size: int = _key(500, KeySpec("int", True, "rows per write", ge=1))
    flush_interval: float = _key(0.5, KeySpec("float", True, "max seconds a row waits", gt=0))


@dataclass(frozen=True, slots=True)
class ToolboxConfig:
    path: Path = field(
        default=DEFAULT_TOOLBOX_PATH,
        metadata={"spec": KeySpec("path", True, "SNAP_ON_TOOLBOX.yaml location")},
    )


@dataclass(frozen=True, slots=True)
class LogConfig:
    format: Literal["json", "console"] = _key(
        "json", KeySpec("choice", False, "output format", choices=("json", "console"))
    )
    level: Literal["debug", "info", "warning", "error"] = _key(
        "info",
        KeySpec("choice", True, "minimum level", choices=("debug", "info", "warning", "error")),
    )
    stats_interval: float = _key(30.0, KeySpec("float", True, "seconds between stats", gt=0))


@dataclass(frozen=True, slots=True)
class ThrottleConfig:
    budget_block: int = _key(
        20, KeySpec("int", True, "day/month budget calls reserved per database round trip", ge=1)
    )


@dataclass(frozen=True, slots=True)
class KillSwitchConfig:
    resolver_failure_domains: int = _key(
        20, KeySpec("int", True, "distinct domains failing on the resolver in a row", ge=1)
    )
    # Issue 10 item 2: counted by independent network (/24, /48), never by MX name, weighed
    # against the sessions that worked, confirmed with the DNSBLs (docs/throttles.md).
    blocklist_networks: int = _key(
        3, KeySpec("int", True, "distinct /24 (/48) networks refusing our IP in the window", ge=1)
    )
    blocklist_fraction: float = _key(
        0.5,
        KeySpec("float", True, "share of the networks talked to that must refuse us", gt=0, le=1),
    )
    blocklist_networks_alone: int = _key(
        10, KeySpec("int", True, "refusing networks that halt even if the DNSBLs say clean", ge=1)
    )
    blocklist_window: float = _key(
        3600.0, KeySpec("float", True, "seconds over which refusals and sessions count", gt=0)
    )
    refusal_give_up: float = _key(
        7200.0,
        KeySpec("float", True, "an uncorroborated refusal is deferred this long, then FAIL", gt=0),
    )
    dnsbl_zones: tuple[str, ...] = _key(
        (), KeySpec("str_list", False, "DNS blocklists to look our sending IP up in")
    )
    dnsbl_address: str | None = _key(
        None, KeySpec("opt_str", True, "our public sending IP (behind NAT); empty: learnt")
    )
    dnsbl_cache: float = _key(
        900.0, KeySpec("float", False, "seconds a DNSBL answer is cached", gt=0, le=86_400)
    )
    port_blocked_hosts: int = _key(
        10, KeySpec("int", True, "distinct MX hosts unreachable in a row (port 25)", ge=1)
    )
    reachability_window: float = _key(
        900.0,
        KeySpec("float", True, "CT-M-SMTP-FAIL needs a successful connection this recent", gt=0),
    )


@dataclass(frozen=True, slots=True)
class VerifierConfig:
    enabled: bool = _key(
        False, KeySpec("bool", False, "Tier-2 EmailVerifier (TOOL-019) on weak PASSes")
    )
    base_url: str = _key(
        "https://api.millionverifier.com",
        KeySpec("str", False, "MillionVerifier API base URL (http(s)://host[:port])"),
    )
    timeout: float = _key(20.0, KeySpec("float", False, "HTTP timeout per request", gt=0))
    vendor_timeout: int = _key(
        10, KeySpec("int", False, "the vendor's own SMTP timeout (api timeout=)", ge=2, le=60)
    )


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    owner: str = _key_factory(_default_owner, KeySpec("str", False, "lease owner id"))
    drain_deadline: float = _key(60.0, KeySpec("float", True, "shutdown drain seconds", gt=0))
    owner_lock_wait: float = _key(
        30.0, KeySpec("float", False, "wait for the owner name to be free at start", ge=0, le=600)
    )


_SECTIONS: dict[str, type[Any]] = {
    "database": DatabaseConfig,
    "dns": DnsConfig,
    "smtp": SmtpConfig,
    "probe": ProbeConfig,
    "writer": WriterConfig,
    "toolbox": ToolboxConfig,
    "throttle": ThrottleConfig,
    "killswitch": KillSwitchConfig,
    "verifier": VerifierConfig,
    "log": LogConfig,
    "daemon": DaemonConfig,
}


def key_specs() -> dict[str, KeySpec]:
    """Every `section.key` with its declaration, in file order (used by docs and tests)."""
    out: dict[str, KeySpec] = {}
    for section, cls in _SECTIONS.items():
        for f in dataclasses.fields(cls):
            out[f"{section}.{f.name}"] = f.metadata["spec"]
    return out


_SPECS = key_specs()


def env_var_name(dotted: str) -> str:
    """`smtp.helo_name` -> `CT_SMTP_HELO_NAME`."""
    return ENV_PREFIX + dotted.replace(".", "_").upper()


_ENV_TO_KEY = {env_var_name(k): k for k in _SPECS}


@dataclass(frozen=True, slots=True)
class Config:
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    dns: DnsConfig = field(default_factory=DnsConfig)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    probe: ProbeConfig = field(default_factory=ProbeConfig)
    writer: WriterConfig = field(default_factory=WriterConfig)
    toolbox: ToolboxConfig = field(default_factory=ToolboxConfig)
    throttle: ThrottleConfig = field(default_factory=ThrottleConfig)
    killswitch: KillSwitchConfig = field(default_factory=KillSwitchConfig)
    verifier: VerifierConfig = field(default_factory=VerifierConfig)
    log: LogConfig = field(default_factory=LogConfig)
    daemon: DaemonConfig = field(default_factory=DaemonConfig)
    # Where the config came from (None: defaults + environment only).
    source: Path | None = None
    # Secret values found outside the config proper (PGPASSWORD), kept only so that logging can
    # mask them; never shown.
    extra_secrets: tuple[str, ...] = field(default=(), repr=False, compare=False)

    def value(self, dotted: str) -> Any:
        section, key = dotted.split(".", 1)
        return getattr(getattr(self, section), key)

    def flat(self) -> dict[str, Any]:
        """`{"section.key": value}` for every key."""
        return {k: self.value(k) for k in _SPECS}

    def redacted(self) -> dict[str, Any]:
        """The effective config as JSON-friendly nested dicts, for the startup log line; the
        database password and any other secret are masked."""
        out: dict[str, Any] = {}
        for dotted, spec in _SPECS.items():
            section, key = dotted.split(".", 1)
            out.setdefault(section, {})[key] = _display(self.value(dotted), spec)
        out["source"] = str(self.source) if self.source is not None else None
        return out

    def secrets(self) -> tuple[str, ...]:
        """Secret values to hand to `configure_logging(secrets=...)` so they are masked wherever
        they show up (the DB password raw and %-decoded, PGPASSWORD)."""
        found: list[str] = list(self.extra_secrets)
        try:
            password = urlsplit(self.database.url).password
        except ValueError:
            password = None
        if password:
            found.extend({password, unquote(password)})
        return tuple(dict.fromkeys(found))

    def changed_keys(self, new: Config) -> list[str]:
        return [k for k in _SPECS if self.value(k) != new.value(k)]

    def restart_required(self, new: Config) -> list[str]:
        """Changed keys that SIGHUP cannot apply; the running values stay in effect for them."""
        return [k for k in self.changed_keys(new) if not _SPECS[k].reload]

    def reloaded(self, new: Config) -> Config:
        """What the daemon runs after SIGHUP: `new`'s reloadable keys, this config's others."""
        sections: dict[str, Any] = {}
        for section in _SECTIONS:
            changes = {
                f.name: getattr(getattr(new, section), f.name)
                for f in dataclasses.fields(_SECTIONS[section])
                if f.metadata["spec"].reload
            }
            sections[section] = dataclasses.replace(getattr(self, section), **changes)
        return dataclasses.replace(self, **sections)

    def reloadable_diff(self, new: Config) -> list[str]:
        """One human line per changed key, saying whether SIGHUP applies it or a restart is
        needed. Reloadable: throttles, limits, timeouts, log level, stats interval, the toolbox
        path. Restart: identity and wiring (database, DNS servers, SMTP identity/port/source
        address/STARTTLS, probe mode/query/pipeline size, log format, owner)."""
        lines = []
        for k in self.changed_keys(new):
            spec = _SPECS[k]
            old_v, new_v = _display(self.value(k), spec), _display(new.value(k), spec)
            how = "reloaded" if spec.reload else "restart required; running value kept"
            lines.append(f"{k}: {old_v!r} -> {new_v!r} ({how})")
        return lines


def _display(value: Any, spec: KeySpec) -> Any:
    if spec.secret and isinstance(value, str):
        return redact_url(value)
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


# ─── coercion ────────────────────────────────────────────────────────────────────────────────


class _Invalid(ValueError):
    """A single key's value was refused; the message is about the value, not the key."""


def _type_name(v: object) -> str:
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a float"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "a table"
    return f"a {type(v).__name__}"


def _bound(x: float) -> str:
    # 2592000, not 2.592e+06.
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def _check_bounds(v: float, spec: KeySpec) -> None:
    if spec.ge is not None and spec.le is not None and not (spec.ge <= v <= spec.le):
        raise _Invalid(f"must be between {_bound(spec.ge)} and {_bound(spec.le)}, got {v!r}")
    if spec.ge is not None and v < spec.ge:
        raise _Invalid(f"must be >= {_bound(spec.ge)}, got {v!r}")
    if spec.gt is not None and v <= spec.gt:
        raise _Invalid(f"must be > {_bound(spec.gt)}, got {v!r}")
    if spec.le is not None and v > spec.le:
        raise _Invalid(f"must be <= {_bound(spec.le)}, got {v!r}")


def _coerce(raw: object, spec: KeySpec, *, from_text: bool) -> Any:
    """Typed value from a TOML value (from_text=False) or an environment/CLI string."""
    kind = spec.kind
    if from_text and not isinstance(raw, str):
        from_text = False  # a typed CLI override: validate as if it came from TOML
    if kind == "int":
        if from_text:
            try:
                raw = int(cast(str, raw).strip(), 10)
            except ValueError:
                raise _Invalid(f"expected an integer, got {raw!r}") from None
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise _Invalid(f"expected an integer, got {_type_name(raw)} ({raw!r})")
        _check_bounds(raw, spec)
        return raw
    if kind == "float":
        if from_text:
            try:
                raw = float(cast(str, raw).strip())
            except ValueError:
                raise _Invalid(f"expected a number, got {raw!r}") from None
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise _Invalid(f"expected a number, got {_type_name(raw)} ({raw!r})")
        if not math.isfinite(raw):
            raise _Invalid(f"must be a finite number, got {raw!r}")
        _check_bounds(raw, spec)
        return float(raw)
    if kind == "bool":
        if from_text:
            text = cast(str, raw).strip().lower()
            if text in _TRUE | _FALSE:
                return text in _TRUE
            raise _Invalid(f"expected true or false, got {raw!r}")
        if not isinstance(raw, bool):
            raise _Invalid(f"expected true or false, got {_type_name(raw)} ({raw!r})")
        return raw
    if kind == "str_list":
        if from_text:
            text = cast(str, raw)
            return tuple(p.strip() for p in text.split(",") if p.strip())
        if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
            raise _Invalid(f"expected an array of strings, got {_type_name(raw)} ({raw!r})")
        return tuple(x.strip() for x in raw)
    # The string kinds.
    if not isinstance(raw, str):
        raise _Invalid(f"expected a string, got {_type_name(raw)} ({raw!r})")
    if kind == "opt_str":
        return raw.strip() or None
    if kind == "choice":
        value = raw.strip().lower()
        if value not in spec.choices:
            options = ", ".join(repr(c) for c in spec.choices)
            hint = _closest(value, spec.choices)
            raise _Invalid(f"must be one of {options}, got {raw!r}{hint}")
        return value
    if kind == "opt_path":
        return Path(raw.strip()).expanduser() if raw.strip() else None
    if kind == "path":
        if not raw.strip():
            raise _Invalid("must not be empty")
        return Path(raw.strip()).expanduser()
    return raw


def _closest_match(word: str, candidates: Iterable[str]) -> str | None:
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return match[0] if match else None


def _closest(word: str, candidates: Iterable[str]) -> str:
    match = _closest_match(word, candidates)
    return f" (did you mean {match!r}?)" if match else ""


# ─── per-key validators (after coercion) ─────────────────────────────────────────────────────

_LABEL = re.compile(r"^(?!-)[a-z0-9-]{1,63}(?<!-)$")
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_LOCAL_PART = re.compile(rf"^{_ATEXT}(?:\.{_ATEXT})*$")
_DOLLAR_ONE = re.compile(r"\$1(?!\d)")
_OTHER_PARAM = re.compile(r"\$(?!1(?!\d))\d+")
_SQL_START = re.compile(r"^\s*(?:select|with)\b", re.IGNORECASE)


def _under(name: str, domains: tuple[str, ...]) -> str | None:
    for d in domains:
        if name == d or name.endswith("." + d):
            return d
    return None


def _validate_fqdn(name: str, what: str) -> str:
    """Lower-cased FQDN without trailing dot, or _Invalid. Forbids anything that could smuggle
    extra SMTP commands (CR/LF, spaces) since these values are written onto the wire."""
    if any(c.isspace() for c in name) or not name.isascii():
        raise _Invalid(
            f"{what} {name!r} must be an ASCII host name without spaces (use the xn-- form "
            "for internationalised names)"
        )
    host = name.lower().rstrip(".")
    labels = host.split(".")
    if (
        len(host) > 253
        or len(labels) < 2
        or not all(_LABEL.match(label) for label in labels)
        or labels[-1].isdigit()
    ):
        raise _Invalid(
            f"{what} {name!r} is not a fully-qualified domain name (expected something like "
            "'probe.mail.yourcompany.com')"
        )
    provider = _under(host, BIG_PROVIDER_DOMAINS)
    if provider is not None:
        raise _Invalid(
            f"{what} {name!r} belongs to {provider}: the prober must never present itself as a "
            "big mail provider; use a name under a domain you control"
        )
    return host


def _validate_url(url: str) -> str:
    if url.strip() in ("", EMBEDDED_URL):
        return url.strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        # Not the exception text: urllib quotes the part it choked on, which is often the
        # password ("Port could not be cast to integer value as 'p@ss'").
        raise _Invalid(
            f"is not a valid URL: {redact_url(url)!r} (%-encode reserved characters such as "
            "@ : / ? # in the user name and password)"
        ) from None
    if parts.scheme not in ("postgresql", "postgres"):
        raise _Invalid(f'must be a postgresql:// URL or "embedded", got {redact_url(url)!r}')
    return url


def _validate_nameservers(servers: tuple[str, ...]) -> tuple[str, ...]:
    out = []
    for s in servers:
        try:
            out.append(str(ipaddress.ip_address(s)))
        except ValueError:
            raise _Invalid(f"{s!r} is not an IPv4/IPv6 address") from None
    return tuple(out)


def _validate_health_check_name(name: str) -> str:
    host = name.strip().lower().rstrip(".")
    if not host or not host.isascii() or any(c.isspace() for c in host):
        raise _Invalid(f"{name!r} must be an ASCII domain name (xn-- form for IDNs)")
    labels = host.split(".")
    if len(host) > 253 or not all(_LABEL.match(label) for label in labels):
        raise _Invalid(f"{name!r} is not a domain name (expected e.g. 'a.root-servers.net')")
    return host


def _validate_mail_from(value: str | None) -> str | None:
    if value is None:
        return None
    if value == "<>":
        return ""  # the null reverse-path, written explicitly
    addr = value[1:-1].strip() if value.startswith("<") and value.endswith(">") else value
    if addr.count("@") != 1:
        raise _Invalid(f"{value!r} is not an address like 'postmaster@probe.yourcompany.com'")
    local, domain = addr.split("@")
    if not _LOCAL_PART.match(local) or len(local) > 64 or len(addr) > 254:
        raise _Invalid(f"{value!r}: local part {local!r} is not a valid dot-atom")
    host = _validate_fqdn(domain, "mail_from domain")
    return f"{local}@{host}"


def _validate_source_address(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise _Invalid(f"{value!r} is not an IPv4/IPv6 address") from None


def _validate_dnsbl_zones(values: tuple[str, ...]) -> tuple[str, ...]:
    zones = []
    for zone in values:
        name = zone.strip().rstrip(".").lower()
        labels = name.split(".")
        if len(name) > 200 or len(labels) < 2 or not all(_LABEL.match(lb) for lb in labels):
            raise _Invalid(f"{zone!r} is not a DNS zone name (e.g. 'bl.spamcop.net')")
        zones.append(name)
    return tuple(dict.fromkeys(zones))


def _validate_public_address(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise _Invalid(f"{value!r} is not an IPv4/IPv6 address") from None
    if not ip.is_global:
        raise _Invalid(
            f"{value!r} is not a public address: no DNS blocklist lists it (set the address "
            "the receiving hosts see, or leave it empty)"
        )
    return str(ip)


def _validate_allow_networks(values: tuple[str, ...]) -> tuple[str, ...]:
    try:
        return tuple(str(n) for n in parse_networks(values))
    except ValueError as exc:
        raise _Invalid(str(exc)) from None


def _validate_names_query(q: str) -> str:
    if not q.strip():
        return ""
    if not _SQL_START.match(q):
        raise _Invalid("must be a single SELECT or WITH query")
    if not _DOLLAR_ONE.search(q):
        raise _Invalid("must use the parameter $1 (the outreach_id of the company)")
    if other := _OTHER_PARAM.search(q):
        raise _Invalid(f"must use no parameter but $1, found {other.group(0)}")
    # Its columns cannot be read from the text (SELECT *, views): the daemon checks them
    # against the database at start (NamesQuery.check_names_query).
    return q


def _validate_base_url(url: str) -> str:
    url = url.strip().rstrip("/")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise _Invalid(f"not a URL: {url!r}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _Invalid(f"expected http(s)://host[:port], got {url!r}")
    if parts.username or parts.password or parts.query or parts.fragment:
        # The API key comes from the environment and goes in the query; nothing else may.
        raise _Invalid("must not carry credentials, a query or a fragment")
    return url


def _validate_owner(owner: str) -> str:
    owner = owner.strip()
    if not owner or len(owner) > 200:
        raise _Invalid("must be a non-empty string of at most 200 characters")
    return owner


_VALIDATORS: dict[str, Callable[[Any], Any]] = {
    "database.url": _validate_url,
    "dns.nameservers": _validate_nameservers,
    "dns.health_check_name": _validate_health_check_name,
    "smtp.helo_name": lambda v: None if v is None else _validate_fqdn(v, "helo_name"),
    "smtp.mail_from": _validate_mail_from,
    "smtp.source_address": _validate_source_address,
    "smtp.allow_networks": _validate_allow_networks,
    "killswitch.dnsbl_zones": _validate_dnsbl_zones,
    "killswitch.dnsbl_address": _validate_public_address,
    "probe.names_query": _validate_names_query,
    "daemon.owner": _validate_owner,
    "verifier.base_url": _validate_base_url,
}


# ─── loading ─────────────────────────────────────────────────────────────────────────────────


def _suggest_key(section: str, key: str) -> str:
    """`smtp.max_conections` -> suggest `smtp.max_connections`; `smtp.nameservers` -> suggest
    `dns.nameservers` (right key, wrong section)."""
    in_section = [k.split(".", 1)[1] for k in _SPECS if k.startswith(section + ".")]
    match = _closest_match(key, in_section)
    if match is not None:
        return f" (did you mean '{section}.{match}'?)"
    by_name = {k.split(".", 1)[1]: k for k in _SPECS}
    match = _closest_match(key, by_name)
    if match is not None:
        return f" (did you mean '{by_name[match]}'?)"
    return ""


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file: {exc.strerror or exc}") from None
    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: config file is not UTF-8: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: invalid TOML: {exc}") from None


def load_config(
    path: Path | None,
    env: Mapping[str, str] = os.environ,
    overrides: dict[str, object] | None = None,
    *,
    probing: bool = True,
) -> Config:
    """Defaults < file < `CT_<SECTION>_<KEY>` environment < overrides (`{"smtp.port": 2525}`,
    values typed or as strings). Raises ConfigError listing every problem found.

    `probing=False` is for commands that never talk to a mail server (`migrate`): the smtp-mode
    identity requirements are skipped; every key is still parsed and checked."""
    errors: list[str] = []
    # dotted key -> (raw value, from_text, label used in messages)
    raw: dict[str, tuple[object, bool, str]] = {}

    if path is not None:
        path = Path(path)
        doc = _read_toml(path)
        for section, table in doc.items():
            if section not in _SECTIONS:
                hint = _closest(section, _SECTIONS)
                errors.append(f"{path}: unknown section [{section}]{hint}")
                continue
            if not isinstance(table, dict):
                errors.append(f"{path}: {section}: expected a table, got {_type_name(table)}")
                continue
            for key, value in table.items():
                dotted = f"{section}.{key}"
                if dotted not in _SPECS:
                    hint = _suggest_key(section, key)
                    errors.append(f"{path}: unknown key {dotted}{hint}")
                    continue
                raw[dotted] = (value, False, f"{path}: {dotted}")

    for var, text in env.items():
        if not var.startswith(ENV_PREFIX):
            continue
        dotted_env = _ENV_TO_KEY.get(var)
        if dotted_env is not None:
            raw[dotted_env] = (text, True, f"environment variable {var} ({dotted_env})")
            continue
        # CT_<known section>_<typo>: refuse, as for the file. Other CT_ variables (say a
        # wrapper's CT_ACTORS_CONFIG) are not ours and are left alone.
        rest = var[len(ENV_PREFIX) :].lower()
        env_section = next((s for s in _SECTIONS if rest.startswith(s + "_")), None)
        if env_section is not None:
            env_key = rest[len(env_section) + 1 :]
            same_section = [v for v, k in _ENV_TO_KEY.items() if k.startswith(env_section + ".")]
            match = _closest_match(var, same_section)
            hint = f" (did you mean {match}?)" if match else ""
            errors.append(f"environment variable {var}: unknown key {env_section}.{env_key}{hint}")

    for dotted, value in (overrides or {}).items():
        if dotted not in _SPECS:
            section, _, key = dotted.partition(".")
            hint = _suggest_key(section, key) if key else _closest(section, _SECTIONS)
            errors.append(f"override {dotted}: unknown key{hint}")
            continue
        raw[dotted] = (value, True, f"override {dotted}")

    values: dict[str, Any] = {}
    labels: dict[str, str] = {}
    for dotted, (value, from_text, label) in raw.items():
        spec = _SPECS[dotted]
        labels[dotted] = label
        try:
            coerced = _coerce(value, spec, from_text=from_text)
            validator = _VALIDATORS.get(dotted)
            values[dotted] = validator(coerced) if validator else coerced
        except _Invalid as exc:
            errors.append(f"{label}: {exc}")

    # Relative toolbox paths resolve against the config file's directory (see module doc).
    base = path.resolve().parent if path is not None else Path.cwd()
    tb_path = values.get("toolbox.path")
    if tb_path is None:
        tb_path = Path(DEFAULT_TOOLBOX_SIBLING) if path is not None else DEFAULT_TOOLBOX_PATH
    values["toolbox.path"] = tb_path if tb_path.is_absolute() else (base / tb_path)

    sections: dict[str, Any] = {}
    for section, cls in _SECTIONS.items():
        kwargs = {
            f.name: values[f"{section}.{f.name}"]
            for f in dataclasses.fields(cls)
            if f"{section}.{f.name}" in values
        }
        sections[section] = cls(**kwargs)

    # The verifier's API key travels in the vendor's query string: mask it wherever it shows.
    extra = tuple(s for s in (env.get("PGPASSWORD"), env.get(VERIFIER_KEY_ENV)) if s)
    cfg = Config(**sections, source=path, extra_secrets=extra)
    if not errors:
        errors.extend(_cross_check(cfg, labels, probing=probing))
        if probing and cfg.verifier.enabled and not env.get(VERIFIER_KEY_ENV, "").strip():
            errors.append(
                f"{labels.get('verifier.enabled', 'verifier.enabled')}: the verifier is enabled "
                f"but {VERIFIER_KEY_ENV} is not set in the environment (the unit's "
                "EnvironmentFile); set it, or set verifier.enabled = false"
            )
    if errors:
        where = f" ({path})" if path is not None else ""
        header = f"configuration refused{where}: {len(errors)} problem(s)"
        raise ConfigError("\n".join([header, *(f"  - {e}" for e in errors)]), tuple(errors))
    return cfg


def _cross_check(cfg: Config, labels: Mapping[str, str], *, probing: bool) -> list[str]:
    """Rules spanning several keys, and smtp-mode requirements."""

    def where(dotted: str) -> str:
        return labels.get(dotted, f"{dotted} (default)")

    errors: list[str] = []
    if cfg.database.min_connections > cfg.database.max_connections:
        errors.append(
            f"{where('database.min_connections')}: must be <= database.max_connections "
            f"({cfg.database.max_connections}), got {cfg.database.min_connections}"
        )
    embedded = cfg.database.url == EMBEDDED_URL
    data_dir = cfg.database.data_directory
    if embedded and data_dir is None:
        errors.append(
            f'{where("database.url")}: "embedded" needs database.data_directory '
            "(CT_DATABASE_DATA_DIRECTORY), the directory the embedded PostgreSQL keeps its data "
            "in, e.g. /var/lib/ct-actors/pg"
        )
    elif embedded and data_dir is not None and not data_dir.is_absolute():
        errors.append(f"{where('database.data_directory')}: must be an absolute path")
    elif not embedded and data_dir is not None:
        errors.append(
            f"{where('database.data_directory')}: only used with database.url = \"embedded\"; "
            "remove it, or set database.url = \"embedded\""
        )
    if cfg.smtp.initial_connections_per_host > cfg.smtp.max_connections_per_host:
        errors.append(
            f"{where('smtp.initial_connections_per_host')}: must be <= "
            f"smtp.max_connections_per_host ({cfg.smtp.max_connections_per_host}), "
            f"got {cfg.smtp.initial_connections_per_host}"
        )
    if cfg.smtp.dead_host_backoff > cfg.smtp.dead_host_backoff_max:
        errors.append(
            f"{where('smtp.dead_host_backoff')}: must be <= smtp.dead_host_backoff_max "
            f"({cfg.smtp.dead_host_backoff_max:g}), got {cfg.smtp.dead_host_backoff:g}"
        )
    if cfg.smtp.max_connections_per_host > cfg.smtp.max_connections:
        errors.append(
            f"{where('smtp.max_connections_per_host')}: must be <= smtp.max_connections "
            f"({cfg.smtp.max_connections}), got {cfg.smtp.max_connections_per_host}"
        )
    if cfg.probe.claim_batch > cfg.probe.max_in_flight:
        errors.append(
            f"{where('probe.claim_batch')}: must be <= probe.max_in_flight "
            f"({cfg.probe.max_in_flight}), got {cfg.probe.claim_batch}"
        )

    if probing and cfg.probe.mode == "smtp":
        alt = 'or run with probe.mode = "mx-only" (CT_PROBE_MODE=mx-only)'
        helo = cfg.smtp.helo_name
        if helo is None:
            errors.append(
                "smtp.helo_name is not set: in smtp mode every probe introduces this host to a "
                "stranger's mail server with EHLO <helo_name>; it must be a fully-qualified "
                "name you control whose A/AAAA record points at the probing IP and whose PTR "
                "record matches, or receivers treat the probes as spam and blocklist the IP. "
                f"Set [smtp] helo_name (CT_SMTP_HELO_NAME), {alt}"
            )
        elif (placeholder := _under(helo, PLACEHOLDER_DOMAINS)) is not None:
            errors.append(
                f"{where('smtp.helo_name')}: {helo!r} is the example placeholder "
                f"({placeholder} is a reserved documentation domain): set it to a "
                f"fully-qualified name you control before probing, {alt}"
            )
        mail_from = cfg.smtp.mail_from
        if mail_from is None:
            errors.append(
                "smtp.mail_from is not set: in smtp mode every probe sends MAIL FROM:<mail_from> "
                "before RCPT TO; it must be an address at a domain you control (with SPF "
                'allowing the probing IP) so that receivers can reach you, or "<>" written '
                f"explicitly for the null reverse-path. Set [smtp] mail_from (CT_SMTP_MAIL_FROM), "
                f"{alt}"
            )
        elif (
            mail_from
            and (placeholder := _under(mail_from.split("@")[1], PLACEHOLDER_DOMAINS)) is not None
        ):
            errors.append(
                f"{where('smtp.mail_from')}: {mail_from!r} is the example placeholder "
                f"({placeholder} is a "
                "reserved documentation domain): set it to an address at a domain you control "
                f"before probing, {alt}"
            )
    return errors
