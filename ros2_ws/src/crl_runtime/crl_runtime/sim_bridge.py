"""
ROS 2 node `sim_bridge`: the MuJoCo sim robot (crl.testbed.robot.SimRobot) speaking ROS.

It stands in for a robot's drivers and ros2_control: joint states (with the randomization
draw's sensor noise), odometry and TF for a floating base (REP-105: odom -> base_link, and
map -> odom as a static identity, the sim's perfect localization), and the command topic of a
forward command controller or a joint_trajectory_controller (each trajectory's last point is
the target), applied from the next physics step after the draw's action delay. Physics runs
on absolute deadlines in its own thread, in real time or `real_time_factor` times it (a slower
or faster simulator; with `publish_clock`, /clock carries the simulated time at every physics
step, for nodes run with use_sim_time); episodes restart every episode length,
as `crl-sim robot` does, and each control step's true achieved goal goes out on a telemetry
topic for scoring (a real robot has no such topic).
"""

from __future__ import annotations

import math
import sys
import threading
from typing import Any

import numpy as np
from nav_msgs.msg import Odometry
from rclpy.node import Node
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import JointState
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory

from crl.runtime import robot_config
from crl_runtime.convert import ConversionError, duration, trajectory_positions
from crl_runtime.node_runner import (
    NodeStartupError,
    command_topic,
    default_controller,
    run_node,
)
from crl_runtime.parameters import MAX_REAL_TIME_FACTOR, SIM_BRIDGE, declare


class SimBridge(Node):
    """The node; `run` is the physics thread's body."""

    def __init__(self) -> None:
        super().__init__("sim_bridge")
        self.params = p = declare(self, SIM_BRIDGE)
        try:
            config = robot_config.load(p["robot_config"])
            from crl.testbed.clock import RobotClock
            from crl.testbed.robot import SimRobot

            self.clock = RobotClock(p["clock_ppm"])
            self.speed = real_time_factor(p["real_time_factor"])
            self.get_logger().info(f"{config.task}: building the sim robot (jax compiles the "
                                   "env's reset; this takes a while on a small CPU)")
            self.robot = SimRobot(config.task, dr=p["dr"], seed=p["seed"])
        except ModuleNotFoundError as e:
            raise NodeStartupError(
                f"the sim robot needs crl's train extra (jax, MJX): {e}") from None
        except (robot_config.RobotConfigError, ValueError) as e:
            raise NodeStartupError(str(e)) from None
        self.command_joints = config.command_joints
        if sorted(self.command_joints) != sorted(self.robot.action_joints):
            raise NodeStartupError(f"robot_config {p['robot_config']}: command_joints "
                                   f"{list(self.command_joints)} are not the task's actuated "
                                   f"joints {list(self.robot.action_joints)}")
        kind = self.robot.action_kind
        self.interface = p["command_interface"] or config.command_interface
        if self.interface == "trajectory" and kind != "position":
            raise NodeStartupError(f"command_interface: {robot_config.trajectory_refusal(kind)}")
        controller = p["controller"] or default_controller(kind, self.interface)
        self.command_topic = p["command_topic"] or command_topic(controller, self.interface)
        self.floating = self.robot.true_reading().base_pos is not None
        self.joint_pub = self.create_publisher(JointState, p["joint_states_topic"], 10)
        self.odom_pub = (self.create_publisher(Odometry, p["odom_topic"], 10)
                         if self.floating else None)
        self.telemetry_pub = self.create_publisher(Float64MultiArray, p["telemetry_topic"], 10)
        self.clock_pub = self.create_publisher(Clock, "/clock", 10) if p["publish_clock"] else None
        self.tf = self._tf_broadcaster() if self.floating else None
        self.command: np.ndarray | None = None
        if self.interface == "trajectory":
            self.create_subscription(JointTrajectory, self.command_topic, self._on_trajectory, 1)
        else:
            self.create_subscription(Float64MultiArray, self.command_topic, self._on_command, 1)
        self.counts = {"commands": 0, "dropped": 0, "late": 0, "episodes": 0}
        self.sim_steps = 0  # physics steps since start, for /clock
        self.exit_code = 0

    def _tf_broadcaster(self) -> Any:
        """Broadcast odom -> base_link; publish map -> odom (identity) once, as a static one."""
        try:
            from tf2_ros import StaticTransformBroadcaster, TransformBroadcaster
        except ImportError:
            self.get_logger().info("tf2_ros is not installed: no TF (odometry only)")
            return None
        from geometry_msgs.msg import TransformStamped

        p = self.params
        identity = TransformStamped()
        identity.header.stamp = self.get_clock().now().to_msg()  # static: any time holds
        identity.header.frame_id, identity.child_frame_id = p["map_frame"], p["odom_frame"]
        identity.transform.rotation.w = 1.0
        self.static_tf = StaticTransformBroadcaster(self)
        self.static_tf.sendTransform(identity)
        return TransformBroadcaster(self)

    def _on_trajectory(self, msg: JointTrajectory) -> None:
        try:
            self.command = trajectory_positions(msg, self.command_joints)
        except ConversionError as e:
            self.counts["dropped"] += 1
            self.get_logger().warning(f"command dropped: {e}", throttle_duration_sec=5.0)

    def _on_command(self, msg: Float64MultiArray) -> None:
        values = np.asarray(msg.data, dtype=np.float64)
        if values.shape != (len(self.command_joints),) or not np.isfinite(values).all():
            self.counts["dropped"] += 1
            self.get_logger().warning(
                f"command dropped: expected {len(self.command_joints)} finite values for "
                f"{list(self.command_joints)}, got {values.tolist()}", throttle_duration_sec=5.0)
            return
        self.command = values

    # -- the physics thread ----------------------------------------------------------------

    def stamp(self) -> Any:
        """Stamp messages with the simulated time when publishing /clock, else the node clock."""
        if self.clock_pub is None:
            return self.get_clock().now().to_msg()
        from builtin_interfaces.msg import Time

        sec, nanosec = duration(self.sim_steps * self.robot.timestep)
        return Time(sec=sec, nanosec=nanosec)

    def publish_clock(self) -> None:
        """Publish the simulated time on /clock (every physics step, when asked to)."""
        if self.clock_pub is not None:
            self.clock_pub.publish(Clock(clock=self.stamp()))

    def measure(self) -> None:
        """Publish the measurements: joint states and, for a floating base, odometry and TF."""
        stamp = self.stamp()
        r = self.robot.observation()
        js = JointState(name=list(r.joint_names), position=r.joint_pos.tolist(),
                        velocity=r.joint_vel.tolist())
        js.header.stamp = stamp
        self.joint_pub.publish(js)
        if self.odom_pub is not None and r.base_pos is not None:
            self._publish_base(r, stamp)

    def publish(self, observe: bool = True) -> None:
        """Publish a control step: measurements (unless the episode just ended), telemetry."""
        robot = self.robot
        if observe:
            self.measure()
        ep = robot.episode
        assert ep is not None
        telemetry = Float64MultiArray()
        telemetry.data = [float(ep.index), float(robot.t), float(robot.episode_length),
                          *ep.goal.tolist(), *robot.achieved_goal().tolist()]
        self.telemetry_pub.publish(telemetry)

    def _publish_base(self, r: Any, stamp: Any) -> None:
        p = self.params
        odom = Odometry()
        odom.header.stamp, odom.header.frame_id = stamp, p["odom_frame"]
        odom.child_frame_id = p["base_frame"]
        pos, q = odom.pose.pose.position, odom.pose.pose.orientation
        pos.x, pos.y, pos.z = (float(v) for v in r.base_pos)
        q.w, q.x, q.y, q.z = (float(v) for v in r.base_quat)
        lin, ang = odom.twist.twist.linear, odom.twist.twist.angular
        lin.x, lin.y, lin.z = (float(v) for v in r.base_lin_vel)
        ang.x, ang.y, ang.z = (float(v) for v in r.base_ang_vel)
        self.odom_pub.publish(odom)
        if self.tf is not None:
            from geometry_msgs.msg import TransformStamped

            t = TransformStamped()
            t.header = odom.header
            t.child_frame_id = odom.child_frame_id
            tr = t.transform.translation
            tr.x, tr.y, tr.z = pos.x, pos.y, pos.z
            t.transform.rotation = q
            self.tf.sendTransform(t)

    def run(self, stop: threading.Event) -> None:
        """Step physics in real time until `stop` or the episode budget is spent."""
        from crl.testbed.robot import ActionError, StepClock

        robot, p, clock = self.robot, self.params, self.clock
        robot.reset(0)
        # Physics deadlines on the robot's clock: a step of simulated time every period.
        period, lag_limit = robot.timestep / self.speed, robot.control_period / self.speed
        every_step = p["state_rate"] == "physics"
        self.get_logger().info(
            f"{robot.task}: publishing {p['joint_states_topic']}"
            + (f" and {p['odom_topic']}" if self.floating else "")
            + f" at {1 / (period if every_step else lag_limit):g} Hz, commands from "
            f"{self.command_topic} ({self.interface}, {robot.action_kind}, joints "
            f"{list(self.command_joints)}), "
            f"dr {p['dr']}, seed {p['seed']}"
            + (f", clock {clock.ppm:+g} ppm" if clock.ppm else "")
            + (f", {self.speed:g}x real time" if self.speed != 1.0 else "")
            + (", simulated time on /clock" if self.clock_pub is not None else ""))
        self.publish_clock()
        self.publish()
        steps = StepClock(period, lag_limit, clock)
        while not stop.is_set():
            if steps.wait():  # a whole control period behind: re-anchored
                self.counts["late"] += 1
            command, self.command = self.command, None
            if command is not None:
                try:
                    robot.apply(robot.order(self.command_joints, command, robot.action_kind))
                    self.counts["commands"] += 1
                except ActionError as e:
                    self.counts["dropped"] += 1
                    self.get_logger().warning(f"command dropped: {e}", throttle_duration_sec=5.0)
            robot.step_physics()
            self.sim_steps += 1
            self.publish_clock()
            if robot.physics_steps % robot.substeps:
                if every_step:
                    self.measure()
                # The next episode's draw, between two observations (as crl-sim robot does).
                robot.prefetch_if_due()
                continue
            if robot.done:
                self.publish(observe=False)
                self.counts["episodes"] += 1
                if p["episodes"] and self.counts["episodes"] >= p["episodes"]:
                    break
                assert robot.episode is not None
                robot.reset(robot.episode.index + 1)
                self.publish()
                steps.reanchor()  # a reset is not a missed deadline
                continue
            self.publish()
        self.get_logger().info(", ".join(f"{k} {v}" for k, v in self.counts.items()))
        stop.set()

    def shutdown(self) -> None:
        """Nothing to leave behind: the simulated robot stops with the process."""


def real_time_factor(value: float) -> float:
    """Check the simulation's pace against real time; refuse one no simulator runs at."""
    if not (math.isfinite(value) and 0.0 < value <= MAX_REAL_TIME_FACTOR):
        raise NodeStartupError(f"parameter real_time_factor: must be in (0, "
                               f"{MAX_REAL_TIME_FACTOR:g}], got {value}")
    return value


def main(args: list[str] | None = None) -> int:
    """Entry point of `ros2 run crl_runtime sim_bridge`."""
    return run_node(SimBridge, args)


if __name__ == "__main__":
    sys.exit(main())
