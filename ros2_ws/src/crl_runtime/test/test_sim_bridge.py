"""
sim_bridge from the install: a floating-base robot's joint states, odometry and clock over ROS.

The reacher's path (joint states, forward commands, telemetry) is covered by the closed loop;
here the ant, whose base pose and twist go out as odometry in REP-105's frames (odom ->
base_link), with the simulated clock on /clock, and the reacher playing a
joint_trajectory_controller.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from conftest import Peer, diag_values, wait_for

from crl.runtime import robot_config

RATE = 25.0  # the reacher policy's control rate, Hz


def test_sim_bridge_publishes_odometry_and_the_sim_clock_and_drops_bad_commands(
        executables: dict[str, Path], start_node: Any, peer: Peer,
        ros_env: dict[str, str]) -> None:
    from nav_msgs.msg import Odometry
    from rosgraph_msgs.msg import Clock
    from sensor_msgs.msg import JointState
    from std_msgs.msg import Float64MultiArray

    ros_env["JAX_PLATFORMS"] = "cpu"
    states = peer.record(JointState, "/joint_states")
    odom = peer.record(Odometry, "/odom")
    clock = peer.record(Clock, "/clock")
    topic = "/forward_position_controller/commands"
    commands = peer.node.create_publisher(Float64MultiArray, topic, 1)
    sim = start_node(executables["sim_bridge"], {"robot_config": "ant", "dr": "off",
                                                 "publish_clock": True})
    wait_for(lambda: len(odom.messages) >= 5 and len(states.messages) >= 5, 180,
             "joint states and odometry", sim)
    joints = robot_config.load("ant").command_joints
    js = states.last()
    assert set(joints) <= set(js.name) and len(js.velocity) == len(js.name)
    o = odom.last()
    assert (o.header.frame_id, o.child_frame_id) == ("odom", "base_link")
    q = o.pose.pose.orientation
    assert abs(np.linalg.norm([q.w, q.x, q.y, q.z]) - 1.0) < 1e-6
    # Stamps are the simulated time that /clock carries.

    def seconds(t: Any) -> float:
        return t.sec + 1e-9 * t.nanosec

    assert abs(seconds(clock.last().clock) - seconds(js.header.stamp)) < 0.5
    # Depth 1: publish the short command until it is refused, then a good one until taken.
    short = Float64MultiArray(data=[0.0] * (len(joints) - 1))
    good = Float64MultiArray(data=[0.0] * len(joints))

    def published_until(msg: Any, seen: Any) -> Any:
        commands.publish(msg)
        time.sleep(0.1)
        return seen()

    wait_for(lambda: published_until(short, lambda: "command dropped" in sim.text()), 10,
             "the short command dropped", sim)
    for _ in range(5):
        published_until(good, lambda: None)
    assert sim.stop() == 0
    last = sim.text().strip().splitlines()[-1]
    counts = dict(item.split(" ") for item in last.split(": ", 1)[1].split(", "))
    assert int(counts["dropped"]) >= 1 and int(counts["commands"]) >= 1, last


def test_sim_bridge_plays_a_joint_trajectory_controller(
        executables: dict[str, Path], start_node: Any, peer: Peer,
        ros_env: dict[str, str]) -> None:
    """
    command_interface trajectory: the last point's positions, by joint name, are the target.

    A trajectory naming other joints is dropped, saying why; one that lists the reacher's
    joints in reverse order drives each joint to its own position.
    """
    from sensor_msgs.msg import JointState
    from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

    ros_env["JAX_PLATFORMS"] = "cpu"
    states = peer.record(JointState, "/joint_states")
    trajectories = peer.node.create_publisher(
        JointTrajectory, "/joint_trajectory_controller/joint_trajectory", 1)
    sim = start_node(executables["sim_bridge"], {"robot_config": "reacher", "dr": "off",
                                                 "command_interface": "trajectory"})
    wait_for(lambda: len(states.messages) >= 5, 180, "joint states", sim)
    target = {"shoulder": -0.8, "elbow": 0.5}

    def send(names: list[str]) -> None:
        point = JointTrajectoryPoint(positions=[target.get(n, 0.0) for n in names])
        point.time_from_start.nanosec = 40_000_000
        trajectories.publish(JointTrajectory(joint_names=names, points=[point]))
        time.sleep(0.04)

    def dropped() -> bool:
        send(["shoulder", "wrist"])
        return "command dropped" in sim.text()

    wait_for(dropped, 10, "the trajectory for other joints dropped", sim)
    assert "trajectory joints ['shoulder', 'wrist']" in sim.text()

    def reached() -> bool:
        send(["elbow", "shoulder"])
        js = states.last()
        q = dict(zip(js.name, js.position, strict=True))
        return all(abs(q[j] - v) < 0.05 for j, v in target.items())

    wait_for(reached, 10, "the joints at the trajectory's positions", sim)
    assert sim.stop() == 0
    last = sim.text().strip().splitlines()[-1]
    counts = dict(item.split(" ") for item in last.split(": ", 1)[1].split(", "))
    assert int(counts["dropped"]) >= 1 and int(counts["commands"]) >= 1, last


def test_goal_reach_on_sim_time_keeps_its_rate_in_a_simulation_at_half_real_time(
        executables: dict[str, Path], random_policy: Path, start_node: Any, peer: Peer,
        ros_env: dict[str, str]) -> None:
    """
    Run goal_reach with use_sim_time on a sim_bridge at half real time.

    The policy's 25 Hz hold in the simulation's time (/clock), which is 12.5 commands a second
    of real time; on this computer's clock it would be 25 a real second, 50 a simulated one.
    """
    from diagnostic_msgs.msg import DiagnosticArray
    from rosgraph_msgs.msg import Clock
    from std_msgs.msg import Float64MultiArray

    ros_env["JAX_PLATFORMS"] = "cpu"
    commands = peer.record(Float64MultiArray, "/forward_position_controller/commands")
    clock = peer.record(Clock, "/clock")
    diags = peer.record(DiagnosticArray, "/diagnostics")
    node = start_node(executables["goal_reach"], {"policy": random_policy,
                                                  "robot_config": "reacher",
                                                  "use_sim_time": True})
    sim = start_node(executables["sim_bridge"], {"robot_config": "reacher", "dr": "off",
                                                 "publish_clock": True, "real_time_factor": 0.5})
    wait_for(lambda: len(commands.messages) >= 25, 240, "commands on sim time", node)

    def now() -> tuple[float, int, float]:
        sim_time = clock.last().clock
        return time.monotonic(), len(commands.messages), sim_time.sec + 1e-9 * sim_time.nanosec

    real0, count0, sim0 = now()
    time.sleep(6.0)
    real1, count1, sim1 = now()
    sent = count1 - count0
    per_sim_s, per_real_s = sent / (sim1 - sim0), sent / (real1 - real0)
    said = (f"{sent} commands in {sim1 - sim0:.2f} s simulated, {real1 - real0:.2f} s real\n"
            f"{node.text()[-1500:]}\n{sim.text()[-1500:]}")
    assert 0.85 * RATE <= per_sim_s <= 1.15 * RATE, said
    assert per_real_s <= 0.65 * RATE, said  # the simulation's pace, not this computer's
    status = diag_values(wait_for(diags.last, 10, "diagnostics", node))
    assert status["clock"] == "sim", status
    assert 0.8 * RATE <= float(status["rate_hz"]) <= 1.2 * RATE, status
