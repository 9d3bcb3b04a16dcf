"""The whole pipeline's statistics as one value (`SupervisorStatistics`): every actor's and
component's own statistics, typed, and the few gauges the supervisor adds. Its `as_log()` is the
periodic `stats` line (and `stats_final`), whose keys and value formats docs/monitoring.md
documents and operators' dashboards read: tests/test_stats_line.py holds them fixed."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ct_actors.actors.dispatcher import DispatcherStatistics
from ct_actors.actors.loader import LoaderStatistics
from ct_actors.actors.pool_statistics import PoolManagerStatistics
from ct_actors.actors.resolver_stage import ResolverStatistics
from ct_actors.actors.smtp_gate import GuardStatistics
from ct_actors.actors.writer import WriterStatistics
from ct_actors.log import as_log, fields_as_log
from ct_actors.throttle.killswitch import KillSwitchesStatistics
from ct_actors.throttle.limiter import ThrottlesStatistics
from ct_actors.verify.statistics import VerifierStatistics

__all__ = ["ChannelStatistics", "InFlightByStage", "SupervisorStatistics"]


@dataclass(frozen=True, slots=True)
class ChannelStatistics:
    # Zero-buffer channels: the depth that matters is who is blocked on either side.
    buffered: int
    senders_waiting: int
    receivers_waiting: int


@dataclass(frozen=True, slots=True)
class InFlightByStage:
    domains_probing: int
    mx_lookups: int
    smtp_sessions: int
    writer_buffered: int


@dataclass(frozen=True, slots=True)
class SupervisorStatistics:
    records_done: int  # outcomes committed
    rate_interval: float  # records/s since the previous stats line
    rate_total: float  # records/s since start
    in_flight: int  # records claimed and not yet committed
    in_flight_by_stage: InFlightByStage
    channels: Mapping[str, ChannelStatistics]  # jobs, outcomes
    outcomes: Mapping[str, int]  # committed outcomes by code
    loader: LoaderStatistics
    dispatcher: DispatcherStatistics
    resolver: ResolverStatistics
    smtp: PoolManagerStatistics
    smtp_guard: GuardStatistics
    writer: WriterStatistics
    throttles: ThrottlesStatistics | None  # None for a supervisor built without throttles
    kill_switches: KillSwitchesStatistics
    verifier: VerifierStatistics | None  # None unless verifier.enabled

    def as_log(self) -> dict[str, Any]:
        """The `stats` line: rates to 2 decimals, `throttles` `{}` without throttles, and no
        `verifier` key without a verifier."""
        line = fields_as_log(self)
        line["rate_interval"] = round(self.rate_interval, 2)
        line["rate_total"] = round(self.rate_total, 2)
        line["throttles"] = as_log(self.throttles) if self.throttles is not None else {}
        if self.verifier is None:
            del line["verifier"]
        return line
