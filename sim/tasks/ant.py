"""Ant: a quadruped walks its torso to a goal in the plane (a paper task).

As in the paper's code (JaxGCRL `envs/ant.py`): goals on a circle of radius 10 m around the
start, success within 0.5 m, 1000 control steps at 20 Hz, the start pose jittered by ±0.1 and
velocities by 0.1. The observation is the paper's qpos + qvel, split into named fields, with the
base velocities in the base frame (what a robot's odometry reports). An episode ends early when
the torso's height leaves the paper's healthy band [0.2, 1.0] m (its `healthy_z_range`): in
practice when the ant launches itself above 1 m, since the torso sphere (radius 0.25 m, as the
paper's) rests above 0.2 m even upside down.
"""

from crl.sim.config import AnnulusSampler, BoxSampler, StartSampler, TaskConfig
from crl.sim.env import GoalReachEnv

OBSERVATION = (
    "base_pos", "base_quat", "joint_pos", "base_lin_vel", "base_ang_vel", "joint_vel"
)
CONFIG = TaskConfig(
    name="ant",
    model_file="ant.xml",
    goal_kind="body",
    goal_name="torso",
    goal_axes="xy",
    goal_sampler=AnnulusSampler(r_min=10.0, r_max=10.0),
    observation=OBSERVATION,
    base_body="torso",
    healthy_z_range=(0.2, 1.0),
    control_hz=20.0,
    episode_length=1000,
    success_radius=0.5,
    start=StartSampler(
        joint_noise=0.1, vel_noise=0.1, base_xy=BoxSampler(low=(-0.1, -0.1), high=(0.1, 0.1))
    ),
)
ENV = GoalReachEnv
