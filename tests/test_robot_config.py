"""Robot config edges: a default pose the robot does not have or cannot take, absurd safety
settings, and hostile YAML are refused in one bounded line naming the key."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import pytest
from robot_fixtures import JOINTS, reacher_spec

from crl.core.spec import ActionSpec
from crl.runtime import robot_config
from crl.runtime.messages import bounded
from crl.runtime.robot_config import (
    MAX_CONFIG_BYTES,
    MAX_ERROR_CHARS,
    MAX_OBSERVATION_AGE_PERIODS,
    RobotConfigError,
)

BASE: dict[str, Any] = {
    "task": "reacher", "model": "reacher.xml", "command_joints": list(JOINTS),
    "observation": {"joint_pos": "joint_position", "joint_vel": "joint_velocity",
                    "site_pos": {"forward_kinematics": "fingertip"},
                    "last_action": "last_action"},
}
# A message a person reads on one line: the key, what is wrong, a short quote.
SHORT = 300


def refused(call: Any, key: str) -> str:
    """Run `call`, which must raise a one-line RobotConfigError naming `key`; its message."""
    with pytest.raises(RobotConfigError) as info:
        call()
    message = str(info.value)
    assert key in message and "\n" not in message, message
    assert len(message) <= MAX_ERROR_CHARS, len(message)
    return message


def with_safety(**safety: Any) -> dict[str, Any]:
    return {**BASE, "safety": safety}


def test_a_default_pose_within_the_limits_of_known_joints_is_taken() -> None:
    config = robot_config.parse(with_safety(safe_action="default_pose",
                                            default_pose={"shoulder": 3.0, "elbow": -2.5}))
    config.check_against(reacher_spec())


def test_a_default_pose_with_a_joint_the_robot_does_not_have_is_refused() -> None:
    pose = {"shoulder": 0.0, "elbow": 0.0, "wrist": 0.0}
    message = refused(lambda: robot_config.parse(with_safety(default_pose=pose)),
                      "safety.default_pose")
    assert "wrist" in message and "command_joints" in message
    # A config whose joints fit another policy: refused against this one's action joints.
    spec = reacher_spec()
    other = spec.replace(action=ActionSpec(2, ("shoulder", "wrist"), "position", (1.0, 1.0),
                                           (0.0, 0.0), (-1.0, -1.0), (1.0, 1.0)))
    config = robot_config.parse({**with_safety(default_pose={"shoulder": 0.0, "elbow": 0.0}),
                                 "command_joints": ["shoulder", "elbow"]})
    config.check_against(spec)
    refused(lambda: config.check_against(other), "command_joints")


def test_a_default_pose_outside_the_joint_limits_is_refused_not_clipped() -> None:
    config = robot_config.parse(with_safety(default_pose={"shoulder": 0.0, "elbow": 50.0}))
    message = refused(lambda: config.check_against(reacher_spec()), "safety.default_pose.elbow")
    assert "50 rad" in message and "[-2.6, 2.6]" in message
    # Inside a (wider) action range but outside the model's joint range: refused too.
    spec = reacher_spec()
    wide = spec.replace(action=ActionSpec(2, JOINTS, "position", (5.0, 5.0), (0.0, 0.0),
                                          (-5.0, -5.0), (5.0, 5.0)))
    config = robot_config.parse(with_safety(default_pose={"shoulder": 0.0, "elbow": 3.0}))
    message = refused(lambda: config.check_against(wide), "safety.default_pose.elbow")
    assert "reacher.xml" in message and "range" in message


@pytest.mark.parametrize(("safety", "key"), [
    ({"max_observation_age": 1e12}, "safety.max_observation_age"),
    ({"max_observation_age": MAX_OBSERVATION_AGE_PERIODS * 1.01}, "safety.max_observation_age"),
    ({"max_observation_age": 0}, "safety.max_observation_age"),
    ({"max_observation_age": -3}, "safety.max_observation_age"),
    ({"max_observation_age": float("nan")}, "safety.max_observation_age"),
    ({"goal_margin": float("inf")}, "safety.goal_margin"),
    ({"goal_margin": -0.01}, "safety.goal_margin"),
    ({"max_action_change": 0.0}, "safety.max_action_change"),
    ({"max_action_change": "fast"}, "safety.max_action_change"),
    ({"soft_start": -1.0}, "safety.soft_start"),
    ({"soft_start": True}, "safety.soft_start"),
    ({"max_joint_speed": 0.0}, "safety.max_joint_speed"),
    ({"max_joint_speed": -5.0}, "safety.max_joint_speed"),
    ({"max_joint_speed": float("inf")}, "safety.max_joint_speed"),
    ({"max_joint_speed": "fast"}, "safety.max_joint_speed"),
    ({"max_joint_speed": True}, "safety.max_joint_speed"),
    ({"default_pose": {"elbow": float("nan")}}, "safety.default_pose.elbow"),
])
def test_absurd_safety_settings_are_refused_naming_the_key(safety: dict[str, Any],
                                                           key: str) -> None:
    refused(lambda: robot_config.parse(with_safety(**safety)), key)


def test_the_staleness_limit_takes_up_to_its_maximum_and_overrides_are_checked_too() -> None:
    config = robot_config.parse(with_safety(max_observation_age=MAX_OBSERVATION_AGE_PERIODS))
    assert config.safety.max_observation_age == MAX_OBSERVATION_AGE_PERIODS
    refused(lambda: config.replace_safety(max_observation_age=1e12), "max_observation_age")


def test_the_command_interface_is_forward_unless_the_config_says_trajectory() -> None:
    """The ROS node's controller: a forward command controller, or a joint_trajectory_controller
    for position targets only (torques are refused, naming the key)."""
    assert robot_config.parse(BASE).command_interface == "forward"
    config = robot_config.parse({**BASE, "command_interface": "trajectory"})
    assert config.command_interface == "trajectory"
    config.check_against(reacher_spec())
    # An override of the safety settings keeps it.
    assert config.replace_safety(soft_start=0.5).command_interface == "trajectory"
    refused(lambda: robot_config.parse({**BASE, "command_interface": "velocity"}),
            "command_interface")
    spec = reacher_spec()
    effort = spec.replace(action=ActionSpec(2, JOINTS, "effort", (1.0, 1.0), (0.0, 0.0),
                                            (-1.0, -1.0), (1.0, 1.0)))
    torque = robot_config.parse({**BASE, "command_interface": "trajectory",
                                 "safety": {"safe_action": "zero"}})
    message = refused(lambda: torque.check_against(effort), "command_interface")
    assert "forward_effort_controller" in message and len(message) < SHORT, message
    robot_config.parse({**BASE, "safety": {"safe_action": "zero"}}).check_against(effort)
    # The shipped configs say which; the arm's is a trajectory controller, torques go forward.
    shipped = {t: robot_config.load(t).command_interface
               for t in ("reacher", "arm_reach", "ant", "ant_u_maze", "humanoid")}
    assert shipped == {"reacher": "forward", "arm_reach": "trajectory", "ant": "forward",
                       "ant_u_maze": "forward", "humanoid": "forward"}


def test_a_yaml_alias_bomb_is_refused_at_once_in_a_short_line(tmp_path: Path) -> None:
    """The 'billion laughs': a few hundred bytes of aliases that expand to gigabytes."""
    rows = ['a: &a ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    rows += [f"{n}: &{n} [{', '.join([f'*{p}'] * 9)}]"
             for p, n in zip("abcdefg", "bcdefgh", strict=True)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(rows) + "\n")
    assert bomb.stat().st_size < 1024
    started = time.monotonic()
    message = refused(lambda: robot_config.load(bomb), "aliases")
    assert time.monotonic() - started < 1.0
    assert len(message) < SHORT and "line 1" in message
    anchor_only = tmp_path / "anchor.yaml"  # an anchor alone expands nothing, but is refused
    anchor_only.write_text("task: &t reacher\n")
    refused(lambda: robot_config.load(anchor_only), "anchors")


@pytest.mark.parametrize(("text", "key"), [
    ("#" * (MAX_CONFIG_BYTES + 1), f"over the {MAX_CONFIG_BYTES:,}-byte limit"),
    ("task: " + "[" * 20000 + "]" * 20000 + "\n", "nested deeper"),
    ("task: [reacher\n", "not valid YAML"),
    ("task: reacher\n\tmodel: x\n", "not valid YAML"),
])
def test_hostile_yaml_is_refused_quickly_in_a_short_line(tmp_path: Path, text: str,
                                                         key: str) -> None:
    path = tmp_path / "robot.yaml"
    path.write_text(text)
    started = time.monotonic()
    message = refused(lambda: robot_config.load(path), key)
    assert time.monotonic() - started < 1.0
    assert len(message) < SHORT, message


def test_a_robot_file_that_is_not_a_regular_file_is_refused_without_blocking(
        tmp_path: Path) -> None:
    """read_yaml (the ROS launch's reader too) on a FIFO, whose open waits for a writer, and on
    /dev/zero, which never ends."""
    fifo = tmp_path / "robot.yaml"
    os.mkfifo(fifo)
    started = time.monotonic()
    refused(lambda: robot_config.read_yaml(fifo), "a FIFO, not a regular file")
    refused(lambda: robot_config.read_yaml(Path("/dev/zero")), "a character device")
    assert time.monotonic() - started < 1.0


def test_huge_values_and_keys_are_quoted_short_whatever_the_input(tmp_path: Path) -> None:
    huge = "x" * 100_000
    for data, key in [
        ({**BASE, "task": huge}, "task"),
        ({**BASE, huge: 1}, "unknown key"),
        ({**BASE, "model": huge}, "model"),
        ({**BASE, "command_joints": [huge, huge]}, "command_joints"),
        ({**BASE, "observation": {"joint_pos": huge}}, "observation.joint_pos"),
        ({**BASE, "observation": {"joint_pos": [huge] * 1000}}, "observation.joint_pos"),
        (with_safety(safe_action=huge), "safety.safe_action"),
        (with_safety(**{huge: 1}), "safety: unknown key"),
        (with_safety(goal_margin="1\n" * 10_000), "safety.goal_margin"),
        ({**BASE, 1: 2, None: 3}, "unknown key"),  # keys that are not strings
    ]:
        def check(data: dict[str, Any] = data) -> None:
            robot_config.parse(data).check_against(reacher_spec())

        assert len(refused(check, key)) < SHORT
    long_name = tmp_path / ("y" * 200 + ".yaml")  # a name near the filesystem's limit
    refused(lambda: robot_config.load(long_name), "no such file")
    refused(lambda: robot_config.load("z" * 100_000), "not a file")


def test_bounded_keeps_one_line_and_says_what_was_cut() -> None:
    assert bounded("a\nb\t c", 10) == "a b c"
    cut = bounded("y" * 500, 60)
    assert len(cut) == 60 and cut.startswith("yyy") and cut.endswith("… (500 characters)")
