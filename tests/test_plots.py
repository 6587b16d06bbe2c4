"""The pictures a person reads at a glance: the learning curve's target and held-out lines, the
latency histogram's control period, the loop histogram's platform baseline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("matplotlib", reason="the plots need matplotlib (the train extra)")


def legend_texts(ax: Any) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_learning_curve_draws_the_target_and_the_held_out_curve(tmp_path: Path) -> None:
    from crl.train.plots import SUCCESS_TARGET, learning_curve_figure, plot_learning_curve

    def split(success: float) -> dict[str, float]:
        return {"success_rate": success, "final_success_rate": success, "time_at_goal": 10.0,
                "final_distance_median": 0.01, "oscillation": 0.1}

    evaluations = [{"env_steps": s, "train": split(v), "held_out": split(v * 0.9)}
                   for s, v in ((0, 0.1), (100_000, 0.95))]
    (tmp_path / "eval.json").write_text(json.dumps({"task": "reacher", "dr": "train",
                                                    "evaluations": evaluations}))
    (tmp_path / "spec.json").write_text(json.dumps({"success_radius": 0.02}))
    fig = learning_curve_figure(tmp_path)
    success = fig.axes[0]
    texts = legend_texts(success)
    assert "target: ≥ 90% success" in texts
    assert {"held-out DR, reached", "held-out DR, at the end"} <= set(texts)
    target = [line for line in success.get_lines() if line.get_label().startswith("target")]
    assert [list(line.get_ydata()) for line in target] == [[SUCCESS_TARGET * 100] * 2]
    held_out = [line for line in success.get_lines() if line.get_label() == "held-out DR, reached"]
    assert list(held_out[0].get_ydata()) == pytest.approx([9.0, 85.5])
    out = plot_learning_curve(tmp_path)
    assert out == tmp_path / "learning_curve.png" and out.stat().st_size > 10_000


def test_latency_plot_marks_the_control_period_on_a_log_axis(tmp_path: Path) -> None:
    from crl.runtime.bench import latency_figure, plot_latency

    rng = np.random.default_rng(0)
    samples = {1: rng.uniform(20e-6, 60e-6, 500), 8: rng.uniform(40e-6, 2e-3, 500)}
    fig = latency_figure(samples, "policy.onnx: ort, fp32, back to back", control_hz=25.0)
    assert len(fig.axes) == 2
    for ax in fig.axes:
        assert ax.get_xscale() == "log"
        assert "control period 40 ms (25 Hz)" in legend_texts(ax)
        low, high = ax.get_xlim()
        assert low <= 0.02 and high > 40  # the calls and the period both in view
    assert fig.get_size_inches()[0] >= 9  # readable: wider than the old 7 in
    plot_latency(samples, "t", tmp_path / "latency.png", control_hz=25.0)
    assert (tmp_path / "latency.png").stat().st_size > 10_000


def loop_result(hz: float, baseline: bool) -> dict[str, Any]:
    rng = np.random.default_rng(1)
    samples = list(np.round(rng.exponential(0.01, int(hz * 2)), 4))
    r = {"hz": hz, "policy": {"depth": 4}, "misses": 0, "period_error_samples_ms": samples,
         "period_error_ms": {"p99": float(np.percentile(samples, 99))},
         "device": {"cpu": "AMD EPYC"}}
    if baseline:
        base = list(np.round(rng.exponential(0.002, int(hz)), 4))
        r["platform_baseline"] = {"hz": hz, "seconds": 1.0, "ticks": len(base), "misses": 2,
                                  "period_error_samples_ms": base,
                                  "period_error_ms": {"p99": float(np.percentile(base, 99))}}
    return r


def test_loop_plot_draws_the_platform_baseline_under_the_loop(tmp_path: Path) -> None:
    from crl.testbed.bench_loop import period_error_figure, plot_period_error

    (ax,) = period_error_figure([loop_result(100.0, baseline=True)]).axes
    texts = legend_texts(ax)
    assert texts[0].startswith("platform baseline: empty ticks at 100 Hz for 1 s, p99 ")
    assert texts[0].endswith(" ms, 2 misses")
    assert texts[1].startswith("100 Hz, depth 4: p99 ")
    assert "target: p99 ≤ 0.5 ms" in texts and "one control period (10 ms, 100 Hz)" in texts
    assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
    # Shares of ticks (the baseline's bars sum to 100%): runs of other lengths compare.
    (bars,) = ax.containers
    assert sum(p.get_height() for p in bars.patches) == pytest.approx(100.0)
    # bench/loop_latency.py's runs carry no baseline: none is drawn, one period per rate.
    (ax,) = period_error_figure([loop_result(100.0, False), loop_result(500.0, False)]).axes
    texts = legend_texts(ax)
    assert not any(t.startswith("platform baseline") for t in texts)
    assert {"one control period (10 ms, 100 Hz)", "one control period (2 ms, 500 Hz)"} <= set(texts)
    plot_period_error([loop_result(100.0, baseline=True)], tmp_path / "loop.png")
    assert (tmp_path / "loop.png").stat().st_size > 10_000
