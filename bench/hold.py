"""Does a recipe hold the goal under unseen dynamics at every checkpoint? (issue: the hold)

Evaluates every kept checkpoint of one or more finished runs of one task (label=DIR, each
trained with `crl-train TASK --preset quick --keep-checkpoints 8 [recipe flags]`) under the
held-out ranges on one set of fresh episodes, and writes, per run: its recipe (the actor-loss
terms and the first joint's range from the spec), and per checkpoint the at-the-end success
(inside the radius when the episode ends: what a robot needs), reach success, median final
distance and the oscillation figure (`crl.core.oscillation`), beside the trainer's own
evaluation under the training ranges, which `--best` picks by.

    python bench/hold.py old=runs/reacher-a new=runs/reacher-b --out bench/results/hold_cpu.json

`--last N` evaluates each run's last N kept checkpoints only (more episodes in the same time).
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from quickstart import PACKAGES, evaluate_checkpoints

from crl.core.atomic import write_json
from crl.runtime.bench import device_info
from crl.sim.setup import setup_jax
from crl.train.checkpoint import best_step, checkpoint_steps

# The recipe's fields, each with its value in a run that predates it.
RECIPE_FIELDS = {"action_rate_penalty": 0.0, "temporal_penalty": 0.0, "spatial_penalty": 0.0,
                 "spatial_sigma": 0.0, "gamma": 0.0, "lr_decay": 1.0}


def measure(label: str, run_dir: Path, episodes: int, seed: int, last: int | None = None
            ) -> dict[str, Any]:
    config = json.loads((run_dir / "config.json").read_text())
    spec = json.loads((run_dir / "spec.json").read_text())
    steps = checkpoint_steps(run_dir)[-last:] if last else checkpoint_steps(run_dir)
    held_out = evaluate_checkpoints(run_dir, steps, "held-out", episodes, seed)
    trainer = {e["env_steps"]: e for e in
               json.loads((run_dir / "eval.json").read_text())["evaluations"]}
    return {
        "label": label,
        "run": str(run_dir),
        "seed": config["seed"],
        "total_steps": config["total_steps"],
        "recipe": {**{k: config["algo"].get(k, old) for k, old in RECIPE_FIELDS.items()},
                   # the task's command filter and goal ramp (the spec's; none in a run
                   # before them)
                   "action_lowpass": spec["action"].get("lowpass", 1.0),
                   "goal_ramp": spec["action"].get("goal_ramp", 0)},
        "action_scale": spec["action"]["scale"],
        "best_step": best_step(run_dir),
        "checkpoints": [
            {"env_steps": s, "held_out": held_out[s],
             "train_dr_trainer": trainer[s]["train"] if s in trainer else None,
             # the run's wall time to this evaluation, its set-up and compile included
             "wall_s": trainer[s].get("wall_s") if s in trainer else None}
            for s in steps
        ],
    }


def main(argv: list[str] | None = None) -> int:
    setup_jax()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", nargs="+", help="LABEL=RUN_DIR")
    p.add_argument("--episodes", type=int, default=1024)
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--last", type=int, default=None,
                   help="evaluate each run's last N kept checkpoints only (default: all)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    if args.last is not None and args.last < 1:
        p.error(f"--last: at least 1 checkpoint, got {args.last}")
    pairs = []
    for item in args.runs:
        label, sep, path = item.partition("=")
        if not sep or not (Path(path) / "config.json").is_file():
            p.error(f"{item!r}: give LABEL=RUN_DIR of a finished run")
        pairs.append((label, Path(path)))
    task_of = {label: json.loads((path / "config.json").read_text())["task"]
               for label, path in pairs}
    if len(set(task_of.values())) != 1:
        p.error(f"runs of one task only, got {task_of}")
    result = {
        "benchmark": "hold",
        "task": next(iter(task_of.values())),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": device_info(),
        "versions": {"python": platform.python_version(),
                     **{k: metadata.version(k) for k in PACKAGES}},
        "episodes": args.episodes,
        "episode_seed": args.seed,
        "runs": [measure(label, path, args.episodes, args.seed, args.last)
                 for label, path in pairs],
    }
    write_json(args.out, result)
    for run in result["runs"]:
        cells = ", ".join(f"{c['env_steps'] // 1000}k {c['held_out']['final_success_rate']:.1%}"
                          for c in run["checkpoints"])
        print(f"{run['label']}: held-out at the end: {cells}")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
