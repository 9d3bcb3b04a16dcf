"""The configuration's sections: one frozen dataclass per TOML table, each field declared once
with its default and its `KeySpec`. These defaults are the only ones: component settings
derive theirs from here (ct_actors/actors/settings.py)."""

from __future__ import annotations

import dataclasses
import os
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from ct_actors.config.keys import KeySpec, key, key_factory
from ct_actors.redact import redact_url

# `database.url = "embedded"`: the embedded PostgreSQL in `database.data_directory`.
EMBEDDED_URL = "embedded"

DEFAULT_TOOLBOX_PATH = Path("config/SNAP_ON_TOOLBOX.yaml")


def _default_owner() -> str:
    # hostname:pid identifies the lease holder in the claim table; two daemons on one host
    # (blue/green restarts) still differ by pid.
    return f"{socket.gethostname()}:{os.getpid()}"


@dataclass(frozen=True, slots=True, repr=False)
class DatabaseConfig:
    # No default on purpose (issue 11): a production command must never pick a database the
    # operator did not name. "" = unset (refused by migrate/run/once/report/canary).
    url: str = key(
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
    min_connections: int = key(1, KeySpec("int", False, "pool minimum size", ge=0))
    max_connections: int = key(4, KeySpec("int", False, "pool maximum size", ge=1))
    # Upper bounds keep now() + interval inside PostgreSQL's timestamp range: a larger value
    # would pass here and fail every claim (exit 1, restarted forever) instead of exit 2.
    lease_seconds: int = key(300, KeySpec("int", False, "claim lease length", ge=1, le=86_400))
    # Also how long a cancelled query can hold up a stop: asyncpg finishes cancelling a query on
    # a silent connection only after this. The daemon's statements take milliseconds.
    command_timeout: float = key(
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
    nameservers: tuple[str, ...] = key(
        (), KeySpec("str_list", False, "resolver IPs; empty = system resolver")
    )
    port: int = key(53, KeySpec("int", False, "resolver port", ge=1, le=65535))
    timeout: float = key(2.0, KeySpec("float", True, "per-query timeout, seconds", gt=0))
    attempts: int = key(2, KeySpec("int", True, "tries per query", ge=1))
    # Restart-only: the resolver stage's workers are started once.
    max_in_flight: int = key(256, KeySpec("int", False, "concurrent DNS queries", ge=1))
    # Asked (IN A, with `. NS`) before a failed lookup is blamed on our resolver: dnsdist's
    # default health-check query, answered through the root and net. delegations.
    health_check_name: str = key(
        "a.root-servers.net", KeySpec("str", True, "name that must resolve on a healthy resolver")
    )
    health_check_interval: float = key(
        30.0, KeySpec("float", True, "seconds a health-check result stands", gt=0, le=3600)
    )
    domain_failure_retries: int = key(
        3, KeySpec("int", True, "deferrals of a domain with broken DNS before CT-M-NO-MX", ge=0)
    )
    # Past the 5 minutes a resolver may cache a failure (RFC 2308 §7.1, RFC 9520).
    domain_failure_delay: float = key(
        1800.0,
        KeySpec("float", True, "first wait after a broken-DNS lookup (doubles)", ge=300, le=86_400),
    )


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    port: int = key(25, KeySpec("int", False, "MX port", ge=1, le=65535))
    helo_name: str | None = key(
        None, KeySpec("opt_str", False, "EHLO/HELO name: a FQDN you control")
    )
    # "" is the null reverse-path `<>` (written explicitly as "<>" by the operator); None = unset.
    mail_from: str | None = key(
        None, KeySpec("opt_str", False, "MAIL FROM address at a domain you control, or <>")
    )
    source_address: str | None = key(
        None, KeySpec("opt_str", False, "local IP to bind outgoing connections to")
    )
    # Empty: only public MX addresses are connected to (ct_actors.net.address_policy).
    allow_networks: tuple[str, ...] = key(
        (), KeySpec("str_list", False, "non-public CIDR blocks MX hosts may be on")
    )
    connect_timeout: float = key(10.0, KeySpec("float", True, "TCP connect + banner", gt=0))
    command_timeout: float = key(30.0, KeySpec("float", True, "per SMTP command", gt=0))
    quit_timeout: float = key(5.0, KeySpec("float", True, "QUIT reply wait", gt=0))
    starttls: Literal["opportunistic", "never"] = key(
        "opportunistic",
        KeySpec("choice", False, "STARTTLS policy", choices=("opportunistic", "never")),
    )
    max_connections: int = key(64, KeySpec("int", True, "global SMTP connection cap", ge=1))
    initial_connections_per_host: int = key(
        1, KeySpec("int", True, "adaptive per-MX-host window: starting size", ge=1)
    )
    max_connections_per_host: int = key(
        4, KeySpec("int", True, "adaptive per-MX-host window: upper bound", ge=1)
    )
    max_recipients_per_session: int = key(
        10, KeySpec("int", True, "RCPT commands per mail transaction", ge=1, le=100)
    )
    session_reuse_seconds: int = key(
        30, KeySpec("int", True, "max age of a session reused for new RCPTs", ge=0)
    )
    session_idle_seconds: float = key(
        2.0, KeySpec("float", True, "keep an idle session open for the next domain", ge=0)
    )
    pool_idle_seconds: int = key(
        60, KeySpec("int", True, "retire an idle MX host pool after", ge=0)
    )
    dead_host_backoff: float = key(
        300.0, KeySpec("float", True, "skip an unreachable MX host for (first time)", ge=0)
    )
    dead_host_backoff_max: float = key(
        3600.0, KeySpec("float", True, "dead-host backoff doubles up to", ge=0)
    )
    greylist_retry_delay: float = key(
        300.0, KeySpec("float", True, "first wait after a greylisted pass (doubles)", ge=0)
    )
    greylist_max_retries: int = key(
        4, KeySpec("int", True, "greylisted passes retried before CT-M-SMTP-FAIL", ge=0)
    )
    max_errors_per_session: int = key(
        8, KeySpec("int", True, "rejected commands one session may take", ge=1, le=1000)
    )
    max_fresh_sessions: int = key(
        3, KeySpec("int", True, "fresh sessions in a row a domain may lose unanswered", ge=1)
    )
    remote_attempts: int = key(
        3, KeySpec("int", True, "MX walks per pass when the hosts fail transiently", ge=1)
    )
    domain_time_budget: float = key(
        900.0, KeySpec("float", True, "seconds one domain's pass may spend at its MX hosts", gt=0)
    )
    max_rejected_rcpts_per_host: int = key(
        8, KeySpec("int", True, "rejected RCPTs per MX host per window (DHA safety)", ge=1)
    )
    rejected_rcpts_window: float = key(
        60.0, KeySpec("float", True, "sliding window of that budget, seconds", gt=0)
    )
    # Slow hosts (tarpits) must not starve max_connections (docs/throttles.md, "Slow hosts").
    slow_reply_seconds: float = key(
        10.0, KeySpec("float", True, "a reply slower than this marks the host slow", gt=0)
    )
    slow_host_seconds: float = key(
        3600.0, KeySpec("float", True, "a host stays slow this long after a slow reply", ge=0)
    )
    slow_connections_share: float = key(
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
    mode: Literal["smtp", "mx-only"] = key(
        "smtp", KeySpec("choice", False, "probe depth", choices=("smtp", "mx-only"))
    )
    names_query: str = key("", KeySpec("str", False, "SQL for candidate names; $1 = company"))
    names_timeout: float = key(
        5.0, KeySpec("float", False, "names query seconds per record", gt=0, le=300)
    )
    names_failures: int = key(
        5, KeySpec("int", False, "names query failures in a row before alert + pause", ge=1)
    )
    names_pause: float = key(
        120.0, KeySpec("float", False, "claim pause after names_failures", gt=0, le=300)
    )
    max_in_flight: int = key(512, KeySpec("int", False, "records in the pipeline", ge=1))
    claim_batch: int = key(200, KeySpec("int", True, "records claimed per query", ge=1))
    defer_seconds: int = key(
        600, KeySpec("int", True, "re-claim delay after Deferred", ge=1, le=2_592_000)
    )


@dataclass(frozen=True, slots=True)
class WriterConfig:
    batch_size: int = key(500, KeySpec("int", True, "rows per write", ge=1))
    flush_interval: float = key(0.5, KeySpec("float", True, "max seconds a row waits", gt=0))


@dataclass(frozen=True, slots=True)
class ToolboxConfig:
    path: Path = field(
        default=DEFAULT_TOOLBOX_PATH,
        metadata={"spec": KeySpec("path", True, "SNAP_ON_TOOLBOX.yaml location")},
    )


@dataclass(frozen=True, slots=True)
class LogConfig:
    format: Literal["json", "console"] = key(
        "json", KeySpec("choice", False, "output format", choices=("json", "console"))
    )
    level: Literal["debug", "info", "warning", "error"] = key(
        "info",
        KeySpec("choice", True, "minimum level", choices=("debug", "info", "warning", "error")),
    )
    stats_interval: float = key(30.0, KeySpec("float", True, "seconds between stats", gt=0))


@dataclass(frozen=True, slots=True)
class ThrottleConfig:
    budget_block: int = key(
        20, KeySpec("int", True, "day/month budget calls reserved per database round trip", ge=1)
    )


@dataclass(frozen=True, slots=True)
class KillSwitchConfig:
    resolver_failure_domains: int = key(
        20, KeySpec("int", True, "distinct domains failing on the resolver in a row", ge=1)
    )
    # Issue 10 item 2: counted by independent network (/24, /48), never by MX name, weighed
    # against the sessions that worked, confirmed with the DNSBLs (docs/throttles.md).
    blocklist_networks: int = key(
        3, KeySpec("int", True, "distinct /24 (/48) networks refusing our IP in the window", ge=1)
    )
    blocklist_fraction: float = key(
        0.5,
        KeySpec("float", True, "share of the networks talked to that must refuse us", gt=0, le=1),
    )
    blocklist_networks_alone: int = key(
        10, KeySpec("int", True, "refusing networks that halt even if the DNSBLs say clean", ge=1)
    )
    blocklist_window: float = key(
        3600.0, KeySpec("float", True, "seconds over which refusals and sessions count", gt=0)
    )
    refusal_give_up: float = key(
        7200.0,
        KeySpec("float", True, "an uncorroborated refusal is deferred this long, then FAIL", gt=0),
    )
    dnsbl_zones: tuple[str, ...] = key(
        (), KeySpec("str_list", False, "DNS blocklists to look our sending IP up in")
    )
    dnsbl_address: str | None = key(
        None, KeySpec("opt_str", True, "our public sending IP (behind NAT); empty: learnt")
    )
    dnsbl_cache: float = key(
        900.0, KeySpec("float", False, "seconds a DNSBL answer is cached", gt=0, le=86_400)
    )
    port_blocked_hosts: int = key(
        10, KeySpec("int", True, "distinct MX hosts unreachable in a row (port 25)", ge=1)
    )
    reachability_window: float = key(
        900.0,
        KeySpec("float", True, "CT-M-SMTP-FAIL needs a successful connection this recent", gt=0),
    )


@dataclass(frozen=True, slots=True)
class VerifierConfig:
    enabled: bool = key(
        False, KeySpec("bool", False, "Tier-2 EmailVerifier (TOOL-019) on weak PASSes")
    )
    base_url: str = key(
        "https://api.millionverifier.com",
        KeySpec("str", False, "MillionVerifier API base URL (http(s)://host[:port])"),
    )
    timeout: float = key(20.0, KeySpec("float", False, "HTTP timeout per request", gt=0))
    vendor_timeout: int = key(
        10, KeySpec("int", False, "the vendor's own SMTP timeout (api timeout=)", ge=2, le=60)
    )


@dataclass(frozen=True, slots=True)
class DaemonConfig:
    owner: str = key_factory(_default_owner, KeySpec("str", False, "lease owner id"))
    drain_deadline: float = key(60.0, KeySpec("float", True, "shutdown drain seconds", gt=0))
    stop_timeout: float = key(
        10.0, KeySpec("float", False, "seconds per database step of a stop", gt=0, le=600)
    )
    owner_lock_wait: float = key(
        30.0, KeySpec("float", False, "wait for the owner name to be free at start", ge=0, le=600)
    )


SECTIONS: dict[str, type[Any]] = {
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
    for section, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            out[f"{section}.{f.name}"] = f.metadata["spec"]
    return out
