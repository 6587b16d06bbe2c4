"""What the paper family's tasks share: the maze env and the cell-centre samplers.

The paper family ("1000 Layer Networks for Self-Supervised RL", Wang et al. 2025, on the JaxGCRL
suite) reproduces the paper's tasks: its robots' dynamics, its observations (simulator state a
real robot cannot measure, such as the humanoid's centre-of-mass inertia), its layouts, goal
sets, start cells, episode lengths, success radii and healthy bands. A task is named `paper_`
followed by the paper's env id (`paper_ant_big_maze` is the paper's `ant_big_maze`).

A maze task's training goals are the layout's "G" cells; the paper evaluates some mazes on a
second layout with only the far goals (`--eval_env_id ant_big_maze_eval`), which `MazeEnv`
carries as `eval_layout` and `sample_eval_goal`; `crl-train`'s evaluations draw from it
(`reset(key, evaluation=True)`).
"""

from __future__ import annotations

import dataclasses

import jax
import mujoco

from crl.sim.config import ChoiceSampler, TaskConfig
from crl.sim.env import GoalReachEnv
from crl.sim.maze import Cell, MazeLayout, add_maze_walls
from crl.sim.sampling import sample


def cell_centers(
    layout: MazeLayout, cells: tuple[Cell, ...], z: float | None = None
) -> tuple[tuple[float, ...], ...]:
    """World (x, y) of each cell's centre, with `z` appended when given."""
    extra = () if z is None else (z,)
    return tuple((*layout.cell_center(i, j), *extra) for i, j in cells)


def maze_config(
    base: TaskConfig,
    name: str,
    layout: MazeLayout,
    *,
    goal_z: float | None = None,
    start_noise: float = 0.0,
) -> TaskConfig:
    """`base` (the open-floor task of the same robot) in `layout`: goals at the goal cells'
    centres (at height `goal_z` for a 3-D goal), starts at the start cells' centres ± noise."""
    return base.replace(
        name=name,
        goal_sampler=ChoiceSampler(points=cell_centers(layout, layout.goal_cells(), goal_z)),
        start=dataclasses.replace(
            base.start,
            base_xy=ChoiceSampler(
                points=cell_centers(layout, layout.start_cells()), noise=start_noise
            ),
        ),
    )


class MazeEnv(GoalReachEnv):
    """A goal-reaching env whose MJCF gets the walls of `layout` (none: open floor)."""

    def __init__(
        self,
        config: TaskConfig,
        dr: str = "train",
        *,
        layout: MazeLayout | None = None,
        eval_layout: MazeLayout | None = None,
        physics: str = "jax",
        worlds: int = 1,
    ):
        self.layout = layout
        self.eval_layout = eval_layout if eval_layout is not None else layout
        super().__init__(config, dr, physics=physics, worlds=worlds)

    def edit_spec(self, spec: mujoco.MjSpec) -> None:
        if self.layout is not None:
            add_maze_walls(spec, self.layout, root_body=self.config.base_body)

    def sample_eval_goal(self, rng: jax.Array) -> jax.Array:
        """A goal of the paper's evaluation set: the eval layout's goal cells (the training
        goals where the paper has no separate evaluation layout, or off the maze)."""
        if self.eval_layout is None:
            return self.sample_goal(rng)
        z = None if len(self.config.goal_axes) == 2 else self.config.goal_sampler.bounds()[0][2]
        points = cell_centers(self.eval_layout, self.eval_layout.goal_cells(), z)
        return sample(ChoiceSampler(points=points), rng)
