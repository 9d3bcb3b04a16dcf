"""Is the pipeline alive? The health rule behind systemd's watchdog pings, pure and synchronous.

`HealthMonitor.assess(sample)` takes one `HealthSample` — monotonic progress counters and a
few gauges read from the supervisor, plus trio time — and answers healthy or not, with a
reason. Its only memory is the previous sample and, per rule, the last time the rule was
satisfied, so it can be driven by hand in tests (no clock, no I/O).

The rules (each with "pending" work, a "progress" signal, and waits that are excused):

* writer — the writer holds rows (`buffered` > 0, i.e. a flush is under way) and has neither
  committed a batch nor failed an attempt for `writer_seconds`: a flush that never returns.
  A database outage is *not* a wedge: each failed attempt counts (`retries`), and with
  asyncpg's command timeout (60 s) and the writer's back-off (≤ 30 s) a live writer shows one
  at least every ~90 s. Restarting would not bring the database back; the writer keeps the
  batch and the leases expire on their own if it never does.
* pipeline — records are in flight and nothing moved for `stall_seconds`: no batch
  committed or retried, no job accepted, no MX lookup, no SMTP session, no throttle call.
  Covers a dispatcher holding work with no outcome, and a wedged writer once every credit
  is held.
* loader — the loader could claim (free credits, no halting kill switch) and has made no
  claim attempt (claimed, found nothing, or failed) for `stall_seconds`: a stuck loader. An
  empty spine is idle by choice: the loader polls it every `idle_poll` seconds.
* record — the oldest record in flight has had no outcome for `record_seconds`: one domain
  task stuck while the rest of the pipeline flows.

Excused, and measured again from the moment they end: a kill switch pause (the operator must
act), a day/month budget exhausted until the next window (records wait in the throttle for
hours), the writer retrying a database outage (except for the writer rule itself), and a
stop in progress (the drain deadline and systemd's TimeoutStopSec bound it). Greylisting,
per-domain spacing, throttle back-off and slow SMTP servers are not excused: they are bounded
and show up as activity well within `stall_seconds`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ct_actors.config import Config

# Floors for the thresholds. A restart costs the work in flight and, if the cause persists,
# becomes a restart loop, so the watchdog must never fire on a merely slow pipeline.
STALL_SECONDS = 600.0
WRITER_SECONDS = 180.0  # 2 x (asyncpg command_timeout 60 s + writer retry_max 30 s)
RECORD_SECONDS = 3600.0


@dataclass(frozen=True, slots=True)
class WatchdogPolicy:
    stall_seconds: float = STALL_SECONDS
    writer_seconds: float = WRITER_SECONDS
    record_seconds: float = RECORD_SECONDS

    @classmethod
    def for_config(cls, cfg: Config, *, stall_seconds: float | None = None) -> WatchdogPolicy:
        """Thresholds from the running configuration: no silent interval of a live pipeline
        may reach them. A domain task never waits out greylisting in place (the record is
        deferred), so its longest deliberate quiet spell is a slow connect and command; twice
        that, at least `STALL_SECONDS`.
        `stall_seconds` overrides (for a future `daemon.watchdog_stall_seconds` key)."""
        smtp = cfg.smtp
        derived = 2.0 * (smtp.connect_timeout + smtp.command_timeout)
        stall = stall_seconds if stall_seconds is not None else max(STALL_SECONDS, derived)
        return cls(
            stall_seconds=stall,
            writer_seconds=WRITER_SECONDS,
            record_seconds=max(RECORD_SECONDS, 6.0 * stall),
        )


@dataclass(frozen=True, slots=True)
class HealthSample:
    """One reading of the pipeline. Counters are monotonic; only their changes matter."""

    now: float  # trio time
    committed: int = 0  # writer: batches committed
    write_retries: int = 0  # writer: failed attempts (each followed by a back-off)
    writer_buffered: int = 0  # rows the writer holds (a batch being filled or flushed)
    writer_failing_since: float | None = None  # trio time of the first failed attempt
    claims: int = 0  # loader: claim attempts (with work, empty, failed), drain waits
    activity: int = 0  # work on records in flight: jobs, lookups, SMTP sessions, throttle calls
    in_flight: int = 0  # records claimed and not yet committed
    credits_free: int = 0  # the loader may claim when > 0
    oldest_in_flight: float = 0.0  # seconds the oldest record in flight has been held
    kill_switches: tuple[str, ...] = ()  # tripped
    budget_paused: tuple[str, ...] = ()  # e.g. "TOOL-005 SMTPCheck per_day until …"
    stopping: bool = False  # stop requested, or the loader drained
    done: int = 0  # records with a committed outcome (for the status line)
    drained: bool = False  # `run --drain`: nothing left to claim


@dataclass(frozen=True, slots=True)
class HealthVerdict:
    healthy: bool
    state: str  # processing | idle | paused | database | stopping | stalled
    reason: str
    rule: str | None = None  # the rule that failed: writer | pipeline | loader | record


@dataclass(slots=True)
class HealthMonitor:
    policy: WatchdogPolicy = field(default_factory=WatchdogPolicy)
    _prev: HealthSample | None = field(default=None, init=False)
    _ok_at: dict[str, float] = field(default_factory=dict, init=False)  # rule -> last satisfied

    def assess(self, s: HealthSample) -> HealthVerdict:
        prev, self._prev = self._prev, s
        now = s.now
        if s.stopping:
            self._ok_at = dict.fromkeys(("writer", "pipeline", "loader", "record"), now)
            state = "drained" if s.drained else "draining"
            return HealthVerdict(True, "stopping", f"{state}: {s.in_flight} records in flight")

        def changed(*names: str) -> bool:
            return prev is None or any(getattr(prev, n) != getattr(s, n) for n in names)

        paused = [f"kill switch {n}" for n in s.kill_switches]
        paused += [f"budget {b}" for b in s.budget_paused]
        outage = s.writer_failing_since is not None

        writer = self._stalled(
            "writer",
            now,
            pending=s.writer_buffered > 0,
            ok=changed("committed", "write_retries"),
        )
        pipeline = self._stalled(
            "pipeline",
            now,
            pending=s.in_flight > 0,
            ok=bool(paused) or outage or changed("committed", "write_retries", "activity"),
        )
        loader = self._stalled(
            "loader",
            now,
            pending=s.credits_free > 0,
            ok=bool(s.kill_switches) or outage or changed("claims"),
        )
        # A record's age counts from the end of the last excused wait: after a budget pause
        # the records that waited for midnight get the full allowance again.
        record = min(
            s.oldest_in_flight,
            self._stalled("record", now, pending=s.in_flight > 0, ok=bool(paused) or outage),
        )

        p = self.policy
        if writer > p.writer_seconds:
            return HealthVerdict(
                False,
                "stalled",
                f"writer wedged: a flush of {s.writer_buffered} rows has neither committed nor "
                f"failed for {writer:.0f} s",
                "writer",
            )
        if pipeline > p.stall_seconds:
            return HealthVerdict(
                False,
                "stalled",
                f"no progress: {s.in_flight} records in flight, nothing committed, looked up "
                f"or probed for {pipeline:.0f} s",
                "pipeline",
            )
        if loader > p.stall_seconds:
            return HealthVerdict(
                False,
                "stalled",
                f"loader stuck: {s.credits_free} free credits and no claim attempt for "
                f"{loader:.0f} s",
                "loader",
            )
        if record > p.record_seconds:
            return HealthVerdict(
                False,
                "stalled",
                f"a record has been in flight for {record:.0f} s with no outcome",
                "record",
            )
        if paused:
            return HealthVerdict(True, "paused", ", ".join(paused))
        if outage:
            assert s.writer_failing_since is not None
            return HealthVerdict(
                True,
                "database",
                f"database unavailable for {now - s.writer_failing_since:.0f} s, the writer "
                "is retrying",
            )
        if s.in_flight == 0 and s.writer_buffered == 0:
            return HealthVerdict(True, "idle", "nothing in flight")
        return HealthVerdict(True, "processing", f"{s.in_flight} records in flight")

    def _stalled(self, rule: str, now: float, *, pending: bool, ok: bool) -> float:
        """Seconds the rule has gone unsatisfied (pending work and no progress, not excused)."""
        if not pending or ok or rule not in self._ok_at:
            self._ok_at[rule] = now
        return now - self._ok_at[rule]
