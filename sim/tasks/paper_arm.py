"""The paper's arm tasks: `paper_arm_push_easy`, `paper_arm_push_hard`, `paper_arm_binpick_hard`.

As the paper's code (scaling-crl `envs/manipulation/arm_envs.py`, `arm_push_easy.py`,
`arm_push_hard.py`, `arm_binpick_hard.py` and their `envs/assets/panda_*.xml`, from JaxGCRL):
the 7-DoF arm of `paper_arm.xml` moves a 6 cm cube on a table to a goal position. The goal is
the cube's xyz (z = 0.03: resting on the table), reached within 0.1 m; control at 20 Hz (2 ms
physics, 25 substeps); 1000 control steps (the paper's `train.py` wraps every env in
`--episode_length`, 1000 by default, its command lines never set it; the arm env files' own
`episode_length`, 50 / 80 / 80, only normalizes a timestep the observation leaves out). No
termination: the arm cannot fall.

The action (5): position targets of joints 1, 2, 4 and 6 over the paper's ranges (see the
MJCF), and the gripper, closed for a positive command and open otherwise (the paper's binary
gripper, both fingers alike). Joints 3, 5 and 7 hold the paper's fixed targets.

The observation (17, the paper's `_get_obs` order): the cube's position (3), the seven arm joint
angles (7), link7's position (3) and its origin's linear velocity in the world frame (3) (the
paper's end effector: Brax fuses the hand into link7), the distance between the two fingers (1).

Every episode starts from the paper's arm pose with the cube at rest-height 0.07 m (it drops
4 cm onto the table) at a uniform xy in the task's start region, and the goal uniform in its goal
region (the paper's `cube_noise_scale`, `goal_noise_scale` around its centres):

  push easy:    cube (-0.1, 0.6) ± 0.1,   goal (0.1, 0.6) ± 0.1    (two adjacent 0.2 m squares)
  push hard:    cube (-0.25, 0.65) ± 0.25, goal (0.25, 0.65) ± 0.25 (two adjacent 0.5 m squares)
  binpick hard: cube (-0.3, 0.6) ± 0.15,  goal (0.3, 0.6) ± 0.15   (in bins 0.39 m across with
                6.6 cm walls, which the cube, hand and fingers collide with: it must be lifted)

What differs from the paper's code: the paper builds its state with the cube's qpos noise
indexed on Brax's fused model; ours draws the same distribution on the same qpos layout. Its
observed positions are those MJX computed before a step's last integration (2 ms old); ours
are of the instant after it, as for every task here. The goal marker moves onto the goal at
reset (the paper's also shows it there); it collides with nothing.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import mujoco

from crl.sim.config import DR_HELD_OUT, DR_TRAIN, BoxSampler, StartSampler, TaskConfig
from crl.sim.env import GoalReachEnv
from crl.sim.sampling import sample

CUBE_START_Z = 0.07  # the paper's cube body height; it settles at its half-size, 0.03
GOAL_Z = 0.03  # the paper's goal height: the cube's centre resting on the table
ARM_JOINTS = tuple(f"joint{i}" for i in range(1, 8))
NOMINAL = ((1.0, 1.0),)
GRIPPER_CLOSED, GRIPPER_OPEN = 0.0, 255.0  # the paper's finger ctrl for a positive / other command


def region(center: tuple[float, float], half: float, z: float | None = None) -> BoxSampler:
    """Uniform over the square `center` ± `half` (at height `z`, if given)."""
    extra = () if z is None else (z,)
    return BoxSampler(
        low=(center[0] - half, center[1] - half, *extra),
        high=(center[0] + half, center[1] + half, *extra),
    )


# task -> (cube start centre, half-width; goal centre, half-width): the paper's init cube
# positions (its MJCFs' `cube` body) and noise scales (its env files).
LAYOUTS: dict[str, tuple[tuple[float, float], float, tuple[float, float], float]] = {
    "paper_arm_push_easy": ((-0.1, 0.6), 0.1, (0.1, 0.6), 0.1),
    "paper_arm_push_hard": ((-0.25, 0.65), 0.25, (0.25, 0.65), 0.25),
    "paper_arm_binpick_hard": ((-0.3, 0.6), 0.15, (0.3, 0.6), 0.15),
}

BASE = TaskConfig(
    name="paper_arm_push_easy",
    model_file="paper_arm.xml",
    goal_kind="body",
    goal_name="cube",
    goal_axes="xyz",
    goal_sampler=region((0.1, 0.6), 0.1, GOAL_Z),
    observation=("goal_pos", "obs_joint_pos", "body_pos", "body_lin_vel", "body_gap"),
    actuated_joints=("joint1", "joint2", "joint4", "joint6", "finger_joint1"),
    obs_joints=ARM_JOINTS,
    obs_body="link7",
    obs_body_pair=("left_finger", "right_finger"),
    control_hz=20.0,
    episode_length=1000,
    success_radius=0.1,
    start=StartSampler(keyframe="home"),
    # Friction stays nominal under DR: the model's contacts are explicit pairs, which friction
    # DR does not scale (the paper has no DR; `--dr off` is its setup).
    dr_train=dataclasses.replace(DR_TRAIN, friction=NOMINAL),
    dr_held_out=dataclasses.replace(DR_HELD_OUT, friction=NOMINAL),
)
CONFIGS: dict[str, TaskConfig] = {
    task: BASE.replace(name=task, goal_sampler=region(goal, goal_half, GOAL_Z))
    for task, (_, _, goal, goal_half) in LAYOUTS.items()
}

# The bins of binpick (the paper's panda_binpick_hard.xml): per bin, four walls, each
# (x, y offset from the bin's centre), (half-sizes); centres (-0.3, 0.6) and (0.3, 0.6).
BIN_CENTERS = {"binA": (-0.3, 0.6), "binB": (0.3, 0.6)}
BIN_WALLS = (
    ((0.0, -0.19), (0.195, 0.005, 0.033)),
    ((0.0, 0.19), (0.195, 0.005, 0.033)),
    ((0.19, 0.0), (0.005, 0.185, 0.033)),
    ((-0.19, 0.0), (0.005, 0.185, 0.033)),
)
BIN_COLLIDERS = ("cube_geom", "left_finger_geom", "right_finger_geom", "hand_geom")
BINPICK_IMPRATIO = 10.0  # the binpick file's option impratio


class PaperArmEnv(GoalReachEnv):
    """The paper's arm tasks: the cube placed in its start region, the goal marker on the goal,
    the binary gripper driving both fingers, and each task's floor regions or bins."""

    def __init__(
        self, config: TaskConfig, dr: str = "train", physics: str = "jax", worlds: int = 1
    ):
        cube, cube_half, goal, goal_half = LAYOUTS[config.name]
        self.cube_region = region(cube, cube_half)
        self.goal_region = (goal, goal_half)
        self.cube_start = (cube, cube_half)
        super().__init__(config, dr, physics=physics, worlds=worlds)
        m = self.mj_model
        self._cube_qadr = int(m.jnt_qposadr[m.body("cube").jntadr[0]])
        self._marker_qadr = int(m.jnt_qposadr[m.body("goal_marker").jntadr[0]])
        self._finger_acts = (m.actuator("actuator8").id, m.actuator("actuator9").id)

    def edit_spec(self, spec: mujoco.MjSpec) -> None:
        world = spec.worldbody
        if self.config.name == "paper_arm_binpick_hard":
            spec.option.impratio = BINPICK_IMPRATIO
            for bin_name, (bx, by) in BIN_CENTERS.items():
                rgba = [0, 0.2, 0.8, 1] if bin_name == "binA" else [0.8, 0, 0, 1]
                for i, ((dx, dy), size) in enumerate(BIN_WALLS, start=1):
                    name = f"{bin_name}{i}"
                    world.add_geom(
                        name=name, type=mujoco.mjtGeom.mjGEOM_BOX, size=list(size),
                        pos=[bx + dx, by + dy, size[2]], rgba=rgba, contype=0, conaffinity=0,
                    )
                    for other in BIN_COLLIDERS:
                        spec.add_pair(geomname1=other, geomname2=name)
            return
        # The push tasks' floor regions: visual only (the paper's 1 mm boxes collide with nothing).
        (cx, cy), ch = self.cube_start
        (gx, gy), gh = self.goal_region
        for name, (x, y), h, rgba in (
            ("start_region", (cx, cy), ch, [0, 0.2, 0.8, 1]),
            ("goal_region", (gx, gy), gh, [0.8, 0, 0, 1]),
        ):
            world.add_geom(
                name=name, type=mujoco.mjtGeom.mjGEOM_BOX, size=[h, h, 0.0005],
                pos=[x, y, 0.0005], rgba=rgba, contype=0, conaffinity=0,
            )

    def sample_start(self, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
        qpos, qvel = super().sample_start(rng)
        xy = sample(self.cube_region, jax.random.fold_in(rng, 1))
        a = self._cube_qadr
        qpos = qpos.at[a : a + 3].set(jnp.append(xy, CUBE_START_Z))
        return qpos.at[a + 3 : a + 7].set(jnp.array([1.0, 0.0, 0.0, 0.0])), qvel

    def place_goal(self, qpos: jax.Array, goal: jax.Array) -> jax.Array:
        return qpos.at[self._marker_qadr : self._marker_qadr + 3].set(goal)

    def action_to_ctrl(self, action: jax.Array) -> jax.Array:
        """Joints as the linear mapping onto the paper's ranges; the gripper (last) binary."""
        ctrl = super().action_to_ctrl(action)
        return ctrl.at[-1].set(jnp.where(action[-1] > 0, GRIPPER_CLOSED, GRIPPER_OPEN))

    def couple_ctrl(self, ctrl: jax.Array) -> jax.Array:
        first, second = self._finger_acts
        return ctrl.at[second].set(ctrl[first])


def make(
    task: str, dr: str = "train", physics: str = "jax", worlds: int = 1
) -> PaperArmEnv:
    return PaperArmEnv(CONFIGS[task], dr, physics=physics, worlds=worlds)

