"""Loading: defaults < TOML file < `CT_<SECTION>_<KEY>` environment < explicit overrides (the
CLI), every value coerced and validated, then the rules spanning several keys.

Unknown keys are refused, never ignored: a typo such as `max_conections` silently falling back
to the default is how a prober ends up hammering mail servers. The error suggests the closest
valid key. All problems are collected and reported together, so an operator fixes a config in
one pass. A relative `toolbox.path` resolves against the directory of the config file, not the
working directory, because under systemd the working directory is `/` unless someone
remembered to set it.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ct_actors.config.coerce import InvalidValue, closest, closest_match, coerce, type_name
from ct_actors.config.effective import Config
from ct_actors.config.identity import identity_problems
from ct_actors.config.keys import ENV_PREFIX, ConfigError, env_var_name
from ct_actors.config.sections import (
    DEFAULT_TOOLBOX_PATH,
    EMBEDDED_URL,
    SECTIONS,
    key_specs,
)
from ct_actors.config.validators import VALIDATORS

# The registry's EmailVerifier api_key_source; the key itself never goes into the config file.
VERIFIER_KEY_ENV = "MILLIONVERIFIER_API_KEY"

# With a config file and no `toolbox.path` in it, the registry is expected next to the file
# (the shipped layout: config/ct-actors.toml + config/SNAP_ON_TOOLBOX.yaml).
DEFAULT_TOOLBOX_SIBLING = "SNAP_ON_TOOLBOX.yaml"

_SPECS = key_specs()
_ENV_TO_KEY = {env_var_name(k): k for k in _SPECS}


def _suggest_key(section: str, key: str) -> str:
    """`smtp.max_conections` -> suggest `smtp.max_connections`; `smtp.nameservers` -> suggest
    `dns.nameservers` (right key, wrong section)."""
    in_section = [k.split(".", 1)[1] for k in _SPECS if k.startswith(section + ".")]
    match = closest_match(key, in_section)
    if match is not None:
        return f" (did you mean '{section}.{match}'?)"
    by_name = {k.split(".", 1)[1]: k for k in _SPECS}
    match = closest_match(key, by_name)
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
            if section not in SECTIONS:
                hint = closest(section, SECTIONS)
                errors.append(f"{path}: unknown section [{section}]{hint}")
                continue
            if not isinstance(table, dict):
                errors.append(f"{path}: {section}: expected a table, got {type_name(table)}")
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
        env_section = next((s for s in SECTIONS if rest.startswith(s + "_")), None)
        if env_section is not None:
            env_key = rest[len(env_section) + 1 :]
            same_section = [v for v, k in _ENV_TO_KEY.items() if k.startswith(env_section + ".")]
            match = closest_match(var, same_section)
            hint = f" (did you mean {match}?)" if match else ""
            errors.append(f"environment variable {var}: unknown key {env_section}.{env_key}{hint}")

    for dotted, value in (overrides or {}).items():
        if dotted not in _SPECS:
            section, _, key = dotted.partition(".")
            hint = _suggest_key(section, key) if key else closest(section, SECTIONS)
            errors.append(f"override {dotted}: unknown key{hint}")
            continue
        raw[dotted] = (value, True, f"override {dotted}")

    values: dict[str, Any] = {}
    labels: dict[str, str] = {}
    for dotted, (value, from_text, label) in raw.items():
        spec = _SPECS[dotted]
        labels[dotted] = label
        try:
            coerced = coerce(value, spec, from_text=from_text)
            validator = VALIDATORS.get(dotted)
            values[dotted] = validator(coerced) if validator else coerced
        except InvalidValue as exc:
            errors.append(f"{label}: {exc}")

    # Relative toolbox paths resolve against the config file's directory (see module doc).
    base = path.resolve().parent if path is not None else Path.cwd()
    tb_path = values.get("toolbox.path")
    if tb_path is None:
        tb_path = Path(DEFAULT_TOOLBOX_SIBLING) if path is not None else DEFAULT_TOOLBOX_PATH
    values["toolbox.path"] = tb_path if tb_path.is_absolute() else (base / tb_path)

    sections: dict[str, Any] = {}
    for section, cls in SECTIONS.items():
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
            f'{where("database.data_directory")}: only used with database.url = "embedded"; '
            'remove it, or set database.url = "embedded"'
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
        errors.extend(identity_problems(cfg, where))
    return errors
