"""
goal_reach.launch.py's logic, through the plain function it wraps (no `launch` needed).

CI cannot install `launch`/`launch_ros`, so the launch file is kept to a declaration of
launch_plan.ARGUMENTS and a call of launch_plan.plan; these tests cover plan and check the
file's text for exactly that.
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest
import yaml

from crl_runtime.launch_plan import ARGUMENTS, LaunchError, NodeSpec, plan

PACKAGE = Path(__file__).resolve().parents[1]


def args(**changes: str) -> dict[str, str]:
    values = {name: default for name, (default, _) in ARGUMENTS.items()}
    values["policy"] = "policy.onnx"
    return {**values, **changes}


def by_name(nodes: list[NodeSpec]) -> dict[str, NodeSpec]:
    return {n.name: n for n in nodes}


def test_a_robot_runs_goal_reach_alone_with_the_robot_parameter_file() -> None:
    nodes = by_name(plan(args(), PACKAGE))
    assert list(nodes) == ["goal_reach"]
    params = nodes["goal_reach"].parameters
    assert params[0] == str(PACKAGE / "config" / "reacher.yaml")
    assert params[1]["backend"] == "ort" and params[1]["use_sim_time"] is False
    assert params[1]["policy"] == "policy.onnx"


def test_sim_adds_the_sim_robot_and_rviz_by_default() -> None:
    nodes = by_name(plan(args(sim="true", robot="ant", backend="trt"), PACKAGE))
    assert list(nodes) == ["sim_bridge", "goal_reach", "rviz2"]
    assert nodes["sim_bridge"].parameters[0].endswith("config/ant.yaml")
    assert nodes["rviz2"].arguments == ["-d", str(PACKAGE / "rviz" / "goal_reach.rviz")]
    no_rviz = plan(args(sim="true", rviz="false"), PACKAGE)
    assert list(by_name(no_rviz)) == ["sim_bridge", "goal_reach"]
    assert list(by_name(plan(args(rviz="true"), PACKAGE))) == ["goal_reach", "rviz2"]


def test_sim_time_makes_the_sim_publish_the_clock() -> None:
    nodes = by_name(plan(args(sim="true", use_sim_time="true"), PACKAGE))
    assert nodes["sim_bridge"].parameters[-1] == {"publish_clock": True}
    assert nodes["goal_reach"].parameters[-1]["use_sim_time"] is True
    assert nodes["rviz2"].parameters == [{"use_sim_time": True}]


def test_robot_may_be_a_crl_robot_config_or_a_ros_parameter_file(tmp_path: Path) -> None:
    mine = tmp_path / "my_arm.yaml"
    mine.write_text("task: reacher\nmodel: reacher.xml\n")
    params = by_name(plan(args(robot=str(mine)), PACKAGE))["goal_reach"].parameters
    assert params[0] == str(PACKAGE / "config" / "reacher.yaml")
    assert params[1] == {"robot_config": str(mine.resolve())}
    ros = tmp_path / "ros.yaml"
    ros.write_text(yaml.safe_dump({"goal_reach": {"ros__parameters": {"robot_config": "ant"}}}))
    assert by_name(plan(args(robot=str(ros)), PACKAGE))["goal_reach"].parameters[0] == str(ros)


@pytest.mark.parametrize(("changes", "message"), [
    ({"policy": ""}, "policy:=... is required"),
    ({"backend": "jax"}, "backend:=jax"),
    ({"sim": "maybe"}, "sim:=maybe: expected true or false"),
    ({"robot": "walker"}, "not a shipped robot (ant, ant_u_maze, arm_reach, humanoid, reacher)"),
    ({"robot": "/nonexistent/robot.yaml"}, "no such file"),
])
def test_bad_arguments_say_which_and_why(changes: dict[str, str], message: str) -> None:
    with pytest.raises(LaunchError, match=message.replace("(", r"\(").replace(")", r"\)")):
        plan(args(**changes), PACKAGE)


def test_a_yaml_that_is_neither_kind_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.yaml"
    other.write_text("just: data\n")
    with pytest.raises(LaunchError, match="neither a ROS parameter file"):
        plan(args(robot=str(other)), PACKAGE)


def test_a_yaml_alias_bomb_is_refused_in_one_short_line(tmp_path: Path) -> None:
    """Robot files are read with the robot config's limits: no anchors or aliases."""
    # A few hundred bytes that would expand into 9**9 items if anything expanded them.
    bomb = tmp_path / "bomb.yaml"
    names = "abcdefghi"
    levels = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    levels += [f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]"
               for p, c in itertools.pairwise(names)]
    bomb.write_text("\n".join(levels) + "\n")
    with pytest.raises(LaunchError, match="anchors and aliases") as e:
        plan(args(robot=str(bomb)), PACKAGE)
    assert len(str(e.value)) < 300 and "\n" not in str(e.value)


def test_the_launch_file_only_wraps_plan() -> None:
    text = (PACKAGE / "launch" / "goal_reach.launch.py").read_text()
    tree = ast.parse(text)
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                for a in n.names if n.module == "crl_runtime.launch_plan"}
    assert imported == {"ARGUMENTS", "plan"}
    assert "DeclareLaunchArgument(name, default_value=default, description=text)" in text
    assert "plan(values, share)" in text
