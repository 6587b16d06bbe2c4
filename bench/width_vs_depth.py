"""Depth against width at equal parameters: a depth sweep and a width sweep (`bench/sweep.py`),
their final scores against each run's parameter count on one plot, as the paper compares them
(deeper networks beat wider ones of as many parameters).

    python bench/width_vs_depth.py humanoid --depths 4,8,16,32 --widths 256,512,1024,2048 \\
        --seeds 3 --steps 50000000
    python bench/width_vs_depth.py reacher --depths 4,8 --widths 64,128 --width 64 \\
        --preset quick --steps 200000

The depth sweep runs at `--width`, the width sweep at `--depth`; each is an ordinary sweep in its
own folder (`<out>/depth`, `<out>/width`: resumable, its own sweep.json and sweep.png), so a
network in both (depth `--depth` at width `--width`) is trained in each. Parameters are those of
the actor and both critic encoders, counted from the networks each run trained. Writes
`<out>/width_vs_depth.json` (both summaries, with each value's parameters) and
`<out>/width_vs_depth.png`.
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench_cli import BenchConfigError
from sweep import (
    METRICS,
    SweepConfig,
    SweepRuns,
    plot_against_params,
    result_header,
    run_sweep,
    sweep_cli,
)

from crl.core.atomic import write_atomic, write_json


@dataclass(frozen=True)
class WidthVsDepthConfig(SweepRuns):
    """The sweeps' shared flags; `--out` is the folder of both sweeps and the comparison
    (default: runs/width-vs-depth-<task>)."""

    depths: str = "4,8,16,32"
    """Comma-separated depths of the depth sweep (multiples of 4), each at --width."""
    widths: str = "256,512,1024,2048"
    """Comma-separated widths of the width sweep, each at --depth."""
    depth: int = 4
    """Depth of every run of the width sweep."""
    width: int = 256
    """Width of every run of the depth sweep."""

    def folder(self) -> Path:
        return self.out or Path("runs") / f"width-vs-depth-{self.task}"

    def sweeps(self) -> dict[str, SweepConfig]:
        """The depth sweep at --width and the width sweep at --depth."""
        if self.depth < 1 or self.width < 1:
            raise BenchConfigError("--depth/--width: must be at least 1")
        if clash := sorted({"--depth", "--width"} & set(shlex.split(self.train_args))):
            raise BenchConfigError(f"--train-args: {', '.join(clash)} is set by --depth/--width")
        shared = {k: v for k, v in self.shared().items() if k not in ("out", "train_args")}
        return {
            "depth": SweepConfig(axis="depth", values=self.depths, out=self.folder() / "depth",
                                 train_args=f"{self.train_args} --width {self.width}".strip(),
                                 **shared),
            "width": SweepConfig(axis="width", values=self.widths, out=self.folder() / "width",
                                 train_args=f"{self.train_args} --depth {self.depth}".strip(),
                                 **shared),
        }


def plot(result: dict[str, Any], path: Path) -> None:
    """Final score against parameters, one line per sweep."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    title, _, unit = METRICS[result["metric"]]
    fig, ax = plt.subplots(figsize=(7, 4.5), constrained_layout=True)
    labels = {"depth": f"deeper, width {result['width']}",
              "width": f"wider, depth {result['depth']}"}
    # A network in both sweeps sits at one point: its two names go above and below it.
    for (axis, sweep), color, offset in zip(result["sweeps"].items(), ("C0", "C1"),
                                            ((4, 4), (4, -10)), strict=True):
        plot_against_params(ax, sweep, color, labels[axis], offset)
    ax.set_ylabel(f"final {title} ({unit})")
    ax.set_title(f"{result['task']}: depth against width at equal parameters "
                 f"({result['steps']:,} steps, mean ± std over {result['seeds']} seed(s))",
                 fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    write_atomic(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def run(config: WidthVsDepthConfig) -> dict[str, Any]:
    sweeps = config.sweeps()
    for sweep in sweeps.values():
        sweep.check()
    results = {axis: run_sweep(sweep) for axis, sweep in sweeps.items()}
    folder = config.folder()
    result = {
        **result_header("width_vs_depth", config, folder),
        # Each sweep as plot_against_params reads it; its runs are in its own sweep.json.
        "sweeps": {axis: {"axis": axis, "metric": r["metric"], "json": f"{r['out']}/sweep.json",
                          "summary": r["summary"],
                          "runs": [{k: run[k] for k in ("value", "seed", "params", "final_score")}
                                   for run in r["runs"]]}
                   for axis, r in results.items()},
    }
    write_json(folder / "width_vs_depth.json", result)
    plot(result, folder / "width_vs_depth.png")
    print(f"wrote {folder / 'width_vs_depth.json'} and {folder / 'width_vs_depth.png'}")
    return result


if __name__ == "__main__":
    sweep_cli(run, WidthVsDepthConfig, "width_vs_depth")
