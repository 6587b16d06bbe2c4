"""Message conversions and goal geometry, on real ROS message types (no ROS graph needed)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from geometry_msgs.msg import PointStamped, PoseStamped, Transform
from nav_msgs.msg import Odometry
from sensor_msgs.msg import JointState
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from crl.runtime import robot_config
from crl.runtime.messages import MAX_ITEMS, Observation
from crl_runtime.convert import (
    ConversionError,
    JointVelocities,
    apply_transform,
    box_edges,
    duration,
    goal_axes,
    goal_values,
    joint_state_to_observation,
    odometry_to_base,
    point_of,
    trajectory_positions,
    transform_base,
)
from crl_runtime.kinematics import GoalPoint


def joint_state(names: list[str], pos: list[float], vel: list[float] | None = None,
                stamp: float = 0.0) -> JointState:
    msg = JointState(name=names, position=pos, velocity=vel if vel is not None else [])
    msg.header.stamp = Time(sec=int(stamp), nanosec=round((stamp % 1) * 1e9))
    return msg


def test_joint_state_keeps_names_in_any_order_and_its_stamp() -> None:
    msg = joint_state(["elbow", "shoulder", "gripper"], [0.1, 0.2, 0.3], [1.0, 2.0, 3.0],
                      stamp=100.25)
    obs = joint_state_to_observation(msg, received=200.0, session=1, seq=5,
                                     required=("shoulder", "elbow"))
    assert obs.joint_names == ("elbow", "shoulder", "gripper")
    assert obs.joint_pos.tolist() == [0.1, 0.2, 0.3] and obs.joint_vel.tolist() == [1.0, 2.0, 3.0]
    assert obs.stamp == pytest.approx(100.25) and obs.seq == 5 and obs.base_pos is None


def test_an_unset_stamp_means_the_receive_time() -> None:
    obs = joint_state_to_observation(joint_state(["a"], [0.0], [0.0]), 42.5, 1, 1)
    assert obs.stamp == 42.5


@pytest.mark.parametrize(("msg", "reason"), [
    (joint_state(["shoulder", "elbow"], [math.nan, 0.0], [0.0, 0.0]), "nonfinite"),
    (joint_state(["shoulder", "elbow"], [0.0, 0.0], [0.0, math.inf]), "nonfinite"),
    (joint_state(["shoulder", "elbow"], [0.0, 0.0]), "no_velocity"),  # none, no estimator
    (joint_state(["shoulder", "elbow"], [math.nan, 0.0]), "nonfinite"),  # and a NaN position
    (joint_state(["shoulder", "elbow"], [0.0], [0.0, 0.0]), "malformed"),
    (joint_state(["shoulder", "shoulder"], [0.0, 0.0], [0.0, 0.0]), "malformed"),
])
def test_refused_joint_states_say_why(msg: JointState, reason: str) -> None:
    with pytest.raises(ConversionError) as e:
        joint_state_to_observation(msg, 1.0, 1, 1, required=("shoulder", "elbow"))
    assert e.value.reason == reason


def test_joint_states_without_velocities_get_finite_differences_over_the_stamps() -> None:
    """
    Drivers that publish positions only get velocities by finite differences, per joint.

    The first message has nothing to difference and is refused naming velocity; later ones
    get (position change) / (stamp change).
    """
    required = ("shoulder", "elbow")
    v = JointVelocities()
    with pytest.raises(ConversionError, match="velocit") as e:
        joint_state_to_observation(joint_state(["shoulder", "elbow"], [0.1, 0.2], stamp=10.0),
                                   99.0, 1, 1, required=required, velocities=v)
    assert e.value.reason == "no_velocity"
    # 40 ms later, another order, and an extra joint seen for the first time (not required).
    obs = joint_state_to_observation(
        joint_state(["elbow", "gripper", "shoulder"], [0.1, 0.5, 0.14], stamp=10.04),
        99.0, 1, 2, required=required, velocities=v)
    assert obs.joint_names == ("elbow", "gripper", "shoulder")
    np.testing.assert_allclose(obs.joint_vel[[0, 2]], [-2.5, 1.0])
    assert math.isnan(obs.joint_vel[1])  # gripper: no previous position, and not needed
    # Each joint from its own previous message: the shoulder alone, then both again.
    joint_state_to_observation(joint_state(["shoulder"], [0.24], stamp=10.09), 99.0, 1, 3,
                               required=("shoulder",), velocities=v)
    obs = joint_state_to_observation(joint_state(["shoulder", "elbow"], [0.24, 0.1],
                                                 stamp=10.10), 99.0, 1, 4, required=required,
                                     velocities=v)
    np.testing.assert_allclose(obs.joint_vel, [0.0, 0.0], atol=1e-9)
    # A stamp that did not advance (a repeat, or a clock stepped back) has no velocity; the
    # message after it differences against it.
    with pytest.raises(ConversionError, match="velocit"):
        joint_state_to_observation(joint_state(["shoulder", "elbow"], [0.3, 0.1], stamp=5.0),
                                   99.0, 1, 5, required=required, velocities=v)
    obs = joint_state_to_observation(joint_state(["shoulder", "elbow"], [0.32, 0.1],
                                                 stamp=5.02), 99.0, 1, 6, required=required,
                                     velocities=v)
    np.testing.assert_allclose(obs.joint_vel, [1.0, 0.0])
    # Measured velocities are used as sent; a NaN position is still refused as non-finite.
    obs = joint_state_to_observation(joint_state(["shoulder", "elbow"], [0.0, 0.0], [7.0, 8.0],
                                                 stamp=6.0), 99.0, 1, 7, velocities=v)
    assert obs.joint_vel.tolist() == [7.0, 8.0]
    with pytest.raises(ConversionError) as e:
        joint_state_to_observation(joint_state(["shoulder", "elbow"], [math.nan, 0.0],
                                               stamp=7.0), 99.0, 1, 8, required=required,
                                   velocities=v)
    assert e.value.reason == "nonfinite"


def test_an_unset_stamp_differences_over_the_receive_times() -> None:
    v = JointVelocities()
    with pytest.raises(ConversionError):
        joint_state_to_observation(joint_state(["a"], [1.0]), 20.0, 1, 1, required=("a",),
                                   velocities=v)
    obs = joint_state_to_observation(joint_state(["a"], [1.5]), 20.5, 1, 2, required=("a",),
                                     velocities=v)
    assert obs.stamp == 20.5 and obs.joint_vel.tolist() == [1.0]


@pytest.mark.parametrize("sizes", [(513, 513, 513), (2, 100_000, 2), (2, 2, 513)])
def test_a_joint_state_over_the_list_limit_is_refused_before_it_is_read(
        sizes: tuple[int, int, int]) -> None:
    """
    A JointState's arrays have no bound on the wire; reading one costs time per joint.

    Over MAX_ITEMS in any array, it is refused as oversized, however the rest looks.
    """
    names = ["shoulder", "elbow"] + [f"j{i}" for i in range(sizes[0] - 2)]
    msg = joint_state(names, [0.0] * sizes[1], [0.0] * sizes[2])
    with pytest.raises(ConversionError) as e:
        joint_state_to_observation(msg, 1.0, 1, 1, required=("shoulder", "elbow"),
                                   velocities=JointVelocities())
    assert e.value.reason == "oversized" and len(str(e.value)) <= robot_config.MAX_ERROR_CHARS
    assert MAX_ITEMS == 512


def test_finite_differences_remember_only_the_joints_the_policy_reads() -> None:
    """
    A positions-only stream whose other joints change names never grows what is kept.

    Each message carries the policy's two joints and three never seen before.
    """
    v = JointVelocities()
    required = ("shoulder", "elbow")
    for k in range(200):
        extra = [f"tool{k}_{i}" for i in range(3)]
        msg = joint_state(["shoulder", "elbow", *extra], [0.01 * k, 0.0, 1.0, 2.0, 3.0],
                          stamp=10.0 + 0.04 * k)
        try:
            obs = joint_state_to_observation(msg, 99.0, 1, k, required=required, velocities=v)
        except ConversionError:
            assert k == 0  # the first has nothing to difference
            continue
        np.testing.assert_allclose(obs.joint_vel[:2], [0.25, 0.0])
    assert sorted(v.last) == ["elbow", "shoulder"]


def test_a_refusal_quoting_the_wire_stays_short() -> None:
    names = ["j" * 10_000] * 2  # duplicate names, each 10 kB
    with pytest.raises(ConversionError) as e:
        joint_state_to_observation(joint_state(names, [0.0, 0.0], [0.0, 0.0]), 1.0, 1, 1)
    assert e.value.reason == "malformed" and len(str(e.value)) <= robot_config.MAX_ERROR_CHARS


def test_a_nan_on_a_joint_the_policy_does_not_use_passes() -> None:
    msg = joint_state(["shoulder", "elbow", "gripper"], [0.0, 0.0, math.nan], [0.0, 0.0, 0.0])
    obs = joint_state_to_observation(msg, 1.0, 1, 1, required=("shoulder", "elbow"))
    assert isinstance(obs, Observation)


def test_odometry_gives_the_base_in_wxyz_and_the_older_stamp() -> None:
    odom = Odometry()
    odom.header.stamp = Time(sec=9, nanosec=0)
    odom.pose.pose.position.x, odom.pose.pose.position.z = 1.0, 0.5
    q = odom.pose.pose.orientation
    q.w, q.x, q.y, q.z = 0.5, 0.5, 0.5, 0.5
    odom.twist.twist.linear.x, odom.twist.twist.angular.z = 0.3, -0.2
    base = odometry_to_base(odom, received=50.0)
    obs = joint_state_to_observation(joint_state(["hip"], [0.0], [0.0], stamp=10.0), 50.0, 1, 1,
                                     base=base)
    assert obs.stamp == 9.0  # stale odometry makes the observation stale
    assert obs.base_quat is not None and obs.base_quat.tolist() == [0.5, 0.5, 0.5, 0.5]
    assert obs.base_pos is not None and obs.base_pos.tolist() == [1.0, 0.0, 0.5]
    assert obs.base_lin_vel is not None and obs.base_lin_vel.tolist() == [0.3, 0.0, 0.0]
    assert obs.base_ang_vel is not None and obs.base_ang_vel.tolist() == [0.0, 0.0, -0.2]


class _Field:
    def __init__(self, name: str, size: int):
        self.name, self.size = name, size


def test_goal_axes_come_from_the_goal_field_names() -> None:
    assert goal_axes([_Field("fingertip_xy", 2)]) == "xy"
    assert goal_axes([_Field("ee_xyz", 3)]) == "xyz"
    assert goal_axes([_Field("target", 2)], override="xz") == "xz"
    with pytest.raises(ValueError, match="set goal_axes"):
        goal_axes([_Field("target", 2)])
    assert goal_values(np.array([1.0, 2.0, 3.0]), "xz").tolist() == [1.0, 3.0]


def test_goal_points_from_both_rviz_tools() -> None:
    pose = PoseStamped()
    pose.pose.position.x, pose.pose.position.y = 0.1, -0.2
    point = PointStamped()
    point.point.x, point.point.y, point.point.z = 0.1, -0.2, 0.3
    assert point_of(pose).tolist() == [0.1, -0.2, 0.0]
    assert point_of(point).tolist() == [0.1, -0.2, 0.3]


def test_a_transform_rotates_then_translates() -> None:
    t = Transform()
    t.translation.x, t.translation.y = 1.0, 2.0
    t.rotation.w = t.rotation.z = math.sqrt(0.5)  # 90 degrees about z
    out = apply_transform(t, np.array([1.0, 0.0, 0.5]))
    np.testing.assert_allclose(out, [1.0, 3.0, 0.5], atol=1e-12)


def test_the_achieved_goal_is_forward_kinematics_of_the_goal_site() -> None:
    point = GoalPoint(str(robot_config.ASSETS / "reacher.xml"), "fingertip")
    obs = Observation(1, 1, 0.0, ("elbow", "shoulder"), np.array([0.0, math.pi / 2]),
                      np.zeros(2))
    pos = point.position(obs)
    assert pos is not None
    np.testing.assert_allclose(pos[:2], [0.0, 0.21], atol=1e-9)  # links 0.10 + 0.11, up
    assert point.position(Observation(1, 1, 0.0, ("shoulder",), np.zeros(1), np.zeros(1))) is None
    with pytest.raises(ValueError, match="neither a site nor a body"):
        GoalPoint(str(robot_config.ASSETS / "reacher.xml"), "nowhere")


def test_odometry_in_another_frame_moves_its_pose_and_keeps_its_twist() -> None:
    """A pose in odom brought into a frame 90 degrees about z and 1 m along x from it."""
    odom = Odometry()
    odom.pose.pose.position.x, odom.pose.pose.position.z = 2.0, 0.5
    q = odom.pose.pose.orientation
    q.w = q.z = math.sqrt(0.5)  # the base turned 90 degrees left in odom
    odom.twist.twist.linear.x, odom.twist.twist.angular.z = 0.3, -0.2
    base = odometry_to_base(odom, received=5.0)
    t = Transform()
    t.translation.x = 1.0
    t.rotation.w = t.rotation.z = math.sqrt(0.5)
    moved = transform_base(base, t)
    np.testing.assert_allclose(moved.pos, [1.0, 2.0, 0.5], atol=1e-12)
    np.testing.assert_allclose(moved.quat, [0.0, 0.0, 0.0, 1.0], atol=1e-12)  # 180 degrees
    # The twist is in the base frame (REP-105's child frame): a new parent leaves it alone.
    assert moved.lin_vel.tolist() == [0.3, 0.0, 0.0] and moved.ang_vel.tolist() == [0, 0, -0.2]
    assert moved.stamp == base.stamp == 5.0


def test_a_trajectory_point_lasts_one_control_period() -> None:
    assert duration(0.04) == (0, 40_000_000)
    assert duration(1 / 3) == (0, 333_333_333)
    assert duration(2.5) == (2, 500_000_000)


def trajectory(names: list[str], *points: list[float]) -> JointTrajectory:
    return JointTrajectory(joint_names=names,
                           points=[JointTrajectoryPoint(positions=p) for p in points])


def test_a_trajectorys_last_point_is_the_target_by_joint_name() -> None:
    joints = ("shoulder", "elbow")
    target = trajectory_positions(trajectory(["elbow", "shoulder"], [0.1, 0.2], [0.3, 0.4]),
                                  joints)
    assert target.tolist() == [0.4, 0.3]


@pytest.mark.parametrize(("msg", "reason", "text"), [
    (trajectory(["shoulder", "elbow"]), "malformed", "without points"),
    (trajectory(["shoulder"], [0.1]), "malformed", "expected ['shoulder', 'elbow']"),
    (trajectory(["shoulder", "wrist"], [0.1, 0.2]), "malformed", "trajectory joints"),
    (trajectory(["shoulder", "shoulder"], [0.1, 0.2]), "malformed", "trajectory joints"),
    (trajectory(["shoulder", "elbow"], [0.1]), "malformed", "1 positions for 2 joints"),
    (trajectory(["shoulder", "elbow"], [0.1, math.nan]), "nonfinite", "non-finite"),
])
def test_a_trajectory_the_robot_cannot_take_is_refused(msg: JointTrajectory, reason: str,
                                                       text: str) -> None:
    with pytest.raises(ConversionError, match=text.replace("[", r"\[")) as e:
        trajectory_positions(msg, ("shoulder", "elbow"))
    assert e.value.reason == reason


def test_the_goal_box_outline_spans_the_goal_axes() -> None:
    square = box_edges((-0.2, -0.1), (0.2, 0.1), "xy")
    assert len(square) == 4
    corners = {tuple(p) for edge in square for p in edge}
    assert corners == {(-0.2, -0.1, 0.0), (0.2, -0.1, 0.0), (-0.2, 0.1, 0.0), (0.2, 0.1, 0.0)}
    for a, b in square:  # each edge runs along one axis
        assert np.count_nonzero(a != b) == 1
    cuboid = box_edges((0.25, -0.35, 0.15), (0.65, 0.35, 0.65), "xyz")
    assert len(cuboid) == 12
    lengths = sorted(float(np.linalg.norm(a - b)) for a, b in cuboid)
    np.testing.assert_allclose(lengths, [0.4] * 4 + [0.5] * 4 + [0.7] * 4)
    xz = box_edges((1.0, 2.0), (3.0, 4.0), "xz")
    assert {tuple(p) for edge in xz for p in edge} == {(1, 0, 2), (3, 0, 2), (1, 0, 4), (3, 0, 4)}
