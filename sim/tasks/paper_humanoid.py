"""The paper's humanoid tasks: `paper_humanoid` and the humanoid mazes (paper family).

As the paper's code (scaling-crl `envs/humanoid.py`, `envs/humanoid_maze.py`, from JaxGCRL): the
humanoid of `paper_humanoid.xml` (17 torque motors), observing the paper's 268 values: qpos
(26), qvel (25), the centre-of-mass inertia (`cinert`, 120) and velocity (`cvel`, 72) of its 12
bodies, and the actuator forces (`qfrc_actuator`, 25). Those counts include the paper's goal
marker, a `target` body on two slide joints that reset moves to the commanded goal, so the
observation shows the goal, as the paper's does. The goal is the torso's xyz, reached within
0.5 m; 1000 control steps of 15 ms (3 ms physics, 5 substeps); an episode ends when the torso's
height leaves [1.0, 2.0] m. Every episode starts from the same standing pose (the paper's reset
noise is 0). On open floor the goal's xy is 1..5 m away (distance uniform, which favours near
goals) at the standing torso height 1.25 m; in a maze (2 m cells, 1 m walls: the paper halves
the ant's cells) it is a goal cell's centre at 1.25 m.

What differs from the paper's code: the paper trains with Brax's `spring` backend (1.5 ms x 10
steps, gears raised to 350 and 100); ours is MuJoCo's physics as the paper's MJX backend sets
it up (the MJCF's gears, 3 ms x 5). The observed quantities are MuJoCo's: `cinert` is the
inertia about each kinematic tree's centre of mass (Brax: about the whole system's, 3 x 3
matrix + mass), `cvel` MuJoCo's spatial velocity (Brax: mass-weighted linear + angular).
"""

from __future__ import annotations

import dataclasses

import jax
import mujoco

from crl.sim.config import AnnulusSampler, StartSampler, TaskConfig
from crl.sim.maze import BIG_MAZE, BIG_MAZE_EVAL, U_MAZE, U_MAZE_EVAL, MazeLayout
from crl.sim.tasks.paper import MazeEnv, maze_config

TARGET_Z = 1.25  # the paper's TARGET_Z_COORD: a standing humanoid's torso height
CELL_SIZE = 2.0  # the paper's humanoid mazes use 2 m cells (the ant's are 4 m)
TARGET_JOINTS = ("target_x", "target_y")

CONFIG = TaskConfig(
    name="paper_humanoid",
    model_file="paper_humanoid.xml",
    goal_kind="body",
    goal_name="torso",
    goal_axes="xyz",
    goal_sampler=AnnulusSampler(r_min=1.0, r_max=5.0, uniform_area=False, z=TARGET_Z),
    observation=("qpos", "qvel", "cinert", "cvel", "qfrc_actuator"),
    base_body="torso",
    healthy_z_range=(1.0, 2.0),
    control_hz=200.0 / 3.0,
    episode_length=1000,
    success_radius=0.5,
    start=StartSampler(),
)


def _halved(layout: MazeLayout) -> MazeLayout:
    return dataclasses.replace(layout, cell_size=CELL_SIZE)


# task -> (training layout, evaluation layout); the paper's env ids after `paper_`.
MAZES: dict[str, tuple[MazeLayout, MazeLayout]] = {
    "paper_humanoid_u_maze": (_halved(U_MAZE), _halved(U_MAZE_EVAL)),
    "paper_humanoid_big_maze": (_halved(BIG_MAZE), _halved(BIG_MAZE_EVAL)),
}
CONFIGS: dict[str, TaskConfig] = {
    CONFIG.name: CONFIG,
    **{
        name: maze_config(CONFIG, name, layout, goal_z=TARGET_Z)
        for name, (layout, _) in MAZES.items()
    },
}


class PaperHumanoidEnv(MazeEnv):
    """The maze env with the paper's goal marker: reset puts `target` on the goal's xy."""

    def place_goal(self, qpos: jax.Array, goal: jax.Array) -> jax.Array:
        m = self.mj_model
        adr = [m.jnt_qposadr[mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_JOINT, j)]
               for j in TARGET_JOINTS]
        return qpos.at[adr[0]].set(goal[0]).at[adr[1]].set(goal[1])


def make(task: str, dr: str = "train", physics: str = "jax", worlds: int = 1) -> PaperHumanoidEnv:
    layout, eval_layout = MAZES.get(task, (None, None))
    return PaperHumanoidEnv(
        CONFIGS[task], dr, layout=layout, eval_layout=eval_layout, physics=physics, worlds=worlds
    )
