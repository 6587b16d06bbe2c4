"""
The package's files agree: parameter files, declared parameters, docs, RViz and install.

Parameter names are only checked by ROS at run time, where an unknown one is silently ignored;
these tests catch a misspelt parameter, an undocumented one, a launch argument the ROS 2 doc
(docs/ros2.md) does not describe and an RViz topic nobody publishes, before a robot user does.
"""

from __future__ import annotations

import os
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import yaml

from crl.runtime import robot_config
from crl_runtime.launch_plan import ARGUMENTS
from crl_runtime.parameters import GOAL_REACH, SIM_BRIDGE, by_name

PACKAGE = Path(__file__).resolve().parents[1]
REPO = PACKAGE.parents[2]
NODES = {"goal_reach": GOAL_REACH, "sim_bridge": SIM_BRIDGE}
BUILTIN = {"use_sim_time"}  # every rclpy node declares it
CONFIGS = sorted((PACKAGE / "config").glob("*.yaml"))


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


def test_the_rviz_config_uses_the_nodes_topics_and_the_goal_frame() -> None:
    rviz = yaml.safe_load((PACKAGE / "rviz" / "goal_reach.rviz").read_text())
    defaults = {p.name: p.default for p in GOAL_REACH}
    node_topics = {defaults["goal_pose_topic"], defaults["clicked_point_topic"],
                   str(defaults["markers_topic"]).replace("~", "/goal_reach")}
    topics = rviz_topics(rviz)
    assert topics and set(topics) <= node_topics, topics
    manager = rviz["Visualization Manager"]
    tools = {t["Class"]: t.get("Topic", {}).get("Value") for t in manager["Tools"]}
    assert tools["rviz_default_plugins/SetGoal"] == defaults["goal_pose_topic"]
    assert tools["rviz_default_plugins/PublishPoint"] == defaults["clicked_point_topic"]
    # Every task's goals are in the world frame (crl.sim.config.GOAL_FRAMES).
    assert manager["Global Options"]["Fixed Frame"] == "world"


def test_package_xml_declares_every_runtime_dependency() -> None:
    root = ET.parse(PACKAGE / "package.xml").getroot()
    assert root.get("format") == "3"
    deps = {e.text for e in root.iter("exec_depend")}
    assert {"rclpy", "sensor_msgs", "nav_msgs", "geometry_msgs", "std_msgs", "diagnostic_msgs",
            "visualization_msgs", "tf2_ros", "launch", "launch_ros", "rviz2"} <= deps
    assert root.find("export/build_type").text == "ament_python"


def test_the_install_has_the_nodes_and_the_shared_files(share: Path) -> None:
    import crl_runtime

    if share == PACKAGE:
        pytest.skip("crl_runtime is not installed: run ros2_ws/test.sh")
    # The tests import the installed package, not the source tree.
    assert Path(crl_runtime.__file__).resolve().is_relative_to(share.parents[1].resolve())
    assert (share / "launch" / "goal_reach.launch.py").is_file()
    assert (share / "rviz" / "goal_reach.rviz").is_file()
    assert {p.name for p in (share / "config").glob("*.yaml")} == {p.name for p in CONFIGS}
    lib = share.parents[1] / "lib" / "crl_runtime"
    assert {p.name for p in lib.iterdir()} >= {"goal_reach", "sim_bridge"}
