"""The goal-reaching envs, every task: shapes, resets, success, episode ends, auto-reset.

Compiling MJX is the cost here (the 2-core CI box takes tens of seconds per program for the
contact-rich robots), so each task compiles exactly two programs once per module: a vmapped
`step` and a vmapped `reset_if_done` (the robots that can fall add a tiny third, their height
rule). Fresh episodes come from `reset_if_done` on a blank state marked done, which is what
auto-reset does during training; one test pins that to `reset` on the cheap reacher. Programs
are compiled at XLA's lowest backend optimization level: it roughly halves compile time and only
a handful of steps run.
"""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
import pytest
from jax_helpers import host_numpy, trees_equal

from crl.core.spec import PolicySpec
from crl.sim.env import GoalReachEnv, State, compiler_options
from crl.sim.tasks import DEPLOYMENT_TASKS, make

N_ENVS = 4  # contact-rich tasks compile and step slowly on the CPU: a few envs keep it quick
TEST_COMPILER_OPTIONS = {**compiler_options(), "xla_backend_optimization_level": 0}


def test_compile(fn: Any) -> Any:
    return jax.jit(fn, compiler_options=TEST_COMPILER_OPTIONS)


test_compile.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


@dataclass
class Compiled:
    env: GoalReachEnv
    step: Any  # (State[N], f32[N, act]) -> State[N]
    reset_if_done: Any  # State[N] -> State[N]

    def fresh(self, seed: int) -> State:
        """N fresh episodes: reset_if_done on a blank state whose every env is done."""
        keys = jax.random.split(jax.random.key(seed), N_ENVS)
        shapes = jax.eval_shape(jax.vmap(self.env.reset), keys)

        def blank(s: jax.ShapeDtypeStruct) -> Any:
            if jnp.issubdtype(s.dtype, jax.dtypes.prng_key):
                return keys
            return np.zeros(s.shape, s.dtype)

        state = jax.tree.map(blank, shapes)
        return self.reset_if_done(state.replace(done=np.ones(N_ENVS, bool)))

    def actions(self, seed: int) -> np.ndarray:
        shape = (N_ENVS, self.env.spec.act_dim)
        return np.random.default_rng(seed).uniform(-1.0, 1.0, shape).astype(np.float32)


@functools.cache
def compiled(name: str) -> Compiled:
    env = make(name, dr="train")
    return Compiled(
        env=env,
        step=test_compile(jax.vmap(env.step)),
        reset_if_done=test_compile(jax.vmap(env.reset_if_done)),
    )


# The paper family compiles a step per task too slowly for this per-task suite:
# tests/test_paper_tasks.py checks it, one compiled maze per robot.
@pytest.fixture(scope="module", params=DEPLOYMENT_TASKS)
def task(request: pytest.FixtureRequest) -> Compiled:
    return compiled(request.param)


def _row(tree: Any, i: int) -> Any:
    return jax.tree.map(lambda x: x[i], host_numpy(tree))


def test_shapes_match_spec(task: Compiled) -> None:
    env, spec = task.env, task.env.spec
    state = task.fresh(0)
    assert state.obs.shape == (N_ENVS, spec.obs_dim)
    assert state.goal.shape == (N_ENVS, spec.goal_dim)
    assert state.achieved_goal.shape == (N_ENVS, spec.goal_dim)
    # One action per actuator of the model, each naming the joint it drives.
    assert spec.act_dim == len(spec.action.joints) == env.mj_model.nu
    assert state.t.tolist() == [0] * N_ENVS
    assert not state.done.any()
    nxt = task.step(state, task.actions(1))
    assert nxt.obs.shape == (N_ENVS, spec.obs_dim)
    assert nxt.t.tolist() == [1] * N_ENVS
    assert np.isfinite(nxt.obs).all()
    assert nxt.reward.dtype == jnp.float32
    np.testing.assert_array_equal(nxt.reward, np.asarray(nxt.success, np.float32))


def test_spec_is_built_from_model(task: Compiled) -> None:
    env, spec = task.env, task.env.spec
    assert spec.task == env.config.name and spec.network is None
    assert PolicySpec.from_json(spec.to_json()) == spec
    assert spec.provenance.robot_model_sha256 == hashlib.sha256(
        env.model_path.read_bytes()
    ).hexdigest()
    assert spec.provenance.domain_randomization["mode"] == "train"
    assert spec.control_hz == env.config.control_hz
    assert spec.success_radius == env.config.success_radius
    assert [f.name for f in spec.observation] == list(env.config.observation)
    # [-1, 1] spans each actuator's ctrlrange.
    m = env.mj_model
    act_ids = [m.actuator(j).id for j in spec.action.joints]
    ctrl_low, ctrl_high = m.actuator_ctrlrange[act_ids].T
    np.testing.assert_allclose(env.action_to_ctrl(-jnp.ones(spec.act_dim)), ctrl_low, rtol=1e-6)
    np.testing.assert_allclose(env.action_to_ctrl(jnp.ones(spec.act_dim)), ctrl_high, rtol=1e-6)
    np.testing.assert_allclose(env.action_to_ctrl(5 * jnp.ones(spec.act_dim)), ctrl_high, rtol=1e-6)


def test_resets_give_varied_starts_and_goals(task: Compiled) -> None:
    state = task.fresh(2)
    qpos = np.asarray(state.data.qpos)
    for i in range(N_ENVS):
        for j in range(i + 1, N_ENVS):
            assert not np.allclose(qpos[i], qpos[j]), "two resets gave the same start"
    goals = np.asarray(state.goal)
    assert len({tuple(g) for g in goals.round(6)}) > 1, "every reset gave the same goal"
    low, high = np.asarray(task.env.spec.goal.low), np.asarray(task.env.spec.goal.high)
    assert ((goals >= low - 1e-5) & (goals <= high + 1e-5)).all(), "goal outside spec bounds"
    again = task.fresh(3)
    assert not np.allclose(again.goal, goals) or not np.allclose(again.data.qpos, qpos)


def _where_goals_lie(name: str, goals: np.ndarray, base_xy: np.ndarray) -> None:
    """Each task's goal (and, for the maze, start) geometry, as its module describes it."""
    if name == "reacher":  # the reachable annulus around the shoulder
        r = np.linalg.norm(goals, axis=1)
        assert ((r >= 0.07 - 1e-5) & (r <= 0.2 + 1e-5)).all()
    elif name == "arm_reach":  # a box in front of the arm
        assert ((goals >= [0.25, -0.35, 0.15]) & (goals <= [0.65, 0.35, 0.65])).all()
    elif name == "ant":  # on the paper's circle of radius 10 m
        np.testing.assert_allclose(np.linalg.norm(goals, axis=1), 10.0, rtol=1e-5)
    elif name == "ant_u_maze":  # goal cells' centres; the start cell's centre
        from crl.sim.maze import U_MAZE

        centres = {U_MAZE.cell_center(i, j) for i, j in U_MAZE.goal_cells()}
        assert {tuple(g) for g in goals.astype(float).round(5)} <= {
            tuple(np.round(c, 5)) for c in centres
        }
        starts = {tuple(np.round(U_MAZE.cell_center(i, j), 5)) for i, j in U_MAZE.start_cells()}
        assert {tuple(b) for b in base_xy.astype(float).round(5)} <= starts
    elif name == "humanoid":  # 1..5 m away at standing torso height
        r = np.linalg.norm(goals[:, :2], axis=1)
        assert ((r >= 1.0 - 1e-5) & (r <= 5.0 + 1e-5)).all()
        np.testing.assert_allclose(goals[:, 2], 1.25)
    else:
        raise AssertionError(f"no goal geometry test for task {name!r}")


def test_goals_follow_the_task_geometry(task: Compiled) -> None:
    env = task.env
    state = task.fresh(11)
    qadr = env._base_qadr  # the free joint's x, y in qpos (-1: no free base)
    base_xy = np.asarray(state.data.qpos)[:, qadr : qadr + 2] if qadr >= 0 else np.zeros(0)
    _where_goals_lie(env.config.name, np.asarray(state.goal), base_xy)
    # Many more draws than envs, straight from the sampler the env resets with.
    goals = np.asarray(jax.vmap(env.sample_goal)(jax.random.split(jax.random.key(12), 256)))
    _where_goals_lie(env.config.name, goals, base_xy)


def test_success_only_when_achieved_goal_is_on_goal(task: Compiled) -> None:
    state, action = task.fresh(4), task.actions(5)
    reached = task.step(state, action).achieved_goal  # where this step will end up
    on_goal = task.step(state.replace(goal=reached), action)
    np.testing.assert_array_equal(on_goal.achieved_goal, reached)  # the step is deterministic
    assert on_goal.success.all() and (on_goal.reward == 1.0).all()
    offset = np.zeros(task.env.spec.goal_dim, np.float32)
    offset[0] = 2 * task.env.spec.success_radius
    off_goal = task.step(state.replace(goal=np.asarray(reached) + offset), action)
    assert not off_goal.success.any() and (off_goal.reward == 0.0).all()


def test_episode_ends_at_its_length(task: Compiled) -> None:
    length = task.env.episode_length
    state, action = task.fresh(6), task.actions(7)
    t = np.array([length - 1, length - 2, 0, length - 1], np.int32)
    nxt = task.step(state.replace(t=t), action)
    assert nxt.t.tolist() == [length, length - 1, 1, length]
    assert nxt.done.tolist() == [True, False, False, True]


# Where each task's robot is put for one step: torso heights outside its healthy band (the
# humanoid also below it, lying on its side, 90° about x, so no limb starts inside the floor);
# the fourth env stays at its start pose, inside the band. The ant's torso sphere (radius
# 0.25 m) cannot stay below 0.2 m: the floor pushes it back up within a step (put at 0.1 m it
# ends the step at 0.53 m, at -3 m it is launched above 1 m), so only the band's rule is tested
# on its low side.
LYING = (np.cos(np.pi / 4), np.sin(np.pi / 4), 0.0, 0.0)
OUT_OF_BAND = {
    "ant": [(1.6, None), (2.5, None), (1.2, None)],
    "humanoid": [(2.6, None), (3.5, None), (0.3, LYING)],
}


@pytest.mark.parametrize("name", sorted(OUT_OF_BAND))
def test_a_robot_outside_its_healthy_band_terminates(name: str) -> None:
    """A torso put above or below the task's band ends the episode at that step (t far from
    the episode's length); the fourth env, left at its start pose, runs on. The auto-reset then
    starts a fresh episode in the three that ended."""
    task = compiled(name)
    env = task.env
    low, high = env.config.healthy_z_range
    state = task.fresh(20)
    qpos = np.array(state.data.qpos)
    z = env._base_qadr + 2
    for i, (height, quat) in enumerate(OUT_OF_BAND[name]):
        qpos[i, z] = height
        if quat is not None:
            qpos[i, z + 1 : z + 5] = quat
    nxt = task.step(state.replace(data=state.data.replace(qpos=qpos)), task.actions(21))
    torso = np.asarray(nxt.data.xpos)[:, env._base_id, 2]
    outside = (torso < low) | (torso > high)
    assert outside.tolist() == [True, True, True, False], torso  # still out after the step
    assert nxt.done.tolist() == [True, True, True, False]
    assert nxt.t.tolist() == [1] * N_ENVS and env.episode_length > 1
    fresh = task.reset_if_done(nxt)
    assert fresh.t.tolist() == [0, 0, 0, 1] and not fresh.done.any()
    # The rule on both sides and at its edges, as the step applies it (it reads only xpos).
    heights = np.array([low - 0.05, low, high, high + 0.05])
    xpos = np.array(nxt.data.xpos)
    xpos[:, env._base_id, 2] = heights
    healthy = test_compile(jax.vmap(env.healthy))(nxt.data.replace(xpos=xpos))
    assert healthy.tolist() == [False, True, True, False]


def test_robots_that_cannot_fall_run_their_full_length() -> None:
    """The reacher and the arm have no healthy band: whatever their pose, only the episode's
    length ends it (and the ant maze keeps the open-floor ant's band)."""
    from crl.sim.tasks import ant, ant_u_maze, arm_reach, reacher

    assert reacher.CONFIG.healthy_z_range is None and arm_reach.CONFIG.healthy_z_range is None
    assert ant_u_maze.CONFIG.healthy_z_range == ant.CONFIG.healthy_z_range == (0.2, 1.0)
    for name in ("reacher", "arm_reach"):
        task = compiled(name)
        state = task.fresh(22)
        rng = np.random.default_rng(23)
        qpos = np.array(state.data.qpos) + rng.uniform(-3, 3, state.data.qpos.shape)
        qvel = rng.normal(0, 20, state.data.qvel.shape)
        state = state.replace(data=state.data.replace(qpos=qpos, qvel=qvel))
        for _ in range(3):
            state = task.step(state, task.actions(24))
            assert not state.done.any()
        last = task.step(state.replace(t=np.full(N_ENVS, task.env.episode_length - 1)),
                         task.actions(25))
        assert last.done.all()


def test_reset_if_done_gives_a_fresh_episode(task: Compiled) -> None:
    state = task.step(task.fresh(8), task.actions(9))
    done = np.array([True, False, True, False])
    out = task.reset_if_done(state.replace(done=done))
    for i in (1, 3):  # not done: untouched
        assert trees_equal(_row(out, i), _row(state.replace(done=done), i))
    for i in (0, 2):  # done: a new episode with a new goal, start and DR draw
        fresh, old = _row(out, i), _row(state, i)
        assert int(fresh.t) == 0 and not bool(fresh.done)
        assert not np.allclose(fresh.goal, old.goal) or not np.allclose(
            fresh.data.qpos, old.data.qpos
        )
        assert not np.array_equal(fresh.dr.body_mass, old.dr.body_mass)
        assert not np.array_equal(fresh.rng, old.rng)
    # The auto-reset draws from the state's rng, so it is reproducible.
    assert trees_equal(out, task.reset_if_done(state.replace(done=done)))


def _fresh_python(code: str, timeout: float) -> str:
    """Run `code` in a new interpreter without XLA_FLAGS (as a user starts one); its stdout."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                       timeout=timeout, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    return r.stdout


@pytest.mark.slow
def test_many_contact_rich_envs_do_not_hang_the_cpu_runtime() -> None:
    """256 vmapped ants deadlocked XLA:CPU's concurrency-optimized scheduler (crl.sim.setup turns
    it off through XLA_FLAGS, so this runs in a fresh process that calls setup_jax() first)."""
    code = (
        "from crl.sim.setup import setup_jax\n"
        "setup_jax()\n"
        "import jax\n"
        "from crl.sim import tasks\n"
        "from crl.sim.env import jit\n"
        "env, n = tasks.make('ant', dr='train'), 256\n"
        "step, reset_if_done = jax.vmap(env.step), jax.vmap(env.reset_if_done)\n"
        "def run(s, key):\n"
        "    def body(s, k):\n"
        "        a = jax.random.uniform(k, (n, env.spec.act_dim), minval=-1.0, maxval=1.0)\n"
        "        return reset_if_done(step(s, a)), None\n"
        "    return jax.lax.scan(body, s, jax.random.split(key, 10))[0]\n"
        "s = jit(jax.vmap(env.reset))(jax.random.split(jax.random.key(0), n))\n"
        "f = jit(run)\n"
        "for i in range(3):\n"
        "    s = jax.block_until_ready(f(s, jax.random.key(i)))\n"
        "print('t', int(s.t.max()))\n"
    )
    assert "t 30" in _fresh_python(code, timeout=300)


def test_setup_after_jax_started_warns() -> None:
    """Importing the env changes nothing; `setup_jax()` called once jax has started says it is too
    late for XLA_FLAGS."""
    code = (
        "import os, warnings, jax.numpy as jnp\n"
        "import crl.sim.env\n"
        "assert 'XLA_FLAGS' not in os.environ\n"
        "jnp.ones(2).block_until_ready()\n"
        "from crl.sim.setup import setup_jax\n"
        "with warnings.catch_warnings(record=True) as caught:\n"
        "    warnings.simplefilter('always')\n"
        "    setup_jax()\n"
        "print([str(w.message) for w in caught if w.category is RuntimeWarning])\n"
    )
    out = _fresh_python(code, timeout=120)
    assert "too late for XLA_FLAGS" in out and "call setup_jax() before" in out


def test_reset_if_done_on_blank_equals_reset() -> None:
    task = compiled("reacher")
    keys = jax.random.split(jax.random.key(10), N_ENVS)
    via_reset = host_numpy(test_compile(jax.vmap(task.env.reset))(keys))
    via_rid = host_numpy(task.fresh(10))
    # Two separately compiled programs: the same draws and integers exactly, the same floats up
    # to the rounding of XLA's fusion choices (which the CPU scheduler flag changes, ~1e-9).
    assert jax.tree.structure(via_reset) == jax.tree.structure(via_rid)
    for x, y in zip(jax.tree.leaves(via_reset), jax.tree.leaves(via_rid), strict=True):
        if np.issubdtype(x.dtype, np.floating):
            np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-7)
        else:
            np.testing.assert_array_equal(x, y)


def test_evaluation_resets_draw_the_evaluation_goals() -> None:
    """`reset(key, evaluation=True)` (what crl-train's evaluations run, through
    `reset_episodes`) takes its goal from `sample_eval_goal` and everything else as
    `reset(key)` does; the paper's mazes give that hook their far goals (test_paper_tasks)."""
    from crl.train.evaluate import reset_episodes

    env = make("reacher", dr="train")
    far = jnp.asarray([-0.15, 0.05], jnp.float32)
    env.sample_eval_goal = lambda rng: far  # type: ignore[method-assign]  # a one-goal eval set
    key = jax.random.key(4)
    evaluated = host_numpy(test_compile(lambda k: reset_episodes(env, k, N_ENVS))(key))
    trained = host_numpy(test_compile(jax.vmap(env.reset))(jax.random.split(key, N_ENVS)))
    np.testing.assert_array_equal(evaluated.goal, np.broadcast_to(np.asarray(far), (N_ENVS, 2)))
    assert not np.isclose(trained.goal, np.asarray(far)).all(axis=-1).any()
    np.testing.assert_array_equal(evaluated.data.qpos, trained.data.qpos)
    np.testing.assert_array_equal(evaluated.dr.body_mass, trained.dr.body_mass)


def test_reacher_full_episode_sets_done_once() -> None:
    task = compiled("reacher")
    state, action = task.fresh(11), np.zeros((N_ENVS, task.env.spec.act_dim), np.float32)
    dones, successes = [], []
    for _ in range(task.env.episode_length):
        state = task.step(state, action)
        dones.append(state.done)
        successes.append(state.success)
    done = np.stack(dones, axis=1)
    assert (done[:, :-1] == 0).all() and done[:, -1].all()
    # Time at goal is the mean of the per-step success flags.
    time_at_goal = np.stack(successes, axis=1).mean(axis=1)
    assert ((time_at_goal >= 0.0) & (time_at_goal <= 1.0)).all()
    # Holding still (zero action = mid-range servo targets) keeps the physics finite.
    assert np.isfinite(state.data.qpos).all()


def _command(env: GoalReachEnv, q: np.ndarray) -> np.ndarray:
    """The normalized action whose servo targets are the joint angles q."""
    offset, scale = np.asarray(env.spec.action.offset), np.asarray(env.spec.action.scale)
    return ((q - offset) / scale).astype(np.float32)


def test_reacher_ik_oracle_reaches_every_goal() -> None:
    """Commanding the analytic inverse kinematics of the goal puts the fingertip on it, under
    training DR (delay, gains, noise): goals, frames and success agree with the robot."""
    task = compiled("reacher")
    m = task.env.mj_model
    l1, l2 = m.body("link2").pos[0], m.site("fingertip").pos[0]  # link lengths of the model
    state = task.fresh(12)
    g = np.asarray(state.goal)
    elbow = np.arccos(np.clip(((g**2).sum(1) - l1**2 - l2**2) / (2 * l1 * l2), -1, 1))
    shoulder = np.arctan2(g[:, 1], g[:, 0]) - np.arctan2(
        l2 * np.sin(elbow), l1 + l2 * np.cos(elbow)
    )
    shoulder = (shoulder + np.pi) % (2 * np.pi) - np.pi
    action = _command(task.env, np.stack([shoulder, elbow], axis=1))
    for _ in range(15):
        state = task.step(state, action)
    assert state.success.all(), np.linalg.norm(state.achieved_goal - state.goal, axis=1)


def test_arm_reach_ik_oracle_reaches_every_goal() -> None:
    """Numerical IK (plain MuJoCo on the host) for each sampled goal, commanded as servo targets:
    the goal box is reachable and the arm settles on it within the episode."""
    task = compiled("arm_reach")
    m = task.env.mj_model
    d = mujoco.MjData(m)
    site = m.site(task.env.config.goal_name).id
    state = task.fresh(13)
    targets = []
    for goal in np.asarray(state.goal):
        mujoco.mj_resetDataKeyframe(m, d, m.key(task.env.config.start.keyframe).id)
        for _ in range(200):
            mujoco.mj_kinematics(m, d)
            mujoco.mj_comPos(m, d)
            err = goal - d.site_xpos[site]
            jac = np.zeros((3, m.nv))
            mujoco.mj_jacSite(m, d, jac, None, site)
            step = jac.T @ np.linalg.solve(jac @ jac.T + 1e-4 * np.eye(3), err)
            d.qpos[:] = np.clip(d.qpos + 0.5 * step, *m.jnt_range.T)
        assert np.linalg.norm(err) < 1e-3, f"goal {goal} unreachable"
        targets.append(d.qpos.copy())
    action = _command(task.env, np.stack(targets))
    for _ in range(15):
        state = task.step(state, action)
    assert state.success.all(), np.linalg.norm(state.achieved_goal - state.goal, axis=1)


class _Replay:
    """A policy that returns the given actions in turn (what the controller calls of one)."""

    def __init__(self, spec: Any, actions: np.ndarray):
        self.spec, self._actions = spec, iter(actions)

    def act(self, obs: np.ndarray, goal: np.ndarray) -> np.ndarray:
        return next(self._actions)


def test_the_arm_s_command_filter_and_goal_ramp_run_the_same_in_the_env_and_the_runtime(
) -> None:
    """`arm_reach` is trained behind a low-pass on its commands (`ActionSpec.lowpass`), part of
    the robot the policy learned to drive, and each episode's commands ramp in from its start
    (`ActionSpec.goal_ramp`): the runtime's controller must send exactly the commands the env
    applied, from the same start and a new goal, and show the policy the same `last_action`.
    Were the runtime to skip the filter, a policy trained behind it would command 1 / 0.3 times
    the steps it learned; to skip the ramp, its first move would be one it never made."""
    import dataclasses

    from crl.runtime import robot_config
    from crl.runtime.controller import Controller
    from crl.runtime.messages import Observation
    from crl.runtime.robot_config import Safety
    from crl.train.evaluate import reset_episodes

    task = compiled("arm_reach")
    env, spec = task.env, task.env.spec
    assert spec.action.lowpass == env.config.action_lowpass == 0.3
    ramp = spec.action.goal_ramp
    assert ramp == env.config.goal_ramp == 25
    state = test_compile(lambda k: reset_episodes(env, k, N_ENVS))(jax.random.key(14))
    steps = ramp + 5
    actions = np.random.default_rng(3).uniform(-1, 1, (steps, N_ENVS, spec.act_dim))
    actions = actions.astype(np.float32)
    # The runtime alone: no rate limit, no soft start, so what it adds is the filter and the ramp.
    config = dataclasses.replace(robot_config.load("arm_reach"), safety=Safety(soft_start=0.0))
    controller = Controller(_Replay(spec, actions[:, 0]), config)
    joints = spec.action.joints
    qpos = np.asarray(state.data.qpos[0])[np.asarray(env._act_qadr)]
    first = Observation(1, 1, 0.0, joints, qpos, np.zeros(len(joints)))
    controller.start(first, 0.0)
    controller.set_goal(spec.goal.frame, np.asarray(state.goal[0], np.float64))
    unit = np.asarray(env._ctrl_unit)
    order = [config.command_joints.index(j) for j in joints]  # commands → spec order
    held = np.asarray(state.action_queue[0, 0]) * unit  # the command that held the start pose
    for k, action in enumerate(actions):
        last = np.asarray(state.action_queue[0, 0]) * unit
        seen = controller.policy_input()[spec.observation_slices()["last_action"]]
        np.testing.assert_allclose(seen, (last - spec.action.offset) / spec.action.scale,
                                   atol=1e-5)
        state = task.step(state, action)
        command = controller.tick(float(k))
        assert command.mode == ("soft_start" if k < ramp else "running")
        np.testing.assert_allclose(np.asarray(command.values)[order],
                                   np.asarray(state.action_queue[0, 0]) * unit, atol=1e-5)
        target = np.clip(spec.action.offset + np.asarray(spec.action.scale) * action[0],
                         spec.action.low, spec.action.high)
        filtered = last + 0.3 * (target - last)
        want = held + min((k + 1) / ramp, 1.0) * (filtered - held)
        np.testing.assert_allclose(np.asarray(command.values)[order], want, atol=1e-5)
        controller.observe(Observation(1, k + 2, k + 1.0, joints, qpos, np.zeros(len(joints))),
                           k + 1.0)


def test_training_episodes_are_not_ramped() -> None:
    """The goal ramp is the runtime's and the evaluations': a training episode's commands are
    the filtered ones, to the bit those of the same env without a ramp (the physics after them
    to float rounding: XLA compiles the two programs apart)."""
    import dataclasses

    task = compiled("arm_reach")
    unramped = make("arm_reach", dr="train",
                    action=dataclasses.replace(task.env.spec.action, goal_ramp=0))
    step = test_compile(jax.vmap(unramped.step))
    state = task.fresh(5)
    assert not np.asarray(state.ramp).any()
    for k in range(3):
        action = task.actions(k)
        ramped, plain = host_numpy(task.step(state, action)), host_numpy(step(state, action))
        np.testing.assert_array_equal(ramped.action_queue, plain.action_queue)
        np.testing.assert_allclose(ramped.data.qpos, plain.data.qpos, rtol=1e-6, atol=1e-7)
        state = task.step(state, action)


def test_an_env_is_built_behind_the_filter_a_policy_was_trained_behind() -> None:
    """A run or an export is evaluated behind the filter and goal ramp in its own spec (none:
    one trained before the arm had them), not the task's current ones; the paper's tasks have
    neither."""
    import dataclasses

    arm = make("arm_reach", dr="off")
    assert (arm.spec.action.lowpass, arm.spec.action.goal_ramp) == (0.3, 25)
    before = dataclasses.replace(arm.spec.action, lowpass=1.0, goal_ramp=0)
    old = make("arm_reach", dr="off", action=before)
    assert (old.spec.action.lowpass, old.spec.action.goal_ramp) == (1.0, 0)
    assert (old.config.action_lowpass, old.config.goal_ramp) == (1.0, 0)
    ant = make("paper_ant", dr="off")
    assert make("paper_ant", dr="off", action=ant.spec.action).spec.action.lowpass == 1.0
    with pytest.raises(ValueError, match="no command filter or goal ramp"):
        make("paper_ant", dr="off", action=dataclasses.replace(ant.spec.action, lowpass=0.5))
    with pytest.raises(ValueError, match="no command filter or goal ramp"):
        make("paper_ant", dr="off", action=dataclasses.replace(ant.spec.action, goal_ramp=3))
