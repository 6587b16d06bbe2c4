"""Ant U-maze: the ant walks around the U-shaped wall to a goal cell (a paper task).

As in the paper's code (JaxGCRL `envs/ant_maze.py`): the ant starts at the centre of the
maze's start cell (its joints and velocities jittered as on open floor) and goals are the
centres of the goal cells, 4 m apart; everything else (the robot, success radius,
episode length, control rate, the healthy torso band that ends an episode early) is the
open-floor ant task. The walls are added to the MJCF
before it compiles, so the spec's model hash is that of ant.xml (the maze layout is part of
the task name).
"""

import dataclasses

import mujoco

from crl.sim.config import ChoiceSampler
from crl.sim.env import GoalReachEnv
from crl.sim.maze import U_MAZE, Cell, MazeLayout, add_maze_walls
from crl.sim.tasks import ant


def cell_centers(layout: MazeLayout, cells: tuple[Cell, ...]) -> tuple[tuple[float, ...], ...]:
    return tuple(layout.cell_center(i, j) for i, j in cells)


CONFIG = ant.CONFIG.replace(
    name="ant_u_maze",
    goal_sampler=ChoiceSampler(points=cell_centers(U_MAZE, U_MAZE.goal_cells())),
    start=dataclasses.replace(
        ant.CONFIG.start,
        base_xy=ChoiceSampler(points=cell_centers(U_MAZE, U_MAZE.start_cells())),
    ),
)


class AntMazeEnv(GoalReachEnv):
    """The ant env with the maze's walls added to its MJCF."""

    layout: MazeLayout = U_MAZE

    def edit_spec(self, spec: mujoco.MjSpec) -> None:
        add_maze_walls(spec, self.layout)


ENV = AntMazeEnv
