"""Running under systemd: the sd_notify protocol (`notify`), the watchdog's health rule
(`watchdog`), the STATUS line (`status`) and the daemon-side service task (`systemd`).
See docs/design.md, "systemd integration"."""

from ct_actors.service.notify import Notifier
from ct_actors.service.systemd import SystemdService
from ct_actors.service.watchdog import HealthMonitor, HealthSample, HealthVerdict, WatchdogPolicy

__all__ = [
    "HealthMonitor",
    "HealthSample",
    "HealthVerdict",
    "Notifier",
    "SystemdService",
    "WatchdogPolicy",
]
