"""The goal ramp (`ActionSpec.goal_ramp`): after a new goal the controller ramps its commands in
from the one held when it came, over as many ticks as the policy's episodes began with, and not
for a goal re-sent, moved within the success radius, or refused."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from robot_fixtures import JOINTS, observation, reacher_spec

from crl.core.spec import PolicySpec, SpecError
from crl.runtime import robot_config
from crl.runtime.controller import Controller

RAMP = 5
Q0 = (0.3, -0.5)  # where the robot is measured, in JOINTS order
ACTION = np.array([0.5, 0.25])  # the policy's constant output: [1.57, 0.65] rad
PERIOD = 0.04  # the reacher spec's 25 Hz
GOAL = np.array([0.1, 0.05])
# No soft start and no rate limit of the robot's own, so a ramp is the goal ramp alone.
CONFIG = robot_config.load("reacher").replace_safety(soft_start=0.0, max_action_change=None)


class Constant:
    """A policy that always says ACTION, or raises while `failing`."""

    def __init__(self, spec: PolicySpec):
        self.spec = spec
        self.failing = False

    def act(self, obs: np.ndarray, goal: np.ndarray) -> np.ndarray:
        if self.failing:
            raise RuntimeError("backend lost")
        return ACTION.astype(np.float32)


def ramped(steps: int, **safety: object) -> tuple[Controller, list[float]]:
    spec = reacher_spec()
    spec = dataclasses.replace(spec, action=dataclasses.replace(spec.action, goal_ramp=steps))
    config = CONFIG.replace_safety(**safety) if safety else CONFIG
    c = Controller(Constant(spec), config)
    c.start(observation(Q0), 0.0)
    return c, [0.0]


def tick(c: Controller, clock: list[float]) -> tuple[np.ndarray, str]:
    """One tick with a fresh observation of the robot standing at Q0."""
    clock[0] += PERIOD
    c.observe(observation(Q0), clock[0])
    command = c.tick(clock[0])
    by_joint = dict(zip(command.joints, command.values, strict=True))
    return np.array([by_joint[j] for j in JOINTS]), command.mode


def target() -> np.ndarray:
    spec = reacher_spec()
    return np.asarray(spec.action.offset) + np.asarray(spec.action.scale) * ACTION


def test_the_first_goal_s_commands_ramp_in_from_the_measured_pose() -> None:
    c, clock = ramped(RAMP)
    assert tick(c, clock)[1] == "no_goal"
    assert c.set_goal("world", GOAL)[0]
    start = np.array(Q0)
    for k in range(1, RAMP + 1):
        values, mode = tick(c, clock)
        np.testing.assert_allclose(values, start + k / RAMP * (target() - start), atol=1e-12)
        assert mode == "soft_start"
    values, mode = tick(c, clock)
    np.testing.assert_allclose(values, target(), atol=1e-12)
    assert mode == "running"


def test_a_new_goal_ramps_in_from_the_last_command_a_resent_or_near_one_does_not() -> None:
    c, clock = ramped(RAMP)
    c.set_goal("world", GOAL)
    for _ in range(RAMP + 1):
        tick(c, clock)
    held = tick(c, clock)[0]  # the command held when the next goal comes
    # The same goal again (a goal topic re-sent) and one moved less than the success radius
    # (a goal stream following a target): the same reach goes on.
    radius = c.spec.success_radius
    for goal in (GOAL, GOAL + np.array([0.9 * radius, 0.0])):
        assert c.set_goal("world", goal)[0]
        values, mode = tick(c, clock)
        assert mode == "running"
        np.testing.assert_allclose(values, target(), atol=1e-12)
    # A refused goal (outside the goal box) starts nothing either.
    assert not c.set_goal("world", np.array([5.0, 0.0]))[0]
    assert tick(c, clock)[1] == "running"
    # A new reach: from the command held, as an episode of training began.
    assert c.set_goal("world", GOAL + np.array([-0.15, 0.0]))[0]
    values, mode = tick(c, clock)
    assert mode == "goal_ramp"
    np.testing.assert_allclose(values, held + (target() - held) / RAMP, atol=1e-12)


@pytest.mark.parametrize("stop", ["policy_error", "stale"])
def test_a_stop_during_a_goal_ramp_runs_the_whole_ramp_again(stop: str) -> None:
    """The reach a goal began is not done when a stop cuts its ramp: without a soft start of
    the robot's own the next action would otherwise go straight to the policy's command."""
    c, clock = ramped(RAMP)
    c.set_goal("world", GOAL)
    for _ in range(RAMP + 1):
        tick(c, clock)
    assert c.set_goal("world", -GOAL)[0]
    assert [tick(c, clock)[1] for _ in range(2)] == ["goal_ramp"] * 2
    if stop == "policy_error":
        c.policy.failing = True  # type: ignore[attr-defined]
        assert tick(c, clock)[1] == "fault"
        c.policy.failing = False  # type: ignore[attr-defined]
    else:
        clock[0] += 10 * PERIOD  # no observation for longer than the staleness limit
        assert c.tick(clock[0]).mode == "stale"
    start = np.array(Q0)  # where the stop held the robot (it stands at Q0)
    for k in range(1, RAMP + 1):
        values, mode = tick(c, clock)
        assert mode == "soft_start"
        np.testing.assert_allclose(values, start + k / RAMP * (target() - start), atol=1e-12)
    assert tick(c, clock)[1] == "running"


def test_with_a_soft_start_due_as_well_the_longer_ramp_runs() -> None:
    c, clock = ramped(RAMP, soft_start=2 * RAMP * PERIOD)  # 10 ticks of soft start
    c.set_goal("world", GOAL)
    modes = [tick(c, clock)[1] for _ in range(2 * RAMP + 1)]
    assert modes == ["soft_start"] * (2 * RAMP) + ["running"]
    c, clock = ramped(2 * RAMP, soft_start=RAMP * PERIOD)
    c.set_goal("world", GOAL)
    modes = [tick(c, clock)[1] for _ in range(2 * RAMP + 1)]
    assert modes == ["soft_start"] * (2 * RAMP) + ["running"]


def test_a_policy_without_a_goal_ramp_goes_straight_to_each_new_goal() -> None:
    c, clock = ramped(0)
    c.set_goal("world", GOAL)
    values, mode = tick(c, clock)
    assert mode == "running"
    np.testing.assert_allclose(values, target(), atol=1e-12)
    c.set_goal("world", -GOAL)
    assert tick(c, clock)[1] == "running"


@pytest.mark.parametrize("ramp", [-1, 1.5, True, "25", None, 10 * 25 + 1])
def test_a_spec_s_goal_ramp_must_be_a_count_of_ticks_within_reason(ramp: object) -> None:
    d = reacher_spec().to_dict()
    d["action"]["goal_ramp"] = ramp
    with pytest.raises(SpecError, match=r"spec\.action\.goal_ramp"):
        PolicySpec.from_dict(d)


def test_a_spec_from_before_the_goal_ramp_has_none() -> None:
    d = reacher_spec().to_dict()
    del d["action"]["goal_ramp"]
    assert PolicySpec.from_dict(d).action.goal_ramp == 0
    d["action"]["goal_ramp"] = 10 * 25  # 10 s at 25 Hz, the most a spec may ask
    assert PolicySpec.from_dict(d).action.goal_ramp == 250
