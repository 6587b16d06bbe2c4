"""
What goal_reach.launch.py starts, as a plain function of its arguments.

The launch file only wraps `plan(...)` in launch_ros actions, so this logic (which parameter
file a robot name means, when the sim and RViz come up) is tested without the `launch`
package, which CI cannot install.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from crl.runtime import robot_config

# name -> (default, description); the launch file declares exactly these.
ARGUMENTS: dict[str, tuple[str, str]] = {
    "policy": ("", "Policy file: .onnx (backend ort) or .engine (backend trt)."),
    "backend": ("ort", "Inference backend: ort or trt."),
    "robot": ("reacher", "A robot shipped in the package's config/ (reacher, arm_reach, ant, "
              "ant_u_maze, humanoid), or a path to a ROS parameter file of that form, or a "
              "path to a crl.runtime robot config (YAML with a top-level `task`)."),
    "sim": ("false", "Run the MuJoCo sim robot (sim_bridge) instead of a real one."),
    "rviz": ("", "Start RViz with the goal tools; empty: the value of sim."),
    "use_sim_time": ("false", "Run the nodes on /clock (the sim_bridge then publishes it)."),
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


def robot_parameters(robot: str, share: Path) -> tuple[list[Any], str]:
    """
    Resolve the robot argument into parameter sources and the task name.

    A bare name is the package's config/<name>.yaml. A path is either a ROS parameter file
    (used as is) or a crl.runtime robot config, recognised by its top-level `task` key: then
    the package's file for that task supplies the ROS side and the path the robot side.
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
        return [str(path.resolve())], ""
    raise LaunchError(f"robot:={robot}: neither a ROS parameter file (node: ros__parameters: "
                      "...) nor a crl.runtime robot config (task: ...)")


def plan(args: dict[str, str], share: Path) -> list[NodeSpec]:
    """Build the nodes for these launch arguments (see ARGUMENTS)."""
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
    files, _task = robot_parameters(args["robot"], share)
    overrides = {"policy": str(Path(args["policy"]).expanduser()), "backend": args["backend"],
                 "use_sim_time": sim_time}
    nodes = []
    if sim:
        nodes.append(NodeSpec("crl_runtime", "sim_bridge", "sim_bridge",
                              [*files, {"publish_clock": sim_time}]))
    nodes.append(NodeSpec("crl_runtime", "goal_reach", "goal_reach", [*files, overrides]))
    if rviz:
        nodes.append(NodeSpec("rviz2", "rviz2", "rviz2", [{"use_sim_time": sim_time}],
                              ["-d", str(share / "rviz" / "goal_reach.rviz")]))
    return nodes
