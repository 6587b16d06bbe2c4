"""The sim robot (`crl.testbed.robot`, `crl-sim robot`): MuJoCo C playing the real robot.

It must be the MJX env's robot, not merely a similar one: the same starts, goals and DR draws
(from the env's own reset), the same physics step for step, the same delays. The last tests run
the real-time server on loopback against a small fake runtime that binds its own sockets.
"""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import jax.numpy as jnp
import mujoco
import numpy as np
import pytest
import zmq
from mujoco.mjx._src import derivative

from crl.runtime.messages import Action, Observation, Telemetry, encode
from crl.runtime.transport import Endpoints, Reader
from crl.sim import mjx as crl_mjx
from crl.sim import tasks
from crl.sim.config import OBSERVATION_FIELDS
from crl.sim.env import GoalReachEnv, jit
from crl.sim.mjx import mjx
from crl.testbed.clock import ClockError, RobotClock
from crl.testbed.closed_loop import free_base_port
from crl.testbed.robot import (
    MODEL_FIELDS,
    ActionError,
    Episode,
    RobotError,
    ServeStats,
    SimRobot,
    StepClock,
    episode_key,
    serve,
)

REACHER_STEPS = 50  # the reacher's episode length
PARITY_TOL = 1e-4


@pytest.fixture(scope="module")
def reacher_off() -> GoalReachEnv:
    return tasks.make("reacher", dr="off")


@pytest.fixture(scope="module")
def reacher_held_out() -> GoalReachEnv:
    return tasks.make("reacher", dr="held-out")


@pytest.fixture(scope="module")
def reacher_train() -> GoalReachEnv:
    return tasks.make("reacher", dr="train")


def env_observation(robot: SimRobot) -> np.ndarray:
    """The robot's true state as the env's observation vector (spec order): what the MJX env
    would observe, built from what the robot measures plus its own last command."""
    r, spec = robot.true_reading(), robot.spec
    index = {n: i for i, n in enumerate(r.joint_names)}
    a = spec.action
    parts: list[np.ndarray] = []
    for f in spec.observation:
        if f.name in ("joint_pos", "joint_vel"):
            values = r.joint_pos if f.name == "joint_pos" else r.joint_vel
            parts.append(values[[index[n] for n in f.names]])
        elif f.name == "site_pos":
            name = robot.env.config.obs_site
            site = mujoco.mj_name2id(robot.model, mujoco.mjtObj.mjOBJ_SITE, name)
            parts.append(robot.data.site_xpos[site])
        elif f.name == "last_action":
            parts.append((robot.last_command - np.asarray(a.offset)) / np.asarray(a.scale))
        elif f.name == "base_gravity":
            parts.append(robot.data.xmat[robot._base].reshape(3, 3).T @ [0.0, 0.0, -1.0])
        else:
            parts.append(getattr(r, f.name))
    return np.concatenate(parts)


def physical(robot: SimRobot, action: np.ndarray) -> np.ndarray:
    """A [-1, 1] action in physical units (spec.action), as a runtime sends it."""
    return np.asarray(robot.spec.action.to_physical(action.tolist()))


def unsaturating_action(robot: SimRobot, rng: np.random.Generator) -> np.ndarray:
    """A random action whose servo targets lie within 0.2 rad of the joints, so no servo's
    force reaches its forcerange (see `c_clamped_damping`)."""
    a, q = robot.spec.action, robot.true_reading()
    index = {n: i for i, n in enumerate(q.joint_names)}
    target = q.joint_pos[[index[n] for n in a.joints]] + rng.uniform(-0.2, 0.2, a.size)
    return ((target - np.asarray(a.offset)) / np.asarray(a.scale)).astype(np.float32)


def run_parity(
    env: GoalReachEnv, robot: SimRobot, episode: int, actions: Any, noise_free: bool = True
) -> tuple[float, int]:
    """Step the MJX env and the robot through one episode with the same actions; the largest
    observation difference (and achieved-goal difference) and how many physics steps saw a
    servo force at its forcerange. `actions(robot)` gives each [-1, 1] action."""
    state = jit(env.reset)(episode_key(robot.seed, episode))
    step = jit(env.step)
    robot.reset(episode)
    worst, clamped = 0.0, 0
    limit = robot.model.actuator_forcerange[:, 1]
    for t in range(env.episode_length + 1):
        obs = env.observe(state.data, state.action_queue) if noise_free else state.obs
        worst = max(
            worst,
            float(np.abs(env_observation(robot) - np.asarray(obs)).max()),
            float(np.abs(robot.achieved_goal() - np.asarray(state.achieved_goal)).max()),
        )
        if t == env.episode_length:
            break
        action = actions(robot)
        state = step(state, jnp.asarray(action))
        robot.apply(physical(robot, action))
        for _ in range(robot.substeps):
            robot.step_physics()
            clamped += int((np.abs(robot.data.actuator_force) >= limit - 1e-9).any())
    assert robot.t == env.episode_length and robot.done and bool(state.done)
    return worst, clamped


# -- lockstep parity with the MJX env --------------------------------------------------------------


def test_dr_off_matches_the_mjx_env_over_an_episode(reacher_off: GoalReachEnv) -> None:
    """Same start, same random actions: every observed value and the achieved goal within 1e-4
    over a full episode (MJX float32 vs MuJoCo float64), servos kept off their force limits."""
    robot = SimRobot("reacher", dr="off", seed=3, env=reacher_off)
    rng = np.random.default_rng(0)
    worst, clamped = run_parity(reacher_off, robot, 0, lambda r: unsaturating_action(r, rng))
    assert clamped == 0, "the actions saturated a servo: this test is meant to stay clear of it"
    assert worst < PARITY_TOL


def test_dr_off_matches_mjx_with_saturating_actions(reacher_off: GoalReachEnv) -> None:
    """Uniform random actions drive the servos into their forcerange. MuJoCo C then drops the
    clamped servo's kv from implicitfast's implicit solve; MJX 3.17 kept it (the arm moved up
    to ~0.3 rad apart within one control step) until `crl.sim.mjx` gave it C's rule."""
    assert derivative.deriv_smooth_vel is crl_mjx.deriv_smooth_vel
    env = reacher_off
    robot = SimRobot("reacher", dr="off", seed=5, env=env)
    rng = np.random.default_rng(1)
    uniform = lambda r: rng.uniform(-1, 1, r.spec.act_dim).astype(np.float32)  # noqa: E731
    worst, clamped = run_parity(env, robot, 0, uniform)
    assert clamped > 0, "no servo saturated: the test no longer covers the clamped case"
    assert worst < PARITY_TOL


def test_held_out_draws_set_the_mjx_models_values(reacher_held_out: GoalReachEnv) -> None:
    """The robot's model holds exactly the randomized mjx model's values for the same key, and
    its noise std and delay are the draw's."""
    robot = SimRobot("reacher", dr="held-out", seed=3, env=reacher_held_out)
    reset = jit(reacher_held_out.reset)
    delays = set()
    for k in range(6):
        ep = robot.reset(k)
        state = reset(episode_key(3, k))
        mjx_model = reacher_held_out.randomizer.apply(state.dr)
        for name in MODEL_FIELDS:
            want = np.asarray(getattr(mjx_model, name))
            got = getattr(robot.model, name)
            np.testing.assert_array_equal(got.astype(want.dtype), want, err_msg=name)
        changed = robot.model.body_mass[1:] != robot.nominal.body_mass[1:]
        assert changed.all(), "held-out masses should differ from the nominal model"
        stds = dict(zip(OBSERVATION_FIELDS, np.asarray(state.dr.obs_noise_std).tolist(),
                        strict=True))
        assert ep.obs_noise_std == stds
        assert ep.obs_noise_std["joint_pos"] > 0 and ep.obs_noise_std["joint_vel"] > 0
        assert ep.action_delay == int(state.dr.action_delay)
        np.testing.assert_array_equal(ep.goal, np.asarray(state.goal, np.float64))
        delays.add(ep.action_delay)
    assert delays == set(reacher_held_out.dr_config.action_delay)


def test_delays_hold_the_command_back(
    reacher_train: GoalReachEnv, reacher_held_out: GoalReachEnv
) -> None:
    """A command applied at control step t reaches the actuators at control step t + delay:
    the training delays (0, 1) and the held-out one (2)."""
    by_delay: dict[int, tuple[SimRobot, int]] = {}
    for dr, env in (("train", reacher_train), ("held-out", reacher_held_out)):
        robot = SimRobot("reacher", dr=dr, seed=3, env=env)
        for k in range(6):
            by_delay.setdefault(robot.reset(k).action_delay, (robot, k))
    assert sorted(by_delay) == [0, 1, 2]
    for delay, (robot, k) in sorted(by_delay.items()):
        ep = robot.reset(k)
        hold = robot.data.ctrl[robot.act_ids].copy()
        np.testing.assert_array_equal(hold, ep.ctrl[robot.act_ids])
        robot.step_control()  # control step 0 → 1
        target = np.array([0.5, -0.5])
        robot.apply(target)
        for t in range(delay):
            robot.step_physics()
            np.testing.assert_array_equal(robot.data.ctrl[robot.act_ids], hold, f"d{delay} t{t}")
            while robot.physics_steps % robot.substeps:
                robot.step_physics()
        robot.step_physics()
        np.testing.assert_array_equal(robot.data.ctrl[robot.act_ids], target)


def test_randomized_episodes_match_mjx(
    reacher_train: GoalReachEnv, reacher_held_out: GoalReachEnv
) -> None:
    """Held-out episodes (delay 2) and a training one with delay 1, randomized gains, masses,
    damping: the robot tracks the MJX env's noise-free observation to 1e-4 under uniform random
    actions, servos saturating (MJX with MuJoCo C's clamped-servo rule, from `crl.sim.mjx`)."""
    rng = np.random.default_rng(2)
    uniform = lambda r: rng.uniform(-1, 1, r.spec.act_dim).astype(np.float32)  # noqa: E731
    for dr, env, episode, delay in (
        ("held-out", reacher_held_out, 1, 2),
        ("held-out", reacher_held_out, 3, 2),
        ("train", reacher_train, 1, 1),
    ):
        robot = SimRobot("reacher", dr=dr, seed=3, env=env)
        worst, clamped = run_parity(env, robot, episode, uniform)
        assert robot.episode is not None and robot.episode.action_delay == delay
        assert clamped > 0
        assert worst < PARITY_TOL, (dr, episode, worst)


def test_observation_noise_is_each_fields_drawn_std(reacher_held_out: GoalReachEnv) -> None:
    """Each measurement carries the draw's noise for the observation field of its name, in that
    field's units: joint angles (rad) and joint velocities (rad/s) each their own std."""
    robot = SimRobot("reacher", dr="held-out", seed=3, env=reacher_held_out)
    ep = robot.reset(0)
    true = robot.true_reading()
    readings = [robot.observation() for _ in range(2000)]
    for name in ("joint_pos", "joint_vel"):
        errors = np.concatenate([getattr(r, name) - getattr(true, name) for r in readings])
        assert (errors != 0).all()
        assert abs(errors.std() / ep.obs_noise_std[name] - 1) < 0.05, name
    assert ep.obs_noise_std["joint_vel"] > 5 * ep.obs_noise_std["joint_pos"]  # rad/s vs rad
    robot.reset(0)
    again = robot.observation()  # the same episode replays the same noise
    first = SimRobot("reacher", dr="held-out", seed=3, env=reacher_held_out)
    first.reset(0)
    np.testing.assert_array_equal(first.observation().joint_pos, again.joint_pos)


@pytest.fixture(scope="module")
def ant_off() -> GoalReachEnv:
    return tasks.make("ant", dr="off")


def test_floating_base_fields_match_the_env(ant_off: GoalReachEnv) -> None:
    """The ant's base pose (world) and twist (base frame) read as the env reads them, at a
    tilted, moving base (kinematics only: MJX's and MuJoCo's contact solvers part ways once
    the ant touches the ground, which is not what this checks)."""
    env = ant_off
    robot = SimRobot("ant", dr="off", seed=0, env=env)
    state = jit(env.reset)(episode_key(0, 0))
    robot.reset(0)
    rng = np.random.default_rng(0)
    qpos = robot.data.qpos.copy()
    quat = rng.normal(size=4)
    qpos[3:7] = quat / np.linalg.norm(quat)
    qpos = qpos.astype(np.float32).astype(np.float64)  # the same numbers in both
    qvel = rng.normal(size=robot.model.nv).astype(np.float32).astype(np.float64)
    observe = jit(lambda d, q: env.observe(mjx.kinematics(env.mjx_model, d), q))
    data = state.data.replace(qpos=jnp.asarray(qpos, jnp.float32),
                              qvel=jnp.asarray(qvel, jnp.float32))
    want = np.asarray(observe(data, state.action_queue))
    robot.data.qpos[:], robot.data.qvel[:] = qpos, qvel
    mujoco.mj_kinematics(robot.model, robot.data)
    r = robot.true_reading()
    assert r.base_lin_vel is not None and not np.allclose(r.base_lin_vel, qvel[:3])
    assert set(robot.spec.action.joints) <= set(r.joint_names)
    np.testing.assert_allclose(env_observation(robot), want, atol=PARITY_TOL)


def test_the_ant_robot_ends_its_episode_where_the_env_terminates(ant_off: GoalReachEnv) -> None:
    """A torso outside the ant's healthy band ends the robot's episode at that control step, as
    the env's step ends it; a reset pose never counts (the env's rule too)."""
    robot = SimRobot("ant", dr="off", seed=0, env=ant_off)
    robot.reset(0)
    robot.step_control()
    assert robot.t == 1 and not robot.done
    robot.data.qpos[2] = 2.5  # launched well above the band's 1 m
    robot.step_control()
    assert robot.t == 2 < robot.episode_length and robot.terminated and robot.done
    low, high = ant_off.config.healthy_z_range
    for z, out in ((low - 0.05, True), (low + 0.05, False), (high - 0.05, False),
                   (high + 0.05, True)):
        robot.data.qpos[2] = z
        mujoco.mj_kinematics(robot.model, robot.data)
        assert robot.terminated is out and robot.done is out
    robot.reset(1)
    robot.data.qpos[2] = 2.5
    mujoco.mj_kinematics(robot.model, robot.data)
    assert robot.t == 0 and not robot.done


def test_actions_for_other_joints_or_kinds_are_refused(reacher_off: GoalReachEnv) -> None:
    robot = SimRobot("reacher", dr="off", env=reacher_off)
    robot.reset(0)
    values = np.array([0.3, -0.2])
    np.testing.assert_array_equal(
        robot.order(("elbow", "shoulder"), values, "position"), [-0.2, 0.3]
    )
    for joints, vals, command, reason in [
        (("shoulder", "elbow"), values, "effort", "command"),
        (("shoulder", "wrist"), values, "position", "joints"),
        (("shoulder",), values[:1], "position", "joints"),
        (("shoulder", "elbow", "wrist"), np.r_[values, 0.0], "position", "joints"),
    ]:
        with pytest.raises(ActionError) as e:
            robot.order(joints, vals, command)
        assert e.value.reason == reason
    robot.apply(np.array([10.0, -10.0]))  # beyond the ctrlrange: clipped as a servo would
    robot.step_physics()
    np.testing.assert_allclose(robot.data.ctrl, [3.14, -2.6])
    np.testing.assert_allclose(robot.last_command, [3.14, -2.6])



def test_a_held_pose_stays_put_and_bad_poses_are_refused(reacher_off: GoalReachEnv) -> None:
    """`hold_pose`: the arm where it is put, still, its servos holding it there; what is in
    flight is dropped; a pose of the wrong size, a non-finite one or a torque robot refused."""
    robot = SimRobot("reacher", dr="off", env=reacher_off)
    robot.reset(0)
    robot.apply(np.array([1.0, 1.0]))  # in flight: dropped by the hold
    robot.hold_pose(np.array([-2.5, 1.2]))
    np.testing.assert_allclose(robot.true_reading().joint_pos, [-2.5, 1.2])
    np.testing.assert_allclose(robot.last_command, [-2.5, 1.2])
    robot.step_control()
    reading = robot.true_reading()
    np.testing.assert_allclose(reading.joint_pos, [-2.5, 1.2], atol=1e-3)
    assert np.abs(reading.joint_vel).max() < 0.05
    robot.hold_pose(np.array([10.0, -10.0]))  # past the stops: held at them, as commanded
    np.testing.assert_allclose(robot.last_command, [3.14, -2.6])
    for bad in (np.array([0.1]), np.array([0.1, math.nan])):
        with pytest.raises(ActionError):
            robot.hold_pose(bad)
    humanoid = SimRobot("humanoid", dr="off")  # torque motors
    humanoid.reset(0)
    with pytest.raises(RobotError, match="position servos"):
        humanoid.hold_pose(np.zeros(len(humanoid.action_joints)))

# -- the real-time server on loopback --------------------------------------------------------------


class FakeRuntime:
    """The runtime's side of the transport, bound and connected by hand: reads every
    observation and telemetry message, publishes actions."""

    def __init__(self, ep: Endpoints):
        self.ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self.obs: Reader[Observation] = Reader(self.ctx, ep.observations, Observation, False)
        self.tel: Reader[Telemetry] = Reader(self.ctx, ep.telemetry, Telemetry, False)
        self.actions = self.ctx.socket(zmq.PUB)
        self.actions.setsockopt(zmq.LINGER, 0)
        self.actions.bind(ep.actions)
        self.seq = 0

    def send(self, joints: tuple[str, ...], values: list[float], command: str = "position",
             obs: Observation | None = None) -> None:
        self.seq += 1
        self.actions.send(encode(Action(
            1, self.seq, time.time(), joints, np.asarray(values, np.float64), command, False,
            -1 if obs is None else obs.seq, 0.0 if obs is None else obs.stamp,
        )))

    def close(self) -> None:
        self.ctx.destroy(linger=0)


def test_serve_publishes_and_applies_the_newest_action(reacher_off: GoalReachEnv) -> None:
    """In-process server (a thread), real sockets: observations come at the control rate, and
    an action sent changes the actuators' ctrl; wrong actions are counted, not applied."""
    ep = Endpoints("127.0.0.1", free_base_port())
    robot = SimRobot("reacher", dr="off", seed=0, env=reacher_off)
    speed = 5.0
    stop = threading.Event()
    announced: list[str] = []
    stats = ServeStats()
    runtime = FakeRuntime(ep)
    server = threading.Thread(target=serve, args=(robot, ep), kwargs=dict(
        speed=speed, stop=stop.is_set, announce=announced.append, stats=stats))
    server.start()
    try:
        target = [0.5, -1.0]  # shoulder, elbow; sent in the other order
        observations: list[Observation] = []
        deadline = time.monotonic() + 120  # a hang guard, not a speed bound
        while time.monotonic() < deadline and server.is_alive():
            obs = runtime.obs.poll(timeout_ms=200)
            if obs is None:
                continue
            observations.append(obs)
            if stats.dropped["command"] == 0:
                runtime.send(("shoulder", "elbow"), target, command="effort", obs=obs)
            else:
                runtime.send(("elbow", "shoulder"), target[::-1], obs=obs)
            if np.array_equal(robot.data.ctrl[robot.act_ids], target) and len(observations) > 20:
                break
        np.testing.assert_array_equal(robot.data.ctrl[robot.act_ids], target)
        assert stats.actions_received > 0 and stats.dropped["command"] >= 1
        assert announced and "reacher publishing on " + ep.observations in announced[0]
        assert observations[0].joint_names == ("shoulder", "elbow")
        # Paced, never ahead of the control rate (a busy machine only makes it slower).
        span = observations[-1].stamp - observations[0].stamp
        assert span >= 0.5 * (len(observations) - 1) * robot.control_period / speed
    finally:
        stop.set()
        server.join(timeout=60)
        runtime.close()
    assert not server.is_alive()


def _ready_line(proc: subprocess.Popen[str]) -> str:
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("crl-sim robot:"):
            return line
    raise AssertionError(f"crl-sim robot exited (rc {proc.wait()}) before publishing")


def _messages(runtime: FakeRuntime) -> Iterator[tuple[list[Observation], list[Telemetry]]]:
    """(observations, telemetry) as they arrive, in order; a hang guard ends it."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        yield runtime.obs.drain(timeout_ms=100), runtime.tel.drain()
    raise AssertionError("the sim robot stopped publishing")


@pytest.mark.realtime
def test_cli_robot_end_to_end_on_loopback() -> None:
    """`crl-sim robot` as a process: an action-free episode is, value for value, the lockstep
    robot's (true achieved goal in telemetry, the same noisy observations); actions sent move
    the joints to their targets; SIGTERM stops it with exit 0. It runs with `--realtime`, as
    a robot's driver does, and says what scheduling it got."""
    port = free_base_port()
    ep = Endpoints("127.0.0.1", port)
    seed, speed = 1, 5.0
    cmd = [sys.executable, "-m", "crl.sim.cli", "robot", "reacher", "--dr", "held-out",
           "--seed", str(seed), "--speed", str(speed), "--port", str(port), "--realtime"]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"})
    runtime: FakeRuntime | None = None
    try:
        line = _ready_line(proc)
        assert f"reacher publishing on tcp://127.0.0.1:{port}" in line
        assert ("running with SCHED_FIFO priority 50 (its transport's I/O threads 51)" in line
                or "real-time scheduling refused" in line), line
        runtime = FakeRuntime(ep)
        # Phase 1, no actions: wait for an episode seen whole, observations paired with
        # telemetry by their shared stamp.
        stamps: dict[float, Observation] = {}
        episodes: dict[int, dict[int, Telemetry]] = {}
        whole = None
        for observations, tels in _messages(runtime):
            for o in observations:
                stamps[o.stamp] = o
            for t in tels:
                episodes.setdefault(t.episode, {})[t.step] = t
            whole = next((e for e, steps in episodes.items()
                          if len(steps) == REACHER_STEPS + 1), None)
            if whole is not None:
                break
        assert whole is not None
        tel = episodes[whole]
        lockstep = SimRobot("reacher", dr="held-out", seed=seed)
        lock = lockstep.reset(whole)
        assert lock.obs_noise_std["joint_pos"] > 0
        for t in range(REACHER_STEPS + 1):
            assert tel[t].episode_length == REACHER_STEPS and tel[t].actions_received == 0
            assert tel[t].command.shape == (2,)
            assert math.isnan(tel[t].action_latency_ms) and math.isnan(tel[t].action_applied_ms)
            np.testing.assert_array_equal(tel[t].goal, lock.goal)
            np.testing.assert_allclose(tel[t].achieved_goal, lockstep.achieved_goal(), atol=1e-12)
            if t < REACHER_STEPS:
                want = lockstep.observation()
                got = stamps.get(tel[t].stamp)
                if got is not None:
                    np.testing.assert_allclose(got.joint_pos, want.joint_pos, atol=1e-12)
                    assert not np.allclose(got.joint_pos, lockstep.true_reading().joint_pos)
                lockstep.step_control()
        # Phase 2: answer every observation with one target; the joints get there.
        target = {"shoulder": 1.0, "elbow": -1.0}
        # Dropped (counted at exit): it answers one of this robot's observations, so the
        # robot reads it, and names a joint the robot does not have.
        runtime.send(("shoulder", "nope"), [0.0, 0.0], obs=next(reversed(stamps.values())))
        time.sleep(0.05)
        # Telemetry queued up while the lockstep robot compiled: judge only episodes that
        # start after the first one in which an action arrived.
        acted: int | None = None
        reached = None
        for observations, tels in _messages(runtime):
            for o in observations:
                stamps[o.stamp] = o
            if observations:
                runtime.send(tuple(target), list(target.values()), obs=observations[-1])
            for t in tels:
                if acted is None and t.actions_received > 0:
                    acted = t.episode
                late_in_episode = 40 <= t.step < REACHER_STEPS and t.stamp in stamps
                if acted is not None and t.episode > acted and late_in_episode:
                    reached = (t, stamps[t.stamp])
            if reached is not None:
                break
        assert reached is not None
        t, o = reached
        q = dict(zip(o.joint_names, o.joint_pos, strict=True))
        assert t.actions_received > 0 and math.isfinite(t.action_latency_ms)
        assert t.action_latency_ms >= 0
        # Taken as it arrived, applied from the next physics step after the episode's delay.
        assert math.isfinite(t.action_applied_ms)
        assert t.action_applied_ms >= t.action_latency_ms
        # Telemetry carries the command the robot took (the closed loop's oscillation figure).
        np.testing.assert_allclose(t.command, list(target.values()))
        for name, value in target.items():
            assert abs(q[name] - value) < 0.05, (name, q[name])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=60) == 0
        assert proc.stderr is not None
        tail = proc.stderr.read()
        assert "crl-sim robot: stopped:" in tail and "(joints 1)" in tail, tail
    finally:
        if runtime is not None:
            runtime.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_the_robot_clock_runs_its_ppm_fast_or_slow() -> None:
    """`crl-sim robot --clock-ppm`: its clock (physics pace and stamps) against this computer's;
    a minute at +100 ppm is 6 ms ahead, at -100 ppm 6 ms behind."""
    for ppm in (100.0, -100.0):
        clock = RobotClock(ppm)
        minute_later = clock.host_start + 60.0
        assert clock.elapsed(minute_later) == pytest.approx(60.0 + ppm * 60e-6, abs=1e-9)
        assert clock.wall(minute_later) - clock.wall_start == pytest.approx(
            60.0 + ppm * 60e-6, abs=1e-6)
        assert clock.host_time(clock.elapsed(minute_later)) == pytest.approx(minute_later)
    for bad in (math.nan, math.inf, 20_000.0, -20_000.0):
        with pytest.raises(ClockError, match="clock ppm"):
            RobotClock(bad)


def test_step_deadlines_are_absolute_and_a_lag_or_a_reset_reanchors_them() -> None:
    """The physics loop's clock (`crl-sim robot`, `sim_bridge`): deadlines a step apart from its
    start, never from the last wake-up; a loop more than the lag limit behind is re-anchored
    (reported) rather than run through the missed steps; a reset re-anchors without a report."""
    step, clock = 0.005, RobotClock(0.0)
    steps = StepClock(step, lag_limit=0.1, clock=clock)
    woken: list[float] = []
    for _ in range(4):
        assert not steps.wait(lambda deadline: (woken.append(deadline), time.sleep(
            max(0.0, deadline - time.monotonic()))))
    assert np.diff(woken) == pytest.approx([step] * 3, abs=1e-9)  # absolute, no accumulation
    time.sleep(0.25)  # a stall of 50 steps, past the lag limit
    stalled = time.monotonic()
    assert steps.wait()  # re-anchored, reported
    after: list[float] = []
    assert not steps.wait(after.append)
    assert after[0] > stalled  # the next deadline is ahead, not 50 steps in the past
    time.sleep(0.03)  # an episode's reset, after which the loop re-anchors
    reset = time.monotonic()
    steps.reanchor()
    after.clear()
    assert not steps.wait(after.append)
    assert after[0] > reset


def test_the_next_draw_is_made_between_two_observations(reacher_off: GoalReachEnv) -> None:
    """The next episode's draw (a few ms of the env's jitted reset) is made at the first physics
    step between two control steps past the episode's first, not as an observation goes out
    (when the runtime's answer is on its way); the reset then uses it, drawing nothing."""
    robot = SimRobot("reacher", dr="off", seed=0, env=reacher_off)
    robot.reset(0)
    want = robot.draw(1)
    drawn = []
    for _ in range(3 * robot.substeps):
        robot.step_physics()
        if robot.prefetch_if_due():
            drawn.append(robot.physics_steps)
    assert drawn == [robot.substeps + 1]

    def no_draw(index: int) -> Episode:
        raise AssertionError(f"episode {index} drawn at its reset")

    robot.draw = no_draw  # type: ignore[method-assign]
    ep = robot.reset(1)
    np.testing.assert_array_equal(ep.qpos, want.qpos)
    np.testing.assert_array_equal(ep.goal, want.goal)
    assert not robot.prefetch_if_due()  # a new episode: nothing due before its first step
