"""Helpers for the verifier's tests."""

from __future__ import annotations

import dataclasses
from typing import Any

from ct_actors.toolbox import ToolSpec


def with_spec(spec: ToolSpec, **changes: Any) -> ToolSpec:
    """`dataclasses.replace` for nested cost/backoff fields, for tests:
    `with_spec(spec, per_call=Decimal("0.01"), monthly_budget_cap=Decimal("0.03"))`."""
    cost_fields = {f.name for f in dataclasses.fields(spec.cost)}
    backoff_fields = {f.name for f in dataclasses.fields(spec.backoff)}
    cost = {k: v for k, v in changes.items() if k in cost_fields}
    backoff = {k: v for k, v in changes.items() if k in backoff_fields}
    rest = {k: v for k, v in changes.items() if k not in cost_fields | backoff_fields}
    return dataclasses.replace(
        spec,
        cost=dataclasses.replace(spec.cost, **cost),
        backoff=dataclasses.replace(spec.backoff, **backoff),
        **rest,
    )
