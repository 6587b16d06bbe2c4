"""Humanoid: a 17-motor humanoid walks its torso to a goal in 3-D (a paper task).

As in the paper's code (JaxGCRL `envs/humanoid.py`): goal xy at a distance drawn uniformly from
1..5 m in any direction, z fixed at 1.25 m (the torso height of a standing humanoid), success
within 0.5 m, 1000 control steps. Control runs at 50 Hz (the paper steps every 15 ms; our
model's 5 ms timestep gives 20 ms). The paper starts every episode from the same pose; a little
joint and velocity noise here makes starts differ. An episode ends early when the torso's height
leaves the paper's healthy band [1.0, 2.0] m (`healthy_z_range`; it starts at 1.3 m): a fallen
humanoid starts a new episode rather than lying on the floor until step 1000.
"""

from crl.sim.config import AnnulusSampler, StartSampler, TaskConfig
from crl.sim.env import GoalReachEnv

OBSERVATION = (
    "base_pos", "base_quat", "joint_pos", "base_lin_vel", "base_ang_vel", "joint_vel"
)
CONFIG = TaskConfig(
    name="humanoid",
    model_file="humanoid.xml",
    goal_kind="body",
    goal_name="torso",
    goal_axes="xyz",
    goal_sampler=AnnulusSampler(r_min=1.0, r_max=5.0, uniform_area=False, z=1.25),
    observation=OBSERVATION,
    base_body="torso",
    healthy_z_range=(1.0, 2.0),
    control_hz=50.0,
    episode_length=1000,
    success_radius=0.5,
    start=StartSampler(joint_noise=0.02, vel_noise=0.02),
)
ENV = GoalReachEnv
