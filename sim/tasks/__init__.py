"""Goal-reaching tasks, one robot a file.

`make(task, dr)` builds the env; importing this package stays cheap (the task modules, and with
them jax and MuJoCo, load on first `make`).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from crl.sim.env import GoalReachEnv

TASKS: tuple[str, ...] = ("reacher", "arm_reach", "ant", "ant_u_maze", "humanoid")


class UnknownTaskError(ValueError):
    """A task name that is not in `TASKS`."""


def make(task: str, dr: str = "train") -> GoalReachEnv:
    """The env of `task` with domain randomization `dr` ("train", "held_out" or "off")."""
    if task not in TASKS:
        raise UnknownTaskError(f"task: unknown task {task!r}; choose one of {', '.join(TASKS)}")
    module = importlib.import_module(f"crl.sim.tasks.{task}")
    env: GoalReachEnv = module.ENV(module.CONFIG, dr=dr)
    return env
