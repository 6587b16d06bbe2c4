"""
What goal_reach.launch.py starts, as a plain function of its arguments.

The launch file only wraps `plan(...)` in launch_ros actions, so this logic (which parameter
file a robot name means, when the sim and RViz come up, which RViz view) is tested without the
`launch` package, which CI cannot install. RViz is optional: with `rviz` left empty it comes up
with the sim only where rviz2 is installed; `rviz:=true` without it is refused, saying so.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crl.runtime import robot_config
from crl_runtime.parameters import MAX_REAL_TIME_FACTOR

# name -> (default, description); the launch file declares exactly these.
ARGUMENTS: dict[str, tuple[str, str]] = {
    "policy": ("", "Policy file: .onnx (backend ort) or .engine (backend trt)."),
    "backend": ("ort", "Inference backend: ort or trt."),
    "robot": ("reacher", "A robot shipped in the package's config/ (reacher, arm_reach, ant, "
              "ant_u_maze, humanoid), or a path to a ROS parameter file of that form, or a "
              "path to a crl.runtime robot config (YAML with a top-level `task`)."),
    "sim": ("false", "Run the MuJoCo sim robot (sim_bridge) instead of a real one."),
    "rviz": ("", "Start RViz (optional: the rviz2 package) with the goal tools; empty: the "
             "value of sim where rviz2 is installed."),
    "rviz_config": ("", "RViz view (.rviz); empty: the package's rviz/<task>.rviz for the "
                    "robot."),
    "use_sim_time": ("false", "Run the nodes on /clock (the sim_bridge then publishes it)."),
    "real_time_factor": ("1.0", "With sim: the simulation's pace against real time (0.5: half "
                         "real time); other than 1 needs use_sim_time:=true."),
}
TRUE = ("true", "1", "yes", "on")
FALSE = ("false", "0", "no", "off")


class LaunchError(ValueError):
    """A launch argument that cannot work; the message says which and why."""


@dataclass(frozen=True)
class NodeSpec:
    """One node to start: what launch_ros.actions.Node takes."""

    package: str
    executable: str
    name: str
    parameters: list[Any] = field(default_factory=list)
    arguments: list[str] = field(default_factory=list)


def flag(args: dict[str, str], name: str) -> bool:
    """Read a boolean launch argument, refusing anything but a boolean word."""
    value = args[name].strip().lower()
    if value in TRUE:
        return True
    if value in FALSE:
        return False
    raise LaunchError(f"{name}:={args[name]}: expected true or false")


def installed(package: str) -> bool:
    """Look a ROS package up in the ament index: True when it is there."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_prefix
    except ImportError:
        return False
    try:
        get_package_prefix(package)
    except (PackageNotFoundError, OSError):  # OSError: no AMENT_PREFIX_PATH, no ROS sourced
        return False
    return True


def _task_of(robot_config_value: Any) -> str:
    """Read the task a goal_reach robot_config parameter names ("" when it cannot be told)."""
    if not isinstance(robot_config_value, str) or not robot_config_value:
        return ""
    try:  # as the node resolves it: a shipped name, or a path
        data = robot_config.read_yaml(robot_config.resolve(robot_config_value))
    except robot_config.RobotConfigError:
        return ""
    task = data.get("task") if isinstance(data, dict) else None
    return task if isinstance(task, str) else ""


def robot_parameters(robot: str, share: Path) -> tuple[list[Any], str]:
    """
    Resolve the robot argument into parameter sources and the task name.

    A bare name is the package's config/<name>.yaml. A path is either a ROS parameter file
    (used as is; the task is that of its goal_reach robot_config, "" when it names none) or a
    crl.runtime robot config, recognised by its top-level `task` key: then the package's file
    for that task supplies the ROS side and the path the robot side.
    """
    shipped = sorted(p.stem for p in (share / "config").glob("*.yaml"))
    path = Path(robot)
    if "/" not in robot and path.suffix not in (".yaml", ".yml"):
        file = share / "config" / f"{robot}.yaml"
        if not file.is_file():
            raise LaunchError(f"robot:={robot}: not a shipped robot ({', '.join(shipped)}) "
                              "and not a path to a YAML file")
        return [str(file)], robot
    if not path.is_file():
        raise LaunchError(f"robot:={robot}: no such file")
    try:
        data = robot_config.read_yaml(path)
    except robot_config.RobotConfigError as e:
        raise LaunchError(f"robot:={robot}: {e}") from None
    if isinstance(data, dict) and isinstance(data.get("task"), str):
        task = data["task"]
        file = share / "config" / f"{task}.yaml"
        base = [str(file)] if file.is_file() else []
        return [*base, {"robot_config": str(path.resolve())}], task
    if isinstance(data, dict) and any(isinstance(v, dict) and "ros__parameters" in v
                                      for v in data.values()):
        node = data.get("goal_reach")
        params = node.get("ros__parameters") if isinstance(node, dict) else None
        value = params.get("robot_config") if isinstance(params, dict) else None
        return [str(path.resolve())], _task_of(value)
    raise LaunchError(f"robot:={robot}: neither a ROS parameter file (node: ros__parameters: "
                      "...) nor a crl.runtime robot config (task: ...)")


def real_time_factor(value: str, sim: bool, sim_time: bool) -> float:
    """
    Read real_time_factor: a positive number, other than 1 only for the sim on sim time.

    A node on this computer's clock would run the policy at its rate of real time, not of the
    simulation's.
    """
    try:
        speed = float(value)
    except ValueError:
        speed = math.nan
    if not (math.isfinite(speed) and 0 < speed <= MAX_REAL_TIME_FACTOR):
        raise LaunchError(f"real_time_factor:={value}: expected a positive number up to "
                          f"{MAX_REAL_TIME_FACTOR:g}")
    if speed != 1.0 and not sim:
        raise LaunchError(f"real_time_factor:={value}: only the sim (sim:=true) has a pace")
    if speed != 1.0 and not sim_time:
        raise LaunchError(f"real_time_factor:={value}: needs use_sim_time:=true, else the "
                          "policy runs at its rate in real time, not in the simulation's")
    return speed


def rviz_view(args: dict[str, str], share: Path, task: str) -> str:
    """Pick the RViz view: rviz_config, else the package's view of the robot's task."""
    if args["rviz_config"]:
        view = Path(args["rviz_config"]).expanduser()
        if not view.is_file():
            raise LaunchError(f"rviz_config:={args['rviz_config']}: no such file")
        return str(view.resolve())
    views = sorted(p.stem for p in (share / "rviz").glob("*.rviz"))
    if task not in views:
        which = f"task {task!r}" if task else "a robot whose task cannot be told"
        raise LaunchError(f"rviz: the package has no view for {which} (views: "
                          f"{', '.join(views)}); pass rviz_config:=VIEW.rviz or rviz:=false")
    return str(share / "rviz" / f"{task}.rviz")


def plan(args: dict[str, str], share: Path,
         is_installed: Callable[[str], bool] = installed) -> list[NodeSpec]:
    """
    Build the nodes for these launch arguments (see ARGUMENTS).

    `is_installed(package)` says whether a ROS package is there (RViz is optional).
    """
    missing = [a for a in ARGUMENTS if a not in args]
    unknown = [a for a in args if a not in ARGUMENTS]
    if missing or unknown:
        raise LaunchError(f"launch arguments: missing {missing}, unknown {unknown}")
    if not args["policy"]:
        raise LaunchError("policy:=... is required (an .onnx file, or an .engine with "
                          "backend:=trt)")
    if args["backend"] not in ("ort", "trt"):
        raise LaunchError(f"backend:={args['backend']}: expected ort or trt")
    sim = flag(args, "sim")
    rviz = flag({"rviz": args["rviz"] or args["sim"]}, "rviz")
    sim_time = flag(args, "use_sim_time")
    speed = real_time_factor(args["real_time_factor"], sim, sim_time)
    files, task = robot_parameters(args["robot"], share)
    if rviz and not is_installed("rviz2"):
        if args["rviz"]:
            raise LaunchError("rviz:=true: rviz2 is not installed (it is optional: apt install "
                              "ros-jazzy-rviz2, or ros-humble-rviz2), or pass rviz:=false")
        rviz = False  # the sim's default: RViz where it is installed
    view = rviz_view(args, share, task) if rviz else ""
    overrides = {"policy": str(Path(args["policy"]).expanduser()), "backend": args["backend"],
                 "use_sim_time": sim_time}
    nodes = []
    if sim:
        nodes.append(NodeSpec("crl_runtime", "sim_bridge", "sim_bridge",
                              [*files, {"publish_clock": sim_time, "real_time_factor": speed}]))
    nodes.append(NodeSpec("crl_runtime", "goal_reach", "goal_reach", [*files, overrides]))
    if rviz:
        nodes.append(NodeSpec("rviz2", "rviz2", "rviz2", [{"use_sim_time": sim_time}],
                              ["-d", view]))
    return nodes
