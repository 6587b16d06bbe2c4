"""The paper family of tasks (sim/tasks/paper*.py): names, the paper's layouts, goal sets, start
cells, sizes and dynamics; every task resets and its step traces; one maze of each robot steps,
resets and terminates compiled; one task trains.

Compiling a rollout costs CPU time on the 2-core CPU (measured, xla_backend_optimization_level
0): ~17 s for the ant's U4-maze, ~29 s for the humanoid's U-maze; training the open-floor ant a
few iterations ~65 s. So only one maze per robot is compiled (the other tasks of that robot
differ from it in walls, goals and starts, all checked without compiling a step) and one task
is trained.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import mujoco
import numpy as np
import pytest

from crl.sim import maze, tasks
from crl.sim.config import OBSERVATION_FIELDS
from crl.sim.env import GoalReachEnv, compiler_options
from crl.sim.tasks import paper_ant, paper_arm, paper_humanoid
from crl.sim.tasks.paper import MazeEnv

TEST_COMPILER_OPTIONS = {**compiler_options(), "xla_backend_optimization_level": 0}

# The paper's ten depth-scaling envs (its appendix B.1), plus JaxGCRL's open-floor ant and ant
# U-maze, which its code also defines.
PAPER_ENV_IDS = (
    "ant", "ant_u_maze", "ant_big_maze", "ant_u4_maze", "ant_u5_maze", "ant_hardest_maze",
    "humanoid", "humanoid_u_maze", "humanoid_big_maze",
    "arm_push_easy", "arm_push_hard", "arm_binpick_hard",
)  # fmt: skip

# The paper's layouts (scaling-crl envs/ant_maze.py, envs/humanoid_maze.py), transcribed anew:
# 1 wall, 0 free, R start, G goal; row i is world x = i * cell size, column j is y.
PAPER_ROWS = {
    "u_maze": ("11111", "1RGG1", "111G1", "1GGG1", "11111"),
    "u_maze_eval": ("11111", "1R001", "11101", "1GGG1", "11111"),
    "big_maze": ("11111111", "1RG11GG1", "1GG1GGG1", "11GGG111", "1GG1GGG1", "1G1GG1G1",
                 "1GGG1GG1", "11111111"),
    "ant_big_maze_eval": ("11111111", "1R011GG1", "100100G1", "11000111", "10010001",
                          "101G01G1", "10GG1GG1", "11111111"),
    "humanoid_big_maze_eval": ("11111111", "1R011GG1", "10010GG1", "11000111", "10010001",
                               "101G01G1", "10GG1GG1", "11111111"),
    "u4_maze": ("11111", "1GGG1", "1R1G1", "111G1", "1G1G1", "1GGG1", "11111"),
    "u4_maze_eval": ("11111", "10001", "1R101", "11101", "1G101", "1GGG1", "11111"),
    "u5_maze": ("11111111", "1GGGGGG1", "1R1111G1", "111111G1", "1G1111G1", "1GGGGGG1",
                "11111111"),
    "u5_maze_eval": ("11111111", "10000001", "1R111101", "11111101", "1G1111G1", "1GGGGGG1",
                     "11111111"),
    "hardest_maze": ("111111111111", "1RGGG1GGGGG1", "1G11G1G1G1G1", "1GGGGGG1GGG1",
                     "1G1111G111G1", "1GG1G1GGGGG1", "11G1G1G1G111", "1GG1GGG1GGG1",
                     "111111111111"),
}  # fmt: skip
# task -> (training layout, evaluation layout, cell size in m)
PAPER_MAZES = {
    "paper_ant_u_maze": ("u_maze", "u_maze_eval", 4.0),
    "paper_ant_big_maze": ("big_maze", "ant_big_maze_eval", 4.0),
    "paper_ant_u4_maze": ("u4_maze", "u4_maze_eval", 4.0),
    "paper_ant_u5_maze": ("u5_maze", "u5_maze_eval", 4.0),
    "paper_ant_hardest_maze": ("hardest_maze", "hardest_maze", 4.0),
    "paper_humanoid_u_maze": ("u_maze", "u_maze_eval", 2.0),
    "paper_humanoid_big_maze": ("big_maze", "humanoid_big_maze_eval", 2.0),
}
ANT_FIELDS = {"qpos": 15, "qvel": 14}
HUMANOID_FIELDS = {"qpos": 26, "qvel": 25, "cinert": 120, "cvel": 72, "qfrc_actuator": 25}
# The arm's 17 (scaling-crl envs/manipulation/arm_push_easy.py `_get_obs`): cube xyz, 7 joint
# angles, end effector (link7) position and velocity, finger gap. tests/test_paper_arm.py has
# the arm's own checks.
ARM_FIELDS = {"goal_pos": 3, "obs_joint_pos": 7, "body_pos": 3, "body_lin_vel": 3, "body_gap": 1}


@functools.cache
def env_of(task: str) -> GoalReachEnv:
    return tasks.make(task, dr="off")


def maze_env_of(task: str) -> MazeEnv:
    env = env_of(task)
    assert isinstance(env, MazeEnv)
    return env


def _cells(rows: tuple[str, ...], symbol: str, size: float) -> set[tuple[float, float]]:
    return {(i * size, j * size) for i, row in enumerate(rows) for j, c in enumerate(row)
            if c == symbol}


def _points(samples: Any) -> set[tuple[float, ...]]:
    return {tuple(p) for p in np.asarray(samples, np.float64).round(4)}


def _draws(fn: Any, n: int = 512, seed: int = 0) -> Any:
    """`fn` over n keys; op by op (the few small kernels compile once, for every task)."""
    keys = jax.random.split(jax.random.key(seed), n)
    return jax.tree.map(np.asarray, jax.vmap(fn)(keys))


# ----------------------------------------------------------------------------- names, sizes


def test_families_name_the_papers_tasks_apart_from_the_deployment_ones() -> None:
    assert tuple(tasks.PAPER_TASKS) == tuple(f"paper_{e}" for e in PAPER_ENV_IDS)
    assert tasks.DEPLOYMENT_TASKS + tuple(tasks.PAPER_TASKS) == tasks.TASKS
    assert not set(tasks.DEPLOYMENT_TASKS) & set(tasks.PAPER_TASKS)
    for task in tasks.PAPER_TASKS:
        env = env_of(task)
        assert env.config.name == env.spec.task == task
        # The paper's ant and humanoid have torque motors, its arm position servos.
        assert env.spec.action.kind == ("position" if "arm" in task else "effort")


@pytest.mark.parametrize("task", list(tasks.PAPER_TASKS))
def test_sizes_rates_and_bands_are_the_papers(task: str) -> None:
    env, humanoid = env_of(task), "humanoid" in task
    c, spec, m = env.config, env.spec, env.mj_model
    if "arm" in task:  # scaling-crl envs/manipulation/arm_envs.py, arm_push_easy.py
        assert {f.name: f.size for f in spec.observation} == ARM_FIELDS
        assert list(c.observation) == list(ARM_FIELDS) and spec.obs_dim == 17
        assert not any(OBSERVATION_FIELDS[f].sensed for f in ARM_FIELDS)
        assert spec.goal_dim == 3 and c.goal_name == "cube" and spec.act_dim == 5
        assert c.episode_length == 1000 and c.success_radius == 0.1
        assert c.healthy_z_range is None  # the arm cannot fall
        np.testing.assert_allclose(env._substeps * m.opt.timestep, 0.05)  # 2 ms x 25
        assert (m.opt.iterations, m.opt.ls_iterations) == (6, 12)
        return
    fields = HUMANOID_FIELDS if humanoid else ANT_FIELDS
    assert {f.name: f.size for f in spec.observation} == fields
    assert list(c.observation) == list(fields)
    assert spec.obs_dim == (268 if humanoid else 29)  # the paper's Table 1 "Dim"
    assert not any(OBSERVATION_FIELDS[f].sensed for f in fields)  # exact simulator state
    assert spec.goal_dim == (3 if humanoid else 2) and c.goal_name == "torso"
    assert c.episode_length == 1000 and c.success_radius == 0.5
    assert c.healthy_z_range == ((1.0, 2.0) if humanoid else (0.2, 1.0))
    # The paper's control period: 15 ms (3 ms x 5) for the humanoid, 50 ms (10 ms x 5) for the ant.
    np.testing.assert_allclose(env._substeps * m.opt.timestep, 0.015 if humanoid else 0.05)
    assert m.opt.integrator == mujoco.mjtIntegrator.mjINT_EULER
    assert m.opt.iterations == 1 and m.opt.ls_iterations == 4
    if humanoid:
        assert spec.act_dim == 17
        gears = dict(zip(spec.action.joints, np.asarray(spec.action.scale) / 0.4, strict=True))
        expected = {"right_hip_y": 300, "left_knee": 200, "abdomen_z": 100, "left_elbow": 25}
        assert {j: gears[j] for j in expected} == pytest.approx(expected)
    else:
        assert spec.act_dim == 8
        np.testing.assert_allclose(spec.action.scale, 150.0)  # gear 150, ctrl in [-1, 1]
        np.testing.assert_allclose(spec.action.offset, 0.0)


# -------------------------------------------------------------------- layouts, goals, starts


@pytest.mark.parametrize("task", list(PAPER_MAZES))
def test_maze_layouts_goal_sets_and_walls_are_the_papers(task: str) -> None:
    env = maze_env_of(task)
    train_name, eval_name, size = PAPER_MAZES[task]
    rows, eval_rows = PAPER_ROWS[train_name], PAPER_ROWS[eval_name]
    assert env.layout is not None and env.eval_layout is not None
    assert ["".join(r) for r in env.layout.cells] == list(rows)
    assert ["".join(r) for r in env.eval_layout.cells] == list(eval_rows)
    assert env.layout.cell_size == env.eval_layout.cell_size == size
    # One wall box per "1" cell, filling it, 0.5 x cell size tall, and no other box.
    m = env.mj_model
    boxes = [g for g in range(m.ngeom) if m.geom_type[g] == mujoco.mjtGeom.mjGEOM_BOX]
    assert {tuple(m.geom_pos[g][:2].round(4)) for g in boxes} == _cells(rows, "1", size)
    for g in boxes:
        np.testing.assert_allclose(m.geom_size[g], [size / 2, size / 2, size / 4])
    # Goals: every training goal cell's centre, and nothing else (at torso height 1.25 m for the
    # humanoid); the evaluation goals likewise on the eval layout.
    goals, eval_goals = _draws(env.sample_goal), _draws(env.sample_eval_goal)
    z = (1.25,) if "humanoid" in task else ()
    assert _points(goals) == {(*c, *z) for c in _cells(rows, "G", size)}
    assert _points(eval_goals) == {(*c, *z) for c in _cells(eval_rows, "G", size)}
    low, high = env.spec.goal.low, env.spec.goal.high
    assert (goals >= np.asarray(low) - 1e-6).all() and (goals <= np.asarray(high) + 1e-6).all()


@pytest.mark.parametrize("task", list(tasks.PAPER_TASKS))
def test_starts_are_the_papers(task: str) -> None:
    env = env_of(task)
    qpos, qvel = _draws(env.sample_start, n=256)
    if "arm" in task:  # the cube in its start region, the arm in the paper's pose, at rest
        (cx, cy), half, _, _ = paper_arm.LAYOUTS[task]
        xy = qpos[:, :2] - np.asarray((cx, cy))
        assert (np.abs(xy) <= half + 1e-6).all() and np.abs(xy).max() > 0.9 * half
        home = (1.571, 0.742, 0.0, -1.571, 0.0, 3.054, 1.449, 0.04, 0.04)
        np.testing.assert_allclose(qpos[:, 14:], np.broadcast_to(home, (256, 9)), atol=1e-6)
        assert (qvel == 0).all()
        return
    train_name = PAPER_MAZES.get(task, ("", "", 0.0))[0]
    start = (0.0, 0.0)
    if train_name:
        (start,) = _cells(PAPER_ROWS[train_name], "R", PAPER_MAZES[task][2])
    xy = qpos[:, :2] - np.asarray(start)
    if "humanoid" in task:  # the paper's humanoid starts every episode from the same pose
        assert (xy == 0).all() and (qvel == 0).all()
        assert (qpos == qpos[0]).all() and qpos[0, 2] == pytest.approx(1.4)
        return
    # The ant: the paper's pose (torso at 0.55 m, ankles at ±1 rad), joints ±0.1 rad, velocities
    # N(0, 0.1²), torso xy ±0.1 m around the start cell's centre.
    home = np.array([0.55, 1, 0, 0, 0, 0, 1, 0, -1, 0, -1, 0, 1], np.float32)
    assert (np.abs(xy) <= 0.1 + 1e-6).all() and np.abs(xy).max() > 0.09
    np.testing.assert_allclose(qpos[:, 2:7], np.broadcast_to(home[:5], (256, 5)), atol=1e-6)
    joints = qpos[:, 7:] - home[5:]
    assert (np.abs(joints) <= 0.1 + 1e-6).all() and np.abs(joints).max() > 0.09
    assert 0.08 < qvel.std() < 0.12


def test_open_floor_goals_are_the_papers() -> None:
    ant = _draws(env_of("paper_ant").sample_goal)
    np.testing.assert_allclose(np.linalg.norm(ant, axis=1), 10.0, rtol=1e-5)
    humanoid = _draws(env_of("paper_humanoid").sample_goal, n=2048)
    r = np.linalg.norm(humanoid[:, :2], axis=1)
    assert ((r >= 1.0 - 1e-5) & (r <= 5.0 + 1e-5)).all()
    # The distance is uniform (as the paper's; not uniform over the annulus' area).
    assert abs(np.median(r) - 3.0) < 0.15
    np.testing.assert_allclose(humanoid[:, 2], 1.25)


# --------------------------------------------------------------------------- reset and step


@pytest.mark.parametrize("task", list(tasks.PAPER_TASKS))
def test_reset_and_step_trace_in_shape(task: str) -> None:
    """Each task's reset and step, traced (not compiled: the rollouts below run one maze of each
    robot); the start states themselves are the samplers' above."""
    env = env_of(task)
    state = jax.eval_shape(env.reset, jax.random.key(1))
    assert state.obs.shape == (env.spec.obs_dim,) and state.goal.shape == (env.spec.goal_dim,)
    action = jax.ShapeDtypeStruct((env.spec.act_dim,), jnp.float32)
    nxt = jax.eval_shape(env.step, state, action)
    assert nxt.obs.shape == state.obs.shape and nxt.goal.shape == state.goal.shape
    assert nxt.done.shape == () and nxt.data.qpos.shape == (env.mj_model.nq,)


def _host(x: jax.Array) -> np.ndarray:
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    return np.asarray(x)


def _rollout(
    env: MazeEnv, steps: int, seed: int, *, auto_reset: bool = True
) -> tuple[Any, Any, Any]:
    """(first states, every state after a step (before any auto-reset), actions), 2 envs."""

    def run(key: jax.Array, actions: jax.Array) -> tuple[Any, Any]:
        first = env.reset(key)

        def body(state: Any, action: jax.Array) -> tuple[Any, Any]:
            stepped = env.step(state, action)
            return (env.reset_if_done(stepped) if auto_reset else stepped), stepped

        return first, jax.lax.scan(body, first, actions)[1]

    rng = np.random.default_rng(seed)
    actions = jnp.asarray(rng.uniform(-1, 1, (2, steps, env.spec.act_dim)), jnp.float32)
    fn = jax.jit(jax.vmap(run), compiler_options=TEST_COMPILER_OPTIONS)
    first, stepped = fn(jax.random.split(jax.random.key(seed), 2), actions)
    return jax.tree.map(_host, first), jax.tree.map(_host, stepped), np.asarray(actions)


def test_ant_maze_steps_resets_and_observes_qpos_and_qvel() -> None:
    base = paper_ant.CONFIGS["paper_ant_u4_maze"]
    layout, eval_layout = paper_ant.MAZES["paper_ant_u4_maze"]
    # 12-step episodes, so the rollout also crosses auto-resets.
    env = MazeEnv(base.replace(episode_length=12), "off", layout=layout, eval_layout=eval_layout)
    first, stepped, _ = _rollout(env, 30, seed=3)
    for states in (first, stepped):
        qpos, qvel = states.data.qpos, states.data.qvel
        np.testing.assert_array_equal(states.obs, np.concatenate([qpos, qvel], axis=-1))
        np.testing.assert_array_equal(states.achieved_goal, qpos[..., :2])
    assert np.isfinite(stepped.obs).all()
    # Every episode ends at its 12th step, or earlier where the torso left [0.2, 1.0] m; the
    # state after an end is a fresh episode's first step.
    z = stepped.data.qpos[..., 2]
    assert stepped.done.sum() >= 4
    for i, k in zip(*np.nonzero(stepped.done), strict=True):
        assert stepped.t[i, k] == 12 or not 0.2 <= z[i, k] <= 1.0
        if k + 1 < 30:
            assert stepped.t[i, k + 1] == 1
    goals = _points(stepped.goal.reshape(-1, 2))
    assert len(goals) > 1 and goals <= _cells(PAPER_ROWS["u4_maze"], "G", 4.0)


@pytest.mark.slow
def test_humanoid_maze_shows_its_goal_observes_268_values_and_falls() -> None:
    env = maze_env_of("paper_humanoid_u_maze")
    # No auto-reset in the graph (the ant's rollout covers it): ~29 s of compile on the CPU.
    first, stepped, actions = _rollout(env, 60, seed=5, auto_reset=False)
    m = env.mj_model
    target = [m.joint(j).qposadr[0] for j in paper_humanoid.TARGET_JOINTS]
    # The paper's goal marker sits on the goal: its slide joints hold the goal's xy.
    np.testing.assert_array_equal(first.data.qpos[:, target], first.goal[:, :2])
    np.testing.assert_array_equal(stepped.data.qpos[:, :, target], stepped.goal[..., :2])
    sizes = list(HUMANOID_FIELDS.values())
    ends = np.cumsum(sizes)
    qpos, qvel, cinert, cvel, qfrc = np.split(stepped.obs, ends[:-1], axis=-1)
    np.testing.assert_array_equal(qpos, stepped.data.qpos)
    np.testing.assert_array_equal(qvel, stepped.data.qvel)
    np.testing.assert_array_equal(first.obs[:, :26], first.data.qpos)
    assert np.isfinite(stepped.obs).all()
    # cinert: every body's mass is there (the last of its 10 values); cvel moves once it steps.
    masses = cinert.reshape(2, 60, 12, 10)[..., 9]
    np.testing.assert_allclose(masses[0, 0], m.body_mass[1:], rtol=1e-5)
    assert np.abs(first.obs[:, 171:243]).max() == 0 and np.abs(cvel[:, 0]).max() > 0.01
    # qfrc_actuator: a motor's torque, gear x ctrl, on its joint's dof; nothing elsewhere.
    dof = [m.jnt_dofadr[m.actuator_trnid[a, 0]] for a in range(m.nu)]
    torque = np.clip(actions, -1, 1) * 0.4 * m.actuator_gear[:, 0]
    np.testing.assert_allclose(qfrc[:, 0][:, dof], torque[:, 0], rtol=1e-4, atol=1e-3)
    assert (np.delete(qfrc[:, 0], dof, axis=-1) == 0).all()
    # Random torques topple it: the step that takes the torso out of the band [1.0, 2.0] m
    # ends the episode, long before its 1000 steps.
    z = stepped.data.qpos[..., 2]
    assert stepped.done.any(axis=1).all()
    end = stepped.done.argmax(axis=1)
    for i, k in enumerate(end):
        assert stepped.t[i, k] == k + 1 and not 1.0 <= z[i, k] <= 2.0
        assert ((z[i, :k] >= 1.0) & (z[i, :k] <= 2.0)).all()


# --------------------------------------------------------------------------------- training


@pytest.mark.slow
def test_the_paper_ant_trains_a_few_iterations(
    tmp_path: Path, tiny_train_config: Callable[[str], Any]
) -> None:
    from crl.train.trainer import train

    config = tiny_train_config("paper_ant")
    result = train(config, tmp_path / "run", progress=False)
    assert result.env_steps == 48
    spec = json.loads((tmp_path / "run" / "spec.json").read_text())
    assert spec["task"] == "paper_ant"
    assert sum(f["size"] for f in spec["observation"]) == 29
    final = result.evaluations[-1]["train"]
    assert np.isfinite(final["final_distance_median"])


def test_deployment_tasks_are_unchanged_by_the_paper_family() -> None:
    """The deployment ant keeps its servos and measurable fields, and its maze the U-maze."""
    ant = tasks.make("ant_u_maze", dr="off")
    assert ant.spec.action.kind == "position" and ant.spec.obs_dim == 29
    assert not {"qpos", "qvel", "cinert", "cvel", "qfrc_actuator"} & set(ant.config.observation)
    goals = _cells(PAPER_ROWS["u_maze"], "G", maze.U_MAZE.cell_size)
    assert _points(_draws(ant.sample_goal)) == goals
