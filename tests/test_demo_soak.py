"""`bench --soak`'s pure parts: the sampler's timeline under MockClock, the sparkline, the
flatness verdict and its warm-up, and the end-of-run report without matplotlib."""

from __future__ import annotations

import importlib
import io
from pathlib import Path
from typing import cast

import pytest
import trio
import trio.testing

from ct_actors.cli_parser import build_parser
from ct_actors.config import Config
from ct_actors.demo import soak
from ct_actors.demo.harness import run_bench
from ct_actors.demo.soak import Sample, Sampler, current_rss_mb, flatness, report, sparkline
from ct_actors.exit_codes import EXIT_CONFIG
from ct_actors.toolbox import Toolbox

pytestmark = pytest.mark.timeout(30)


async def test_sampler_samples_on_a_fixed_grid_with_rates(
    autojump_clock: trio.testing.MockClock,
) -> None:
    rss = iter([100.0, 110.0, 105.0, 120.0])
    out = io.StringIO()
    sampler = Sampler(10.0, read_rss=lambda: next(rss), out=out)
    records = 0

    async def work() -> None:
        nonlocal records
        # 30 records/s for 25 s, then 5 records/s: each sample sees its own interval's rate.
        # Records land at 0.5 s, 1.5 s...: never at the instant of a sample.
        await trio.sleep(0.5)
        for second in range(40):
            records += 30 if second < 25 else 5
            if second < 39:
                await trio.sleep(1)

    sampler.attach(lambda: records)
    with trio.fail_after(100):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(sampler.run)
            await work()
            sampler.sample()  # the run's end
            nursery.cancel_scope.cancel()
    assert [(s.t, s.records, s.rate, s.rss_mb) for s in sampler.samples] == [
        (10.0, 300, 30.0, 100.0),
        (20.0, 600, 30.0, 110.0),
        (30.0, 775, 17.5, 105.0),
        (39.5, 825, pytest.approx(50 / 9.5), 120.0),  # the end, between grid points
    ]
    assert sampler.peak_mb == 120.0
    lines = out.getvalue().splitlines()
    assert len(lines) == 4
    assert lines[0].split() == ["[soak]", "t=", "10", "s", "rss", "100.0", "MB", "records",
                                "300", "30.0", "records/s"]  # fmt: skip


def test_sampler_refuses_a_zero_interval() -> None:
    with pytest.raises(ValueError, match="positive"):
        Sampler(0)


def test_current_rss_is_this_process_in_megabytes() -> None:
    ballast_before = current_rss_mb()
    ballast = bytearray(64 * 2**20)
    ballast[:: 4096] = b"x" * len(ballast[:: 4096])  # touch every page
    assert current_rss_mb() - ballast_before >= 60
    del ballast


def test_sparkline_spans_the_blocks_and_buckets_long_series() -> None:
    assert sparkline([]) == ""
    assert sparkline([5, 5, 5]) == "▁▁▁"
    assert sparkline([0, 1, 2, 3, 4, 5, 6, 7]) == "▁▂▃▄▅▆▇█"
    assert sparkline([10, 0]) == "█▁"
    # 120 values in 60 buckets of two: the means of (0, 0) ... (1, 1).
    assert sparkline([0.0] * 60 + [1.0] * 60, width=60) == "▁" * 30 + "█" * 30
    assert len(sparkline(list(range(1000)), width=40)) == 40


def _samples(rss: list[float], every: float = 10.0) -> list[Sample]:
    return [Sample((i + 1) * every, mb, 0, 0.0) for i, mb in enumerate(rss)]


def test_flatness_ignores_the_warm_up_and_judges_the_spread() -> None:
    # 20 samples 10 s apart: warm-up is max(60 s, 10% of 200 s) = 60 s, so the first six go.
    warming = [50, 80, 120, 140, 150, 155]
    rss = [*warming, 200, 205, 210, 199, 203, 207, 212, 208, 201, 215, 209, 204, 213, 210]
    judged = flatness(_samples(rss))
    assert judged is not None
    assert (judged.warmup_s, judged.samples, judged.min_mb, judged.max_mb) == (60, 14, 199, 215)
    assert judged.spread_pct == pytest.approx(100 * 16 / 199)
    assert judged.flat
    assert judged.verdict() == (
        "RSS after warm-up: min 199.0 MB, max 215.0 MB, spread 8.0% (flat within 10%: yes)"
    )


def test_a_growing_rss_is_not_flat_and_a_long_run_warms_up_for_a_tenth() -> None:
    # 1,000 samples 1 s apart (1,000 s): warm-up 100 s; then +0.1 MB/s from 200 MB.
    rss = [100.0] * 100 + [200 + 0.1 * i for i in range(900)]
    judged = flatness(_samples(rss, every=1.0))
    assert judged is not None
    assert judged.warmup_s == 100
    assert judged.samples == 900
    assert (judged.min_mb, judged.max_mb) == (200, pytest.approx(289.9))
    assert not judged.flat
    assert judged.verdict().endswith("(flat within 10%: no)")


def test_no_sample_after_the_warm_up_gives_no_verdict() -> None:
    assert flatness([]) is None
    assert flatness(_samples([100, 101, 102])) is None  # 30 s: all warm-up


def test_report_without_matplotlib_draws_sparklines(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_import = importlib.import_module

    def no_matplotlib(name: str, package: str | None = None) -> object:
        if name.startswith("matplotlib"):
            raise ImportError(name)
        return real_import(name, package)

    monkeypatch.setattr(soak.importlib, "import_module", no_matplotlib)
    samples = [Sample((i + 1) * 10.0, 100.0 + (i % 2), 100 * i, 10.0 * i) for i in range(12)]
    lines = report(samples, tmp_path / "soak.png")
    assert lines[0] == "[soak] RSS       ▁█▁█▁█▁█▁█▁█  100-101 MB"
    assert lines[1] == "[soak] records/s ▁▂▂▃▄▄▅▅▆▇▇█  0-110"
    assert "matplotlib is not installed" in lines[2]
    assert lines[3] == (
        "RSS after warm-up: min 100.0 MB, max 101.0 MB, spread 1.0% (flat within 10%: yes)"
    )
    assert lines[4] == "[soak] warm-up: first 60 s; 6 samples after"
    assert not (tmp_path / "soak.png").exists()
    assert report([], tmp_path / "soak.png")[-1].startswith("RSS after warm-up: no sample")


def test_bench_parses_the_soak_options() -> None:
    parser = build_parser()
    args = parser.parse_args(
        ["bench", "--soak", "--sample-seconds", "2.5", "--sim-ports", "2600,5400"]
    )
    assert (args.soak, args.sample_seconds, args.sim_ports) == (True, 2.5, (2600, 5400))
    defaults = parser.parse_args(["bench"])
    assert (defaults.soak, defaults.sample_seconds, defaults.sim_ports) == (False, 10.0, None)
    for bad in (["--sample-seconds", "0"], ["--sim-ports", "2600"], ["--sim-ports", "0,53"]):
        with pytest.raises(SystemExit):
            parser.parse_args(["bench", *bad])


async def test_soak_refuses_processes_before_touching_anything(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = build_parser().parse_args(["bench", "--soak", "--processes", "2"])
    # Neither the configuration nor the registry is looked at: the refusal comes first.
    assert await run_bench(cast(Config, None), cast(Toolbox, None), args) == EXIT_CONFIG
    assert "--soak samples this process" in capsys.readouterr().err
