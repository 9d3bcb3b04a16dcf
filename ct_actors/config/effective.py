"""The effective configuration: every section, where it came from, and what a reload may
change (`reloaded`, `reloadable_diff`); secrets are masked wherever it is shown."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from ct_actors.config.keys import KeySpec
from ct_actors.config.sections import (
    SECTIONS,
    DaemonConfig,
    DatabaseConfig,
    DnsConfig,
    KillSwitchConfig,
    LogConfig,
    ProbeConfig,
    SmtpConfig,
    ThrottleConfig,
    ToolboxConfig,
    VerifierConfig,
    WriterConfig,
    key_specs,
)
from ct_actors.redact import redact_url

_SPECS = key_specs()


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
        for section in SECTIONS:
            changes = {
                f.name: getattr(getattr(new, section), f.name)
                for f in dataclasses.fields(SECTIONS[section])
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
