"""Reacher: a 2-link planar arm puts its fingertip on a goal in the plane (CPU quickstart).

Goals cover the reachable annulus evenly (the model's links reach 0.057..0.21 m; the margin
keeps goals off the singular edges). Starts spread the arm over most of its joint space, so
the first episodes already see varied fingertip positions to relabel. Observation noise is
scaled down from the shared ranges: the whole workspace is 0.4 m across and the success radius
2 cm, so centimetre noise on the fingertip position would swamp it. In training, joint angles
carry up to 2 mrad (about a 12-bit encoder's step), joint velocities 0.03 rad/s and the
fingertip 2 mm; held out, 1.25-2x those (`held_out_noise`). The policy also sees its
own last command (`last_action`): under a random action delay the servo targets in flight are
otherwise invisible to it, and the policy chases its own lag around the goal.
"""

from crl.sim.config import (
    DR_HELD_OUT_ENCODERS,
    DR_TRAIN_ENCODERS,
    AnnulusSampler,
    StartSampler,
    TaskConfig,
)
from crl.sim.env import GoalReachEnv

CONFIG = TaskConfig(
    name="reacher",
    model_file="reacher.xml",
    goal_kind="site",
    goal_name="fingertip",
    goal_axes="xy",
    goal_sampler=AnnulusSampler(r_min=0.07, r_max=0.2),
    observation=("joint_pos", "joint_vel", "site_pos", "last_action"),
    obs_site="fingertip",
    control_hz=25.0,
    episode_length=50,
    success_radius=0.02,
    start=StartSampler(joint_noise=2.0, vel_noise=0.1),
    # Fields the reacher does not observe keep the shared noise (a variant that observes them).
    dr_train=DR_TRAIN_ENCODERS,
    dr_held_out=DR_HELD_OUT_ENCODERS,
)
ENV = GoalReachEnv
