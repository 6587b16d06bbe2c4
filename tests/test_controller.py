"""The controller, observation assembly, robot configs and the fixed-rate loop (no sockets)."""

from __future__ import annotations

import importlib.util
import json
import math
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from robot_fixtures import JOINTS, export_policy, fingertip, observation, reacher_spec

from crl.runtime import robot_config
from crl.runtime.controller import Controller, Stats
from crl.runtime.loop import USUAL_EVERY, FixedRateLoop
from crl.runtime.observation import ObservationError
from crl.runtime.policy import load_policy
from crl.runtime.robot_config import RobotConfigError

# Control loops at real rate in real processes: `make test` runs these after the parallel pass,
# with no other test beside them (pyproject's `realtime` marker).
pytestmark = pytest.mark.realtime

REACHER = robot_config.load("reacher")


@pytest.fixture(scope="module")
def policy_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_policy(tmp_path_factory.mktemp("ctl") / "reacher.onnx")


@pytest.fixture(scope="module")
def nan_policy_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return export_policy(tmp_path_factory.mktemp("ctl") / "nan.onnx", nan=True)


def make(policy_path: Path, **safety: object) -> Controller:
    config = REACHER.replace_safety(**safety) if safety else REACHER
    c = Controller(load_policy(policy_path), config)
    c.start(observation(), 0.0)
    return c


def test_assembly_picks_joints_by_name_and_derives_the_fingertip(policy_path: Path) -> None:
    c = make(policy_path)
    q, qd = (0.4, -1.1), (0.5, -0.25)
    obs = observation(q, qd, names=("extra", "elbow", "shoulder"))
    c.observe(obs, 0.0)
    x = c.assembler.assemble(obs, np.array([0.5, -0.5]))
    s = c.spec.observation_slices()
    np.testing.assert_allclose(x[s["joint_pos"]], q, atol=1e-6)
    np.testing.assert_allclose(x[s["joint_vel"]], qd, atol=1e-6)
    np.testing.assert_allclose(x[s["site_pos"]], fingertip(q), atol=1e-6)
    np.testing.assert_allclose(x[s["last_action"]], [0.5, -0.5])


def test_a_robot_missing_a_joint_is_refused_by_name(policy_path: Path) -> None:
    c = Controller(load_policy(policy_path), REACHER)
    with pytest.raises(ObservationError, match="elbow"):
        c.start(observation(names=("shoulder",)), 0.0)
    c.start(observation(), 0.0)
    # After the start, such an observation is refused and counted, not used.
    assert not c.observe(observation(names=("shoulder",)), 1.0)
    assert c.stats.counts["observation_rejections"] == 1 and c.latest_time == 0.0


def test_config_that_does_not_fit_the_spec_is_refused_naming_the_field(tmp_path: Path) -> None:
    spec = reacher_spec()
    base = {"task": "reacher", "model": "reacher.xml", "command_joints": list(JOINTS),
            "observation": {"joint_pos": "joint_position", "joint_vel": "joint_velocity",
                            "site_pos": {"forward_kinematics": "fingertip"},
                            "last_action": "last_action"}}
    robot_config.parse(base).check_against(spec)
    no_site = {**base, "observation": {k: v for k, v in base["observation"].items()
                                       if k != "site_pos"}}
    with pytest.raises(RobotConfigError, match="site_pos"):
        robot_config.parse(no_site).check_against(spec)
    other_model = tmp_path / "reacher.xml"
    other_model.write_text(robot_config.ASSETS.joinpath("reacher.xml").read_text() + "\n")
    with pytest.raises(RobotConfigError, match="sha256"):
        robot_config.parse({**base, "model": str(other_model)}).check_against(spec)
    with pytest.raises(RobotConfigError, match="command_joints"):
        robot_config.parse({**base, "command_joints": ["shoulder"]}).check_against(spec)
    with pytest.raises(RobotConfigError, match="unknown source"):
        robot_config.parse({**base, "observation": {"joint_pos": "encoders"}})
    with pytest.raises(RobotConfigError, match="safe_action"):
        robot_config.parse({**base, "safety": {"safe_action": "freeze"}})
    effort = spec.replace(action=spec.action.__class__(
        2, JOINTS, "effort", (1.0, 1.0), (0.0, 0.0), (-1.0, -1.0), (1.0, 1.0)))
    with pytest.raises(RobotConfigError, match="hold"):
        robot_config.parse(base).check_against(effort)


def test_every_shipped_robot_config_loads() -> None:
    names = sorted(p.stem for p in robot_config.ROBOTS.glob("*.yaml"))
    assert names == ["ant", "ant_u_maze", "arm_reach", "humanoid", "reacher"]
    for name in names:
        config = robot_config.load(name)
        assert config.task == name and config.model is not None and config.model.is_file()


def test_goals_are_validated_and_a_rejected_goal_keeps_the_previous(policy_path: Path) -> None:
    c = make(policy_path)  # reacher.yaml: margin 0.01 around the box ±0.2
    assert c.set_goal("world", [0.1, 0.05]) == (True, "accepted")
    for frame, goal, reason in [
        ("map", [0.1, 0.1], "frame 'map'"),
        ("world", [0.1], "1 values"),
        ("world", [np.nan, 0.1], "non-finite"),
        ("world", [0.1, np.inf], "non-finite"),
        ("world", [0.215, 0.0], "outside"),
    ]:
        ok, why = c.set_goal(frame, goal)
        assert not ok and reason in why, why
    np.testing.assert_allclose(c.goal, [0.1, 0.05])
    assert c.stats.counts["goal_rejections"] == 5 and c.stats.counts["goals_accepted"] == 1
    assert c.set_goal("world", [0.205, -0.205])[0]  # inside the margin


def test_no_goal_holds_the_measured_pose(policy_path: Path) -> None:
    c = make(policy_path)
    cmd = c.tick(0.01)
    assert cmd.safe and cmd.mode == "no_goal" and cmd.joints == ("shoulder", "elbow")
    np.testing.assert_allclose(cmd.values, [0.3, -0.5])  # observation()'s default pose


def test_stale_observation_sends_the_safe_action_then_soft_starts(policy_path: Path) -> None:
    c = make(policy_path, soft_start=0.2, max_action_change=100.0)  # 5 ticks of ramp at 25 Hz
    c.set_goal("world", [0.1, 0.1])
    policy = load_policy(policy_path)
    period = c.period
    for k in range(10):  # run in, past the soft start
        c.observe(observation(), k * period)
        c.tick(k * period + 0.001)
    assert np.abs(c.last_sent - [0.3, -0.5]).max() > 0.1  # the policy commands elsewhere
    # No observation since t = 9 periods: stale beyond 3 periods.
    stale_at = 9 * period + c.max_age + 1e-6
    cmd = c.tick(stale_at)
    assert cmd.safe and cmd.mode == "stale"
    np.testing.assert_allclose(cmd.values, [0.3, -0.5])  # hold = where it was last measured
    c.tick(stale_at + period)
    assert c.stats.counts["stale_stops"] == 1  # one stop, however long it lasts
    # Fresh data, the arm moved meanwhile: the policy ramps in over 5 ticks from where it is
    # now measured (its last action too), not from the held command.
    q = (0.6, -0.9)
    obs = observation(q)
    now = stale_at + 2 * period
    c.observe(obs, now)
    x = c.assembler.assemble(obs, (np.array(q) - c.offset) / c.scale)
    target = np.clip(c.offset + c.scale * policy.act(x, c.goal), c.low, c.high)
    cmd = c.tick(now)
    assert not cmd.safe and cmd.mode == "soft_start"
    np.testing.assert_allclose(cmd.values, q + (target - q) / 5, atol=1e-5)


@pytest.mark.parametrize(("moved", "continuous"), [(0.5, True), (4.0, False)])
def test_a_stale_stop_resumes_from_the_last_command_unless_the_robot_was_moved(
    policy_path: Path, moved: float, continuous: bool
) -> None:
    """Data goes stale while the last command is far from where the robot is measured (a
    saturated policy, a lagging arm), and comes back after one stale tick with the robot `moved`
    rate-limit steps from where the stop held it. Within RESUME_STEPS steps (it held still)
    every command stays within a step of the one before (the 10-minute soak found a 1.684 step
    against a 1.5 limit); further (moved by hand) the commands start within a step of where it
    is, not from the old target."""
    limit = 0.2
    c = make(policy_path, soft_start=0.2, max_action_change=limit)
    c.set_goal("world", [0.1, 0.1])
    period = c.period
    sent = []
    for k in range(40):  # the policy commands away from where the arm stays measured
        c.observe(observation(), k * period)
        sent.append(c.tick(k * period + 0.001).values)
    assert np.abs(sent[-1] - [0.3, -0.5]).max() > 2 * limit  # more than a step from the pose
    stale_at = 39 * period + c.max_age + 1e-6
    sent.append(c.tick(stale_at).values)  # one stale tick: the hold is a step on its way
    assert c.stats.counts["stale_stops"] == 1
    q = tuple(np.array([0.3, -0.5]) + moved * limit * np.array([1.0, -1.0]))
    t = stale_at + period
    for k in range(8):  # fresh again: the soft start
        c.observe(observation(q), t + k * period)
        sent.append(c.tick(t + k * period).values)
    steps = np.abs(np.diff(sent, axis=0)).max(axis=1)
    if continuous:
        assert steps.max() <= limit + 1e-12, steps
    else:  # one step larger than the limit, to within a step of where the robot is
        np.testing.assert_array_less(np.abs(sent[-8] - q), limit + 1e-9)
        assert (steps > limit + 1e-12).sum() == 1 and steps[-8] > limit, steps


def run_in(c: Controller, q: tuple[float, float], ticks: int, session: int = 7,
           start: float = 0.0) -> float:
    """Observe `q` and tick at the control rate for `ticks` periods; the time reached."""
    t = start
    for _ in range(ticks):
        c.observe(observation(q, session=session), t)
        c.tick(t + 0.001)
        t += c.period
    return t


def assert_ramps_from(c: Controller, q: tuple[float, float], t: float, ticks: int,
                      session: int) -> list[np.ndarray]:
    """Commands for `ticks` periods of a robot measured at `q`: the first within the rate limit
    of `q`, each within the rate limit of the one before; returns them (spec order)."""
    sent: list[np.ndarray] = []
    for _ in range(ticks):
        c.observe(observation(q, session=session), t)
        cmd = c.tick(t + 0.001)
        values = cmd.values[np.argsort(c.to_command)]  # command order → spec order
        previous = sent[-1] if sent else np.asarray(q)
        assert np.abs(values - previous).max() <= c.max_change + 1e-9, (values, previous)
        sent.append(values)
        t += c.period
    return sent


def test_a_restarted_robot_in_another_pose_is_never_commanded_a_jump(policy_path: Path) -> None:
    """Issue 23: a new robot's elbow at -1.348 rad was commanded the previous robot's 2.019."""
    c = make(policy_path, soft_start=0.2, max_action_change=0.05)
    c.set_goal("world", [-0.15, 0.1])
    t = run_in(c, (0.3, 1.9), 40)  # the previous robot, commanded for 1.6 s
    before = c.last_sent.copy()
    new = (0.1, -1.348)
    assert np.abs(before - new).max() > 1.0
    # Restarted before the staleness limit (no stale stop): the next observation is another
    # session. The soft start begins where the new robot is measured, and so does its
    # `last_action`.
    c.observe(observation(new, session=8), t)
    assert c.stats.counts["robot_restarts"] == 1
    x = c.policy_input()
    np.testing.assert_allclose(x[c.spec.observation_slices()["last_action"]],
                               (np.array(new) - c.offset) / c.scale, atol=1e-6)
    assert_ramps_from(c, new, t, 10, session=8)
    assert c.stats.counts["stale_stops"] == 0 and c.stats.mode == "running"  # ramped in

    # Restarted after a stale stop: the safe action holds the old robot's last measured pose;
    # the new one (another pose again) is held, then ramped into, from where it is measured.
    c = make(policy_path, soft_start=0.2, max_action_change=0.05)
    c.set_goal("world", [-0.15, 0.1])
    t = run_in(c, (0.3, 1.9), 40)
    t += c.max_age + c.period
    stale = c.tick(t)
    assert stale.safe and stale.mode == "stale" and c.stats.counts["stale_stops"] == 1
    other = (-0.7, 0.4)
    assert_ramps_from(c, other, t + c.period, 10, session=9)
    assert c.stats.counts["robot_restarts"] == 1 and c.stats.counts["stale_stops"] == 1
    assert c.stats.mode == "running"


def test_a_robot_moved_outside_the_controller_is_taken_as_restarted(policy_path: Path) -> None:
    """A simulator's reset (`crl-sim robot`'s next episode, Gazebo's) puts the robot in another
    pose in the same session. The controller went on from its last command: the arm's first
    command of an episode was 1 rad from where it stood, and 25 of 60 held-out episodes failed.
    With `max_joint_speed`, joints measured moving faster than that are handled as a restart."""
    c = make(policy_path, soft_start=0.2, max_action_change=0.05, max_joint_speed=10.0)
    c.start(observation((0.3, 1.9)), 0.0)
    c.set_goal("world", [-0.15, 0.1])
    t = run_in(c, (0.3, 1.9), 40)
    assert c.stats.counts["joint_jumps"] == 0
    new = (0.1, 0.6)  # 1.3 rad in one period (0.04 s): 32 rad/s
    assert np.abs(c.last_sent - new).max() > 1.0
    c.observe(observation(new), t)
    assert c.stats.counts["joint_jumps"] == 1 and c.stats.counts["robot_restarts"] == 0
    x = c.policy_input()
    np.testing.assert_allclose(x[c.spec.observation_slices()["last_action"]],
                               (np.array(new) - c.offset) / c.scale, atol=1e-6)
    assert_ramps_from(c, new, t, 10, session=7)
    assert c.stats.counts["joint_jumps"] == 1 and c.stats.mode == "running"

    # Off (the default): the same reset goes on from the last command, one rate-limit step.
    c = make(policy_path, soft_start=0.2, max_action_change=0.05)
    c.set_goal("world", [-0.15, 0.1])
    t = run_in(c, (0.3, 1.9), 40)
    before = c.last_sent.copy()
    c.observe(observation(new), t)
    cmd = c.tick(t + 0.001)
    assert c.stats.counts["joint_jumps"] == 0
    assert np.abs(cmd.values[np.argsort(c.to_command)] - before).max() <= 0.05 + 1e-9


def test_motion_and_a_fast_noisy_stream_are_not_jumps(policy_path: Path) -> None:
    """Motion below the speed is motion, however it is sampled: a joint at 0.9x the speed
    observed once a period, or a 1 kHz stream whose noise alone would read 20 rad/s over its
    1 ms (the time between is taken as at least one control period); one observation late by
    two periods may carry three periods of motion."""
    t, q = 0.0, np.array([0.0, 0.5])
    c = make(policy_path, max_joint_speed=10.0)
    c.start(observation(tuple(q)), t)
    c.set_goal("world", [-0.15, 0.1])
    for _ in range(50):
        q = q + np.array([0.9 * 10.0 * c.period, 0.0])
        c.observe(observation(tuple(q)), t)
        c.tick(t + 0.001)
        t += c.period
    rng = np.random.default_rng(0)
    for _ in range(200):
        c.observe(observation(tuple(q + rng.normal(0.0, 0.01, 2))), t)
        t += 0.001
    t += 3 * c.period
    c.observe(observation(tuple(q + np.array([2.5 * 10.0 * c.period, 0.0]))), t)
    assert c.stats.counts["joint_jumps"] == 0


def test_a_restarted_robot_gets_the_safe_pose_from_where_it_is(policy_path: Path) -> None:
    """`default_pose` and `zero` (position targets) are approached from the new robot's measured
    pose under the rate limit, not from what the previous robot was sent."""
    pose = robot_config.parse({
        "task": "reacher", "model": "reacher.xml", "command_joints": ["shoulder", "elbow"],
        "observation": {"joint_pos": "joint_position", "joint_vel": "joint_velocity",
                        "site_pos": {"forward_kinematics": "fingertip"},
                        "last_action": "last_action"},
        "safety": {"safe_action": "default_pose", "default_pose": {"shoulder": 1.0, "elbow": 1.0},
                   "max_action_change": 0.05},
    })
    for config in (pose, REACHER.replace_safety(safe_action="zero", max_action_change=0.05)):
        c = Controller(load_policy(policy_path), config)
        c.start(observation((0.3, -0.5)), 0.0)
        t = run_in(c, (0.3, -0.5), 60)  # no goal: the safe pose, reached
        safe_pose = c.last_sent.copy()
        new = (-1.2, 2.0)
        c.observe(observation(new, session=11), t)
        cmd = c.tick(t + 0.001)
        assert cmd.safe and c.stats.counts["robot_restarts"] == 1
        step = np.clip(safe_pose - new, -0.05, 0.05)
        np.testing.assert_allclose(cmd.values, np.asarray(new) + step)


class StepClock:
    """A clock the test moves by hand."""

    def __init__(self, t: float = 0.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_status_rate_and_longest_gap_show_a_stall(policy_path: Path) -> None:
    """A 300 ms stall: the rate over the last second drops and the longest gap shows it (the
    average since start, what `rate_hz` was, stayed above 23 Hz)."""
    c = make(policy_path)
    c.stats.clock = clock = StepClock(c.stats.clock())
    period = c.period

    def ticks(n: int) -> None:
        for _ in range(n):
            clock.t += period
            c.observe(observation(), clock.t)
            c.tick(clock.t)

    ticks(100)  # 4 s at 25 Hz
    s = c.stats.to_dict()
    assert s["rate_hz"] == pytest.approx(25.0, rel=1e-6)
    assert s["max_gap_ms"] == pytest.approx(period * 1e3, rel=1e-6)
    clock.t += 0.3  # the loop stalls
    ticks(10)
    s = c.stats.to_dict()
    # The last second holds 18 actions (0.3 s of it without any): ~18 Hz, not 25.
    assert s["rate_hz"] == pytest.approx(18 / (10 * period + 0.3 + 8 * period), rel=1e-6)
    assert s["max_gap_ms"] == pytest.approx((0.3 + period) * 1e3, rel=1e-6)
    ticks(1)
    s = c.stats.to_dict()  # the status was taken: a new interval for the longest gap
    assert s["max_gap_ms"] == pytest.approx(period * 1e3, rel=1e-6)
    assert s["max_gap_run_ms"] == pytest.approx((0.3 + period) * 1e3, rel=1e-6)
    # A stall still under way shows too: no action in the last window, and the open gap.
    clock.t += 1.5
    s = c.stats.to_dict()
    assert s["rate_hz"] == 0.0 and s["max_gap_ms"] == pytest.approx(1500, rel=1e-6)
    ticks(30)
    assert c.stats.to_dict()["rate_hz"] == pytest.approx(25.0, rel=1e-6)


def test_rate_limit_bounds_the_change_per_tick(policy_path: Path) -> None:
    c = make(policy_path, max_action_change=0.01, soft_start=0.0)
    c.set_goal("world", [-0.15, 0.1])
    previous = c.tick(0.001).values
    for k in range(1, 5):
        c.observe(observation(), k * c.period)
        values = c.tick(k * c.period + 0.001).values
        assert np.abs(values - previous).max() <= 0.01 + 1e-12
        previous = values


def test_nan_from_onnx_runtime_never_reaches_the_robot(nan_policy_path: Path) -> None:
    c = make(nan_policy_path)
    c.set_goal("world", [0.1, 0.1])
    raw = load_policy(nan_policy_path).act(np.zeros(c.spec.obs_dim), np.zeros(2))
    assert np.isnan(raw).any()  # the backend really does return NaN
    for k in range(3):
        c.observe(observation(), k * c.period)
        cmd = c.tick(k * c.period + 0.001)
        assert cmd.safe and cmd.mode == "fault" and np.isfinite(cmd.values).all()
    assert c.stats.counts["nonfinite_actions"] == 3


def test_a_backend_that_raises_gives_the_safe_action(policy_path: Path) -> None:
    class Broken:
        """A stand-in backend whose inference fails (a CUDA error, say)."""

        def __init__(self) -> None:
            self.inner = load_policy(policy_path)
            self.spec, self.backend = self.inner.spec, "broken"

        def act(self, observation: object, goal: object) -> np.ndarray:
            raise RuntimeError("device lost")

    c = Controller(Broken(), REACHER)  # type: ignore[arg-type]
    c.start(observation(), 0.0)
    c.set_goal("world", [0.1, 0.1])
    cmd = c.tick(0.001)
    assert cmd.safe and c.stats.counts["policy_errors"] == 1


def test_zero_and_default_pose_safe_actions(policy_path: Path) -> None:
    c = make(policy_path, safe_action="zero")
    cmd = c.tick(0.001)
    assert cmd.safe and cmd.mode == "no_goal"
    np.testing.assert_allclose(cmd.values, [0.0, 0.0])
    with pytest.raises(RobotConfigError, match="default_pose"):  # reacher.yaml has no pose
        REACHER.replace_safety(safe_action="default_pose")
    pose = robot_config.parse({
        "task": "reacher", "model": "reacher.xml", "command_joints": ["elbow", "shoulder"],
        "observation": {"joint_pos": "joint_position", "joint_vel": "joint_velocity",
                        "site_pos": {"forward_kinematics": "fingertip"},
                        "last_action": "last_action"},
        "safety": {"safe_action": "default_pose", "default_pose": {"shoulder": 1.0, "elbow": -2.0}},
    })
    c = Controller(load_policy(policy_path), pose)
    c.start(observation(), 0.0)
    cmd = c.tick(0.001)
    assert cmd.joints == ("elbow", "shoulder")  # the robot controller's order
    np.testing.assert_allclose(cmd.values, [-2.0, 1.0])


class FakeClock:
    """Simulated time: sleeping advances it, and every reading costs a microsecond."""

    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        self.t += 1e-6
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def test_loop_uses_absolute_deadlines_and_skips_missed_ones(monkeypatch: pytest.MonkeyPatch
                                                             ) -> None:
    clock = FakeClock()
    monkeypatch.setattr("crl.runtime.loop.time.sleep", clock.sleep)
    stats = Stats()
    loop = FixedRateLoop(0.01, stats, clock=clock, spin_s=0.0)
    deadlines: list[float] = []

    def on_tick(deadline: float, now: float) -> None:
        deadlines.append(deadline)
        if len(deadlines) == 5:
            clock.t += 0.035  # this tick overran by 3.5 periods

    loop.run(on_tick, threading.Event(), start=100.0, max_ticks=10)
    steps = np.diff(deadlines) / 0.01
    # On the grid (no drift). The overrun ended 0.5 period past the third deadline after it:
    # the two deadlines wholly passed are skipped, the third runs at once, late, and then the
    # grid goes on: no burst of catch-up ticks.
    np.testing.assert_allclose(steps, [1, 1, 1, 1, 3, 1, 1, 1, 1], atol=1e-6)
    assert stats.counts["misses"] == 3  # the overrunning tick and the two skipped deadlines
    errors = stats.period_error.values()
    assert errors[:5].max() < 1e-4 and 0.004 < errors[5] < 0.006


def test_window_keeps_the_newest_samples_in_order() -> None:
    from crl.runtime.controller import Window

    w = Window(5)
    for i in range(8):
        w.add(float(i))
    np.testing.assert_array_equal(w.values(), [3, 4, 5, 6, 7])
    assert w.max() == 7 and w.percentile(50) == 5


def test_a_policy_that_fails_its_warm_up_is_reported_not_raised(policy_path: Path) -> None:
    c = make(policy_path)
    assert c.warm_up() == ""

    def broken(x: object, g: object) -> object:
        raise RuntimeError("no such kernel")

    c.policy.act = broken  # type: ignore[method-assign]
    assert c.warm_up() == "RuntimeError: no such kernel"
    c.keep_warm()  # nothing raised; the ticks that act count it
    assert c.stats.counts["policy_errors"] == 0 and c.last_sent is not None


def test_a_warm_up_call_is_timed_as_the_ticks_policy_call(policy_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """`keep_warm` runs the tick's policy call after a safe action: a call the machine ran over
    twice its usual CPU time is counted slowed (its excess the platform's, as for an acting
    tick's call), one as usual is not."""
    c = make(policy_path)
    cpu = [0.0]
    monkeypatch.setattr("crl.runtime.loop.time.thread_time", lambda: cpu[0])
    act = c.policy.act

    def timed(x: object, g: object, cost: float = 0.0015) -> object:
        cpu[0] += cost
        return act(x, g)

    c.policy.act = timed  # type: ignore[method-assign]
    for _ in range(USUAL_EVERY):
        c.keep_warm()
    assert c.policy_work.usual == pytest.approx(0.0015)
    assert c.stats.counts["policy_slowed"] == 0
    c.policy.act = lambda x, g: timed(x, g, 0.0102)  # type: ignore[method-assign]
    c.keep_warm()
    assert c.stats.counts["policy_slowed"] == 1 and c.policy_work.calls == USUAL_EVERY + 1


def test_percentiles_are_numpys_to_the_bit_without_its_cost() -> None:
    """The status takes its percentiles in the loop: one sort, then numpy's linear method by
    hand, equal to `np.percentile` in every bit (any q, any size, NaN and inf left out)."""
    from crl.core.latency import percentile, percentiles, sorted_percentile

    rng = np.random.default_rng(0)
    for _ in range(2000):
        n = int(rng.integers(1, 1500))
        v = rng.standard_normal(n) * 10 ** rng.uniform(-6, 3)
        qs = (0, 50, 99, 99.9, 100, float(rng.uniform(0, 100)))
        assert list(percentiles(v, qs).values()) == list(np.percentile(v, qs))
    dirty = np.array([3.0, np.nan, 1.0, np.inf, 2.0, -np.inf])
    assert percentile(dirty, 50) == 2.0 and math.isnan(percentile([np.nan], 50))
    with pytest.raises(ValueError, match="within"):
        sorted_percentile(np.arange(3.0), 101)


def test_a_status_reports_each_windows_figures() -> None:
    stats = Stats(rate_hz=100.0)
    for i in range(2000):  # more than a window: the newest RECENT samples count
        stats.period_error.add(i * 1e-6)
        stats.policy_latency.add(1e-3)
        stats.end_to_end.add(2e-3)
    recent = np.arange(2000 - stats.period_error.RECENT, 2000) * 1e-6
    d = stats.to_dict()
    assert d["period_error_p50_ms"] == np.percentile(recent, 50) * 1e3
    assert d["period_error_p99_ms"] == np.percentile(recent, 99) * 1e3
    assert d["period_error_max_ms"] == recent.max() * 1e3
    assert d["policy_latency_p99_ms"] == 1.0 and d["end_to_end_p50_ms"] == 2.0


_THREAD_PRIORITIES = """
import os, zmq
from crl.runtime.loop import open_realtime

ctx = zmq.Context()
sock, said = open_realtime(lambda: ctx.socket(zmq.PUB))
if not said.startswith("running"):
    print("refused")
else:
    me = os.getpid()
    for tid in sorted(int(t) for t in os.listdir(f"/proc/{me}/task")):
        name = open(f"/proc/{me}/task/{tid}/comm").read().strip().replace(" ", "_")
        print(name if tid != me else "main", os.sched_getscheduler(tid) == os.SCHED_FIFO,
              os.sched_getparam(tid).sched_priority)
"""


def test_realtime_transport_threads_run_above_the_loop() -> None:
    """ZMQ's I/O threads must preempt the loop's spin (SCHED_FIFO does not time-slice), so a
    tick finds the observation that arrived just before it."""
    out = subprocess.run([sys.executable, "-c", _THREAD_PRIORITIES], capture_output=True,
                         text=True, check=True, timeout=60).stdout.split("\n")
    if out[0] == "refused":
        pytest.skip("SCHED_FIFO refused here (needs root or an rtprio limit)")
    threads = [line.split() for line in out if line]
    assert [t for t in threads if t[0] == "main"] == [["main", "True", "50"]]
    # libzmq names its I/O thread and its reaper ZMQbg/...; both inherit the level above.
    zmq_threads = [t for t in threads if t[0].startswith("ZMQbg")]
    assert zmq_threads and all(t[1:] == ["True", "51"] for t in zmq_threads), threads


def test_bench_loop_times_the_loop_against_a_loopback_robot(policy_path: Path,
                                                            tmp_path: Path) -> None:
    """`crl-run bench-loop`: the runtime and a loopback robot in two processes; the JSON has a
    period error per tick, the robot's end-to-end measurements, the host's steal and the
    target flags, and the plot is written."""
    out, plot = tmp_path / "loop.json", tmp_path / "loop.png"
    cmd = [sys.executable, "-m", "crl.runtime.cli", "bench-loop", "--policy", str(policy_path),
           "--hz", "100", "--seconds", "2", "--out", str(out), "--plot", str(plot)]
    plotting = importlib.util.find_spec("matplotlib") is not None
    if not plotting:  # the robot's plain install: refused before measuring, in one line
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "matplotlib" in r.stderr
        assert not out.exists()
        cmd = cmd[:-2]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    result = json.loads(out.read_text())
    assert result["ticks"] > 0 and len(result["period_error_samples_ms"]) == result["ticks"]
    assert result["end_to_end_ms"]["samples"] > 0
    assert 0 < result["end_to_end_ms"]["p50"] <= result["end_to_end_ms"]["max"]
    assert result["runtime_status"]["ticks"] == result["ticks"]
    assert set(result["targets"]) == {"period_error_p99_le_0.5ms", "zero_missed_deadlines"}
    assert result["targets"]["zero_missed_deadlines"] == (result["misses"] == 0)
    if Path("/proc/stat").exists():
        assert result["host"]["steal_s"] >= 0 and result["host"]["load_average_1min"] >= 0
    assert plot.stat().st_size > 0 if plotting else not plot.exists()
    # Progress on stderr (stdout keeps the one summary line); --plot runs the platform
    # baseline after the loop, as long as it (10 s at most), and records it.
    assert r.stdout.count("\n") == 1 and "bench-loop: 2/2 s, " in r.stderr
    if plotting:
        baseline = result["platform_baseline"]
        assert (baseline["hz"], baseline["ticks"]) == (100.0, 200)
        assert len(baseline["period_error_samples_ms"]) == 200
    else:
        assert "platform_baseline" not in result
