"""Daemon configuration: a TOML file, then `CT_<SECTION>_<KEY>` environment variables, then
explicit overrides (the CLI), validated into frozen dataclasses.

The package, by job: keys.py (`KeySpec`, one per key), sections.py (the section dataclasses and
their defaults, the only ones), effective.py (`Config`: reload and diff), coerce.py and
validators.py (values), identity.py (the SMTP identity policy), loading.py (`load_config`).

Design points (see docs/configuration.md for the operator's view):

* Every key has one declaration (`KeySpec`) that carries its type, bounds and reload policy, so the
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

from ct_actors.config.effective import Config
from ct_actors.config.identity import BIG_PROVIDER_DOMAINS, PLACEHOLDER_DOMAINS
from ct_actors.config.keys import ENV_PREFIX, ConfigError, KeySpec, env_var_name
from ct_actors.config.loading import VERIFIER_KEY_ENV, load_config
from ct_actors.config.sections import (
    EMBEDDED_URL,
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

__all__ = [
    "BIG_PROVIDER_DOMAINS",
    "EMBEDDED_URL",
    "ENV_PREFIX",
    "PLACEHOLDER_DOMAINS",
    "VERIFIER_KEY_ENV",
    "Config",
    "ConfigError",
    "DaemonConfig",
    "DatabaseConfig",
    "DnsConfig",
    "KeySpec",
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
