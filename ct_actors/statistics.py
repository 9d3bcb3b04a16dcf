"""Statistics are values; text happens once, at the logging edge.

Every component's `statistics()` returns a frozen dataclass (`<Thing>Statistics`) with typed
fields: counts as int, moments on the UTC calendar as datetime, enums as enums, and a nested
component's statistics as its own dataclass. Code that reads statistics (the health sample, the
canary, the benches, the tests) reads fields; nothing parses text back.

`as_log` turns such a value into the JSON-ready object of a log line (the supervisor's `stats`
line, the sim's `sim_stopped` line): a dataclass becomes an object of its fields in declaration
order, a datetime ISO 8601 text, an enum its value, a Decimal exact decimal text. A value whose
line is not just its fields (flattened or renamed keys kept for the dashboards that read them,
docs/monitoring.md) says so in its own `as_log()` method, which this function calls.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

__all__ = ["as_log", "fields_as_log"]


def as_log(value: object) -> Any:
    """The log line's rendering of a statistics value (see the module docstring)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        own = getattr(value, "as_log", None)
        if own is not None:
            return own()
        return fields_as_log(value)
    if isinstance(value, Mapping):
        return {_key(k): as_log(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [as_log(v) for v in value]
    if isinstance(value, dt.datetime):
        return value.isoformat()
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, Decimal):
        return str(value)
    return value


def fields_as_log(value: Any) -> dict[str, Any]:
    """A dataclass's fields, each rendered by `as_log`: for an `as_log()` method that adds to or
    renames a few of them."""
    return {f.name: as_log(getattr(value, f.name)) for f in dataclasses.fields(value)}


def _key(key: object) -> str:
    return str(key.value) if isinstance(key, enum.Enum) else str(key)
