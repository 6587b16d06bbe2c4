"""The paper's ant tasks: `paper_ant` and the ant mazes (paper family, see `paper.py`).

As the paper's code (scaling-crl `envs/ant.py`, `envs/ant_maze.py`, from JaxGCRL): the
torque-driven ant of `paper_ant.xml` (gear 150 motors), observing qpos + qvel (29 values: torso
xyz and quaternion, 8 joint angles; torso linear velocity in the world frame and angular
velocity in its own, 8 joint velocities); the goal is the torso's xy, reached within 0.5 m;
1000 control steps at 20 Hz (10 ms physics, 5 substeps); an episode ends when the torso's
height leaves [0.2, 1.0] m. Every start is the paper's pose with joints jittered by ±0.1 rad
(uniform), velocities by N(0, 0.1²) and the torso's xy by ±0.1 m around the origin or the maze's
start cell. On open floor the goal lies on the circle of radius 10 m; in a maze (4 m cells,
2 m walls) it is the centre of a goal cell, and the paper evaluates Big, U4 and U5 on their
`_eval` layouts (far goals only).

Two things differ from the paper's code: the paper also adds ±0.1 to the torso's height and to
its quaternion's components (unnormalized); and the paper's start cells put the torso there
through the model's `init_qpos`, ours through the start sampler (the same point).
"""

from __future__ import annotations

from crl.sim.config import AnnulusSampler, BoxSampler, StartSampler, TaskConfig
from crl.sim.maze import (
    ANT_BIG_MAZE_EVAL,
    BIG_MAZE,
    HARDEST_MAZE,
    U4_MAZE,
    U4_MAZE_EVAL,
    U5_MAZE,
    U5_MAZE_EVAL,
    U_MAZE,
    U_MAZE_EVAL,
    MazeLayout,
)
from crl.sim.tasks.paper import MazeEnv, maze_config

START_NOISE = 0.1  # the paper's reset_noise_scale: joints, velocities, torso xy

CONFIG = TaskConfig(
    name="paper_ant",
    model_file="paper_ant.xml",
    goal_kind="body",
    goal_name="torso",
    goal_axes="xy",
    goal_sampler=AnnulusSampler(r_min=10.0, r_max=10.0),
    observation=("qpos", "qvel"),
    base_body="torso",
    healthy_z_range=(0.2, 1.0),
    control_hz=20.0,
    episode_length=1000,
    success_radius=0.5,
    start=StartSampler(
        keyframe="home",
        joint_noise=START_NOISE,
        vel_noise=START_NOISE,
        base_xy=BoxSampler(low=(-START_NOISE, -START_NOISE), high=(START_NOISE, START_NOISE)),
    ),
)

# task -> (training layout, evaluation layout); the paper's env ids after `paper_`.
MAZES: dict[str, tuple[MazeLayout, MazeLayout]] = {
    "paper_ant_u_maze": (U_MAZE, U_MAZE_EVAL),
    "paper_ant_big_maze": (BIG_MAZE, ANT_BIG_MAZE_EVAL),
    "paper_ant_u4_maze": (U4_MAZE, U4_MAZE_EVAL),
    "paper_ant_u5_maze": (U5_MAZE, U5_MAZE_EVAL),
    "paper_ant_hardest_maze": (HARDEST_MAZE, HARDEST_MAZE),
}
CONFIGS: dict[str, TaskConfig] = {
    CONFIG.name: CONFIG,
    **{
        name: maze_config(CONFIG, name, layout, start_noise=START_NOISE)
        for name, (layout, _) in MAZES.items()
    },
}


def make(task: str, dr: str = "train", physics: str = "jax", worlds: int = 1) -> MazeEnv:
    layout, eval_layout = MAZES.get(task, (None, None))
    return MazeEnv(
        CONFIGS[task], dr, layout=layout, eval_layout=eval_layout, physics=physics, worlds=worlds
    )
