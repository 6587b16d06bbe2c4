"""
goal_reach from the install, against a scripted robot in this process, over real ROS.

The robot here is a perfect position servo (the joint state is the last command) publishing at
the control rate, alternately with sensor-data and reliable QoS. The test feeds it goals and
faults (a NaN joint state, a missing joint, a malformed message, goals in an unknown frame and
outside the training box, joint states that stop) and reads the node's answers from its
commands, diagnostics and markers: each fault is refused or handled and counted, and the node
keeps its rate throughout.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import ANT_JOINTS, Peer, Proc, diag_values, wait_for

RATE = 25.0
PERIOD = 1.0 / RATE
MAX_AGE = 3 * PERIOD  # reacher.yaml's max_observation_age (3 periods)


class ServoRobot:
    """Publish joint states at the control rate; the position follows the last command."""

    def __init__(self, peer: Peer, positions_only: bool = False, interface: str = "forward"):
        """
        Publish no velocity array with `positions_only`, as many real drivers do.

        `interface` is the controller it plays: forward (forward_position_controller's
        Float64MultiArray) or trajectory (joint_trajectory_controller's JointTrajectory, its
        point's positions taken by joint name).
        """
        from rclpy.qos import qos_profile_sensor_data
        from sensor_msgs.msg import JointState
        from std_msgs.msg import Float64MultiArray
        from trajectory_msgs.msg import JointTrajectory

        self.JointState = JointState
        node = peer.node
        self.best_effort = node.create_publisher(JointState, "/joint_states",
                                                 qos_profile_sensor_data)
        self.reliable = node.create_publisher(JointState, "/joint_states", 10)
        self.interface = interface
        self.commands = (
            peer.record(JointTrajectory, "/joint_trajectory_controller/joint_trajectory")
            if interface == "trajectory"
            else peer.record(Float64MultiArray, "/forward_position_controller/commands"))
        self.q = [0.3, -0.5]  # shoulder, elbow
        self.positions_only = positions_only
        self.fault = ""  # one message: "nan", "missing", "malformed", "oversized"
        self.fault_sent_at = -math.inf  # monotonic time the last faulty message went out
        self.paused = threading.Event()
        self.stop = threading.Event()
        self.last_sent = 0.0  # node clock seconds of the last joint state's stamp
        self.clock_shift = 0.0  # the robot's clock less the node clock, seconds
        self.clock = node.get_clock()
        self.sent = 0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        next_t = time.monotonic()
        while not self.stop.is_set():
            next_t += PERIOD
            time.sleep(max(0.0, next_t - time.monotonic()))
            if self.paused.is_set():
                continue
            target = self.target()
            if target is not None:
                self.q = target
            msg = self.JointState()
            # Reversed order and an extra joint: the node picks joints by name.
            msg.name = ["elbow", "gripper", "shoulder"]
            msg.position = [self.q[1], 0.0, self.q[0]]
            msg.velocity = [] if self.positions_only else [0.0, 0.0, 0.0]
            fault, self.fault = self.fault, ""
            if fault:
                self.fault_sent_at = time.monotonic()
            if fault == "nan":
                msg.position = [math.nan, 0.0, self.q[0]]
            elif fault == "missing":
                msg.name, msg.position, msg.velocity = ["shoulder"], [self.q[0]], [0.0]
            elif fault == "malformed":
                msg.position = [self.q[1]]
            elif fault == "oversized":  # 100k joints: refused before the node reads them
                extra = [f"j{i}" for i in range(100_000)]
                msg.name, msg.position = [*msg.name, *extra], [*msg.position, *[0.0] * 100_000]
                msg.velocity = [] if self.positions_only else [0.0] * len(msg.name)
            ns = self.clock.now().nanoseconds + round(self.clock_shift * 1e9)
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(ns, 10**9)
            (self.reliable if self.sent % 2 else self.best_effort).publish(msg)
            self.sent += 1
            self.last_sent = ns * 1e-9

    def target(self) -> list[float] | None:
        """Read the last command's [shoulder, elbow] targets, None without a usable one."""
        last = self.commands.last()
        if last is None:
            return None
        if self.interface == "forward":
            return [float(v) for v in last.data] if len(last.data) == 2 else None
        if not last.points or sorted(last.joint_names) != ["elbow", "shoulder"]:
            return None
        by_name = dict(zip(last.joint_names, last.points[-1].positions, strict=True))
        return [float(by_name["shoulder"]), float(by_name["elbow"])]

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=2.0)


def goal_pose(x: float, y: float, frame: str = "world") -> Any:
    from geometry_msgs.msg import PoseStamped

    msg = PoseStamped()
    msg.header.frame_id = frame
    msg.pose.position.x, msg.pose.position.y = x, y
    msg.pose.orientation.w = 1.0
    return msg


def clicked_point(x: float, y: float, z: float, frame: str = "world") -> Any:
    from geometry_msgs.msg import PointStamped

    msg = PointStamped()
    msg.header.frame_id = frame
    msg.point.x, msg.point.y, msg.point.z = x, y, z
    return msg


def stamp(msg: Any) -> float:
    return msg.header.stamp.sec + 1e-9 * msg.header.stamp.nanosec


def diag_status(diags: Any) -> Callable[[], dict[str, str]]:
    """Return a reader of the newest diagnostics' values ({} before the first)."""
    def status() -> dict[str, str]:
        last = diags.last()
        return diag_values(last) if last is not None else {}
    return status


def acting_on_a_goal(node: Proc, diags: Any, goals: Any) -> Callable[[], dict[str, str]]:
    """
    Wait for the node to hold without a goal, send it one and wait for the policy to act.

    Returns the reader of the node's newest diagnostics.
    """
    status = diag_status(diags)
    wait_for(lambda: status().get("mode") == "no_goal", 60, "the node holding without a goal",
             node)
    wait_for(lambda: goals.get_subscription_count(), 10, "the node's goal subscription", node)
    goals.publish(goal_pose(0.1, 0.1))
    wait_for(lambda: status().get("mode") == "running", 5, "the policy acting", node)
    return status


def test_goal_reach_faults_are_refused_counted_and_the_rate_holds(
        executables: dict[str, Path], random_policy: Path, start_node: Any, peer: Peer) -> None:
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PointStamped, PoseStamped
    from visualization_msgs.msg import MarkerArray

    diags = peer.record(DiagnosticArray, "/diagnostics")
    markers = peer.record(MarkerArray, "/goal_reach/markers")
    goals = peer.node.create_publisher(PoseStamped, "/goal_pose", 10)
    points = peer.node.create_publisher(PointStamped, "/clicked_point", 10)
    robot = ServoRobot(peer)
    node: Proc = start_node(executables["goal_reach"], {
        "policy": random_policy, "robot_config": "reacher", "diagnostics_hz": RATE,
        "markers_hz": 5.0, "startup_timeout": 60.0})
    try:
        status = diag_status(diags)

        def count(key: str) -> int:
            return int(status().get(key, "0"))

        wait_for(lambda: status().get("mode") == "no_goal", 60, "the node holding without a goal",
                 node)
        wait_for(lambda: goals.get_subscription_count() and points.get_subscription_count(), 10,
                 "the node's goal subscriptions", node)
        assert robot.commands.messages, "no command while holding"

        # A goal in the goal frame is taken; the policy acts.
        goals.publish(goal_pose(0.1, 0.1))
        wait_for(lambda: count("goals_accepted") == 1, 5, "the goal accepted", node)
        wait_for(lambda: status().get("mode") in ("soft_start", "running"), 5, "policy acting",
                 node)

        # A goal in a frame with no transform (no tf2 here): rejected, one line naming both.
        goals.publish(goal_pose(0.1, 0.1, frame="map"))
        wait_for(lambda: count("goal_rejections") == 1, 5, "the map-frame goal rejected", node)
        assert "'map'" in status()["last_goal_rejection"]
        lines = [line for line in node.text().splitlines() if "goal rejected" in line]
        assert len(lines) == 1 and "'map'" in lines[0] and "'world'" in lines[0], lines

        # A goal outside the training goal box (+ margin): rejected, the previous one kept.
        goals.publish(goal_pose(5.0, 0.0))
        wait_for(lambda: count("goal_rejections") == 2, 5, "the far goal rejected", node)
        assert "outside" in status()["last_goal_rejection"]
        points.publish(clicked_point(0.12, -0.05, 0.3))  # Publish Point: z is not a goal axis
        wait_for(lambda: count("goals_accepted") == 2, 5, "the clicked point accepted", node)

        # One NaN, one missing joint, one malformed message, one of 100k joints, each between
        # good ones: refused and counted, and the node keeps acting on the previous observation
        # (no safe action).
        wait_for(lambda: status().get("mode") == "running", 5, "the soft start over", node)
        safe_ticks = count("safe_ticks")
        for fault, key in (("nan", "observation_nonfinite"),
                           ("missing", "observation_rejections"),
                           ("malformed", "observation_malformed"),
                           ("oversized", "observation_oversized")):
            def refused(fault: str = fault, key: str = key) -> bool:
                # Depth 1: a message the executor had no time for is replaced by the next one,
                # so a fault that went unseen is sent again.
                if count(key) >= 1:
                    return True
                # Not before the diagnostics could have counted the last one (they lag the
                # messages): re-sending at once would make bad messages consecutive, a stale gap.
                if not robot.fault and time.monotonic() - robot.fault_sent_at > 10 * PERIOD:
                    robot.fault = fault
                return False

            wait_for(refused, 5, f"the {fault} joint state refused", node)
            time.sleep(3 * PERIOD)  # good ones between: two bad in a row is a stale gap
        time.sleep(0.3)
        assert status()["mode"] == "running", status()
        assert count("safe_ticks") == safe_ticks and count("stale_stops") == 0, status()

        # Joint states stop: the safe action within 2 periods after the staleness limit, and
        # the commands keep coming at the rate.
        robot.paused.set()
        time.sleep(0.05)
        last_sent = robot.last_sent
        paused_at = time.monotonic()
        stale = wait_for(lambda: next((m for m in diags.since(paused_at)
                                       if diag_values(m).get("mode") == "stale"), None),
                         5, "the safe action on stale joint states", node)
        delay = stamp(stale) - last_sent
        assert delay <= MAX_AGE + 2 * PERIOD + 0.01, f"stale after {delay * 1e3:.0f} ms"
        time.sleep(1.0)
        n = len(robot.commands.since(paused_at + 0.2))
        assert n >= 0.9 * RATE * 0.8, f"{n} commands in the 0.8 s without joint states"
        assert count("stale_stops") == 1
        robot.paused.clear()
        wait_for(lambda: status().get("mode") == "running", 5, "the policy acting again", node)

        # The rate held through all of it; the markers include the critic's reachability.
        s = status()
        assert abs(float(s["rate_hz"]) - RATE) < 0.05 * RATE, s
        # A miss is a tick that ended after the next deadline: rare, even on a loaded 2-core CI.
        assert int(s["misses"]) <= max(2, 0.05 * int(s["ticks"])), s
        assert s["backend"] == "ort" and len(s["policy_sha256"]) == 64
        ns = {m.ns for msg in markers.messages for m in msg[1].markers if m.action == 0}
        assert {"goal", "goal_box", "achieved_goal", "reachability"} <= ns, ns
        last = {m.ns: m for m in markers.last().markers}
        assert all(m.header.frame_id == "world" for m in last.values())
        # The goal's sphere is the success radius (0.02 m); the box outlines the 0.4 m square.
        assert last["goal"].scale.x == pytest.approx(0.04)
        box = last["goal_box"]
        assert box.type == box.LINE_LIST and len(box.points) == 8  # 4 edges
        corners = {(round(q.x, 6), round(q.y, 6), q.z) for q in box.points}
        assert corners == {(x, y, 0.0) for x in (-0.2, 0.2) for y in (-0.2, 0.2)}
        texts = [m.text for msg in markers.messages for m in msg[1].markers if m.text]
        assert any(t.startswith("critic distance") for t in texts), texts
    finally:
        robot.close()

    # SIGINT: the safe action once more on the way out, and a clean exit.
    before = len(robot.commands.messages)
    assert node.stop() == 0, node.text()[-2000:]
    assert "safe action sent" in node.text()
    time.sleep(0.2)
    assert len(robot.commands.messages) > before


def test_goal_reach_acts_on_joint_states_without_velocities(
        executables: dict[str, Path], random_policy: Path, start_node: Any, peer: Peer) -> None:
    """
    A driver that publishes positions only drives the policy.

    Velocities come from finite differences over the stamps, and only the first message
    (nothing to difference yet) is refused. The node runs with `realtime` as on a robot, and
    says what scheduling and CPU wake-up latency it got.
    """
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped

    diags = peer.record(DiagnosticArray, "/diagnostics")
    goals = peer.node.create_publisher(PoseStamped, "/goal_pose", 10)
    robot = ServoRobot(peer, positions_only=True)
    node: Proc = start_node(executables["goal_reach"], {
        "policy": random_policy, "robot_config": "reacher", "diagnostics_hz": RATE,
        "startup_timeout": 60.0, "realtime": True})
    try:
        status = acting_on_a_goal(node, diags, goals)
        time.sleep(0.5)
        s = status()
        assert s["mode"] == "running" and int(s["stale_stops"]) == 0, s
        assert int(s["observation_no_velocity"]) == 1 and int(s["observation_nonfinite"]) == 0, s
        assert int(s["misses_scheduling"]) <= int(s["misses"]), s
    finally:
        robot.close()
    assert node.stop() == 0, node.text()[-2000:]
    said = node.text()
    assert ("running with SCHED_FIFO" in said or "real-time scheduling refused" in said), said
    assert ("CPU wake-up latency held at 0" in said
            or "CPU wake-up latency request refused" in said), said


def test_goal_reach_rides_through_a_robot_clock_set_back(
        executables: dict[str, Path], random_policy: Path, start_node: Any, peer: Peer) -> None:
    """
    The robot's clock is set back 2 s while it runs (NTP, a quick reboot): it rides through.

    Its joint states' lags grow by 2 s at once. The one that shows the step reads 2 s old (at
    most one stale stop) and the policy acts again on the next; aged against the old clock, each
    would read stale for the whole 10 s window (`StampAges`).
    """
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped

    diags = peer.record(DiagnosticArray, "/diagnostics")
    goals = peer.node.create_publisher(PoseStamped, "/goal_pose", 10)
    robot = ServoRobot(peer)
    node: Proc = start_node(executables["goal_reach"], {
        "policy": random_policy, "robot_config": "reacher", "diagnostics_hz": RATE,
        "startup_timeout": 60.0})
    try:
        status = acting_on_a_goal(node, diags, goals)
        time.sleep(0.5)
        safe_ticks = int(status()["safe_ticks"])
        robot.clock_shift = -2.0
        time.sleep(1.5)  # soft start included: back to running well inside the 10 s window
        s = status()
        assert robot.last_sent < robot.clock.now().nanoseconds * 1e-9 - 1.0, "no step was sent"
        assert int(s["safe_ticks"]) - safe_ticks <= 2, s
        assert s["mode"] == "running" and int(s["stale_stops"]) <= 1, s
    finally:
        robot.close()
    assert node.stop() == 0, node.text()[-2000:]


def test_goal_reach_says_what_arrives_and_why_it_is_refused(
        executables: dict[str, Path], random_policy: Path, start_node: Any, peer: Peer) -> None:
    """Joint states that arrive but cannot be used: the waiting message says so, and why."""
    from sensor_msgs.msg import JointState

    publisher = peer.node.create_publisher(JointState, "/joint_states", 10)
    stop = threading.Event()

    def publish_nan() -> None:
        while not stop.wait(PERIOD):
            msg = JointState(name=["shoulder", "elbow"], position=[math.nan, 0.0],
                             velocity=[0.0, 0.0])
            msg.header.stamp = peer.node.get_clock().now().to_msg()
            publisher.publish(msg)

    thread = threading.Thread(target=publish_nan, daemon=True)
    thread.start()
    try:
        node = start_node(executables["goal_reach"], {"policy": random_policy,
                                                      "startup_timeout": 3.0})
        assert node.popen.wait(30) == 1
    finally:
        stop.set()
        thread.join(timeout=2.0)
    line = next(x for x in node.text().splitlines() if "no usable joint state within 3 s" in x)
    assert "arrive on /joint_states but are refused (nonfinite" in line, line
    assert "shoulder" in line, line


def test_goal_reach_startup_errors_are_one_line(executables: dict[str, Path], start_node: Any,
                                                tmp_path: Path) -> None:
    node = start_node(executables["goal_reach"], {"policy": tmp_path / "missing.onnx"})
    assert node.popen.wait(30) == 1
    lines = [line for line in node.text().splitlines() if line.strip()]
    assert len(lines) == 1 and "missing.onnx: no such file" in lines[0], lines


def test_goal_reach_refuses_an_edited_policy(executables: dict[str, Path], start_node: Any,
                                             random_policy: Path, tmp_path: Path) -> None:
    """Refuse a policy whose goal box was edited by one bit, in one line naming the spec."""
    # The node loads through the runtime's read_policy_file, which checks the whole-file seal.
    import json

    import onnx

    model = onnx.load(random_policy)
    prop = next(p for p in model.metadata_props if p.key == "crl.policy_spec")
    spec = json.loads(prop.value)
    spec["goal"]["high"][0] = math.nextafter(spec["goal"]["high"][0], math.inf)
    prop.value = json.dumps(spec, sort_keys=True)
    edited = tmp_path / "edited.onnx"
    onnx.save(model, edited)
    node = start_node(executables["goal_reach"], {"policy": edited})
    assert node.popen.wait(30) == 1
    lines = [line for line in node.text().splitlines() if line.strip()]
    assert len(lines) == 1 and "edited.onnx: spec sha256 mismatch" in lines[0], lines


@pytest.mark.parametrize("value", ["3"])
def test_float_parameters_take_integers(executables: dict[str, Path], random_policy: Path,
                                        start_node: Any, value: str) -> None:
    node = start_node(executables["goal_reach"], {"policy": random_policy,
                                                  "startup_timeout": value, "soft_start": 1})
    assert node.popen.wait(30) == 1
    assert "no usable joint state within 3 s" in node.text()


def held_commands(robot: ServoRobot, seconds: float) -> tuple[list[float], list[Any]]:
    """Collect the commands that arrive over `seconds`: their arrival times and messages."""
    start = time.monotonic()
    time.sleep(seconds)
    with robot.commands.lock:
        got = [(t, m) for t, m in robot.commands.messages if t >= start]
    return [t for t, _ in got], [m for _, m in got]


@pytest.mark.parametrize("interface", ["forward", "trajectory"])
def test_commands_reach_the_controller_by_name_in_order_in_rad_at_the_rate(
        executables: dict[str, Path], random_policy: Path, start_node: Any, peer: Peer,
        interface: str) -> None:
    """
    Each command interface, against a subscriber that plays its ros2_control controller.

    forward: a Float64MultiArray on /forward_position_controller/commands; trajectory: a
    one-point JointTrajectory on /joint_trajectory_controller/joint_trajectory, its joint names
    the robot config's command_joints in order, its point reached one control period after
    receipt (time_from_start 40 ms, an unset stamp). Holding without a goal, the command is the
    measured pose in rad, in command_joints order (the joint states list them reversed); then
    the policy's targets stay within the action limits (rad), one a control period.
    """
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped
    from std_msgs.msg import Float64MultiArray
    from trajectory_msgs.msg import JointTrajectory

    diags = peer.record(DiagnosticArray, "/diagnostics")
    goals = peer.node.create_publisher(PoseStamped, "/goal_pose", 10)
    other = (peer.record(Float64MultiArray, "/forward_position_controller/commands")
             if interface == "trajectory" else
             peer.record(JointTrajectory, "/joint_trajectory_controller/joint_trajectory"))
    robot = ServoRobot(peer, interface=interface)
    node: Proc = start_node(executables["goal_reach"], {
        "policy": random_policy, "robot_config": "reacher", "command_interface": interface,
        "diagnostics_hz": RATE, "startup_timeout": 60.0})
    status = diag_status(diags)

    def positions(msg: Any) -> list[float]:
        if interface == "forward":
            assert not msg.layout.dim, msg
            return [float(v) for v in msg.data]
        assert list(msg.joint_names) == ["shoulder", "elbow"], msg
        assert len(msg.points) == 1, msg
        point = msg.points[0]
        assert not (point.velocities or point.accelerations or point.effort), point
        assert (point.time_from_start.sec, point.time_from_start.nanosec) == (0, 40_000_000)
        assert (msg.header.stamp.sec, msg.header.stamp.nanosec) == (0, 0), msg.header
        return [float(v) for v in point.positions]

    try:
        wait_for(lambda: status().get("mode") == "no_goal", 60, "the node holding without a goal",
                 node)
        assert status()["command_topic"] == ("/forward_position_controller/commands"
                                             if interface == "forward" else
                                             "/joint_trajectory_controller/joint_trajectory")
        times, held = held_commands(robot, 1.0)
        for msg in held:
            assert positions(msg) == pytest.approx([0.3, -0.5], abs=1e-12), msg
        assert abs(len(held) - RATE) <= 0.12 * RATE, f"{len(held)} commands in 1 s"
        gaps = np.diff(times)
        assert abs(float(np.median(gaps)) - PERIOD) < 0.005, gaps
        wait_for(lambda: goals.get_subscription_count(), 10, "the node's goal subscription", node)
        goals.publish(goal_pose(0.1, 0.1))
        wait_for(lambda: status().get("mode") == "running", 5, "the policy acting", node)
        times, acting = held_commands(robot, 1.0)
        values = np.array([positions(m) for m in acting])
        assert abs(len(acting) - RATE) <= 0.12 * RATE, f"{len(acting)} commands in 1 s"
        assert np.isfinite(values).all()
        assert (np.abs(values) <= np.array([3.14, 2.6]) + 1e-9).all(), values
        assert np.abs(values - [0.3, -0.5]).max() > 1e-6, "the policy never moved the arm"
        assert not other.messages, "commands on the other interface's topic too"
    finally:
        robot.close()
    assert node.stop() == 0, node.text()[-2000:]


EFFORT_CONFIG = """task: reacher
model: reacher.xml
observation:
  joint_pos: joint_position
  joint_vel: joint_velocity
  site_pos: {forward_kinematics: fingertip}
  last_action: last_action
command_joints: [shoulder, elbow]
command_interface: INTERFACE
safety: {safe_action: zero, soft_start: 0.2}
"""


def test_effort_policies_go_to_a_forward_effort_controller_and_never_to_a_trajectory(
        executables: dict[str, Path], effort_policy: Path, start_node: Any, peer: Peer,
        tmp_path: Path) -> None:
    """
    Torques go out on /forward_effort_controller/commands, in N·m within the action limits.

    Asking for trajectory commands, by parameter or by the robot config, is refused at
    startup in one line that says what to use instead.
    """
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped
    from std_msgs.msg import Float64MultiArray

    forward, trajectory = (tmp_path / f"{i}.yaml" for i in ("forward", "trajectory"))
    for path in (forward, trajectory):
        path.write_text(EFFORT_CONFIG.replace("INTERFACE", path.stem))
    for params in ({"robot_config": forward, "command_interface": "trajectory"},
                   {"robot_config": trajectory}):
        refused = start_node(executables["goal_reach"], {"policy": effort_policy, **params},
                             name=f"refused_{len(params)}")
        assert refused.popen.wait(30) == 1
        lines = [line for line in refused.text().splitlines() if line.strip()]
        assert len(lines) == 1, lines
        assert "command_interface" in lines[0] and "forward_effort_controller" in lines[0], lines

    diags = peer.record(DiagnosticArray, "/diagnostics")
    goals = peer.node.create_publisher(PoseStamped, "/goal_pose", 10)
    torques = peer.record(Float64MultiArray, "/forward_effort_controller/commands")
    robot = ServoRobot(peer)  # its pose stays put: nothing comes on the position topic
    node = start_node(executables["goal_reach"], {
        "policy": effort_policy, "robot_config": forward, "diagnostics_hz": RATE,
        "startup_timeout": 60.0})
    try:
        status = diag_status(diags)

        wait_for(lambda: status().get("mode") == "no_goal", 60, "the node holding without a goal",
                 node)
        wait_for(lambda: len(torques.messages) >= 5, 5, "zero torques while holding", node)
        assert all(list(m.data) == [0.0, 0.0] for _, m in torques.messages)
        wait_for(lambda: goals.get_subscription_count(), 10, "the node's goal subscription", node)
        goals.publish(goal_pose(0.1, 0.1))
        wait_for(lambda: status().get("mode") == "running", 5, "the policy acting", node)
        time.sleep(0.5)
        values = np.array([list(m.data) for m in torques.since(time.monotonic() - 0.4)])
        assert values.shape[1] == 2 and np.isfinite(values).all()
        assert (np.abs(values) <= 1.0 + 1e-9).all() and np.abs(values).max() > 0, values
        assert not robot.commands.messages
    finally:
        robot.close()
    assert node.stop() == 0, node.text()[-2000:]
    time.sleep(0.2)
    assert list(torques.last().data) == [0.0, 0.0]  # the safe action on the way out: no torque


class FloatingRobot:
    """Publish the ant's joint states and odometry at 20 Hz, the odometry in `frame`."""

    def __init__(self, peer: Peer, frame: str):
        from nav_msgs.msg import Odometry
        from sensor_msgs.msg import JointState

        self.JointState, self.Odometry = JointState, Odometry
        self.joints = peer.node.create_publisher(JointState, "/joint_states", 10)
        self.odom = peer.node.create_publisher(Odometry, "/odom", 10)
        self.clock = peer.node.get_clock()
        self.frame = frame
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(0.05):
            stamp = self.clock.now().to_msg()
            js = self.JointState(name=list(ANT_JOINTS), position=[0.0] * 8, velocity=[0.0] * 8)
            js.header.stamp = stamp
            odom = self.Odometry()
            odom.header.stamp, odom.header.frame_id = stamp, self.frame
            odom.child_frame_id = "base_link"
            odom.pose.pose.position.z = 0.55
            odom.pose.pose.orientation.w = 1.0
            self.odom.publish(odom)
            self.joints.publish(js)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=2.0)


def test_odometry_and_goals_in_another_frame_are_refused_without_tf2(
        executables: dict[str, Path], ant_policy: Path, start_node: Any, peer: Peer) -> None:
    """
    A floating base's frames (REP-105) without tf2_ros (CI has no tf2_ros wheel).

    The ant's policy world is the robot's odom frame (world_frame: odom, as config/ant.yaml
    says). Odometry stamped in map cannot be transformed: it is refused and counted, with one
    log line (throttled) naming both frames; odometry in odom starts the node. Goals in odom,
    or in the spec's own frame name (world), are taken; a goal in map is refused, naming why.
    """
    from diagnostic_msgs.msg import DiagnosticArray
    from geometry_msgs.msg import PoseStamped

    diags = peer.record(DiagnosticArray, "/diagnostics")
    goals = peer.node.create_publisher(PoseStamped, "/goal_pose", 10)
    robot = FloatingRobot(peer, frame="map")
    node: Proc = start_node(executables["goal_reach"], {
        "policy": ant_policy, "robot_config": "ant", "world_frame": "odom",
        "diagnostics_hz": 20.0, "startup_timeout": 60.0})
    try:
        status = diag_status(diags)

        def count(key: str) -> int:
            return int(status().get(key, "0"))

        wait_for(lambda: "odometry refused" in node.text(), 60, "the map-frame odometry refused",
                 node)
        time.sleep(1.0)  # about 20 more refusals, none of them logged (throttled)
        assert not diags.messages, "the node started on odometry in the wrong frame"
        lines = [x for x in node.text().splitlines() if "odometry refused:" in x]
        assert len(lines) == 1 and "[WARN]" in lines[0], lines
        assert "frame 'map'" in lines[0] and "'odom' (world_frame)" in lines[0], lines
        assert "tf2_ros is not installed" in lines[0], lines
        robot.frame = "odom"
        wait_for(lambda: status().get("mode") == "no_goal", 10, "the node started", node)
        assert count("odometry_wrong_frame") >= 20, status()
        wait_for(lambda: goals.get_subscription_count(), 10, "the node's goal subscription", node)
        goals.publish(goal_pose(3.0, 4.0, frame="odom"))
        wait_for(lambda: count("goals_accepted") == 1, 5, "the odom-frame goal accepted", node)
        goals.publish(goal_pose(-3.0, 4.0, frame="world"))
        wait_for(lambda: count("goals_accepted") == 2, 5, "the world-frame goal accepted", node)
        goals.publish(goal_pose(1.0, 1.0, frame="map"))
        wait_for(lambda: count("goal_rejections") == 1, 5, "the map-frame goal rejected", node)
        lines = [x for x in node.text().splitlines() if "goal rejected" in x]
        assert len(lines) == 1 and "'map'" in lines[0] and "'odom'" in lines[0], lines
        assert "tf2_ros is not installed to transform it" in lines[0], lines
    finally:
        robot.close()
    assert node.stop() == 0, node.text()[-2000:]


def test_goal_reach_on_sim_time_without_a_clock_says_so_and_sends_nothing(
        executables: dict[str, Path], random_policy: Path, start_node: Any, peer: Peer) -> None:
    """
    Start goal_reach with use_sim_time on a robot that publishes no /clock.

    Its time stands still, so the loop sends no command: the node says why, in its log and as a
    diagnostics warning, rather than idling in silence.
    """
    from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus

    diags = peer.record(DiagnosticArray, "/diagnostics")
    robot = ServoRobot(peer)
    node: Proc = start_node(executables["goal_reach"], {
        "policy": random_policy, "robot_config": "reacher", "use_sim_time": True})
    try:
        warning = wait_for(lambda: next((m for m in diags.since(0.0)
                                         if m.status[0].level == DiagnosticStatus.WARN), None),
                           60, "a diagnostics warning", node)
        assert "/clock has not moved" in warning.status[0].message, warning
        assert "/clock has not moved" in node.text()
        assert not robot.commands.messages
    finally:
        robot.close()
    assert node.stop() == 0, node.text()[-2000:]
