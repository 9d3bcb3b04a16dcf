"""From a TOML value, or an environment/CLI string, to a key's typed value within its bounds;
and the "did you mean" suggestions for misspelt names."""

from __future__ import annotations

import difflib
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any, cast

from ct_actors.config.keys import KeySpec

_TRUE = frozenset({"true", "1", "yes", "on"})
_FALSE = frozenset({"false", "0", "no", "off"})


class InvalidValue(ValueError):
    """A single key's value was refused; the message is about the value, not the key."""


def type_name(v: object) -> str:
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
        raise InvalidValue(f"must be between {_bound(spec.ge)} and {_bound(spec.le)}, got {v!r}")
    if spec.ge is not None and v < spec.ge:
        raise InvalidValue(f"must be >= {_bound(spec.ge)}, got {v!r}")
    if spec.gt is not None and v <= spec.gt:
        raise InvalidValue(f"must be > {_bound(spec.gt)}, got {v!r}")
    if spec.le is not None and v > spec.le:
        raise InvalidValue(f"must be <= {_bound(spec.le)}, got {v!r}")


def coerce(raw: object, spec: KeySpec, *, from_text: bool) -> Any:
    """Typed value from a TOML value (from_text=False) or an environment/CLI string."""
    kind = spec.kind
    if from_text and not isinstance(raw, str):
        from_text = False  # a typed CLI override: validate as if it came from TOML
    if kind == "int":
        if from_text:
            try:
                raw = int(cast(str, raw).strip(), 10)
            except ValueError:
                raise InvalidValue(f"expected an integer, got {raw!r}") from None
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise InvalidValue(f"expected an integer, got {type_name(raw)} ({raw!r})")
        _check_bounds(raw, spec)
        return raw
    if kind == "float":
        if from_text:
            try:
                raw = float(cast(str, raw).strip())
            except ValueError:
                raise InvalidValue(f"expected a number, got {raw!r}") from None
        if isinstance(raw, bool) or not isinstance(raw, int | float):
            raise InvalidValue(f"expected a number, got {type_name(raw)} ({raw!r})")
        if not math.isfinite(raw):
            raise InvalidValue(f"must be a finite number, got {raw!r}")
        _check_bounds(raw, spec)
        return float(raw)
    if kind == "bool":
        if from_text:
            text = cast(str, raw).strip().lower()
            if text in _TRUE | _FALSE:
                return text in _TRUE
            raise InvalidValue(f"expected true or false, got {raw!r}")
        if not isinstance(raw, bool):
            raise InvalidValue(f"expected true or false, got {type_name(raw)} ({raw!r})")
        return raw
    if kind == "str_list":
        if from_text:
            text = cast(str, raw)
            return tuple(p.strip() for p in text.split(",") if p.strip())
        if not isinstance(raw, list) or not all(isinstance(x, str) for x in raw):
            raise InvalidValue(f"expected an array of strings, got {type_name(raw)} ({raw!r})")
        return tuple(x.strip() for x in raw)
    # The string kinds.
    if not isinstance(raw, str):
        raise InvalidValue(f"expected a string, got {type_name(raw)} ({raw!r})")
    if kind == "opt_str":
        return raw.strip() or None
    if kind == "choice":
        value = raw.strip().lower()
        if value not in spec.choices:
            options = ", ".join(repr(c) for c in spec.choices)
            hint = closest(value, spec.choices)
            raise InvalidValue(f"must be one of {options}, got {raw!r}{hint}")
        return value
    if kind == "opt_path":
        return Path(raw.strip()).expanduser() if raw.strip() else None
    if kind == "path":
        if not raw.strip():
            raise InvalidValue("must not be empty")
        return Path(raw.strip()).expanduser()
    return raw


def closest_match(word: str, candidates: Iterable[str]) -> str | None:
    match = difflib.get_close_matches(word, list(candidates), n=1, cutoff=0.6)
    return match[0] if match else None


def closest(word: str, candidates: Iterable[str]) -> str:
    match = closest_match(word, candidates)
    return f" (did you mean {match!r}?)" if match else ""
