"""What the daemon tells systemd in `STATUS=` (one line, shown by `systemctl status`), and the
reading of the supervisor that both the status line and the watchdog's health rule use."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import trio

from ct_actors.service.watchdog import HealthSample, HealthVerdict

if TYPE_CHECKING:
    from ct_actors.actors.supervisor import Supervisor
    from ct_actors.throttle.limiter import ToolThrottles

# Counters that move while records in flight are being worked on.
_DISPATCHER_COUNTERS = ("jobs", "domains_probed", "joined", "cache_hits")
_RESOLVER_COUNTERS = ("lookups", "cache_hits", "retries", "unavailable")
_LOADER_COUNTERS = ("claims", "empty_claims", "claim_errors", "waits_for_other_leases")


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _count(stats: Mapping[str, Any], keys: tuple[str, ...]) -> int:
    return sum(int(stats.get(key) or 0) for key in keys)


def budget_pauses(throttles: ToolThrottles | None) -> dict[str, dt.datetime]:
    """Each tool whose calendar budget is spent (labelled as in the stats line's `throttles`)
    -> until when, UTC: read from the limiters, typed, not parsed back from the stats line."""
    if throttles is None:
        return {}
    return {
        f"{tool_id} {limiter.spec.name}": until
        for tool_id, limiter in throttles.by_tool.items()
        if (until := limiter.paused_until) is not None
    }


def sample_statistics(
    stats: Mapping[str, Any],
    *,
    now: float,
    credits_free: int,
    oldest_in_flight: float,
    stopping: bool,
    drained: bool,
    utc: dt.datetime,
    paused_until: Mapping[str, dt.datetime] | None = None,
) -> HealthSample:
    """A `HealthSample` from `Supervisor.statistics()` and the few gauges it does not carry
    (`paused_until`: `budget_pauses`). Missing keys read as zero, so the stats line can grow
    without breaking this."""
    writer = stats.get("writer") or {}
    throttles: Mapping[str, Mapping[str, Any]] = stats.get("throttles") or {}
    switches: Mapping[str, Mapping[str, Any]] = stats.get("kill_switches") or {}
    activity = (
        _count(stats.get("dispatcher") or {}, _DISPATCHER_COUNTERS)
        + _count(stats.get("resolver") or {}, _RESOLVER_COUNTERS)
        + _count(stats.get("smtp") or {}, ("sessions_opened_total",))
        + sum(_count(t, ("calls", "throttle_waits")) for t in throttles.values())
    )
    failing = writer.get("failing_since")
    return HealthSample(
        now=now,
        committed=_count(writer, ("batches",)),
        write_retries=_count(writer, ("retries",)),
        writer_buffered=_count(writer, ("buffered",)),
        writer_failing_since=float(failing) if failing is not None else None,
        claims=_count(stats.get("loader") or {}, _LOADER_COUNTERS),
        activity=activity,
        in_flight=int(stats.get("in_flight") or 0),
        credits_free=credits_free,
        oldest_in_flight=oldest_in_flight,
        kill_switches=tuple(name for name, s in switches.items() if s.get("tripped")),
        budget_paused=tuple(
            f"{tool} until {until.isoformat()}"
            for tool, until in (paused_until or {}).items()
            if until > utc
        ),
        stopping=stopping or drained,
        done=int(stats.get("records_done") or 0),
        drained=drained,
    )


def sample_supervisor(
    supervisor: Supervisor, utc: Callable[[], dt.datetime] = utc_now
) -> HealthSample:
    return sample_statistics(
        supervisor.statistics(),
        now=trio.current_time(),
        credits_free=supervisor.credits.available,
        oldest_in_flight=supervisor.credits.oldest_age(),
        stopping=supervisor.stop_requested,
        drained=supervisor.loader.drained.is_set(),
        utc=utc(),
        paused_until=budget_pauses(supervisor.throttles),
    )


def status_line(s: HealthSample, verdict: HealthVerdict | None = None, rate: float = 0.0) -> str:
    """e.g. `processing: 1234 done, 56.7/s, 512 in flight, kill switches: none`."""
    tail = f"{s.done} done, {s.in_flight} in flight"
    if s.drained:
        return f"drained: {s.done} done, stopping"
    if s.stopping:
        return f"draining: {tail}"
    if verdict is not None and not verdict.healthy:
        return f"stalled: {verdict.reason}"
    if s.kill_switches:
        return f"paused: kill switch {', '.join(s.kill_switches)}; {tail}"
    if s.budget_paused:
        return f"paused: budget {'; '.join(s.budget_paused)}; {tail}"
    if s.writer_failing_since is not None:
        return (
            f"database unavailable for {s.now - s.writer_failing_since:.0f} s, writer "
            f"retrying; {tail}"
        )
    return f"processing: {s.done} done, {rate:.1f}/s, {s.in_flight} in flight, kill switches: none"
