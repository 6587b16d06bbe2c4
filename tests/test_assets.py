"""Robot models (sim/assets/*.xml) and maze layouts (sim/maze.py).

Every model must load in MuJoCo and MJX, step finitely under jit, agree with MuJoCo for a few
steps, carry the names the envs look up, and behave as its header promises (reach, holding a
pose, standing, walking). The maze must put a wall exactly where its layout says, and nowhere
else, in the same world coordinates `cell_center` reports.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import mujoco
import numpy as np
import pytest

REPO = Path(__file__).parents[1]
ASSETS = REPO / "sim" / "assets"
MODELS = ("reacher", "arm7", "ant", "humanoid")

ANT_JOINTS = tuple(f"{kind}_{k}" for k in range(1, 5) for kind in ("hip", "ankle"))
HUMANOID_JOINTS = (
    "abdomen_z", "abdomen_y", "abdomen_x",
    "hip_x_right", "hip_z_right", "hip_y_right", "knee_right",
    "hip_x_left", "hip_z_left", "hip_y_left", "knee_left",
    "shoulder1_right", "shoulder2_right", "elbow_right",
    "shoulder1_left", "shoulder2_left", "elbow_left",
)  # fmt: skip
ARM_JOINTS = tuple(f"joint{k}" for k in range(1, 8))

# name lists per model: joints (actuated ones, in actuator order), extra joints, sites, bodies,
# cameras, and whether the actuators are position servos (else motors).
NAMES: dict[str, dict[str, Any]] = {
    "reacher": dict(
        actuated=("shoulder", "elbow"), extra=(), sites=("fingertip",),
        bodies=("link1", "link2"), cameras=("top",), position=True,
    ),
    "arm7": dict(
        actuated=ARM_JOINTS, extra=(), sites=("ee",),
        bodies=("upper_arm", "forearm", "wrist", "hand"), cameras=("front",), position=True,
    ),
    "ant": dict(
        actuated=ANT_JOINTS, extra=("root",), sites=("torso",),
        bodies=("torso",), cameras=("track",), position=True,
    ),
    "humanoid": dict(
        actuated=HUMANOID_JOINTS, extra=("root",), sites=("torso",),
        bodies=("torso", "pelvis"), cameras=("track",), position=False,
    ),
}  # fmt: skip


def _load_maze() -> ModuleType:
    """crl.sim.maze when the package is installed, else sim/maze.py straight from the tree."""
    try:
        from crl.sim import maze

        return maze
    except ImportError:
        path = REPO / "sim" / "maze.py"
        spec = importlib.util.spec_from_file_location("_crl_sim_maze_from_tree", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # dataclasses look their module up while defining
        spec.loader.exec_module(module)
        return module


maze = _load_maze()


def _model(name: str) -> mujoco.MjModel:
    return mujoco.MjModel.from_xml_path(str(ASSETS / f"{name}.xml"))


def _maze_model(layout: Any) -> mujoco.MjModel:
    spec = mujoco.MjSpec.from_file(str(ASSETS / "ant.xml"))
    maze.add_maze_walls(spec, layout)
    return spec.compile()


def _servo_hold_ctrl(m: mujoco.MjModel, qpos: np.ndarray) -> np.ndarray:
    """Position targets equal to the current joint angles (what 'hold still' means)."""
    adr = m.jnt_qposadr[m.actuator_trnid[:, 0]]
    return np.clip(qpos[adr], m.actuator_ctrlrange[:, 0], m.actuator_ctrlrange[:, 1])


def _mjx_step_fn(mx: Any, dx: Any) -> Callable[[Any, Any], Any]:
    """jit(mjx.step) compiled for these shapes.

    On CPU it is compiled without XLA's fusion emitters (which make MJX kinematics of long
    chains orders of magnitude slower on this jaxlib) and without backend optimization, which
    cuts compile time about 2x; a test needs one step to be right, not fast.
    """
    import jax
    from mujoco import mjx

    lowered = jax.jit(mjx.step).lower(mx, dx)
    if jax.default_backend() == "cpu":
        try:
            return lowered.compile(
                {"xla_cpu_use_fusion_emitters": False, "xla_backend_optimization_level": "0"}
            )
        except Exception:  # option names come and go between jaxlib versions
            pass
    return lowered.compile()


# ---------------------------------------------------------------------------------------------
# Loading, names, actuators, contacts


@pytest.mark.parametrize("name", MODELS)
def test_loads_with_expected_names(name: str) -> None:
    m = _model(name)
    want = NAMES[name]
    for joint in (*want["actuated"], *want["extra"]):
        assert m.joint(joint).id >= 0
    for site in want["sites"]:
        assert m.site(site).id >= 0
    for body in want["bodies"]:
        assert m.body(body).id >= 0
    for cam in want["cameras"]:
        assert m.camera(cam).id >= 0
    assert m.nlight >= 1
    # one actuator per actuated joint, named after it, in the listed order
    assert m.nu == len(want["actuated"])
    for i, joint in enumerate(want["actuated"]):
        assert m.actuator(i).name == joint
        assert m.joint(m.actuator_trnid[i, 0]).name == joint
    if "root" in want["extra"]:
        assert m.jnt_type[m.joint("root").id] == mujoco.mjtJoint.mjJNT_FREE
        assert m.body(m.jnt_bodyid[m.joint("root").id]).name == "torso"


@pytest.mark.parametrize("name", MODELS)
def test_actuator_kind_and_ranges(name: str) -> None:
    m = _model(name)
    joint_ids = m.actuator_trnid[:, 0]
    if NAMES[name]["position"]:
        kp = m.actuator_gainprm[:, 0]
        assert (m.actuator_biastype == mujoco.mjtBias.mjBIAS_AFFINE).all()
        np.testing.assert_allclose(m.actuator_biasprm[:, 1], -kp)  # force = kp (ctrl - q) ...
        assert (m.actuator_biasprm[:, 2] < 0).all()  # ... - kv qdot, with kv > 0
        np.testing.assert_allclose(m.actuator_ctrlrange, m.jnt_range[joint_ids])
    else:
        assert (m.actuator_biastype == mujoco.mjtBias.mjBIAS_NONE).all()
        assert (m.actuator_gear[:, 0] > 0).all()
        np.testing.assert_allclose(m.actuator_ctrlrange, np.tile([-1.0, 1.0], (m.nu, 1)))
    assert m.jnt_limited[joint_ids].all()
    # qpos0 (the reset pose) must respect every joint range
    adr = m.jnt_qposadr[joint_ids]
    assert (m.qpos0[adr] >= m.jnt_range[joint_ids, 0]).all()
    assert (m.qpos0[adr] <= m.jnt_range[joint_ids, 1]).all()


def _collidable_pairs(m: mujoco.MjModel) -> set[tuple[str, str]]:
    """Geom pairs whose contype/conaffinity let them collide (MuJoCo's own filter, minus
    same-body pairs); sorted names."""
    pairs = set()
    for g1 in range(m.ngeom):
        for g2 in range(g1 + 1, m.ngeom):
            if m.geom_bodyid[g1] == m.geom_bodyid[g2]:
                continue
            mask = (m.geom_contype[g1] & m.geom_conaffinity[g2]) | (
                m.geom_contype[g2] & m.geom_conaffinity[g1]
            )
            if mask:
                pairs.add(tuple(sorted((m.geom(g1).name, m.geom(g2).name))))
    return pairs


def test_contacts_are_only_the_intended_pairs() -> None:
    assert _collidable_pairs(_model("reacher")) == set()
    assert _collidable_pairs(_model("arm7")) == set()
    ant = {tuple(sorted(("floor", f"foot_{k}"))) for k in range(1, 5)}
    assert _collidable_pairs(_model("ant")) == ant
    humanoid = {
        tuple(sorted(("floor", f"{side}_{part}")))
        for side in ("left", "right")
        for part in ("shin", "foot")
    }
    assert _collidable_pairs(_model("humanoid")) == humanoid


# ---------------------------------------------------------------------------------------------
# MJX


@pytest.mark.parametrize("name", MODELS)
def test_mjx_step_is_finite_and_matches_mujoco(name: str) -> None:
    import jax.numpy as jp
    from mujoco import mjx

    m = _model(name)
    ctrl = _servo_hold_ctrl(m, m.qpos0) if NAMES[name]["position"] else np.zeros(m.nu)
    mx = mjx.put_model(m)
    dx = mjx.make_data(m).replace(ctrl=jp.asarray(ctrl, dtype=jp.float32))
    step = _mjx_step_fn(mx, dx)

    d = mujoco.MjData(m)
    d.ctrl[:] = ctrl
    for _ in range(10):
        dx = step(mx, dx)
        mujoco.mj_step(m, d)
    qpos, qvel = np.asarray(dx.qpos), np.asarray(dx.qvel)
    assert np.isfinite(qpos).all() and np.isfinite(qvel).all()
    np.testing.assert_allclose(qpos, d.qpos, atol=2e-3)


def test_mjx_steps_the_maze() -> None:
    import jax.numpy as jp
    from mujoco import mjx

    m = _maze_model(maze.U_MAZE)
    mx = mjx.put_model(m)
    dx = mjx.make_data(m)
    step = _mjx_step_fn(mx, dx)
    for _ in range(5):
        dx = step(mx, dx)
    assert bool(jp.isfinite(dx.qpos).all())
    # the ant starts in the start cell, clear of the walls
    np.testing.assert_allclose(np.asarray(dx.qpos[:2]), maze.U_MAZE.cell_center(1, 1), atol=1e-3)


# ---------------------------------------------------------------------------------------------
# Behaviour in plain MuJoCo


def test_reacher_reach_matches_link_lengths() -> None:
    m = _model("reacher")
    d = mujoco.MjData(m)
    base = m.body("base").pos  # the base body is fixed to the world

    def tip(q: tuple[float, float]) -> np.ndarray:
        d.qpos[:] = q
        mujoco.mj_kinematics(m, d)
        return d.site("fingertip").xpos - base

    for theta in (0.0, 1.0, -2.5):
        stretched = tip((theta, 0.0))
        np.testing.assert_allclose(stretched[:2], 0.21 * np.array([np.cos(theta), np.sin(theta)]))
        assert abs(stretched[2]) < 1e-9  # planar
    inner = np.linalg.norm(tip((0.0, m.jnt_range[1, 1]))[:2])
    np.testing.assert_allclose(inner, np.sqrt(0.1**2 + 0.11**2 + 2 * 0.1 * 0.11 * np.cos(2.6)))
    rng = np.random.default_rng(0)
    radii = [
        np.linalg.norm(tip(tuple(rng.uniform(m.jnt_range[:, 0], m.jnt_range[:, 1])))[:2])
        for _ in range(500)
    ]
    assert max(radii) <= 0.21 + 1e-9 and min(radii) >= inner - 1e-9


def test_reacher_servo_settles() -> None:
    m = _model("reacher")
    d = mujoco.MjData(m)
    d.ctrl[:] = (1.5, -2.0)
    for _ in range(int(0.3 / m.opt.timestep)):
        mujoco.mj_step(m, d)
    np.testing.assert_allclose(d.qpos, d.ctrl, atol=0.02)
    assert np.abs(d.qvel).max() < 0.2


def test_arm7_holds_pose_and_follows_a_new_target() -> None:
    m = _model("arm7")
    d = mujoco.MjData(m)
    key = m.key("home").id
    mujoco.mj_resetDataKeyframe(m, d, key)
    np.testing.assert_allclose(d.qpos, m.qpos0)  # the reset pose is `home`
    mujoco.mj_forward(m, d)
    ee0 = d.site("ee").xpos.copy()
    for _ in range(int(2.0 / m.opt.timestep)):
        mujoco.mj_step(m, d)
    assert np.abs(d.qpos - m.key_qpos[key]).max() < 1e-3
    assert np.linalg.norm(d.site("ee").xpos - ee0) < 1e-3

    target = np.clip(
        m.key_qpos[key] + np.array([0.6, 0.4, -0.5, 0.5, 0.8, -0.6, 1.0]),
        m.actuator_ctrlrange[:, 0],
        m.actuator_ctrlrange[:, 1],
    )
    d.ctrl[:] = target
    for _ in range(int(1.0 / m.opt.timestep)):
        mujoco.mj_step(m, d)
        assert np.abs(d.qvel).max() < 20.0  # follows without blowing up
    np.testing.assert_allclose(d.qpos, target, atol=5e-3)


def test_arm7_reach() -> None:
    """The ee site reaches about 0.85 m from the shoulder (joint 2 axis, 0.33 m up)."""
    m = _model("arm7")
    d = mujoco.MjData(m)
    shoulder = np.array([0.0, 0.0, 0.33])
    rng = np.random.default_rng(0)
    reach = []
    for _ in range(3000):
        d.qpos[:] = rng.uniform(m.jnt_range[:, 0], m.jnt_range[:, 1])
        mujoco.mj_kinematics(m, d)
        reach.append(np.linalg.norm(d.site("ee").xpos - shoulder))
    assert 0.8 < max(reach) < 0.87


def test_ant_stands_on_zero_targets() -> None:
    m = _model("ant")
    d = mujoco.MjData(m)
    for _ in range(int(2.0 / m.opt.timestep)):
        mujoco.mj_step(m, d)
    assert np.isfinite(d.qpos).all()
    assert 0.4 < d.qpos[2] < 0.6
    assert d.body("torso").xmat[8] > 0.99  # upright
    assert np.abs(d.qvel).max() < 0.05  # at rest
    feet = {m.geom(f"foot_{k}").id for k in range(1, 5)}
    assert {int(g) for c in d.contact[: d.ncon] for g in c.geom} - {m.geom("floor").id} == feet


def test_ant_walks_with_an_open_loop_trot() -> None:
    """The servos are fast and strong enough for a gait: a 1 Hz trot moves the torso > 1.5 m
    along +x in 6 s (a policy does better; this guards the gains against regressions)."""
    m = _model("ant")
    d = mujoco.MjData(m)
    substeps = round(0.05 / m.opt.timestep)
    push = (1, 1, -1, -1)  # hip direction that sweeps each foot toward -x
    for k in range(int(6.0 / 0.05)):
        phase = 2 * np.pi * k * 0.05
        for leg in range(4):
            pair = 1 if leg in (0, 2) else -1  # diagonal pairs in antiphase
            d.ctrl[2 * leg] = 0.45 * push[leg] * pair * np.sin(phase)
            d.ctrl[2 * leg + 1] = -0.35 * max(0.0, -pair * np.cos(phase))  # lift in swing
        for _ in range(substeps):
            mujoco.mj_step(m, d)
    assert np.isfinite(d.qpos).all()
    assert d.qpos[0] > 1.5
    assert d.qpos[2] > 0.3


def test_humanoid_steps_without_nan() -> None:
    m = _model("humanoid")
    d = mujoco.MjData(m)
    rng = np.random.default_rng(0)
    for k in range(int(1.0 / m.opt.timestep)):
        if k % 3 == 0:
            d.ctrl[:] = rng.uniform(-1.0, 1.0, m.nu)
        mujoco.mj_step(m, d)
    assert np.isfinite(d.qpos).all() and np.isfinite(d.qvel).all()
    mujoco.mj_resetData(m, d)
    for _ in range(int(0.2 / m.opt.timestep)):  # feet start just above the floor
        mujoco.mj_step(m, d)
    assert d.qpos[2] > 1.2


# ---------------------------------------------------------------------------------------------
# Maze


def test_paper_layouts() -> None:
    u = maze.U_MAZE
    assert u.cell_size == 4.0 and u.shape == (5, 5)
    assert u.start_cells() == ((1, 1),)
    assert u.free_cells() == ((1, 1), (1, 2), (1, 3), (2, 3), (3, 1), (3, 2), (3, 3))
    assert set(u.goal_cells()) == set(u.free_cells()) - {(1, 1)}
    assert maze.U_MAZE_EVAL.goal_cells() == ((3, 1), (3, 2), (3, 3))
    assert maze.U_MAZE_EVAL.free_cells() == u.free_cells()
    big = maze.BIG_MAZE
    assert big.shape == (8, 8) and big.start_cells() == ((1, 1),)
    assert len(big.free_cells()) == 26 and len(big.goal_cells()) == 25
    assert maze.BIG_MAZE_EVAL.free_cells() == big.free_cells()
    assert u.cell_center(1, 1) == (4.0, 4.0)
    assert u.cell_center(3, 1) == (12.0, 4.0)  # row index runs along +x
    assert u.cell_of(12.4, 5.9) == (3, 1)


def test_layout_rejects_bad_grids() -> None:
    with pytest.raises(ValueError, match="row 1"):
        maze.MazeLayout.from_rows(("111", "11"), 1.0)
    with pytest.raises(ValueError, match="unknown"):
        maze.MazeLayout.from_rows(("1X1",), 1.0)
    with pytest.raises(ValueError, match="cell_size"):
        maze.MazeLayout.from_rows(("1",), 0.0)
    with pytest.raises(IndexError):
        maze.U_MAZE.cell_center(5, 0)


@pytest.mark.parametrize("layout_name", ["u_maze", "big_maze"])
def test_walls_match_layout(layout_name: str) -> None:
    layout = maze.LAYOUTS[layout_name]
    m = _maze_model(layout)
    walls = [g for g in range(m.ngeom) if m.geom(g).name.startswith("wall_")]
    assert len(walls) == len(layout.wall_cells())
    half, height = layout.cell_size / 2, layout.wall_height
    seen = set()
    for g in walls:
        geom = m.geom(g)
        cell = layout.cell_of(*geom.pos[:2])
        assert layout.cells[cell[0]][cell[1]] == maze.WALL
        assert geom.name == f"wall_{cell[0]}_{cell[1]}"
        np.testing.assert_allclose(geom.pos, (*layout.cell_center(*cell), height / 2))
        np.testing.assert_allclose(geom.size, (half, half, height / 2))
        assert m.geom_type[g] == mujoco.mjtGeom.mjGEOM_BOX and m.geom_bodyid[g] == 0
        seen.add(cell)
    assert seen == set(layout.wall_cells())
    # every free cell centre lies outside every wall box, and the ant starts at the start cell
    centres = np.array([m.geom_pos[g][:2] for g in walls])
    for cell in layout.free_cells():
        gap = np.abs(centres - layout.cell_center(*cell)).max(axis=1)
        assert (gap >= layout.cell_size - 1e-9).all()
    np.testing.assert_allclose(
        m.body("torso").pos[:2], layout.cell_center(*layout.start_cells()[0])
    )
    # walls collide with the ant's torso, shins and feet, not with the floor
    for part in ("torso", "shin_1", "foot_1"):
        assert m.geom_contype[walls[0]] & m.geom_conaffinity[m.geom(part).id]
    assert not m.geom_contype[walls[0]] & m.geom_conaffinity[m.geom("floor").id]
    assert not m.geom_contype[m.geom("floor").id] & m.geom_conaffinity[walls[0]]


def test_walls_stop_the_ant() -> None:
    layout = maze.U_MAZE
    m = _maze_model(layout)
    d = mujoco.MjData(m)
    for _ in range(int(0.5 / m.opt.timestep)):  # settle: no wall contact at the start
        mujoco.mj_step(m, d)
    wall_ids = {g for g in range(m.ngeom) if m.geom(g).name.startswith("wall_")}
    assert not {int(g) for c in d.contact[: d.ncon] for g in c.geom} & wall_ids
    d.qvel[0] = -4.0  # throw it at the wall cell (0, 1), whose face is at x = 2
    for _ in range(int(1.0 / m.opt.timestep)):
        mujoco.mj_step(m, d)
    x_face = layout.cell_center(0, 1)[0] + layout.cell_size / 2
    assert np.isfinite(d.qpos).all()
    assert d.qpos[0] > x_face + 0.2  # torso radius 0.25, minus a little penetration
