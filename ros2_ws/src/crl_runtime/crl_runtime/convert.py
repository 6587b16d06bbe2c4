"""
ROS messages to and from the runtime's types, as plain functions of message fields.

Nothing here starts ROS: the nodes call these, and the tests call them on message objects
directly. The controller does everything after the conversion (joint lookup by name, staleness,
goal checks), so this module only moves numbers and refuses what cannot be an observation.
Its one piece of state, `JointVelocities`, keeps each joint's previous position for drivers
that publish no velocities.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from crl.runtime.messages import MAX_ITEMS, Observation, bounded
from crl.runtime.robot_config import MAX_ERROR_CHARS

Vector = NDArray[np.float64]
AXES = "xyz"


class ConversionError(ValueError):
    """A message that cannot become an observation or a goal; `reason` is what gets counted."""

    def __init__(self, reason: str, detail: str):
        super().__init__(bounded(f"{reason}: {detail}", MAX_ERROR_CHARS))  # names off the wire
        self.reason = reason


def stamp_seconds(stamp: Any) -> float:
    """Seconds of a builtin_interfaces/Time (0.0 for an unset stamp)."""
    return float(stamp.sec) + 1e-9 * float(stamp.nanosec)


@dataclass(frozen=True)
class BaseState:
    """Base pose (world) and twist (base frame) from an Odometry message, and its stamp."""

    stamp: float
    pos: Vector
    quat: Vector  # w, x, y, z
    lin_vel: Vector
    ang_vel: Vector


def quat_multiply(a: Vector, b: Vector) -> Vector:
    """Hamilton product a * b of quaternions (w, x, y, z): rotate by b, then by a."""
    aw, av, bw, bv = a[0], a[1:], b[0], b[1:]
    return np.concatenate([[aw * bw - av @ bv], aw * bv + bw * av + np.cross(av, bv)])


def transform_base(base: BaseState, transform: Any) -> BaseState:
    """
    Bring a base pose into another frame with a geometry_msgs/Transform (target <- source).

    The pose moves; the twist does not, since REP-105 odometry gives it in the base frame
    (the child frame), which a change of the pose's frame leaves as it is.
    """
    r = transform.rotation
    q = np.array([r.w, r.x, r.y, r.z], dtype=np.float64)
    q /= np.linalg.norm(q)
    quat = quat_multiply(q, base.quat)
    return BaseState(base.stamp, apply_transform(transform, base.pos), quat / np.linalg.norm(quat),
                     base.lin_vel, base.ang_vel)


def odometry_to_base(msg: Any, received: float) -> BaseState:
    """Read nav_msgs/Odometry; an unset stamp means the receive time (node clock, s)."""
    p, q = msg.pose.pose.position, msg.pose.pose.orientation
    lin, ang = msg.twist.twist.linear, msg.twist.twist.angular
    stamp = stamp_seconds(msg.header.stamp) or received
    return BaseState(stamp, np.array([p.x, p.y, p.z]), np.array([q.w, q.x, q.y, q.z]),
                     np.array([lin.x, lin.y, lin.z]), np.array([ang.x, ang.y, ang.z]))


class JointVelocities:
    """
    Velocities for joint states that carry positions only, by finite differences.

    Many drivers publish no velocity array. Per joint, the velocity is the change of its
    position since its previous message over the change of stamp. A joint seen for the first
    time, or whose stamp advanced less than MIN_STEP_S (a repeated message, a clock stepped
    back, stamps too close for a difference to mean anything), has none in that message; its
    position is kept, so the next message has one.
    """

    MIN_STEP_S = 1e-4  # a 10 kHz driver's period: closer stamps make noise a huge velocity

    def __init__(self) -> None:
        self.last: dict[str, tuple[float, float]] = {}  # joint → (stamp, position)

    def estimate(self, names: Sequence[str], pos: Vector, stamp: float,
                 only: Sequence[str] = ()) -> Vector:
        """
        Estimate the velocities of `names` (NaN where there is none).

        Then remember their finite positions as each joint's previous one. With `only` (the
        joints the policy reads), the others get none and are not remembered: what is kept
        stays that size, whatever names a stream carries.
        """
        vel = np.full(len(names), math.nan)
        wanted = set(only)
        for i, name in enumerate(names):
            if wanted and name not in wanted:
                continue
            last = self.last.get(name)
            if last is not None and stamp - last[0] >= self.MIN_STEP_S:
                vel[i] = (pos[i] - last[1]) / (stamp - last[0])
            if math.isfinite(pos[i]):
                self.last[name] = (stamp, float(pos[i]))
        return vel


def joint_state_to_observation(msg: Any, received: float, session: int, seq: int,
                               base: BaseState | None = None, required: Sequence[str] = (),
                               velocities: JointVelocities | None = None) -> Observation:
    """
    Turn sensor_msgs/JointState (+ odometry) into an Observation.

    The stamp is the header's, or the receive time when it is zero; with odometry it is the
    older of the two, so stale odometry makes the observation stale. Joints in `required` must
    have a finite position and velocity: a NaN from one sensor refuses the message rather than
    reaching the policy. A message without a velocity array takes them from `velocities`
    (finite differences over the stamps, for the `required` joints); where there is none, or no
    `velocities`, it is refused as `no_velocity`. One with more than MAX_ITEMS joints (the ZMQ
    transport's limit on a list) is refused as `oversized` before anything is read from it: a
    JointState's arrays are unbounded on the wire, and reading one costs time per joint in the
    executor thread, whose Python code the control thread waits for.
    """
    sizes = (len(msg.name), len(msg.position), len(msg.velocity))
    if max(sizes) > MAX_ITEMS:
        raise ConversionError("oversized", f"{sizes[0]} names, {sizes[1]} positions, "
                              f"{sizes[2]} velocities: more than {MAX_ITEMS}")
    names = tuple(msg.name)
    pos = np.asarray(msg.position, dtype=np.float64)
    vel = np.asarray(msg.velocity, dtype=np.float64)
    measured = len(vel) > 0
    if len(pos) != len(names) or (measured and len(vel) != len(names)):
        raise ConversionError("malformed", f"{len(names)} names, {len(pos)} positions, "
                              f"{len(vel)} velocities")
    if len(set(names)) != len(names):
        raise ConversionError("malformed", f"duplicate joint names in {list(names)}")
    stamp = stamp_seconds(msg.header.stamp) or received
    if not measured:
        vel = (velocities.estimate(names, pos, stamp, required) if velocities is not None
               else np.full(len(names), math.nan))
    index = {n: i for i, n in enumerate(names)}
    needed = [index[n] for n in required if n in index]
    bad = [names[i] for i in needed
           if not (math.isfinite(pos[i]) and (math.isfinite(vel[i]) or not measured))]
    if bad:
        raise ConversionError("nonfinite", f"non-finite position or velocity of joint(s) "
                              f"{', '.join(bad)}")
    unknown = [names[i] for i in needed if not math.isfinite(vel[i])]
    if unknown:
        detail = f"the joint state carries no velocities (joint(s) {', '.join(unknown)})"
        if velocities is not None:
            detail += ("; finite differences need an earlier position with an older stamp, "
                       "which the next message has")
        raise ConversionError("no_velocity", detail)
    if base is None:
        return Observation(session, seq, stamp, names, pos, vel)
    values = (base.pos, base.quat, base.lin_vel, base.ang_vel)
    if not all(np.isfinite(v).all() for v in values):
        raise ConversionError("nonfinite", "non-finite odometry")
    return Observation(session, seq, min(stamp, base.stamp), names, pos, vel, *values)


def goal_axes(fields: Sequence[Any], override: str = "") -> str:
    """
    Which position axes form the goal: the override, else the goal fields' name suffixes.

    The env names a goal field `<site or body>_<axes>` (fingertip_xy, torso_xy, ee_xyz).
    """
    size = sum(int(f.size) for f in fields)
    axes = override or "".join(str(f.name).rsplit("_", 1)[-1] for f in fields)
    if len(axes) != size or not set(axes) <= set(AXES) or len(set(axes)) != len(axes):
        raise ValueError(f"goal_axes: cannot read {size} position axes from the policy's goal "
                         f"fields ({', '.join(f.name for f in fields)}); set goal_axes (e.g. xy)")
    return axes


def goal_values(point: Vector, axes: str) -> Vector:
    """Pick the goal axes out of a 3-D point."""
    return np.asarray([point[AXES.index(a)] for a in axes], dtype=np.float64)


def point_of(msg: Any) -> Vector:
    """Return the 3-D position of a PoseStamped or PointStamped."""
    p = msg.pose.position if hasattr(msg, "pose") else msg.point
    return np.array([p.x, p.y, p.z], dtype=np.float64)


def quat_rotate(q: Vector, v: Vector) -> Vector:
    """Rotate v by the unit quaternion q = (w, x, y, z)."""
    w, u = q[0], q[1:]
    return np.asarray(v + 2.0 * np.cross(u, np.cross(u, v) + w * v))


def apply_transform(transform: Any, point: Vector) -> Vector:
    """
    Apply a geometry_msgs/Transform (target <- source) to a point in the source frame.

    Written out here rather than taken from tf2_geometry_msgs so that it is tested where
    tf2 is not installed.
    """
    t, r = transform.translation, transform.rotation
    q = np.array([r.w, r.x, r.y, r.z], dtype=np.float64)
    q /= np.linalg.norm(q)
    return quat_rotate(q, point) + np.array([t.x, t.y, t.z])


def goal_frame_error(frame: str, goal_frame: str, why: str) -> str:
    """Describe, in one log line, a goal that could not be brought into the goal frame."""
    return (f"goal rejected: it is in frame {frame or '(empty)'!r}, the policy takes goals in "
            f"{goal_frame!r}, and {why}")


def duration(seconds: float) -> tuple[int, int]:
    """Split seconds into a builtin_interfaces/Duration's (sec, nanosec)."""
    ns = round(seconds * 1e9)
    return ns // 1_000_000_000, ns % 1_000_000_000


def trajectory_positions(msg: Any, joints: Sequence[str]) -> Vector:
    """
    Read a trajectory_msgs/JointTrajectory's target for `joints`, in that order.

    A joint_trajectory_controller ends where the last point is: that point's positions,
    matched by joint name, are the target. A trajectory without points, whose joint names are
    not exactly `joints` (in any order), or whose last point does not give one finite position
    a joint is refused.
    """
    names = list(msg.joint_names)
    if not msg.points:
        raise ConversionError("malformed", "a trajectory without points")
    if sorted(names) != sorted(joints) or len(set(names)) != len(names):
        raise ConversionError("malformed", f"trajectory joints {names}, expected {list(joints)}")
    pos = np.asarray(msg.points[-1].positions, dtype=np.float64)
    if pos.shape != (len(names),):
        raise ConversionError("malformed", f"{len(pos)} positions for {len(names)} joints")
    if not np.isfinite(pos).all():
        raise ConversionError("nonfinite", "non-finite trajectory positions")
    index = {n: i for i, n in enumerate(names)}
    return np.asarray(pos[[index[j] for j in joints]])


def box_edges(low: Sequence[float], high: Sequence[float],
              axes: str) -> list[tuple[Vector, Vector]]:
    """
    Edges of the goal box in 3-D, as pairs of end points.

    The goal's axes span the box (a segment, a rectangle or a cuboid); the other axes are 0.
    """
    corners = []
    for bits in range(1 << len(axes)):
        corner = np.zeros(3)
        for i, axis in enumerate(axes):
            corner[AXES.index(axis)] = high[i] if bits >> i & 1 else low[i]
        corners.append((bits, corner))
    return [(a, b) for i, a in corners for j, b in corners
            if i < j and bin(i ^ j).count("1") == 1]
