"""The depth study: `bench/sweep.py` along the depth axis, as the paper's depth-scaling figures.

    python bench/depth_sweep.py humanoid --depths 4,8,16,32,64 --seeds 3 --steps 50000000
    python bench/depth_sweep.py reacher --depths 4,16 --preset quick --steps 300000

Resumable (a finished run is not redone); writes `<out>/sweep.json` and `<out>/sweep.png`
(time at goal against env steps per depth, final time at goal against depth over seeds).
See `bench/sweep.py` for every option and the other axes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sweep import SweepConfig, SweepRuns, run_sweep, sweep_cli


@dataclass(frozen=True)
class DepthSweepConfig(SweepRuns):
    depths: str = "4,8,16,32,64"
    """Comma-separated depths (Dense layers in the residual blocks, multiples of 4)."""


def run_depth_sweep(c: DepthSweepConfig) -> dict[str, Any]:
    return run_sweep(SweepConfig(axis="depth", values=c.depths, **c.shared()))


if __name__ == "__main__":
    sweep_cli(run_depth_sweep, DepthSweepConfig, "depth_sweep")
