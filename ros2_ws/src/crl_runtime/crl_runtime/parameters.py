"""
Every ROS parameter of the package's nodes, declared in one table.

The table is plain Python (no rclpy), so the tests can check the shipped parameter files, the
ROS 2 doc and the RViz config against it without starting ROS. `declare` turns it into ROS
parameter declarations with descriptions (what `ros2 param describe` shows).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Safety overrides: a negative number (or an empty string) keeps the robot config's value.
KEEP = -1.0
# sim_bridge's fastest pace (the launch file's real_time_factor too): faster, the physics thread
# of a small computer cannot keep up anyway.
MAX_REAL_TIME_FACTOR = 10.0


@dataclass(frozen=True)
class Param:
    """One parameter: its name, default (which fixes its type) and what it means."""

    name: str
    default: bool | int | float | str
    description: str
    choices: tuple[str, ...] = ()


GOAL_REACH: tuple[Param, ...] = (
    Param("policy", "", "Policy file: an ONNX file from `crl-export onnx` (backend ort) or a "
          "TensorRT engine from `crl-export tensorrt` (backend trt). Required."),
    Param("backend", "ort", "Inference backend: ort (ONNX Runtime) or trt (TensorRT engine).",
          ("ort", "trt")),
    Param("robot_config", "", "crl.runtime robot config: a shipped name (reacher, ant, ...; "
          "crl's runtime/robots/<name>.yaml) or a path to a YAML file. Empty: the shipped config "
          "of the policy's task."),
    Param("command_interface", "", "How the robot's ros2_control controller takes the "
          "commands: forward (a forward command controller: std_msgs/Float64MultiArray on "
          "/<controller>/commands in command_joints order, position targets or torques) or "
          "trajectory (a joint_trajectory_controller: a one-point trajectory_msgs/"
          "JointTrajectory on /<controller>/joint_trajectory, time_from_start one control "
          "period, position policies only). Empty: the robot config's command_interface.",
          ("", "forward", "trajectory")),
    Param("controller", "", "ros2_control controller that takes the commands. Empty: "
          "forward_position_controller or forward_effort_controller by the policy's action kind "
          "(forward), joint_trajectory_controller (trajectory)."),
    Param("command_topic", "", "Command topic; empty: /<controller>/commands (forward) or "
          "/<controller>/joint_trajectory (trajectory)."),
    Param("joint_states_topic", "/joint_states", "sensor_msgs/JointState input (joints by name, "
          "any order; best-effort and reliable publishers both match)."),
    Param("odom_topic", "/odom", "nav_msgs/Odometry input: base pose in world_frame (its "
          "header.frame_id is checked; another frame is transformed through tf2 when tf2_ros "
          "is installed, else refused and counted) and twist in the base frame (REP-105's "
          "child_frame_id); read only when the robot config has base sources."),
    Param("world_frame", "", "The frame of this robot's tf tree that is the policy's world "
          "frame (the spec's goal frame, world): goals, odometry and markers are in it (a "
          "floating base: odom, REP-105). Empty: the spec's goal frame's name."),
    Param("goal_pose_topic", "/goal_pose", "geometry_msgs/PoseStamped goals (RViz's 2D Goal "
          "Pose tool); the position's goal axes are used."),
    Param("clicked_point_topic", "/clicked_point", "geometry_msgs/PointStamped goals (RViz's "
          "Publish Point tool), for 3-D goals."),
    Param("diagnostics_topic", "/diagnostics", "diagnostic_msgs/DiagnosticArray output: rate, "
          "latency, misses, stale stops, rejections, backend, policy sha256."),
    Param("markers_topic", "~/markers", "visualization_msgs/MarkerArray output, in "
          "world_frame: the goal (a sphere of the success radius), the training goal box, the "
          "achieved goal and the critic's reachability when the policy exports it."),
    Param("goal_axes", "", "Which position axes make the goal (e.g. xy); empty: from the "
          "policy's goal field names (fingertip_xy -> xy)."),
    Param("tf_timeout", 0.1, "Seconds to wait for a transform of a goal in another frame than "
          "world_frame (tf2_ros only; odometry takes the newest transform without waiting)."),
    Param("max_observation_age", KEEP, "Safety override: staleness limit in control periods; "
          "negative keeps the robot config's value."),
    Param("goal_margin", KEEP, "Safety override: how far beyond the training goal box a goal is "
          "accepted, in the goal's units; negative keeps the robot config's value."),
    Param("max_action_change", KEEP, "Safety override: largest command change per tick in "
          "physical units; negative keeps the robot config's value."),
    Param("soft_start", KEEP, "Safety override: seconds over which commands ramp in after start "
          "and after each safety stop; negative keeps the robot config's value."),
    Param("max_joint_speed", KEEP, "Safety override: measured joint speed (units/s) above which "
          "the robot was moved outside the node (a simulator's reset) and is handled as a "
          "restart; negative keeps the robot config's value."),
    Param("safe_action", "", "Safety override: hold, zero or default_pose; empty keeps the "
          "robot config's value.", ("", "hold", "zero", "default_pose")),
    Param("diagnostics_hz", 1.0, "Rate of the diagnostics message."),
    Param("markers_hz", 5.0, "Rate of the markers (and of the critic evaluation behind the "
          "reachability marker)."),
    Param("startup_timeout", 0.0, "Seconds to wait for the first usable joint state before "
          "exiting with an error; 0 waits forever."),
    Param("realtime", False, "Run the control thread with SCHED_FIFO (needs CAP_SYS_NICE or an "
          "rtprio limit) and hold the CPUs' wake-up latency at 0 for the node's life "
          "(/dev/cpu_dma_latency: idle cores poll); refused requests are logged and ignored."),
    Param("spin_s", 0.0005, "Seconds of each control period the loop busy-waits before its "
          "deadline instead of sleeping (removes the kernel's sleep overshoot); 0 sleeps."),
)

SIM_BRIDGE: tuple[Param, ...] = (
    Param("robot_config", "reacher", "crl.runtime robot config (a shipped name or a YAML path): "
          "the task to simulate and the command joint order."),
    Param("dr", "off", "Domain randomization of the simulated robot: off, train or held-out.",
          ("off", "train", "held-out")),
    Param("seed", 0, "Seed of the episodes' starts, goals and randomization draws."),
    Param("command_interface", "", "The controller the sim plays: forward (Float64MultiArray "
          "on /<controller>/commands) or trajectory (JointTrajectory on "
          "/<controller>/joint_trajectory, each trajectory's last point applied as a target). "
          "Empty: the robot config's command_interface.", ("", "forward", "trajectory")),
    Param("controller", "", "Controller whose topic is read; empty: forward_position_controller "
          "or forward_effort_controller by the task's action kind (forward), "
          "joint_trajectory_controller (trajectory)."),
    Param("command_topic", "", "Command topic; empty: /<controller>/commands (forward) or "
          "/<controller>/joint_trajectory (trajectory)."),
    Param("joint_states_topic", "/joint_states", "sensor_msgs/JointState output, every hinge "
          "and slide joint, with the draw's sensor noise."),
    Param("odom_topic", "/odom", "nav_msgs/Odometry output for a floating-base robot."),
    Param("state_rate", "physics", "How often joint states and odometry go out: physics (every "
          "physics step, 100-200 Hz, like a robot's joint_state_broadcaster, so the controller "
          "always acts on a fresh state) or control (once per control step, as crl-sim robot "
          "does).", ("physics", "control")),
    Param("telemetry_topic", "~/telemetry", "std_msgs/Float64MultiArray for scoring only: "
          "[episode, step, episode_length, goal..., true achieved goal...] each control step."),
    Param("odom_frame", "odom", "Frame of the odometry pose and parent of the base's TF "
          "(REP-105's odom; the sim's world)."),
    Param("base_frame", "base_link", "Child frame of the odometry (its twist's frame) and of the "
          "TF odom -> base (REP-105's base_link)."),
    Param("map_frame", "map", "Parent of the identity transform map -> odom the sim publishes "
          "as a static transform (tf2_ros only): the sim's localization is perfect."),
    Param("publish_clock", False, "Publish the simulated time on /clock at every physics step "
          "(for nodes run with use_sim_time) and stamp messages with it."),
    Param("real_time_factor", 1.0, "Pace of the simulation against real time: 0.5 runs it at "
          "half real time (a slower simulator), 2 at twice; within (0, 10]. A node that "
          "controls it then needs use_sim_time and publish_clock, or its control rate is "
          "wrong in the simulation's time."),
    Param("episodes", 0, "Stop after this many episodes; 0 runs until shut down."),
    Param("clock_ppm", 0.0, "The simulated robot's clock (its physics pace) runs this many parts "
          "per million fast, or slow if negative, against this computer's, as a separate "
          "computer's crystal does: to test a controller against drift (within ±10000)."),
)


class ParameterError(ValueError):
    """A parameter value the node cannot use; the message names the parameter."""


def by_name(params: tuple[Param, ...]) -> dict[str, Param]:
    """Index a table by parameter name."""
    return {p.name: p for p in params}


def declare(node: Any, params: tuple[Param, ...]) -> dict[str, Any]:
    """
    Declare the parameters on `node` with descriptions; return their values.

    A value of the wrong type or outside the choices is a ParameterError naming the parameter.
    Numbers and strings are declared with dynamic typing and checked here, because the command
    line's YAML reading turns `soft_start:=1` into an integer and `dr:=off` into false.
    """
    from rcl_interfaces.msg import ParameterDescriptor

    values: dict[str, Any] = {}
    for p in params:
        loose = isinstance(p.default, (float, str))
        descriptor = ParameterDescriptor(description=p.description, read_only=True,
                                         dynamic_typing=loose)
        try:
            value = node.declare_parameter(p.name, p.default, descriptor).value
        except Exception as e:  # rclpy's InvalidParameterTypeException and kin
            raise ParameterError(f"parameter {p.name}: {e}") from None
        if isinstance(p.default, float):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ParameterError(f"parameter {p.name}: expected a number, got {value!r}")
            value = float(value)
        elif isinstance(p.default, str):
            if value is False and "off" in p.choices:
                value = "off"  # YAML 1.1 reads a bare off as false
            if not isinstance(value, str):
                raise ParameterError(f"parameter {p.name}: expected a string, got {value!r}")
        if p.choices and value not in p.choices:
            raise ParameterError(f"parameter {p.name}: {value!r} is not one of "
                                 f"{', '.join(repr(c) for c in p.choices)}")
        values[p.name] = value
    return values
