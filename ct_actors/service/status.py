"""What the daemon tells systemd in `STATUS=` (one line, shown by `systemctl status`), and the
reading of the supervisor that both the status line and the watchdog's health rule use."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import trio

from ct_actors.service.watchdog import HealthSample, HealthVerdict

if TYPE_CHECKING:
    from ct_actors.actors.supervisor import Supervisor
    from ct_actors.actors.supervisor_statistics import SupervisorStatistics
    from ct_actors.throttle.limiter import ToolThrottles


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


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
    stats: SupervisorStatistics,
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
    (`paused_until`: `budget_pauses`)."""
    writer, loader = stats.writer, stats.loader
    dispatcher, resolver = stats.dispatcher, stats.resolver
    limiters = stats.throttles.tools.values() if stats.throttles is not None else ()
    # Counters that move while records in flight are being worked on.
    activity = (
        dispatcher.jobs + dispatcher.domains_probed + dispatcher.joined + dispatcher.cache_hits
        + resolver.lookups + resolver.cache_hits + resolver.retries + resolver.unavailable
        + stats.smtp.sessions_opened_total
        + sum(t.calls + t.throttle_waits for t in limiters)
    )  # fmt: skip
    claims = loader.claims + loader.empty_claims + loader.claim_errors
    return HealthSample(
        now=now,
        committed=writer.batches,
        write_retries=writer.retries,
        writer_buffered=writer.buffered,
        writer_failing_since=writer.failing_since,
        claims=claims + loader.waits_for_other_leases,
        activity=activity,
        in_flight=stats.in_flight,
        credits_free=credits_free,
        oldest_in_flight=oldest_in_flight,
        kill_switches=tuple(
            name for name, s in stats.kill_switches.switches.items() if s.tripped
        ),
        budget_paused=tuple(
            f"{tool} until {until.isoformat()}"
            for tool, until in (paused_until or {}).items()
            if until > utc
        ),
        stopping=stopping or drained,
        done=stats.records_done,
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
