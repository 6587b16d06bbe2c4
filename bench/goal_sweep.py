"""Goals around a planar arm's workspace, from set start poses: where a policy fails to reach.

Each goal lies on a circle about the base (`--radius`, every `--step` degrees); each start pose
holds the arm still at the given joint angles. A goal runs one episode through the runtime's
controller (the robot config as shipped) and the MuJoCo sim robot, stepped in turn in one
process, under `--dr` (nominal by default, so what fails is the policy, not a draw); scored as
the closed loop is: the distance to the goal when the episode ends. For the reacher, whose
shoulder stops at ±π: goals behind the arm can be reached with the elbow bent either way, from
opposite ends of the shoulder's range, and a policy that averages the two commands the arm to
neither.

    python bench/goal_sweep.py reacher.onnx --out bench/results/goal_sweep_reacher_cpu.json
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
from bench_cli import result_context

from crl.core.atomic import write_json
from crl.runtime import robot_config
from crl.runtime.bench import device_info, versions
from crl.runtime.controller import Controller
from crl.runtime.policy import load_policy
from crl.testbed.lockstep import Lockstep
from crl.testbed.robot import SimRobot

DEFAULT_STARTS = ("-1.6,1.4", "0.9,-0.3", "0,0", "2.5,0.5", "-2.5,-0.5")


def episode(robot: SimRobot, controller: Controller, start: np.ndarray, goal: np.ndarray,
            frame: str) -> float:
    """One goal from `start` (joint angles, the arm still): the final distance to it."""
    robot.reset(0)  # the episode's dynamics draw (nominal under --dr off); its start replaced
    robot.hold_pose(start)
    arm = Lockstep(controller, robot)
    arm.start()
    return arm.reach(frame, goal)


def sweep(path: Path, starts: list[np.ndarray], radius: float, step: float, dr: str
          ) -> dict[str, Any]:
    policy = load_policy(path)
    spec = policy.spec
    if spec.goal.size != 2:
        raise SystemExit(f"goal_sweep: {path} has a {spec.goal.size}-D goal; this sweeps planar "
                         "(2-D) goals")
    robot = SimRobot(spec.task, dr=dr, seed=0)
    if any(s.shape != (len(robot.action_joints),) for s in starts):
        raise SystemExit(f"goal_sweep: a start pose needs {len(robot.action_joints)} joint "
                         f"angles ({', '.join(robot.action_joints)})")
    angles = np.arange(-180.0, 180.0, step)
    config = robot_config.load(spec.task)
    rows = []
    for start in starts:
        finals = []
        for angle in angles:
            a = np.radians(angle)
            goal = radius * np.array([np.cos(a), np.sin(a)])
            controller = Controller(policy, config)  # a fresh one a goal: nothing carried
            finals.append(episode(robot, controller, start, goal, spec.goal.frame))
        missed = [float(a) for a, f in zip(angles, finals, strict=True)
                  if f > spec.success_radius]
        rows.append({"start": [float(v) for v in start], "final_distances": finals,
                     "missed_angles_deg": missed})
        print(f"{path.name} from {np.round(start, 2)}: {len(angles) - len(missed)}/{len(angles)}"
              f" at the goal; missed at {missed} deg", flush=True)
    return {"policy": str(path), "task": spec.task, "radius": radius,
            "angles_deg": [float(a) for a in angles], "success_radius": spec.success_radius,
            "starts": rows}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("policies", nargs="+", type=Path)
    p.add_argument("--radius", type=float, default=0.13, help="m from the base")
    p.add_argument("--step", type=float, default=10.0, help="degrees between goals")
    p.add_argument("--starts", nargs="+", default=list(DEFAULT_STARTS),
                   help="start poses, each the joint angles (rad) joined by commas")
    p.add_argument("--dr", default="off")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if not 0 < args.step <= 180:
        p.error(f"--step: between 0 and 180 degrees, got {args.step}")
    if not (math.isfinite(args.radius) and args.radius > 0):
        p.error(f"--radius: must be positive and finite, got {args.radius}")
    try:
        starts = [np.array([float(v) for v in s.split(",")]) for s in args.starts]
    except ValueError:
        p.error(f"--starts: joint angles joined by commas, e.g. 0.9,-0.3; got {args.starts}")
    runs = [sweep(path, starts, args.radius, args.step, args.dr) for path in args.policies]
    write_json(args.out, {**result_context("goal_sweep", device_info(), versions()),
                          "dr": args.dr, "runs": runs})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
