"""Arm reach: a 7-DoF arm puts its tool centre point (`ee` site) on a 3-D goal.

Goals fill a box in front of the arm, every point of which inverse kinematics reaches from the
`home` pose (checked on the model: 0.25..0.65 m ahead, ±0.35 m aside, 0.15..0.65 m up). The
paper's arm task uses a 0.1 m success radius; 5 cm is closer to what a real reach needs.
"""

from crl.sim.config import BoxSampler, StartSampler, TaskConfig
from crl.sim.env import GoalReachEnv

CONFIG = TaskConfig(
    name="arm_reach",
    model_file="arm7.xml",
    goal_kind="site",
    goal_name="ee",
    goal_axes="xyz",
    goal_sampler=BoxSampler(low=(0.25, -0.35, 0.15), high=(0.65, 0.35, 0.65)),
    observation=("joint_pos", "joint_vel", "site_pos"),
    obs_site="ee",
    control_hz=25.0,
    episode_length=100,
    success_radius=0.05,
    start=StartSampler(keyframe="home", joint_noise=0.2, vel_noise=0.05),
)
ENV = GoalReachEnv
