"""The closed loop over ROS for several policies: each through ros2_ws/test.sh's closed-loop test
(sim_bridge and goal_reach from a real colcon install, real DDS in a private network namespace,
10 held-out goals sent as PoseStamped), gathered into one JSON (issue 25's target for the arm:
≥ 9 of 10 over ROS).

    python bench/closed_loop_ros.py --robot arm_reach build/arm/seed*.onnx \
        --out bench/results/closed_loop_ros_arm_cpu.json

The policies run one after the other, each in its own test process; a run whose test fails
(fewer goals than its target, a missed tick budget) is recorded all the same, with the test's
exit code. Needs crl's `ros` extra in this Python's venv (`pip install -e '.[ros]'`).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from crl.core.atomic import write_json
from crl.runtime.backend import PolicyError
from crl.runtime.bench import device_info, versions
from crl.runtime.onnx_file import read_spec

REPO = Path(__file__).resolve().parents[1]
TEST_SH = REPO / "ros2_ws" / "test.sh"
# ros2_ws/src/crl_runtime/test/test_closed_loop.py: the test and the variable naming its policy.
TESTS = {"reacher": ("demo_policy_reaches_goals", "CRL_ROS_POLICY"),
         "arm_reach": ("arm_policy_reaches_goals", "CRL_ROS_ARM_POLICY")}
RUN_TIMEOUT_S = 900.0  # a colcon build, the node's start-up and 11 episodes


def run_one(robot: str, policy: Path, tmp: Path) -> dict[str, Any]:
    """One test run for `policy`: what it measured, with its exit code."""
    test, variable = TESTS[robot]
    result = tmp / f"{policy.stem}.json"
    env = {**os.environ, variable: str(policy.resolve()), "CRL_ROS_RESULT": str(result)}
    proc = subprocess.run(["bash", str(TEST_SH), str(Path(sys.executable).parent), "-q", "-s",
                           "-p", "no:cacheprovider", "-k", test],
                          env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
    if not result.exists():
        raise RuntimeError(f"{policy}: the test wrote no result (exit {proc.returncode}):\n"
                           f"{(proc.stdout + proc.stderr)[-3000:]}")
    return {**json.loads(result.read_text()), "test_exit_code": proc.returncode}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("policies", nargs="+", type=Path)
    p.add_argument("--robot", choices=sorted(TESTS), required=True)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    for policy in args.policies:  # a bad file or another robot's policy fails before any run
        try:
            task = read_spec(policy).task
        except PolicyError as e:
            p.error(str(e))
        if task != args.robot:
            p.error(f"{policy}: a policy for {task!r}, not {args.robot!r}")
    runs = []
    with tempfile.TemporaryDirectory(prefix="crl-ros-loop-") as tmp:
        for policy in args.policies:
            run = run_one(args.robot, policy, Path(tmp))
            runs.append(run)
            print(f"{policy.name}: {run['reached']}/{run['goals']} within "
                  f"{run['success_radius']} m, misses {run['misses']} of {run['ticks']}, "
                  f"end-to-end p99 {run['end_to_end_p99_ms']:.2f} ms (test exit "
                  f"{run['test_exit_code']})", flush=True)
    write_json(args.out, {
        "benchmark": "closed_loop_ros",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": device_info(), "versions": versions(),
        "robot": args.robot, "runs": runs,
    })
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
