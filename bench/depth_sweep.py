"""The depth study: `bench/sweep.py` along the depth axis, as the paper's depth-scaling figures.

    python bench/depth_sweep.py humanoid --depths 4,8,16,32,64 --seeds 3 --steps 50000000
    python bench/depth_sweep.py reacher --depths 4,16 --preset quick --steps 300000

Resumable (a finished run is not redone); writes `<out>/sweep.json` and `<out>/sweep.png`
(time at goal against env steps per depth, final time at goal against depth over seeds).
See `bench/sweep.py` for every option and the other axes.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro
from bench_cli import run_cli
from sweep import SweepConfig
from sweep import main as run


@dataclass(frozen=True)
class DepthSweepConfig:
    task: tyro.conf.Positional[str]
    depths: str = "4,8,16,32,64"
    """Comma-separated depths (Dense layers in the residual blocks, multiples of 4)."""
    seeds: int = 1
    steps: int = 1_000_000
    preset: Literal["paper", "quick"] = "paper"
    out: Path | None = None
    """Folder of run directories and results (default: runs/sweep-<task>-depth)."""
    train_args: str = ""
    """Further crl-train flags for every run, as one string (e.g. "--num-envs 256")."""


def main(c: DepthSweepConfig) -> None:
    run(SweepConfig(task=c.task, axis="depth", values=c.depths, seeds=c.seeds, steps=c.steps,
                    preset=c.preset, out=c.out, train_args=c.train_args))


if __name__ == "__main__":
    run_cli(main, DepthSweepConfig, "depth_sweep")
