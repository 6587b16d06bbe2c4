"""The closed loop over policies and goal seeds: each exported policy on the MuJoCo sim robot
under the held-out ranges, N goals per goal seed (issue 25's target: ≥ 19 of 20 every time).

Runs `crl-run closed-loop` (robot and runtime as separate processes on loopback) for every
policy × goal seed and writes one JSON: per run the goals reached at the end, the median final
distance, the oscillation figure from the commands the robot took, and the loop's statistics.

    python bench/closed_loop_seeds.py build/hold/*.onnx --seeds 0 1 2 \
        --out bench/results/closed_loop_hold_cpu.json
"""

from __future__ import annotations

import argparse
import datetime
import sys
from pathlib import Path

from crl.core.atomic import write_json
from crl.runtime.bench import device_info
from crl.runtime.policy import load_policy
from crl.testbed.closed_loop import run_closed_loop


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("policies", nargs="+", type=Path)
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--goals", type=int, default=20)
    p.add_argument("--dr", default="held-out")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    runs = []
    for policy in args.policies:
        spec = load_policy(policy, "ort").spec  # a bad file fails here, before any process
        for seed in args.seeds:
            r = run_closed_loop(policy=policy, task=spec.task, dr=args.dr, seed=seed,
                                goals=args.goals, spec=spec)
            reached = sum(g["success"] for g in r["goals"])
            runs.append({"policy": str(policy), "goal_seed": seed, "reached": reached,
                         "goals": len(r["goals"]),
                         "final_distance_median": r["final_distance_median"],
                         "final_distances": [g["final_distance"] for g in r["goals"]],
                         "oscillation": r["oscillation"], "runtime": r["runtime"],
                         "exit_codes": r["exit_codes"]})
            print(f"{policy.name} goal seed {seed}: {reached}/{len(r['goals'])}, median "
                  f"{r['final_distance_median'] * 100:.2f} cm, oscillation "
                  f"{r['oscillation']:.1%}", flush=True)
    write_json(args.out, {
        "benchmark": "closed_loop_seeds",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": device_info(),
        "dr": args.dr,
        "runs": runs,
    })
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
