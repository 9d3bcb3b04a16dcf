"""Key declarations: every configuration key has one `KeySpec` (type, bounds, reload policy),
attached to its section dataclass field, so the loader, the environment parser,
`Config.reloadable_diff`, the settings and the docs cannot drift apart."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

ENV_PREFIX = "CT_"


class ConfigError(Exception):
    """The configuration was refused. `message` is meant for the operator, verbatim; `errors`
    holds the individual problems (one line each)."""

    def __init__(self, message: str, errors: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.message = message
        self.errors = errors or (message,)


Kind = Literal["int", "float", "bool", "str", "opt_str", "str_list", "choice", "path", "opt_path"]


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


def key(default: Any, spec: KeySpec) -> Any:
    return field(default=default, metadata={"spec": spec})


def key_factory(factory: Callable[[], Any], spec: KeySpec) -> Any:
    return field(default_factory=factory, metadata={"spec": spec})


def env_var_name(dotted: str) -> str:
    """`smtp.helo_name` -> `CT_SMTP_HELO_NAME`."""
    return ENV_PREFIX + dotted.replace(".", "_").upper()
