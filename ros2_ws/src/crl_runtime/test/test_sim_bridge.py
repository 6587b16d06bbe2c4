"""
sim_bridge from the install: a floating-base robot's joint states, odometry and clock over ROS.

The reacher's path (joint states, commands, telemetry) is covered by the closed loop; here the
ant, whose base pose and twist go out as odometry, with the simulated clock on /clock.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
from conftest import Peer, wait_for

from crl.runtime import robot_config


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
                                                 "publish_clock": True, "base_frame": "torso"})
    wait_for(lambda: len(odom.messages) >= 5 and len(states.messages) >= 5, 180,
             "joint states and odometry", sim)
    joints = robot_config.load("ant").command_joints
    js = states.last()
    assert set(joints) <= set(js.name) and len(js.velocity) == len(js.name)
    o = odom.last()
    assert (o.header.frame_id, o.child_frame_id) == ("world", "torso")
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
