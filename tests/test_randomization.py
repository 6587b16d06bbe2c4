"""Domain randomization: per-episode draws, their effect on the physics, noise and action delay.

Most tests run on the reacher (no contacts, cheap to compile) with wide ranges and delays up to
2, compiled once per module: a vmapped reset and a vmapped step. Friction needs contacts: those
tests run the ant on the floor, also compiled once.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import numpy as np
import pytest
from jax_helpers import host_numpy, trees_equal

from crl.sim.config import (
    DR_OFF,
    DR_PARAMETERS,
    OBSERVATION_FIELDS,
    DRConfig,
    Ranges,
    held_out_noise,
)
from crl.sim.env import GoalReachEnv, State, compiler_options
from crl.sim.randomization import Draw, field_uniforms
from crl.sim.tasks import DEPLOYMENT_TASKS, make
from crl.sim.tasks.reacher import CONFIG as REACHER

N_ENVS = 4
FIELDS = list(OBSERVATION_FIELDS)
# Each observed field's noise in its own units, ranges far apart so a mix-up would show.
WIDE_NOISE: dict[str, Ranges] = {
    "joint_pos": ((0.005, 0.02),),  # rad
    "joint_vel": ((0.1, 0.4),),  # rad/s
    "site_pos": ((0.0005, 0.001),),  # m
}
WIDE = DRConfig(
    friction=((0.5, 1.5),),
    body_mass=((0.5, 1.5),),
    joint_damping=((0.5, 2.0),),
    actuator_gain=((0.5, 1.5),),
    obs_noise=WIDE_NOISE,
    action_delay=(0, 1, 2),
)
# A task config must hold held-out ranges outside its training ones.
OUTSIDE_WIDE = DRConfig(
    friction=((0.2, 0.4), (1.6, 2.0)),
    body_mass=((0.3, 0.4), (1.6, 2.0)),
    joint_damping=((0.2, 0.4), (2.1, 3.0)),
    actuator_gain=((0.3, 0.4), (1.6, 2.0)),
    obs_noise=held_out_noise(WIDE_NOISE),
    action_delay=(3,),
)
# See tests/test_env.py: lowest XLA backend optimization roughly halves compile time.
TEST_COMPILER_OPTIONS = {**compiler_options(), "xla_backend_optimization_level": 0}


@dataclasses.dataclass
class Compiled:
    env: GoalReachEnv
    reset: Any
    step: Any


@functools.cache
def compiled() -> Compiled:
    env = GoalReachEnv(REACHER.replace(dr_train=WIDE, dr_held_out=OUTSIDE_WIDE), dr="train")

    def jit(f: Any) -> Any:
        return jax.jit(jax.vmap(f), compiler_options=TEST_COMPILER_OPTIONS)

    return Compiled(env=env, reset=jit(env.reset), step=jit(env.step))


@pytest.fixture(scope="module")
def wide() -> Compiled:
    return compiled()


def _keys(seed: int) -> jax.Array:
    return jax.random.split(jax.random.key(seed), N_ENVS)


def _broadcast(state: State, i: int) -> State:
    """N copies of env i's state (same data, goal, rng and draw)."""
    host = host_numpy(state)
    copies = jax.tree.map(lambda x: np.repeat(x[i : i + 1], N_ENVS, axis=0), host)
    return copies.replace(rng=jax.random.wrap_key_data(copies.rng))


def test_same_seed_same_draws(wide: Compiled) -> None:
    a, b = wide.reset(_keys(0)), wide.reset(_keys(0))
    assert trees_equal(a, b)
    action = np.full((N_ENVS, wide.env.spec.act_dim), 0.3, np.float32)
    assert trees_equal(wide.step(a, action), wide.step(b, action))


def test_a_fields_noise_draw_does_not_move_when_fields_are_added() -> None:
    """Adding a task's observation fields to the registry must not change any other task's DR
    draws (and so its training data and its published figures)."""
    key = jax.random.key(3)
    few = np.asarray(field_uniforms(key, ("joint_pos", "joint_vel")))
    more = np.asarray(field_uniforms(key, ("body_pos", "joint_vel", "extra", "joint_pos")))
    assert few.tolist() == [more[3], more[1]]
    assert len(set(more.tolist())) == 4 and ((more >= 0) & (more < 1)).all()
    with pytest.raises(ValueError, match="share a stream"):
        field_uniforms(key, ("joint_pos", "joint_pos"))


def test_draws_differ_between_episodes_and_stay_in_range(wide: Compiled) -> None:
    draw = host_numpy(wide.reset(_keys(1)).dr)
    nominal = host_numpy(wide.env.randomizer.nominal())
    for field in ("body_mass", "dof_damping", "actuator_gainprm"):
        values = getattr(draw, field)
        assert not np.allclose(values[0], values[1]), f"{field} drawn identically twice"
    mass = draw.body_mass[:, 1:] / nominal.body_mass[1:]  # body 0 is the massless world
    assert _inside(mass, WIDE.body_mass).all()
    # Inertia scales with the mass of its body.
    np.testing.assert_allclose(
        draw.body_inertia[:, 1:] / nominal.body_inertia[1:], np.repeat(mass[..., None], 3, -1),
        rtol=1e-5,
    )
    np.testing.assert_allclose(draw.body_subtreemass[:, 0], draw.body_mass.sum(1), rtol=1e-5)
    # Friction: one factor per episode on every geom, so every contact scales alike.
    friction = draw.geom_friction[..., 0] / nominal.geom_friction[..., 0]
    np.testing.assert_allclose(friction, friction[:, :1].repeat(friction.shape[1], 1), rtol=1e-6)
    assert _inside(friction, WIDE.friction).all()
    assert len(set(friction[:, 0].tolist())) == N_ENVS
    np.testing.assert_array_equal(draw.geom_friction[..., 1:], np.broadcast_to(
        nominal.geom_friction[..., 1:], draw.geom_friction[..., 1:].shape
    ))
    assert set(draw.action_delay.tolist()) <= {0, 1, 2}
    # Noise: a std per field, from that field's own range; none where none is configured.
    assert draw.obs_noise_std.shape == (N_ENVS, len(FIELDS))
    for i, name in enumerate(FIELDS):
        std = draw.obs_noise_std[:, i]
        if name in WIDE_NOISE:
            ((low, high),) = WIDE_NOISE[name]
            assert ((std >= low * (1 - 1e-6)) & (std <= high * (1 + 1e-6))).all(), name
            assert len(set(std.tolist())) == N_ENVS, name
        else:
            np.testing.assert_array_equal(std, 0.0, err_msg=name)


def test_position_servo_kp_is_scaled_in_gain_and_bias(wide: Compiled) -> None:
    draw = host_numpy(wide.reset(_keys(2)).dr)
    nominal = host_numpy(wide.env.randomizer.nominal())
    gain = draw.actuator_gainprm[..., 0] / nominal.actuator_gainprm[:, 0]
    bias = draw.actuator_biasprm[..., 1] / nominal.actuator_biasprm[:, 1]
    np.testing.assert_allclose(gain, bias, rtol=1e-6)  # kp stays one number: -bias[1] == gain[0]
    np.testing.assert_array_equal(draw.actuator_biasprm[..., 2], np.broadcast_to(
        nominal.actuator_biasprm[:, 2], draw.actuator_biasprm[..., 2].shape
    ))  # kv untouched
    assert _inside(gain, WIDE.actuator_gain).all()


def test_same_state_and_action_differ_across_draws(wide: Compiled) -> None:
    state = wide.reset(_keys(3))
    start = _broadcast(state, 0)
    quiet = {  # isolate the physics: no delay, no observation noise
        "action_delay": np.zeros(N_ENVS, np.int32),
        "obs_noise_std": np.zeros((N_ENVS, len(FIELDS)), np.float32),
    }
    same = start.replace(dr=start.dr.replace(**quiet))  # one draw, N times
    varied = start.replace(dr=host_numpy(state.dr).replace(**quiet))  # N draws
    action = np.full((N_ENVS, wide.env.spec.act_dim), 0.8, np.float32)
    for _ in range(4):
        same, varied = wide.step(same, action), wide.step(varied, action)
    v_same, v_varied = np.asarray(same.data.qvel), np.asarray(varied.data.qvel)
    assert all(np.array_equal(v_same[0], v_same[i]) for i in range(N_ENVS))
    for i in range(N_ENVS):
        for j in range(i + 1, N_ENVS):
            assert not np.allclose(v_varied[i], v_varied[j]), f"draws {i} and {j} act alike"


def _with_dr(state: State, **fields: Any) -> State:
    return state.replace(dr=state.dr.replace(**fields))


def test_action_delay_applies_the_action_from_k_steps_ago(wide: Compiled) -> None:
    env = wide.env
    state = wide.reset(_keys(4))
    delays = np.array([0, 1, 2, 2], np.int32)
    state = _with_dr(state, action_delay=delays)
    act_ids = [env.mj_model.actuator(j).id for j in env.spec.action.joints]
    start_ctrl = np.asarray(state.data.ctrl)[:, act_ids]
    rng = np.random.default_rng(0)
    actions = rng.uniform(-1, 1, (6, N_ENVS, env.spec.act_dim)).astype(np.float32)
    mapped = np.asarray(jax.vmap(jax.vmap(env.action_to_ctrl))(actions))
    for t in range(len(actions)):
        state = wide.step(state, actions[t])
        applied = np.asarray(state.data.ctrl)[:, act_ids]
        for i, k in enumerate(delays):
            expected = mapped[t - k, i] if t >= k else start_ctrl[i]
            np.testing.assert_allclose(applied[i], expected, rtol=1e-6, err_msg=f"t={t} k={k}")


def test_observation_noise_has_each_fields_drawn_std(wide: Compiled) -> None:
    """Each observed field carries Gaussian noise with its own std, in its own units; the
    policy's own last command carries none, even with a std drawn for it."""
    env = wide.env
    state = wide.reset(_keys(5))
    stds = {  # per env: the std of each field's noise
        "joint_pos": [0.0, 0.01, 0.0, 0.02],
        "joint_vel": [0.0, 0.0, 0.3, 0.1],
        "site_pos": [0.0, 0.002, 0.001, 0.0],
        "last_action": [0.0, 0.5, 0.5, 0.5],  # never applied: the controller knows it
    }
    table = np.zeros((N_ENVS, len(FIELDS)), np.float32)
    for name, values in stds.items():
        table[:, FIELDS.index(name)] = values
    state = _with_dr(state, obs_noise_std=table)
    action = np.zeros((N_ENVS, env.spec.act_dim), np.float32)
    errors: list[np.ndarray] = []
    for _ in range(60):
        state = wide.step(state, action)
        clean = np.asarray(jax.vmap(env.observe)(state.data, state.action_queue))
        errors.append(np.asarray(state.obs) - clean)
        # The achieved goal never carries noise: relabeling must see the true state.
        tip = np.asarray(state.data.site_xpos)[:, env.mj_model.site("fingertip").id, :2]
        np.testing.assert_array_equal(state.achieved_goal, tip)
    errs = np.stack(errors, axis=1)  # [env, step, obs]
    assert [f.name for f in env.spec.observation] == list(stds)
    for name, values in stds.items():
        err = errs[..., _slice(env, name)].reshape(N_ENVS, -1)
        for i, std in enumerate(values):
            if std == 0.0 or name == "last_action":
                np.testing.assert_array_equal(err[i], 0.0, err_msg=f"{name} env {i}")
            else:
                np.testing.assert_allclose(err[i].std(), std, rtol=0.25, err_msg=f"{name} {i}")


def _slice(env: GoalReachEnv, name: str) -> slice:
    """Where observation field `name` sits in the observation vector."""
    start = 0
    for f in env.spec.observation:
        if f.name == name:
            return slice(start, start + f.size)
        start += f.size
    raise KeyError(name)


def test_last_action_is_the_newest_command_normalized(wide: Compiled) -> None:
    """`last_action` is the command just sent (not the one the delay applies now), as
    spec.action normalizes the clipped physical command; at reset, the start hold command."""
    env = wide.env
    spec, where = env.spec, _slice(env, "last_action")
    field = next(f for f in spec.observation if f.name == "last_action")
    assert (field.size, field.frame) == (spec.act_dim, "")
    assert field.meaning == "the previous action commanded, normalized to [-1, 1]"
    assert field.names == spec.action.joints
    offset, scale = np.asarray(spec.action.offset), np.asarray(spec.action.scale)
    low, high = np.asarray(spec.action.low), np.asarray(spec.action.high)
    act_ids = [env.mj_model.actuator(j).id for j in spec.action.joints]
    state = wide.reset(_keys(7))
    delays = np.array([0, 1, 2, 2], np.int32)
    state = _with_dr(state, action_delay=delays)  # observation noise stays on
    # At reset: the hold command (servo targets = the start pose, clipped to ctrlrange).
    qadr = [env.mj_model.joint(j).qposadr[0] for j in spec.action.joints]
    qpos = np.asarray(state.data.qpos)[:, qadr]
    hold = np.clip(qpos, low, high)
    np.testing.assert_allclose(state.obs[:, where], (hold - offset) / scale, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        np.asarray(state.data.ctrl)[:, act_ids], offset + scale * state.obs[:, where], atol=1e-6
    )
    rng = np.random.default_rng(1)
    actions = rng.uniform(-1.5, 1.5, (5, N_ENVS, spec.act_dim)).astype(np.float32)
    for t in range(len(actions)):
        state = wide.step(state, actions[t])
        last = np.asarray(state.obs)[:, where]
        # Out-of-range actions come back clipped, as the physical command was.
        np.testing.assert_allclose(last, np.clip(actions[t], -1, 1), rtol=1e-6, atol=1e-6)
        applied = np.asarray(state.data.ctrl)[:, act_ids]
        for i, k in enumerate(delays):
            if k > 0 and t >= k:  # the delayed env applies an older command than it reports
                assert not np.allclose(applied[i], offset + scale * last[i], atol=1e-3)


def test_dr_off_is_the_nominal_model() -> None:
    env = make("reacher", dr="off")
    assert env.dr_config == DR_OFF
    draw = env.randomizer.sample(jax.random.key(6))
    m = env.mjx_model
    for field in dataclasses.fields(Draw):
        if field.name in ("obs_noise_std", "action_delay"):
            continue
        np.testing.assert_array_equal(getattr(draw, field.name), getattr(m, field.name))
    assert (np.asarray(draw.obs_noise_std) == 0.0).all() and int(draw.action_delay) == 0
    applied = env.randomizer.apply(draw)
    for name in ("geom_friction", "body_mass", "dof_damping", "actuator_gainprm"):
        np.testing.assert_array_equal(getattr(applied, name), getattr(m, name))
    assert env.spec.provenance.domain_randomization["mode"] == "off"
    assert env.spec.provenance.domain_randomization["action_delay"] == [0]


def _scales(values: np.ndarray, nominal: np.ndarray) -> np.ndarray:
    """Drawn / nominal over draws, for the entries whose nominal value is not zero."""
    keep = nominal != 0
    return (values[:, keep] / nominal[keep]).ravel()


def _inside(values: np.ndarray, ranges: Ranges, tol: float = 1e-6) -> np.ndarray:
    return np.any([(values >= lo * (1 - tol)) & (values <= hi * (1 + tol)) for lo, hi in ranges], 0)


# The paper's mazes share their robot's model and ranges with its open-floor task.
@pytest.mark.parametrize("task", (*DEPLOYMENT_TASKS, "paper_ant", "paper_humanoid"))
def test_held_out_draws_are_never_training_conditions(task: str) -> None:
    """Over 4096 held-out draws: every physical scale lies outside the training range, below or
    above it (both sides drawn, in proportion to their lengths), every observed field's noise std
    outside its training range, and every delay one training never used. The sim robot's
    `--dr held-out` takes these same draws (the env's reset; tests/test_sim_robot.py)."""
    env = make(task, dr="held-out")
    train, held_out = env.config.dr_train, env.config.dr_held_out
    assert env.dr_config == held_out
    keys = jax.random.split(jax.random.key(0), 4096)
    draws = host_numpy(jax.jit(jax.vmap(env.randomizer.sample))(keys))
    nominal = host_numpy(env.randomizer.nominal())
    scales = {
        "friction": _scales(draws.geom_friction[..., 0], nominal.geom_friction[:, 0]),
        "body_mass": _scales(draws.body_mass, nominal.body_mass),
        "joint_damping": _scales(draws.dof_damping, nominal.dof_damping),
        "actuator_gain": _scales(draws.actuator_gainprm[..., 0], nominal.actuator_gainprm[:, 0]),
    }
    for name in DR_PARAMETERS:
        values, trained = scales[name], getattr(train, name)
        assert values.size >= 4096, name
        for low, high in trained:
            assert ((values < low) | (values > high)).all(), f"{name}: a training condition"
        assert _inside(values, getattr(held_out, name)).all(), name
        below = min(lo for lo, _ in trained)
        lengths = [hi - lo for lo, hi in getattr(held_out, name)]
        share = sum(n for n, (lo, _) in zip(lengths, getattr(held_out, name), strict=True)
                    if lo < below) / sum(lengths)
        assert 0 < share < 1, f"{name}: held out on one side only"
        assert abs(np.mean(values < below) - share) < 0.03, name
    sensed = [n for n in env.config.observation if OBSERVATION_FIELDS[n].sensed]
    for name in sensed:  # none for the paper family: it observes exact simulator state
        std = draws.obs_noise_std[:, FIELDS.index(name)]
        for low, high in train.noise(name):
            assert ((std < low) | (std > high)).all(), f"obs_noise[{name}]: a training std"
        assert _inside(std, held_out.noise(name)).all(), name
    delays = set(draws.action_delay.tolist())
    assert delays == set(held_out.action_delay) and not delays & set(train.action_delay)
    recorded = env.spec.provenance.domain_randomization
    assert recorded["mode"] == "held-out"
    assert recorded["body_mass"] == [list(r) for r in held_out.body_mass]


@functools.cache
def ant_on_the_floor() -> Compiled:
    """The ant task under its own training ranges, compiled once: friction needs contacts."""
    env = make("ant", dr="train")

    def jit(f: Any) -> Any:
        return jax.jit(jax.vmap(f), compiler_options=TEST_COMPILER_OPTIONS)

    return Compiled(env=env, reset=jit(env.reset), step=jit(env.step))


def _contacts(data: Any) -> Any:
    """MJX's contacts (under `_impl` in MJX 3.3+, where `Data.contact` is deprecated)."""
    impl = getattr(data, "_impl", None)
    return impl.contact if hasattr(impl, "contact") else data.contact


def test_contact_friction_follows_the_training_range_on_the_ant() -> None:
    """The friction MJX's contacts actually use, the ant's feet on the floor over 256 episodes:
    every contact of an episode has the same factor times its nominal friction, and the factors
    are uniform over the training range (Kolmogorov-Smirnov). A draw per geom would make each
    contact the larger of the foot's and the floor's draws, skewed high (mean ~1.1 for 0.7-1.3,
    ~6% of contacts below 0.85 instead of 25%)."""
    ant = ant_on_the_floor()
    m = ant.env.mj_model
    ((low, high),) = ant.env.config.dr_train.friction
    zero = np.zeros((N_ENVS, ant.env.spec.act_dim), np.float32)
    factors: list[float] = []
    for batch in range(64):
        state = ant.reset(_keys(100 + batch))
        touched = np.zeros(N_ENVS, bool)
        for _ in range(6):  # 0.3 s: the ant lands on its feet
            state = ant.step(state, zero)
            c = host_numpy(_contacts(state.data))
            g1, g2 = c.geom[..., 0], c.geom[..., 1]
            touching = c.dist < 0
            assert (m.geom_bodyid[g1[touching]] == 0).all()  # the floor, a world geom
            touched |= touching.any(axis=1)
            nominal = np.maximum(m.geom_friction[g1, 0], m.geom_friction[g2, 0])
            ratio = c.friction[..., 0] / nominal
            np.testing.assert_allclose(ratio, ratio[:, :1].repeat(ratio.shape[1], 1), rtol=1e-5)
        assert touched.all(), "the ant should stand on the floor"
        factors += ratio[:, 0].tolist()
    f = np.sort(factors)
    n = f.size
    assert ((f >= low - 1e-6) & (f <= high + 1e-6)).all()
    cdf = (f - low) / (high - low)
    ks = max(np.max(np.arange(1, n + 1) / n - cdf), np.max(cdf - np.arange(n) / n))
    assert ks < 1.95 / np.sqrt(n), f"not uniform on ({low}, {high}): KS {ks:.3f}"
    assert abs(np.mean(f < low + (high - low) / 4) - 0.25) < 0.08
    assert abs(np.mean(f) - (low + high) / 2) < 0.03


def test_the_sim_robot_contacts_use_the_same_friction() -> None:
    """MuJoCo C (the sim robot, on the same draws) combines two geoms' frictions as MJX does,
    so its foot-floor contacts also use the episode's factor times the nominal friction."""
    from crl.testbed.robot import SimRobot

    ant = ant_on_the_floor()
    m = ant.env.mj_model
    robot = SimRobot("ant", dr="train", seed=0, env=ant.env)
    seen = set()
    for k in range(3):
        ep = robot.reset(k)
        factor = ep.model_fields["geom_friction"][:, 0] / m.geom_friction[:, 0]
        np.testing.assert_allclose(factor, factor[0], rtol=1e-6)
        for _ in range(3):
            robot.step_control()
        d = robot.data
        assert d.ncon > 0
        g = d.contact.geom[: d.ncon]
        nominal = np.maximum(m.geom_friction[g[:, 0], 0], m.geom_friction[g[:, 1], 0])
        np.testing.assert_allclose(d.contact.friction[: d.ncon, 0], factor[0] * nominal, rtol=1e-5)
        seen.add(round(float(factor[0]), 6))
    assert len(seen) == 3


def test_friction_draws_change_how_the_ant_moves() -> None:
    """The reacher has no contacts, so friction is shown on the ant, whose feet push the floor:
    each episode draws new friction, and the same start and actions end elsewhere under it."""
    ant = ant_on_the_floor()
    env, step = ant.env, ant.step
    sliding = host_numpy(jax.vmap(env.randomizer.sample)(_keys(5))).geom_friction[..., 0]
    assert len({row.tobytes() for row in sliding}) == N_ENVS
    start = _broadcast(ant.reset(_keys(6)), 0)
    nominal = host_numpy(env.randomizer.nominal()).geom_friction
    scale = np.array([0.1, 0.1, 2.0, 2.0], np.float32)[:, None]
    friction = np.repeat(nominal[None], N_ENVS, axis=0)
    friction[..., 0] *= scale
    state = start.replace(dr=start.dr.replace(geom_friction=friction))
    rng = np.random.default_rng(0)
    for _ in range(30):  # 1.5 s: the ant lands and walks
        action = np.repeat(rng.uniform(-1, 1, (1, env.spec.act_dim)), N_ENVS, 0)
        state = step(state, action.astype(np.float32))
    qpos = np.asarray(state.data.qpos)
    np.testing.assert_array_equal(qpos[0], qpos[1])  # same friction, same motion
    np.testing.assert_array_equal(qpos[2], qpos[3])
    assert np.linalg.norm(qpos[0, :2] - qpos[2, :2]) > 1e-3  # the torso ends elsewhere
