"""The daemon's side of a `Type=notify` systemd unit: READY/RELOADING/STOPPING, STATUS lines
and watchdog pings. Everything is a no-op when `$NOTIFY_SOCKET` is unset.

    READY=1                      once the pipeline runs (database, resolver, registry usable)
    RELOADING=1 MONOTONIC_USEC=  when a SIGHUP reload starts; READY=1 when it is done or refused
    STOPPING=1                   when a stop begins (SIGTERM/SIGINT), or `run --drain` drained
    STATUS=…                     at READY, every `log.stats_interval`, on each state change
    WATCHDOG=1                   every WATCHDOG_USEC/2 while the health rule holds
                                 (`service/watchdog.py`); withheld while it does not, so
                                 systemd kills and restarts a wedged daemon
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

import structlog
import trio

from ct_actors.service.notify import Notifier, monotonic_usec, one_line, watchdog_usec
from ct_actors.service.status import sample_supervisor, status_line, utc_now
from ct_actors.service.watchdog import HealthMonitor, HealthSample, HealthVerdict, WatchdogPolicy

if TYPE_CHECKING:
    from ct_actors.actors.supervisor import Supervisor
    from ct_actors.config import Config

log = structlog.get_logger("ct_actors.service")

STOP_POLL = 0.25  # seconds between looks at "has a stop begun?" (no event for it exists)


class SystemdService:
    def __init__(
        self,
        notifier: Notifier | None = None,
        *,
        watchdog_usec: int | None = None,
        policy: WatchdogPolicy | None = None,
        sample: Callable[[Supervisor], HealthSample] | None = None,
        utc: Callable[[], dt.datetime] = utc_now,
    ) -> None:
        self.notifier = notifier if notifier is not None else Notifier(None)
        self.watchdog_usec = watchdog_usec if self.notifier.enabled else None
        self.monitor = HealthMonitor(policy or WatchdogPolicy())
        self._sample_of = sample or (lambda supervisor: sample_supervisor(supervisor, utc))
        self._supervisor: Supervisor | None = None
        self._ready = False
        self._stopping = False
        self.verdict: HealthVerdict | None = None
        self._unhealthy_since: float | None = None
        self._rate_mark: tuple[float, int] | None = None
        self._rate = 0.0
        self.pings = 0

    @classmethod
    def from_environment(
        cls, environ: Mapping[str, str] | None = None, *, policy: WatchdogPolicy | None = None
    ) -> SystemdService:
        return cls(
            Notifier.from_environment(environ),
            watchdog_usec=watchdog_usec(environ),
            policy=policy,
        )

    @property
    def enabled(self) -> bool:
        return self.notifier.enabled

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between pings: half the period systemd asks for, as sd_watchdog_enabled
        advises."""
        return None if self.watchdog_usec is None else self.watchdog_usec / 2e6

    # -- lifecycle messages (synchronous: safe from a signal handler task or a finally) -------

    def starting(self) -> None:
        self.notifier.notify(STATUS="starting: opening the pipeline")

    async def run(
        self,
        supervisor: Supervisor,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Call once `supervisor.run` has started: READY=1, then STATUS and WATCHDOG until
        cancelled; STOPPING=1 when a stop begins (or, at the latest, when cancelled)."""
        if not self.enabled:
            task_status.started()
            return
        self._supervisor = supervisor
        sample, verdict = self._check()
        self.notifier.notify("READY=1", STATUS=self._status(sample, verdict))
        self._ready = True
        task_status.started()
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._status_loop)
                if self.watchdog_interval is not None:
                    nursery.start_soon(self._watchdog_loop, self.watchdog_interval)
                # The supervisor has no event for "stop requested" (the signal loop only calls
                # request_stop()), hence the poll; a quarter second is well inside any timeout.
                while not (supervisor.stop_requested or supervisor.loader.drained.is_set()):  # noqa: ASYNC110
                    await trio.sleep(STOP_POLL)
                self.stopping()
        finally:
            self.stopping()

    def stopping(self) -> None:
        """STOPPING=1, once; from then on systemd's stop timeout (TimeoutStopSec) applies."""
        if not self._ready or self._stopping:
            return
        self._stopping = True
        status = "stopping"
        if self._supervisor is not None:
            status = self._status(*self._check())
        self.notifier.notify("STOPPING=1", STATUS=status)

    def reloading(self) -> None:
        """A SIGHUP reload starts. MONOTONIC_USEC lets Type=notify-reload (systemd ≥ 253) tie
        this message to the SIGHUP it sent; older systemd ignores the field."""
        if not self._ready or self._stopping:
            return
        self.notifier.notify(
            "RELOADING=1",
            f"MONOTONIC_USEC={monotonic_usec()}",
            STATUS="reloading: configuration and registry",
        )

    def reloaded(self, cfg: Config | None = None, *, applied: bool = True) -> None:
        """The reload is over (applied, or refused and nothing changed): READY=1 again. With
        `cfg` (the running configuration) the watchdog's thresholds follow it."""
        if cfg is not None:
            self.monitor.policy = WatchdogPolicy.for_config(cfg)
        if not self._ready or self._stopping:
            return
        status = "running"
        if self._supervisor is not None:
            status = self._status(*self._check())
        if not applied:
            status = f"reload refused, configuration unchanged; {status}"
        self.notifier.notify("READY=1", STATUS=status)

    # -- loops -----------------------------------------------------------------------------

    async def _status_loop(self) -> None:
        assert self._supervisor is not None
        while True:
            await trio.sleep(self._supervisor.settings.stats_interval)
            sample, verdict = self._check()
            self._measure_rate(sample)
            self.notifier.notify(STATUS=self._status(sample, verdict))

    async def _watchdog_loop(self, interval: float) -> None:
        while True:
            _, verdict = self._check()
            if verdict.healthy and self.notifier.notify("WATCHDOG=1"):
                self.pings += 1
            await trio.sleep(interval)

    # -- health ----------------------------------------------------------------------------

    def _check(self) -> tuple[HealthSample, HealthVerdict]:
        assert self._supervisor is not None
        sample = self._sample_of(self._supervisor)
        verdict = self.monitor.assess(sample)
        previous, self.verdict = self.verdict, verdict
        if not verdict.healthy and self._unhealthy_since is None:
            self._unhealthy_since = sample.now
            log.error(
                "watchdog_unhealthy",
                rule=verdict.rule,
                reason=verdict.reason,
                in_flight=sample.in_flight,
                pings_withheld=self.watchdog_interval is not None,
            )
            self.notifier.notify(STATUS=self._status(sample, verdict))
        elif verdict.healthy and self._unhealthy_since is not None:
            log.warning(
                "watchdog_recovered",
                state=verdict.state,
                unhealthy_for=round(sample.now - self._unhealthy_since, 1),
            )
            self._unhealthy_since = None
            self.notifier.notify(STATUS=self._status(sample, verdict))
        elif (
            previous is not None
            and verdict.state != previous.state
            and verdict.state in ("paused", "database")
        ):
            self.notifier.notify(STATUS=self._status(sample, verdict))
        return sample, verdict

    def _measure_rate(self, sample: HealthSample) -> None:
        mark = self._rate_mark
        if mark is not None and sample.now > mark[0]:
            self._rate = (sample.done - mark[1]) / (sample.now - mark[0])
        self._rate_mark = (sample.now, sample.done)

    def _status(self, sample: HealthSample, verdict: HealthVerdict | None) -> str:
        if self._rate_mark is None:
            self._rate_mark = (sample.now, sample.done)
        return one_line(status_line(sample, verdict, self._rate))
