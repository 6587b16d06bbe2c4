"""The paper's arm tasks (sim/tasks/paper_arm.py, sim/assets/paper_arm.xml): the numbers of the
paper's code, its goal and start regions, its observation, and a cube that rests on the table
and moves when the hand sweeps into it.

The numbers come from scaling-crl (the paper's code) `envs/manipulation/arm_envs.py` (physics,
action mapping), `arm_push_easy.py`, `arm_push_hard.py`, `arm_binpick_hard.py` (regions,
success threshold, observation) and `envs/assets/panda_push_easy.xml`, `panda_push_hard.xml`,
`panda_binpick_hard.xml` (robot, cube, table, bins); the episode length is its `train.py`'s
`--episode_length` default. The physics checks run MuJoCo's C engine on the env's own model
(no compile); one MJX rollout (slow) checks the env's step end to end.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
import pytest

from crl.sim import tasks
from crl.sim.env import compiler_options
from crl.sim.tasks import paper_arm
from crl.sim.tasks.paper_arm import PaperArmEnv

TEST_COMPILER_OPTIONS = {**compiler_options(), "xla_backend_optimization_level": 0}
ARM_TASKS = tuple(paper_arm.LAYOUTS)
# The paper's observation (arm_push_easy.py `_get_obs`, 17 values) in its order.
ARM_FIELDS = {"goal_pos": 3, "obs_joint_pos": 7, "body_pos": 3, "body_lin_vel": 3, "body_gap": 1}
# task -> (cube start centre, half-width, goal centre, half-width): the cube body's position in
# panda_push_easy/push_hard/binpick_hard.xml, `cube_noise_scale`, the goal centre of
# `_get_initial_goal`, `goal_noise_scale`.
PAPER_REGIONS = {
    "paper_arm_push_easy": ((-0.1, 0.6), 0.1, (0.1, 0.6), 0.1),
    "paper_arm_push_hard": ((-0.25, 0.65), 0.25, (0.25, 0.65), 0.25),
    "paper_arm_binpick_hard": ((-0.3, 0.6), 0.15, (0.3, 0.6), 0.15),
}
# arm_envs.py `_convert_action_to_actuator_input_joint_angle`: joints 1, 2, 4, 6.
ACTION_MIN = (0.3491, 0.0, -3.0718, 2.3562)
ACTION_MAX = (2.7925, 1.48353, -0.0698, 3.7525)
HOME = (1.571, 0.742, 0.0, -1.571, 0.0, 3.054, 1.449, 0.04, 0.04)  # its arm_q_default


@functools.cache
def env_of(task: str) -> PaperArmEnv:
    env = tasks.make(task, dr="off")
    assert isinstance(env, PaperArmEnv)
    return env


def _draws(fn: Any, n: int = 512, seed: int = 0) -> Any:
    keys = jax.random.split(jax.random.key(seed), n)
    return jax.tree.map(np.asarray, jax.vmap(fn)(keys))


def test_arm_tasks_are_the_papers_three() -> None:
    arm = [t for t in tasks.PAPER_TASKS if "arm" in t]
    assert arm == ["paper_arm_push_easy", "paper_arm_push_hard", "paper_arm_binpick_hard"]
    assert all(tasks.PAPER_TASKS[t] == "paper_arm" for t in arm)


@pytest.mark.parametrize("task", ARM_TASKS)
def test_sizes_rates_and_dynamics_are_the_papers(task: str) -> None:
    env = env_of(task)
    c, spec, m = env.config, env.spec, env.mj_model
    assert {f.name: f.size for f in spec.observation} == ARM_FIELDS
    assert spec.obs_dim == 17 and spec.goal_dim == 3  # train.py: obs_dim 17, goal 0:3
    assert (c.goal_kind, c.goal_name, c.goal_axes) == ("body", "cube", "xyz")
    assert c.success_radius == 0.1  # `dist < 0.1`
    assert c.episode_length == 1000 and c.healthy_z_range is None
    # arm_envs.py: timestep 0.002, n_frames 25, iterations 6, ls_iterations 12; the file's
    # implicitfast integrator (and impratio 10 in binpick's).
    assert m.opt.timestep == 0.002 and env._substeps == 25
    assert spec.control_hz == 20.0
    assert (m.opt.iterations, m.opt.ls_iterations) == (6, 12)
    assert m.opt.integrator == mujoco.mjtIntegrator.mjINT_IMPLICITFAST
    assert m.opt.impratio == (10.0 if "binpick" in task else 1.0)
    # qpos: the paper's layout on Brax's fused model (cube, goal marker, 7 joints, 2 fingers).
    assert m.nq == 23 and m.joint(0).name == "cube" and m.joint(1).name == "goal_marker"
    assert m.jnt_qposadr[m.joint("joint1").id] == 14
    # The action: 5, the four joints over the paper's ranges, then the gripper.
    assert spec.act_dim == 5 and spec.action.kind == "position"
    assert spec.action.joints == ("joint1", "joint2", "joint4", "joint6", "finger_joint1")
    np.testing.assert_allclose(spec.action.low[:4], ACTION_MIN)
    np.testing.assert_allclose(spec.action.high[:4], ACTION_MAX)
    # The cube: 6 cm, density 1000; the servos' gain / stiffness / damping; 9 actuators.
    cube = m.geom("cube_geom")
    np.testing.assert_allclose(cube.size, 0.03)
    assert m.body("cube").mass[0] == pytest.approx(0.216)
    assert m.nu == 9
    np.testing.assert_allclose(m.actuator_gainprm[:7, 0], [4500, 4500, 2000, 2000, 1000, 1000,
                                                           1000])
    np.testing.assert_allclose(-m.actuator_biasprm[:7, 1], [4500, 4500, 3500, 3500, 2000, 2000,
                                                            2000])
    np.testing.assert_allclose(m.actuator_forcerange[4:7], [[-12, 12]] * 3)
    assert m.actuator_gainprm[7, 0] == pytest.approx(0.15686)
    # Joints 3, 5, 7 hold the paper's fixed targets.
    np.testing.assert_allclose(np.asarray(env._data0.ctrl)[[2, 4, 6]], [0.0, 0.0, 1.4487])
    # Contacts: the paper's 8 pairs, plus cube, fingers and hand against binpick's 8 walls.
    assert m.npair == (8 + 4 * 8 if "binpick" in task else 8)


@pytest.mark.parametrize("task", ARM_TASKS)
def test_goals_and_cube_starts_lie_in_the_papers_regions(task: str) -> None:
    env = env_of(task)
    (cx, cy), ch, (gx, gy), gh = PAPER_REGIONS[task]
    goals = _draws(env.sample_goal, n=2048)
    np.testing.assert_allclose(goals[:, 2], 0.03)
    for axis, centre in ((0, gx), (1, gy)):
        d = goals[:, axis] - centre
        assert (np.abs(d) <= gh + 1e-6).all() and np.abs(d).max() > 0.95 * gh
    np.testing.assert_allclose(env.spec.goal.low, (gx - gh, gy - gh, 0.03), atol=1e-6)
    np.testing.assert_allclose(env.spec.goal.high, (gx + gh, gy + gh, 0.03), atol=1e-6)
    qpos, qvel = _draws(env.sample_start, n=2048)
    for axis, centre in ((0, cx), (1, cy)):
        d = qpos[:, axis] - centre
        assert (np.abs(d) <= ch + 1e-6).all() and np.abs(d).max() > 0.95 * ch
    np.testing.assert_allclose(qpos[:, 2], 0.07)  # dropped from the paper's 7 cm
    np.testing.assert_allclose(qpos[:, 3:7], np.broadcast_to([1, 0, 0, 0], (2048, 4)))
    np.testing.assert_allclose(qpos[:, 14:], np.broadcast_to(HOME, (2048, 9)), atol=1e-6)
    assert (qvel == 0).all()  # the paper's qd is zero


def test_the_gripper_is_binary_and_drives_both_fingers() -> None:
    env = env_of("paper_arm_push_easy")
    for a, want in ((0.3, 0.0), (-0.3, 255.0), (0.0, 255.0)):
        ctrl = np.asarray(env.action_to_ctrl(jnp.array([0.0, 0.0, 0.0, 0.0, a])))
        assert ctrl[-1] == want
        full = np.asarray(env.couple_ctrl(jnp.zeros(9).at[7].set(want)))
        assert full[8] == full[7] == want
    # Joints: the paper's linear mapping, offset + a * half-range.
    ctrl = np.asarray(env.action_to_ctrl(jnp.array([1.0, -1.0, 1.0, -1.0, 1.0])))
    np.testing.assert_allclose(ctrl[:4], [ACTION_MAX[0], ACTION_MIN[1], ACTION_MAX[2],
                                          ACTION_MIN[3]], rtol=1e-6)


def test_binpick_has_the_papers_bins_and_push_only_floor_marks() -> None:
    m = env_of("paper_arm_binpick_hard").mj_model
    walls = [m.geom(f"{b}{i}") for b in ("binA", "binB") for i in range(1, 5)]
    np.testing.assert_allclose(walls[0].pos, [-0.3, 0.41, 0.033])
    np.testing.assert_allclose(walls[0].size, [0.195, 0.005, 0.033])
    np.testing.assert_allclose(walls[6].pos, [0.49, 0.6, 0.033])
    push = env_of("paper_arm_push_hard").mj_model
    mark = push.geom("goal_region")
    np.testing.assert_allclose(mark.size[:2], 0.25)
    assert mark.contype == mark.conaffinity == 0


# ------------------------------------------------------------------- physics (MuJoCo C, cheap)

# Joint targets (joints 1, 2, 4, 6) of a scripted push found on the model: the fingers come down
# to the table 0.6 m from the base (the cube's distance) at joint 1 = 2.2 rad, beside the cube,
# then joint 1 sweeps to 1.2 rad, through it (it moves ~0.3 m toward +x).
PUSH_POSE = (0.99, -2.173, 3.054)


def _push_script(j1_from: float = 2.2, j1_to: float = 1.2) -> np.ndarray:
    """[45, 4] joint targets: 20 steps coming down, 20 sweeping, 5 holding."""
    j1 = np.concatenate([np.full(20, j1_from), np.linspace(j1_from, j1_to, 20), np.full(5, j1_to)])
    return np.stack([j1, *(np.full(45, v) for v in PUSH_POSE)], axis=1)


def _normalized(env: PaperArmEnv, targets: np.ndarray) -> np.ndarray:
    """Policy actions for joint targets (the inverse of the env's mapping); gripper closed."""
    offset = np.asarray(env.spec.action.offset[:4])
    scale = np.asarray(env.spec.action.scale[:4])
    return np.concatenate([(targets - offset) / scale, np.ones((len(targets), 1))], axis=1)


def test_cube_rests_on_the_table_and_a_sweep_pushes_it() -> None:
    env = env_of("paper_arm_push_easy")
    m = env.mj_model
    d = mujoco.MjData(m)
    mujoco.mj_resetDataKeyframe(m, d, m.key("home").id)  # cube at (-0.1, 0.6), 7 cm up
    for _ in range(250):  # 0.5 s
        mujoco.mj_step(m, d)
    cube = d.body("cube")
    np.testing.assert_allclose(cube.xpos, [-0.1, 0.6, 0.03], atol=2e-3)  # table + half-size
    start = cube.xpos.copy()
    for a in _normalized(env, _push_script()):
        d.ctrl[:] = np.asarray(env.couple_ctrl(
            jnp.asarray(d.ctrl).at[jnp.array([0, 1, 3, 5, 7])].set(env.action_to_ctrl(
                jnp.asarray(a, jnp.float32)))))
        for _ in range(env._substeps):
            mujoco.mj_step(m, d)
    moved = cube.xpos - start
    assert moved[0] > 0.15  # pushed toward +x (the goal side)
    assert cube.xpos[2] == pytest.approx(0.03, abs=3e-3)  # still on the table


# ------------------------------------------------------------------------------ MJX, slow


def _host(x: jax.Array) -> np.ndarray:
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x)


@pytest.mark.slow
def test_mjx_rollout_observes_the_papers_state_and_pushes_the_cube() -> None:
    env = PaperArmEnv(paper_arm.CONFIGS["paper_arm_push_easy"], "off")
    env.cube_region = paper_arm.region((-0.1, 0.6), 0.0)  # the scripted push's cube position
    actions = jnp.asarray(_normalized(env, _push_script()), jnp.float32)

    def run(key: jax.Array) -> tuple[Any, Any]:
        first = env.reset(key)
        return first, jax.lax.scan(lambda s, a: (env.step(s, a),) * 2, first, actions)[1]

    first, states = jax.jit(run, compiler_options=TEST_COMPILER_OPTIONS)(jax.random.key(0))
    first, states = jax.tree.map(_host, first), jax.tree.map(_host, states)
    m = env.mj_model
    assert np.isfinite(states.obs).all()
    for s in (first, states):
        qpos = s.data.qpos
        np.testing.assert_allclose(s.obs[..., 0:3], qpos[..., 0:3], atol=1e-5)  # the cube
        np.testing.assert_allclose(s.obs[..., 3:10], qpos[..., 14:21], atol=1e-6)  # 7 joints
        # The fingers slide apart from one point: their gap is the sum of their joints (closed,
        # they press a hair past 0 into their limits).
        gap = np.abs(qpos[..., 21] + qpos[..., 22])
        np.testing.assert_allclose(s.obs[..., 16], gap, atol=1e-4)
        np.testing.assert_allclose(s.achieved_goal, qpos[..., 0:3], atol=1e-5)
        np.testing.assert_allclose(qpos[..., 7:10], s.goal, atol=1e-6)  # the goal marker
    assert first.obs[16] == pytest.approx(0.08, abs=1e-4)
    # link7's position and velocity, as MuJoCo's C engine computes them from the same state.
    d = mujoco.MjData(m)
    vel = np.zeros(6)
    for k in (19, 30, 44):
        d.qpos[:], d.qvel[:] = states.data.qpos[k], states.data.qvel[k]
        mujoco.mj_forward(m, d)
        np.testing.assert_allclose(states.obs[k, 10:13], d.body("link7").xpos, atol=1e-4)
        mujoco.mj_objectVelocity(m, d, mujoco.mjtObj.mjOBJ_XBODY, m.body("link7").id, vel, 0)
        np.testing.assert_allclose(states.obs[k, 13:16], vel[3:], atol=2e-3)
    # Both fingers get the binary gripper's command (closed: positive action).
    assert (states.data.ctrl[:, 7] == 0).all() and (states.data.ctrl[:, 8] == 0).all()
    # The cube settles on the table, then the sweep pushes it toward +x.
    cube = states.data.qpos[:, 0:3]
    assert cube[19, 2] == pytest.approx(0.03, abs=3e-3)
    np.testing.assert_allclose(cube[19, :2], [-0.1, 0.6], atol=5e-3)
    assert cube[-1, 0] - cube[19, 0] > 0.15 and cube[-1, 2] == pytest.approx(0.03, abs=3e-3)
    assert not states.done[:-1].any()  # no termination; 1000-step episodes


def test_binpick_cube_rests_in_its_bin_and_the_walls_are_solid() -> None:
    m = env_of("paper_arm_binpick_hard").mj_model
    d = mujoco.MjData(m)
    for start, check in (((-0.3, 0.6), "rests"), ((-0.3, 0.41), "on the wall")):
        mujoco.mj_resetDataKeyframe(m, d, m.key("home").id)
        d.qpos[0:3] = (*start, 0.07)
        for _ in range(250):
            mujoco.mj_step(m, d)
        cube = d.body("cube").xpos
        if check == "rests":  # on the table inside bin A
            np.testing.assert_allclose(cube, [-0.3, 0.6, 0.03], atol=2e-3)
        else:  # dropped centred onto the wall at y = 0.41, it lands on the wall's 6.6 cm top
            np.testing.assert_allclose(cube, [-0.3, 0.41, 0.066 + 0.03], atol=3e-3)


def test_the_named_state_fields_check_their_names() -> None:
    from crl.core.usage import ConfigError

    base = paper_arm.CONFIGS["paper_arm_push_easy"]
    with pytest.raises(ConfigError, match="obs_body_pair: name two bodies"):
        base.replace(obs_body_pair=("left_finger",))
    with pytest.raises(ConfigError, match="obs_body: observation field 'body_pos' needs it"):
        base.replace(obs_body="")
    with pytest.raises(ConfigError, match="obs_body: no body 'hand'"):
        PaperArmEnv(base.replace(obs_body="hand"), "off")  # fused into link7, as Brax does
    with pytest.raises(ConfigError, match="obs_joints: no hinge or slide joint 'cube'"):
        PaperArmEnv(base.replace(obs_joints=("joint1", "cube")), "off")


@pytest.mark.slow
def test_push_easy_trains_a_few_iterations(tiny_train_config: Callable[[str], Any]) -> None:
    """Collection and SGD on the arm (its 25 contact substeps a step, the coupled gripper):
    three small iterations, SGD runs, every metric and every stored transition finite."""
    from crl.train.agent import init_state, make_iteration, make_setup
    from crl.train.config import validate

    config = tiny_train_config("paper_arm_push_easy")
    validate(config, tasks.TASKS)
    setup = make_setup(config, tasks.make(config.task, dr="off"))
    iteration, state = make_iteration(setup), init_state(setup)
    for _ in range(3):
        state, metrics = iteration(state)
        assert all(np.isfinite(float(v)) for k, v in metrics.items() if k != "trained")
    assert bool(metrics["trained"]) and int(state.sgd_steps) > 0
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.buffer.data))
