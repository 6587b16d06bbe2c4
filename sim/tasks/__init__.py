"""Goal-reaching tasks in two families, one robot a file.

The deployment family (`DEPLOYMENT_TASKS`, `sim/tasks/<task>.py`): our robots as a real one
runs them, with position servos where a real robot has them and an observation of what its
sensors measure; the runtime and ROS configs ship for these. The paper family (`PAPER_TASKS`,
`sim/tasks/paper*.py`): the paper's tasks as its code defines them (its dynamics, its simulator
state as the observation, its layouts), named `paper_` + the paper's env id, for reproducing its
results; simulation only.

`make(task, dr)` builds the env; importing this package stays cheap (the task modules, and with
them jax and MuJoCo, load on first `make`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crl.core.spec import ActionSpec
    from crl.sim.env import GoalReachEnv

DEPLOYMENT_TASKS: tuple[str, ...] = ("reacher", "arm_reach", "ant", "ant_u_maze", "humanoid")
# task -> the module that defines it (its `make(task, dr)`).
PAPER_TASKS: dict[str, str] = {
    "paper_ant": "paper_ant",
    "paper_ant_u_maze": "paper_ant",
    "paper_ant_big_maze": "paper_ant",
    "paper_ant_u4_maze": "paper_ant",
    "paper_ant_u5_maze": "paper_ant",
    "paper_ant_hardest_maze": "paper_ant",
    "paper_humanoid": "paper_humanoid",
    "paper_humanoid_u_maze": "paper_humanoid",
    "paper_humanoid_big_maze": "paper_humanoid",
    "paper_arm_push_easy": "paper_arm",
    "paper_arm_push_hard": "paper_arm",
    "paper_arm_binpick_hard": "paper_arm",
}
TASKS: tuple[str, ...] = DEPLOYMENT_TASKS + tuple(PAPER_TASKS)


class UnknownTaskError(ValueError):
    """A task name that is not in `TASKS`."""


def make(task: str, dr: str = "train", physics: str = "jax", worlds: int = 1,
         action: ActionSpec | None = None) -> GoalReachEnv:
    """The env of `task` with domain randomization `dr`: "off", "train" or "held-out".

    `physics`: MJX's "jax" or "warp" implementation (`crl.sim.physics`); `worlds`: the most envs
    one vmapped call will step (warp sizes its shared contact buffer for them). `action`: the
    action spec of the policy to be run, whose command filter (`lowpass`) and goal ramp replace
    the task's own, so a run or an export trained before the task's changed is evaluated behind
    what it was trained behind (None: the task's)."""
    if task not in TASKS:
        raise UnknownTaskError(f"task: unknown task {task!r}; choose one of {', '.join(TASKS)}")
    if task in PAPER_TASKS:
        env: GoalReachEnv = importlib.import_module(f"crl.sim.tasks.{PAPER_TASKS[task]}").make(
            task, dr, physics=physics, worlds=worlds
        )
        c = env.config
        if action is not None and (action.lowpass, action.goal_ramp) != (c.action_lowpass,
                                                                          c.goal_ramp):
            raise ValueError(f"action: the paper's {task!r} has no command filter or goal ramp; "
                             f"a policy trained behind a low-pass of {action.lowpass:g} and a "
                             f"ramp of {action.goal_ramp} steps is not one of its")
        return env
    module = importlib.import_module(f"crl.sim.tasks.{task}")
    config = module.CONFIG
    if action is not None:
        config = config.replace(action_lowpass=action.lowpass, goal_ramp=action.goal_ramp)
    env = module.ENV(config, dr=dr, physics=physics, worlds=worlds)
    return env
