"""Goals one after another, as a real arm gets them: the runtime's controller and the MuJoCo sim
robot stepped in turn in one process (lockstep, no transport), the robot never reset between
goals, with the policy's goal ramp and without it.

`crl-run closed-loop` resets the sim robot at each goal, which the controller reads as a
restart (`max_joint_speed`) and soft-starts: that hides what a policy does when its next goal
comes while it stands at the last one. Here each goal's episode draws new dynamics (`--dr`) but
the arm goes on from where it stands; the controller is the robot config's as shipped. Scored
as the closed loop is: inside the success radius when the goal's episode ends.

    python bench/chained_goals.py arm_s0.onnx arm_s1.onnx --seeds 0 1 --goals 10 \
        --out bench/results/chained_goals_arm_cpu.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import mujoco
import numpy as np
from bench_cli import result_context

from crl.core.atomic import write_json
from crl.runtime import robot_config
from crl.runtime.bench import device_info, versions
from crl.runtime.controller import Controller
from crl.runtime.policy import load_policy
from crl.testbed.lockstep import Lockstep
from crl.testbed.robot import SimRobot


def run(policy_path: Path, seed: int, goals: int, dr: str, ramp: bool) -> dict[str, Any]:
    policy = load_policy(policy_path)
    spec = policy.spec
    controller = Controller(policy, robot_config.load(spec.task))
    if not ramp:
        controller.goal_ramp = 0  # the same controller without the policy's goal ramp
    robot = SimRobot(spec.task, dr=dr, seed=seed)
    robot.reset(0)
    arm = Lockstep(controller, robot)
    arm.start()
    finals = []
    for index in range(goals):
        if index:  # the next goal's episode, the arm where the last one left it
            d = robot.data
            qpos, qvel, ctrl, last = d.qpos.copy(), d.qvel.copy(), d.ctrl.copy(), robot.last_command
            robot.reset(index)  # commands in flight are dropped: their due steps were the last's
            robot.data.qpos[:], robot.data.qvel[:], robot.data.ctrl[:] = qpos, qvel, ctrl
            mujoco.mj_forward(robot.model, robot.data)
            robot.last_command = last
        finals.append(arm.reach(spec.goal.frame, robot.episode.goal))
    counts = controller.stats.counts
    return {"policy": str(policy_path), "goal_seed": seed, "goal_ramp": ramp,
            "goal_ramp_steps": spec.action.goal_ramp, "goals": goals,
            "reached": sum(f <= spec.success_radius for f in finals),
            "final_distance_median": float(np.median(finals)), "final_distances": finals,
            "joint_jumps": counts["joint_jumps"], "safe_ticks": counts["safe_ticks"]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("policies", nargs="+", type=Path)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    p.add_argument("--goals", type=int, default=10)
    p.add_argument("--dr", default="held-out")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.goals < 1:
        p.error(f"--goals: at least 1, got {args.goals}")
    runs = []
    for path in args.policies:
        for seed in args.seeds:
            for ramp in (True, False):
                r = run(path, seed, args.goals, args.dr, ramp)
                runs.append(r)
                print(f"{path.name} goal seed {seed}, goal ramp {'on' if ramp else 'off'}: "
                      f"{r['reached']}/{r['goals']}, median {100 * r['final_distance_median']:.2f}"
                      f" cm, joint jumps {r['joint_jumps']}")
    write_json(args.out, {**result_context("chained_goals", device_info(), versions()),
                          "dr": args.dr, "runs": runs})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
