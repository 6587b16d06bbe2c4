"""
goal_reach.launch.py's logic, through the plain function it wraps (no `launch` needed).

CI cannot install `launch`/`launch_ros`, so the launch file is kept to a declaration of
launch_plan.ARGUMENTS and a call of launch_plan.plan; these tests cover plan and check the
file's text for exactly that. RViz is optional: where a test needs it, it says it is installed.
"""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import pytest
import yaml

from crl.runtime import robot_config
from crl_runtime.launch_plan import ARGUMENTS, LaunchError, NodeSpec, installed, plan

PACKAGE = Path(__file__).resolve().parents[1]


def with_rviz(package: str) -> bool:
    """Say every package is installed, RViz included."""
    return True


def without_rviz(package: str) -> bool:
    """Say rviz2 is not installed (it is optional)."""
    return package != "rviz2"


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
    nodes = by_name(plan(args(sim="true", robot="ant", backend="trt"), PACKAGE, with_rviz))
    assert list(nodes) == ["sim_bridge", "goal_reach", "rviz2"]
    assert nodes["sim_bridge"].parameters[0].endswith("config/ant.yaml")
    assert nodes["rviz2"].arguments == ["-d", str(PACKAGE / "rviz" / "ant.rviz")]
    no_rviz = plan(args(sim="true", rviz="false"), PACKAGE, with_rviz)
    assert list(by_name(no_rviz)) == ["sim_bridge", "goal_reach"]
    assert list(by_name(plan(args(rviz="true"), PACKAGE, with_rviz))) == ["goal_reach", "rviz2"]


def test_rviz_is_optional_the_sim_comes_up_without_it_and_asking_for_it_says_why() -> None:
    nodes = by_name(plan(args(sim="true"), PACKAGE, without_rviz))
    assert list(nodes) == ["sim_bridge", "goal_reach"]
    with pytest.raises(LaunchError, match=r"rviz:=true: rviz2 is not installed.*optional"):
        plan(args(rviz="true"), PACKAGE, without_rviz)
    # The default asks the ament index, which knows no rviz2 here unless it is installed.
    assert installed("rviz2") in (True, False)
    assert not installed("no_such_package_crl")


@pytest.mark.parametrize("robot", sorted(p.stem for p in (PACKAGE / "config").glob("*.yaml")))
def test_each_shipped_robot_gets_its_own_rviz_view(robot: str) -> None:
    nodes = by_name(plan(args(sim="true", robot=robot), PACKAGE, with_rviz))
    assert nodes["rviz2"].arguments == ["-d", str(PACKAGE / "rviz" / f"{robot}.rviz")]


def test_a_robot_file_of_either_kind_gets_the_view_of_its_task(tmp_path: Path) -> None:
    mine = tmp_path / "my_ant.yaml"
    mine.write_text(robot_config.shipped("ant").read_text())
    nodes = by_name(plan(args(robot=str(mine), rviz="true"), PACKAGE, with_rviz))
    assert nodes["rviz2"].arguments[1] == str(PACKAGE / "rviz" / "ant.rviz")
    ros = tmp_path / "ros.yaml"
    ros.write_text(yaml.safe_dump({"goal_reach": {"ros__parameters": {"robot_config": "ant"}}}))
    nodes = by_name(plan(args(robot=str(ros), rviz="true"), PACKAGE, with_rviz))
    assert nodes["rviz2"].arguments[1] == str(PACKAGE / "rviz" / "ant.rviz")
    ros.write_text(yaml.safe_dump({"goal_reach": {"ros__parameters": {
        "robot_config": str(mine)}}}))
    nodes = by_name(plan(args(robot=str(ros), rviz="true"), PACKAGE, with_rviz))
    assert nodes["rviz2"].arguments[1] == str(PACKAGE / "rviz" / "ant.rviz")
    # A file that does not say its task: RViz needs a view named, the rest does not.
    ros.write_text(yaml.safe_dump({"goal_reach": {"ros__parameters": {"policy": "p.onnx"}}}))
    assert list(by_name(plan(args(robot=str(ros)), PACKAGE, with_rviz))) == ["goal_reach"]
    with pytest.raises(LaunchError, match=r"no view for a robot whose task cannot be told.*"
                                          r"rviz_config:="):
        plan(args(robot=str(ros), rviz="true"), PACKAGE, with_rviz)
    view = tmp_path / "mine.rviz"
    view.write_text("Panels: []\n")
    nodes = by_name(plan(args(robot=str(ros), rviz="true", rviz_config=str(view)), PACKAGE,
                         with_rviz))
    assert nodes["rviz2"].arguments == ["-d", str(view.resolve())]
    with pytest.raises(LaunchError, match=r"rviz_config:=.*: no such file"):
        plan(args(rviz="true", rviz_config=str(tmp_path / "none.rviz")), PACKAGE, with_rviz)


def test_sim_time_makes_the_sim_publish_the_clock() -> None:
    nodes = by_name(plan(args(sim="true", use_sim_time="true"), PACKAGE, with_rviz))
    assert nodes["sim_bridge"].parameters[-1] == {"publish_clock": True, "real_time_factor": 1.0}
    assert nodes["goal_reach"].parameters[-1]["use_sim_time"] is True
    assert nodes["rviz2"].parameters == [{"use_sim_time": True}]


def test_a_slower_sim_runs_on_sim_time_only() -> None:
    nodes = by_name(plan(args(sim="true", use_sim_time="true", real_time_factor="0.5"), PACKAGE))
    assert nodes["sim_bridge"].parameters[-1] == {"publish_clock": True, "real_time_factor": 0.5}
    with pytest.raises(LaunchError, match="needs use_sim_time:=true"):
        plan(args(sim="true", real_time_factor="0.5"), PACKAGE)


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
    ({"real_time_factor": "0"}, "real_time_factor:=0: expected a positive number"),
    ({"real_time_factor": "nan"}, "real_time_factor:=nan: expected a positive number"),
    ({"real_time_factor": "fast"}, "real_time_factor:=fast: expected a positive number"),
    ({"real_time_factor": "11", "sim": "true", "use_sim_time": "true"},
     "real_time_factor:=11: expected a positive number up to 10"),
    ({"real_time_factor": "2", "use_sim_time": "true"}, "only the sim"),
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
