"""
The package's files agree: parameter files, declared parameters, docs, RViz and install.

Parameter names are only checked by ROS at run time, where an unknown one is silently ignored;
these tests catch a misspelt parameter, an undocumented one, a launch argument the ROS 2 doc
(docs/ros2.md) does not describe, an RViz topic nobody publishes or a view of the wrong size or
frame, and a controller example that does not take what the robot config sends, before a robot
user does.
"""

from __future__ import annotations

import math
import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from crl.runtime import robot_config
from crl_runtime.launch_plan import ARGUMENTS
from crl_runtime.node_runner import default_controller
from crl_runtime.parameters import GOAL_REACH, SIM_BRIDGE, by_name

PACKAGE = Path(__file__).resolve().parents[1]
REPO = PACKAGE.parents[2]
NODES = {"goal_reach": GOAL_REACH, "sim_bridge": SIM_BRIDGE}
BUILTIN = {"use_sim_time"}  # every rclpy node declares it
CONFIGS = sorted((PACKAGE / "config").glob("*.yaml"))
# What `crl-sim info TASK` says (docs/tasks.md): the action kind and the training goal box's
# largest side and centre (m).
KINDS = {"reacher": "position", "arm_reach": "position", "ant": "position",
         "ant_u_maze": "position", "humanoid": "effort"}
BOXES = {"reacher": (0.4, (0.0, 0.0)), "arm_reach": (0.7, (0.45, 0.0)), "ant": (20.0, (0.0, 0.0)),
         "ant_u_maze": (8.0, (8.0, 8.0)), "humanoid": (10.0, (0.0, 0.0))}


def ros_params(task: str) -> dict[str, dict[str, object]]:
    """Read a shipped ROS parameter file: node -> its parameters."""
    data = yaml.safe_load((PACKAGE / "config" / f"{task}.yaml").read_text())
    return {node: section["ros__parameters"] for node, section in data.items()}


def floating(task: str) -> bool:
    """Say whether the robot has a floating base (its config reads odometry)."""
    config = robot_config.load(task)
    return any(s.kind in robot_config.BASE_SOURCES for s in config.observation.values())


def test_there_is_a_parameter_file_for_every_shipped_robot_config() -> None:
    tasks = {p.stem for p in robot_config.ROBOTS.glob("*.yaml")}
    assert {p.stem for p in CONFIGS} == tasks


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_every_parameter_in_a_shipped_file_is_declared(path: Path) -> None:
    data = yaml.safe_load(path.read_text())
    assert set(data) <= set(NODES), f"{path.name}: sections {sorted(data)}"
    for node, section in data.items():
        declared = set(by_name(NODES[node])) | BUILTIN
        params = section["ros__parameters"]
        unknown = set(params) - declared
        assert not unknown, f"{path.name}: {node}: undeclared parameter(s) {sorted(unknown)}"
        for name, value in params.items():
            if name in BUILTIN:
                continue
            default = by_name(NODES[node])[name].default
            number = isinstance(default, float) and isinstance(value, (int, float))
            assert number or type(value) is type(default), f"{path.name}: {node}.{name}"
        # The ROS side only names the runtime's robot config; it never copies it.
        assert params["robot_config"] == path.stem
        robot_config.load(params["robot_config"])


@pytest.mark.parametrize("node", NODES)
def test_every_declared_parameter_is_documented(node: str) -> None:
    names = [p.name for p in NODES[node]]
    assert len(names) == len(set(names))
    for p in NODES[node]:
        assert len(p.description) > 20 and p.description.endswith("."), f"{node}.{p.name}"


def ros_doc() -> tuple[Path, str]:
    path = Path(os.environ.get("CRL_ROS_DOC", REPO / "docs" / "ros2.md"))
    text = path.read_text() if path.is_file() else ""
    if "goal_reach.launch.py" not in text:
        pytest.fail(f"{path} has no crl_runtime section (nothing about goal_reach.launch.py)")
    return path, text


def test_the_ros_doc_describes_exactly_the_launch_arguments() -> None:
    path, text = ros_doc()
    header = r"^\s*\| argument \| default \| meaning \|\n"
    table = re.search(header + r"(?:\s*\|.*\n)+", text, re.MULTILINE)
    assert table, f"{path}: no launch-argument table (| argument | default | meaning |)"
    rows = dict(re.findall(r"^\s*\| `([a-z_]+)` \| `([^`]*)` \|", table.group(0), re.MULTILINE))
    assert set(rows) == set(ARGUMENTS), f"{path}: launch-argument table has {sorted(rows)}"
    for name, (default, _) in ARGUMENTS.items():
        assert rows[name] == default, f"{path}: {name} defaults to {default!r}"
    # Every launch line in it and in the README uses only real arguments.
    for doc in (path, REPO / "README.md"):
        for line in set(re.findall(r"goal_reach\.launch\.py[^\n]*", doc.read_text())):
            for name in re.findall(r"\b([a-z_]+):=", line):
                assert name in ARGUMENTS, f"{doc}: `{line}` uses {name}:=, not an argument"


def rviz_topics(node: object) -> list[str]:
    found = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "Topic" and isinstance(value, dict):
                found.append(value["Value"])
            else:
                found += rviz_topics(value)
    elif isinstance(node, list):
        for item in node:
            found += rviz_topics(item)
    return found


def test_the_shipped_robots_use_rep_105_frames() -> None:
    """A floating base: the policy's world is odom; sim_bridge gives map -> odom -> base_link."""
    assert set(KINDS) == set(BOXES) == {p.stem for p in CONFIGS}
    for task in KINDS:
        params = ros_params(task)
        if floating(task):
            assert params["goal_reach"]["world_frame"] == "odom", task
            sim = params["sim_bridge"]
            assert (sim["odom_frame"], sim["base_frame"], sim["map_frame"]) == (
                "odom", "base_link", "map"), task
        else:
            assert params["goal_reach"]["world_frame"] == "world", task
            assert not {"odom_frame", "base_frame", "map_frame"} & set(params["sim_bridge"])
    defaults = {p.name: p.default for p in SIM_BRIDGE}
    assert (defaults["odom_frame"], defaults["base_frame"], defaults["map_frame"]) == (
        "odom", "base_link", "map")


@pytest.mark.parametrize("task", sorted(KINDS))
def test_each_robot_has_a_ros2_control_example_that_takes_its_commands(task: str) -> None:
    """
    controllers/<task>.yaml declares the controller config/<task>.yaml commands.

    Of the type the robot config's command_interface needs, for command_joints in their order,
    on the interface the policy's actions are (position targets or torques).
    """
    config = robot_config.load(task)
    params = ros_params(task)
    name = params["goal_reach"]["controller"]
    assert params["sim_bridge"]["controller"] == name
    assert name == default_controller(KINDS[task], config.command_interface)
    data = yaml.safe_load((PACKAGE / "controllers" / f"{task}.yaml").read_text())
    manager = data["controller_manager"]["ros__parameters"]
    assert manager["joint_state_broadcaster"]["type"] == (
        "joint_state_broadcaster/JointStateBroadcaster")
    controller = data[name]["ros__parameters"]
    assert controller["joints"] == list(config.command_joints)
    if config.command_interface == "trajectory":
        assert KINDS[task] == "position"
        assert manager[name]["type"] == "joint_trajectory_controller/JointTrajectoryController"
        assert controller["command_interfaces"] == ["position"]
        assert {"position", "velocity"} <= set(controller["state_interfaces"])
    else:
        assert manager[name]["type"] == "forward_command_controller/ForwardCommandController"
        assert controller["interface_name"] == KINDS[task]


def rviz_view(task: str) -> dict[str, object]:
    return yaml.safe_load((PACKAGE / "rviz" / f"{task}.rviz").read_text())


def test_there_is_an_rviz_view_for_every_shipped_robot() -> None:
    assert {p.stem for p in (PACKAGE / "rviz").glob("*.rviz")} == {p.stem for p in CONFIGS}


@pytest.mark.parametrize("task", sorted(KINDS))
def test_each_rviz_view_is_sized_for_its_robot_in_its_frames(task: str) -> None:
    """The grid spans the goal box at a readable cell size; the camera sees it whole."""
    manager = rviz_view(task)["Visualization Manager"]
    # A fixed base: the policy's world; a floating base: map, above odom (REP-105).
    world = ros_params(task)["goal_reach"]["world_frame"]
    assert manager["Global Options"]["Fixed Frame"] == ("map" if world == "odom" else world)
    grid = next(d for d in manager["Displays"] if d["Class"] == "rviz_default_plugins/Grid")
    side, centre = BOXES[task]
    cell, span = grid["Cell Size"], grid["Cell Size"] * grid["Plane Cell Count"]
    assert side <= span and cell <= side / 4, (cell, span, side)
    offset = grid["Offset"]
    assert math.dist((offset["X"], offset["Y"]), centre) <= cell, offset
    view = manager["Views"]["Current"]
    assert side <= view["Distance"] <= 4 * side, view
    markers = next(d for d in manager["Displays"]
                   if d["Class"] == "rviz_default_plugins/MarkerArray")
    assert set(markers["Namespaces"]) == {"goal", "goal_box", "achieved_goal", "reachability"}


@pytest.mark.parametrize("task", sorted(KINDS))
def test_the_rviz_views_use_the_nodes_topics(task: str) -> None:
    rviz = rviz_view(task)
    defaults = {p.name: p.default for p in GOAL_REACH}
    node_topics = {defaults["goal_pose_topic"], defaults["clicked_point_topic"],
                   str(defaults["markers_topic"]).replace("~", "/goal_reach")}
    topics = rviz_topics(rviz)
    assert topics and set(topics) <= node_topics, topics
    manager = rviz["Visualization Manager"]
    tools = {t["Class"]: t.get("Topic", {}).get("Value") for t in manager["Tools"]}
    assert tools["rviz_default_plugins/SetGoal"] == defaults["goal_pose_topic"]
    assert tools["rviz_default_plugins/PublishPoint"] == defaults["clicked_point_topic"]


def test_package_xml_declares_every_runtime_dependency() -> None:
    root = ET.parse(PACKAGE / "package.xml").getroot()
    assert root.get("format") == "3"
    deps = {e.text for e in root.iter("exec_depend")}
    assert {"rclpy", "sensor_msgs", "nav_msgs", "geometry_msgs", "std_msgs", "diagnostic_msgs",
            "visualization_msgs", "trajectory_msgs", "tf2_ros", "tf2_ros_py", "launch",
            "launch_ros"} <= deps
    # RViz is optional: a robot computer runs the nodes without it.
    assert "rviz2" not in deps
    assert root.find("export/build_type").text == "ament_python"


def test_the_install_has_the_nodes_and_the_shared_files(share: Path) -> None:
    import crl_runtime

    if share == PACKAGE:
        pytest.skip("crl_runtime is not installed: run ros2_ws/test.sh")
    # The tests import the installed package, not the source tree.
    assert Path(crl_runtime.__file__).resolve().is_relative_to(share.parents[1].resolve())
    assert (share / "launch" / "goal_reach.launch.py").is_file()
    assert {p.name for p in (share / "config").glob("*.yaml")} == {p.name for p in CONFIGS}
    # Each robot's view and controllers (an older build may have left other files).
    assert {p.stem for p in (share / "rviz").glob("*.rviz")} >= {p.stem for p in CONFIGS}
    assert {p.name for p in (share / "controllers").glob("*.yaml")} >= {p.name for p in CONFIGS}
    lib = share.parents[1] / "lib" / "crl_runtime"
    assert {p.name for p in lib.iterdir()} >= {"goal_reach", "sim_bridge"}
