"""Fixtures for the end-to-end and CLI tests (helpers are in `e2e_support`), registered as a
plugin by tests/conftest.py."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_support import DaemonProcess, SimProcess, start_sim_process


@pytest.fixture
def start_sim(tmp_path: Path) -> Iterator[Callable[..., SimProcess]]:
    """`start_sim(seed=..., domains=..., ...)`: a SimProcess (`start_sim_process`) stopped
    after the test, whatever happened."""
    started: list[SimProcess] = []

    def start(**kwargs: Any) -> SimProcess:
        sim = start_sim_process(tmp_path, **kwargs)
        started.append(sim)
        return sim

    yield start
    for sim in started:
        sim.stop()


@pytest.fixture
def start_daemon() -> Iterator[Callable[..., DaemonProcess]]:
    """`start_daemon(config, *args)`: a DaemonProcess killed after the test if still running."""
    started: list[DaemonProcess] = []

    def start(config: Path, *args: str, env: dict[str, str] | None = None) -> DaemonProcess:
        daemon = DaemonProcess(config, *args, env=env)
        started.append(daemon)
        return daemon

    yield start
    for daemon in started:
        daemon.kill()
