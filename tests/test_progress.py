"""The `run --drain` progress bar: pure rendering and the redraw loop under MockClock."""

from __future__ import annotations

import io

import trio
import trio.testing

from ct_actors.progress import RateMeter, progress_loop, render


def test_render_with_a_total_shows_bar_rate_and_eta() -> None:
    line = render(1250, 5000, 25.0, width=20)
    assert line == "[#####...............] 1,250/5,000  25.0%  25.0 rec/s  ETA 02:30"


def test_render_long_eta_and_unknown_rate() -> None:
    assert render(0, 100_000, 10.0, width=4).endswith("ETA 2:46:40")
    assert render(10, 100, 0.0, width=4).endswith("ETA --:--")


def test_render_without_total_or_past_it() -> None:
    assert render(42, None, 3.5, note="paused: smtp_port_blocked") == (
        "42 done  3.5 rec/s  paused: smtp_port_blocked"
    )
    assert render(120, 100, 1.0, width=4).startswith("[####] 120/100 100.0%")


async def test_rate_follows_the_recent_window(autojump_clock: trio.testing.MockClock) -> None:
    meter = RateMeter(window=10.0)
    assert meter.add(0.0, 0) == 0.0
    assert meter.add(10.0, 100) == 10.0
    assert meter.add(20.0, 300) == 20.0  # the first sample fell out of the window
    assert meter.add(30.0, 300) == 0.0


async def test_progress_loop_redraws_one_line(autojump_clock: trio.testing.MockClock) -> None:
    out = io.StringIO()
    done = [0]

    def read() -> tuple[int, str]:
        done[0] += 5
        return done[0], ""

    with trio.fail_after(10):
        with trio.move_on_after(1.2):
            await progress_loop(read, 20, out, interval=0.5)
    frames = out.getvalue().split("\r")[1:]
    # Three frames at 0, 0.5 and 1.0, and a last one with the final count when cancelled.
    assert len(frames) == 4 and out.getvalue().endswith("\n")
    assert "15/20" in frames[2] and "10.0 rec/s" in frames[2]
    assert "20/20" in frames[3]
