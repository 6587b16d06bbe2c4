"""The oscillation figure: how much a policy's commands alternate near the goal.

A policy that reaches the goal and then cycles between two commands (a period-2 limit cycle
through its own last command, fed by a delayed or stiffer servo) can pass through the success
radius without staying in it. This counts it the same way wherever actions come from: a
simulated evaluation (`crl.train.evaluate`), the robustness envelope and the closed loop's real
action stream (`crl.testbed`), so their figures compare. numpy only: the robot's install has it.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

# A command counts when it was chosen within this many success radii of the goal ...
NEAR_GOAL_RADII = 2.0
# ... and an action component flips there when its change reverses sign, both changes at least
# this large in the policy's [-1, 1] units (1% of the range: below it, sensor-noise jitter that
# moves a reacher's fingertip by millimetres, not a cycle).
FLIP_MIN = 0.02


def action_flips(actions: ArrayLike, near: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """(flips, chances) per episode.

    `actions` [T, ..., act_dim] are the commands of consecutive steps in [-1, 1], `near`
    [T, ...] whether step t's command was chosen near the goal. At step t ≥ 2 each action
    component is a chance, and a flip where (a_t − a_{t−1})·(a_{t−1} − a_{t−2}) < 0 with both
    changes ≥ `FLIP_MIN`: a period-2 cycle flips at every chance, a policy that settles at none.
    """
    a = np.asarray(actions, np.float64)
    d1, d0 = a[2:] - a[1:-1], a[1:-1] - a[:-2]
    flip = (d1 * d0 < 0) & (np.abs(d1) >= FLIP_MIN) & (np.abs(d0) >= FLIP_MIN)
    chance = np.broadcast_to(np.asarray(near, bool)[2:, ..., None], flip.shape)
    return np.sum(flip & chance, axis=(0, -1)), np.sum(chance, axis=(0, -1))


def oscillation(flips: ArrayLike, chances: ArrayLike) -> float:
    """Flips over chances, pooled over episodes (0 where there was no chance)."""
    total = float(np.sum(chances))
    return float(np.sum(flips)) / total if total else 0.0
