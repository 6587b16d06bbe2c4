"""Domain randomization: per-episode draws, their effect on the physics, noise and action delay.

Everything runs on the reacher (no contacts, cheap to compile) with wide ranges and a maximum
delay of 2, compiled once per module: a vmapped reset and a vmapped step.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crl.sim.config import DR_OFF, DRConfig
from crl.sim.env import GoalReachEnv, State, compiler_options
from crl.sim.randomization import Draw
from crl.sim.tasks import TASKS, make
from crl.sim.tasks.reacher import CONFIG as REACHER

N_ENVS = 4
WIDE = DRConfig(
    friction=(0.5, 1.5),
    body_mass=(0.5, 1.5),
    joint_damping=(0.5, 2.0),
    actuator_gain=(0.5, 1.5),
    obs_noise_std=(0.005, 0.02),
    max_action_delay=2,
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
    env = GoalReachEnv(REACHER.replace(dr_train=WIDE), dr="train")

    def jit(f: Any) -> Any:
        return jax.jit(jax.vmap(f), compiler_options=TEST_COMPILER_OPTIONS)

    return Compiled(env=env, reset=jit(env.reset), step=jit(env.step))


@pytest.fixture(scope="module")
def wide() -> Compiled:
    return compiled()


def _keys(seed: int) -> jax.Array:
    return jax.random.split(jax.random.key(seed), N_ENVS)


def _numpy(tree: Any) -> Any:
    def host(x: jax.Array) -> np.ndarray:
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        return np.asarray(x)

    return jax.tree.map(host, tree)


def _trees_equal(a: Any, b: Any) -> bool:
    return all(jax.tree.leaves(jax.tree.map(np.array_equal, _numpy(a), _numpy(b))))


def _broadcast(state: State, i: int) -> State:
    """N copies of env i's state (same data, goal, rng and draw)."""
    host = _numpy(state)
    copies = jax.tree.map(lambda x: np.repeat(x[i : i + 1], N_ENVS, axis=0), host)
    return copies.replace(rng=jax.random.wrap_key_data(copies.rng))


def test_same_seed_same_draws(wide: Compiled) -> None:
    a, b = wide.reset(_keys(0)), wide.reset(_keys(0))
    assert _trees_equal(a, b)
    action = np.full((N_ENVS, wide.env.spec.act_dim), 0.3, np.float32)
    assert _trees_equal(wide.step(a, action), wide.step(b, action))


def test_draws_differ_between_episodes_and_stay_in_range(wide: Compiled) -> None:
    draw = _numpy(wide.reset(_keys(1)).dr)
    nominal = _numpy(wide.env.randomizer.nominal())
    for field in ("body_mass", "dof_damping", "actuator_gainprm"):
        values = getattr(draw, field)
        assert not np.allclose(values[0], values[1]), f"{field} drawn identically twice"
    mass = draw.body_mass[:, 1:] / nominal.body_mass[1:]  # body 0 is the massless world
    assert ((mass >= WIDE.body_mass[0] - 1e-6) & (mass <= WIDE.body_mass[1] + 1e-6)).all()
    # Inertia scales with the mass of its body.
    np.testing.assert_allclose(
        draw.body_inertia[:, 1:] / nominal.body_inertia[1:], np.repeat(mass[..., None], 3, -1),
        rtol=1e-5,
    )
    np.testing.assert_allclose(draw.body_subtreemass[:, 0], draw.body_mass.sum(1), rtol=1e-5)
    friction = draw.geom_friction[..., 0] / nominal.geom_friction[..., 0]
    assert ((friction >= 0.5 - 1e-6) & (friction <= 1.5 + 1e-6)).all()
    np.testing.assert_array_equal(draw.geom_friction[..., 1:], np.broadcast_to(
        nominal.geom_friction[..., 1:], draw.geom_friction[..., 1:].shape
    ))
    assert set(draw.action_delay.tolist()) <= {0, 1, 2}
    assert ((draw.obs_noise_std >= 0.005) & (draw.obs_noise_std <= 0.02)).all()


def test_position_servo_kp_is_scaled_in_gain_and_bias(wide: Compiled) -> None:
    draw = _numpy(wide.reset(_keys(2)).dr)
    nominal = _numpy(wide.env.randomizer.nominal())
    gain = draw.actuator_gainprm[..., 0] / nominal.actuator_gainprm[:, 0]
    bias = draw.actuator_biasprm[..., 1] / nominal.actuator_biasprm[:, 1]
    np.testing.assert_allclose(gain, bias, rtol=1e-6)  # kp stays one number: -bias[1] == gain[0]
    np.testing.assert_array_equal(draw.actuator_biasprm[..., 2], np.broadcast_to(
        nominal.actuator_biasprm[:, 2], draw.actuator_biasprm[..., 2].shape
    ))  # kv untouched
    assert ((gain >= 0.5 - 1e-6) & (gain <= 1.5 + 1e-6)).all()


def test_same_state_and_action_differ_across_draws(wide: Compiled) -> None:
    state = wide.reset(_keys(3))
    start = _broadcast(state, 0)
    quiet = {  # isolate the physics: no delay, no observation noise
        "action_delay": np.zeros(N_ENVS, np.int32),
        "obs_noise_std": np.zeros(N_ENVS, np.float32),
    }
    same = start.replace(dr=start.dr.replace(**quiet))  # one draw, N times
    varied = start.replace(dr=_numpy(state.dr).replace(**quiet))  # N draws
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


def test_observation_noise_has_the_drawn_std(wide: Compiled) -> None:
    state = wide.reset(_keys(5))
    state = _with_dr(state, obs_noise_std=np.array([0.0, 0.01, 0.01, 0.02], np.float32))
    action = np.zeros((N_ENVS, wide.env.spec.act_dim), np.float32)
    errors: list[np.ndarray] = []
    for _ in range(20):
        state = wide.step(state, action)
        clean = np.asarray(jax.vmap(wide.env.observe)(state.data, state.action_queue))
        errors.append(np.asarray(state.obs) - clean)
        # The achieved goal never carries noise: relabeling must see the true state.
        tip = np.asarray(state.data.site_xpos)[:, wide.env.mj_model.site("fingertip").id, :2]
        np.testing.assert_array_equal(state.achieved_goal, tip)
    errs = np.stack(errors, axis=1)  # [env, step, obs]
    # The sensed fields carry the noise; the policy's own last command is known exactly.
    sensed = np.ones(wide.env.spec.obs_dim, bool)
    sensed[_slice(wide.env, "last_action")] = False
    np.testing.assert_array_equal(errs[..., ~sensed], 0.0)
    err = errs[..., sensed].reshape(N_ENVS, -1)
    np.testing.assert_array_equal(err[0], 0.0)
    np.testing.assert_allclose(err[1:].std(axis=1), [0.01, 0.01, 0.02], rtol=0.3)


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
    assert float(draw.obs_noise_std) == 0.0 and int(draw.action_delay) == 0
    applied = env.randomizer.apply(draw)
    for name in ("geom_friction", "body_mass", "dof_damping", "actuator_gainprm"):
        np.testing.assert_array_equal(getattr(applied, name), getattr(m, name))
    assert env.spec.provenance.domain_randomization["mode"] == "off"
    assert env.spec.provenance.domain_randomization["max_action_delay"] == 0


@pytest.mark.parametrize("task", TASKS)
def test_held_out_ranges_differ_from_training(task: str) -> None:
    env = make(task, dr="held_out")
    train, held_out = env.config.dr_train, env.config.dr_held_out
    assert env.dr_config == held_out != train
    for name in ("friction", "body_mass", "joint_damping", "actuator_gain", "obs_noise_std"):
        lo_t, hi_t = getattr(train, name)
        lo_h, hi_h = getattr(held_out, name)
        assert lo_h < lo_t or hi_h > hi_t, f"held-out {name} adds nothing outside training"
    assert held_out.max_action_delay > train.max_action_delay
    recorded = env.spec.provenance.domain_randomization
    assert recorded["mode"] == "held_out"
    assert tuple(recorded["body_mass"]) == held_out.body_mass


def test_friction_draws_change_how_the_ant_moves() -> None:
    """The reacher has no contacts, so friction is shown on the ant, whose feet push the floor:
    each episode draws new friction, and the same start and actions end elsewhere under it."""
    from crl.sim.tasks.ant import CONFIG as ANT

    env = GoalReachEnv(ANT.replace(dr_train=DRConfig(friction=(0.1, 2.0))), dr="train")
    sliding = _numpy(jax.vmap(env.randomizer.sample)(_keys(5))).geom_friction[..., 0]
    assert len({row.tobytes() for row in sliding}) == N_ENVS

    def jit(f: Any) -> Any:
        return jax.jit(jax.vmap(f), compiler_options=TEST_COMPILER_OPTIONS)

    step = jit(env.step)
    start = _broadcast(jit(env.reset)(_keys(6)), 0)
    nominal = _numpy(env.randomizer.nominal()).geom_friction
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
