"""The CPU quickstart target: `reacher` with the quick preset, trained and evaluated from scratch.

Targets (on the 2-core CPU machine): under nominal dynamics, ≥ 90% evaluation success (fingertip
within the 2 cm success radius at some step, on fresh goals) and a median final distance ≤ 1 cm
within 5 minutes of wall-clock, compile included; under the held-out domain-randomization ranges
(outside training's on every parameter, below and above them, and an action delay of 2 steps
that training never has), ≥ 90% success and a median final distance ≤ 2 cm for the final
checkpoint. This is what `make demo` trains; the script runs
the same `train` call in a temporary run directory (keeping every checkpoint, which changes
nothing in training), evaluates each checkpoint under nominal, training-range and held-out
dynamics on one set of episodes (the trainer's own evaluations kept beside them), then evaluates
the final checkpoint and the best one (what `make demo` exports) once more on another 128
episodes under each, and writes
bench/results/quickstart_<jax platform>.json (device, versions, date, the learning curves,
targets).

    python bench/quickstart.py
    python bench/quickstart.py --seed 1 --out /tmp/quickstart.json
    python bench/quickstart.py --dtype bf16    # quickstart_<platform>_bf16.json: mixed precision
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import platform
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import jax

from crl.core.atomic import write_json
from crl.runtime.bench import device_info
from crl.sim.setup import setup_jax
from crl.train.checkpoint import best_step
from crl.train.config import TrainConfig, preset
from crl.train.evaluate import evaluate_run, make_evaluator, summarize
from crl.train.plots import SUCCESS_TARGET
from crl.train.trainer import train

RESULTS = Path(__file__).resolve().parent / "results"
TASK = "reacher"
DISTANCE_TARGET_M, WALL_TARGET_S = 0.01, 300.0  # SUCCESS_TARGET: the learning curve's line
HELD_OUT_SUCCESS_TARGET, HELD_OUT_DISTANCE_TARGET_M = 0.9, 0.02
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "mujoco", "mujoco-mjx")
# The dynamics each evaluation runs under (`crl-train eval --dr`), by the name the JSON uses.
SPLITS = {"nominal": "off", "train_dr": "train", "held_out_dr": "held-out"}


def evaluate_checkpoints(
    run_dir: Path, steps: list[int], dr: str, episodes: int, seed: int
) -> dict[int, dict[str, float]]:
    """Every checkpoint in `steps` on the same `episodes` episodes, one compiled evaluator."""
    from crl.sim import tasks
    from crl.train.checkpoint import load_run
    from crl.train.networks import Actor, network_config

    runs = [load_run(run_dir, s) for s in steps]
    net = runs[0].spec.network
    assert net is not None  # the trainer always writes it
    env = tasks.make(runs[0].config["task"], dr=dr, action=runs[0].spec.action)
    actor = Actor(network_config(net, runs[0].params), env.spec.act_dim)
    evaluator = make_evaluator(env, actor, episodes)
    key = jax.random.PRNGKey(seed)
    return {
        run.step: summarize(jax.device_get(evaluator(run.params["actor"], key)), env.episode_length)
        for run in runs
    }


def meets(summary: dict[str, Any], success: float, distance_m: float) -> bool:
    return summary["success_rate"] >= success and summary["final_distance_median"] <= distance_m


def main(argv: list[str] | None = None) -> int:
    setup_jax()  # XLA flags and the MJX patch, before jax compiles (crl.sim.setup)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--episodes", type=int, default=128, help="episodes of the final evaluations")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                   help="the networks' compute dtype (crl-train --dtype); the bench's own "
                   "evaluations run the fp32 actor, as an export does")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    make_demo = preset("quick", TASK, seed=args.seed)
    evals = make_demo.iterations * make_demo.env_steps_per_iteration // make_demo.eval.eval_every
    config: TrainConfig = preset(
        "quick", TASK, seed=args.seed, keep_checkpoints=evals + 2,
        network=dataclasses.replace(make_demo.network, dtype=args.dtype),
    )
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / TASK
        started = time.monotonic()
        result = train(config, run_dir, progress=False)
        train_s = time.monotonic() - started
        steps = [e["env_steps"] for e in result.evaluations]
        # Every checkpoint under each dynamics, on one set of episodes (seed + 1); the trainer's
        # own evaluations (the dynamics it trains on, its own episodes) stay beside them.
        curves = {
            name: evaluate_checkpoints(
                run_dir, steps, dr, config.eval.eval_episodes, args.seed + 1
            )
            for name, dr in SPLITS.items()
        }
        final = {
            name: evaluate_run(run_dir, dr=dr, episodes=args.episodes, seed=args.seed)
            for name, dr in SPLITS.items()
        }
        # The checkpoint `make demo` exports (`crl-export onnx --best`: the best time at goal of
        # the trainer's own evaluations), on the same episodes as the final one.
        best_at = best_step(run_dir)
        best = {
            name: evaluate_run(run_dir, dr=dr, episodes=args.episodes, seed=args.seed,
                               step=best_at)
            for name, dr in SPLITS.items()
        }
    curve = [
        {
            "env_steps": e["env_steps"],
            "wall_s": e["wall_s"],
            **{name: c[e["env_steps"]] for name, c in curves.items()},
            "trainer": {k: v for k, v in e.items() if k not in ("env_steps", "wall_s")},
        }
        for e in result.evaluations
    ]
    untrained, last = curve[0], curve[-1]
    met = [
        e for e in curve
        if e["wall_s"] <= WALL_TARGET_S and meets(e["nominal"], SUCCESS_TARGET, DISTANCE_TARGET_M)
    ]
    held_out = final["held_out_dr"]
    device = device_info()
    report = {
        "benchmark": "quickstart",
        "task": TASK,
        "preset": "quick",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": {**device, "jax_platform": jax.devices()[0].platform},
        "versions": {"python": platform.python_version(),
                     **{p: metadata.version(p) for p in PACKAGES}},
        "config": config.to_dict(),
        "train_wall_s": round(train_s, 1),
        "untrained": untrained,
        "final": last,
        "final_evaluation": final,
        "best_checkpoint": {"env_steps": best_at, **best},
        "learning_curve": curve,
        "targets": {
            "success_rate_ge_0.9_and_median_final_distance_le_1cm_within_300s": bool(met),
            "first_met_at_wall_s": met[0]["wall_s"] if met else None,
            "final_nominal_success_rate_ge_0.9_and_median_final_distance_le_1cm": meets(
                final["nominal"], SUCCESS_TARGET, DISTANCE_TARGET_M
            ),
            "held_out_dr_success_rate_ge_0.9_and_median_final_distance_le_2cm": meets(
                held_out, HELD_OUT_SUCCESS_TARGET, HELD_OUT_DISTANCE_TARGET_M
            ),
            "best_checkpoint_held_out_dr_success_rate_ge_0.9_and_median_final_distance_le_2cm":
                meets(best["held_out_dr"], HELD_OUT_SUCCESS_TARGET, HELD_OUT_DISTANCE_TARGET_M),
        },
    }
    suffix = "" if args.dtype == "fp32" else f"_{args.dtype}"
    out = args.out or RESULTS / f"quickstart_{jax.devices()[0].platform}{suffix}.json"
    write_json(out, report)
    for name, row in (("untrained", untrained), (f"trained in {last['wall_s']:.0f} s", last)):
        print(f"{name}: " + "; ".join(
            f"{split} success {row[split]['success_rate']:.1%} (at the end "
            f"{row[split]['final_success_rate']:.1%}), median final distance "
            f"{row[split]['final_distance_median'] * 100:.2f} cm"
            for split in SPLITS
        ))
    print("final checkpoint, another " + str(args.episodes) + " episodes: " + "; ".join(
        f"{split} success {s['success_rate']:.1%} (at the end {s['final_success_rate']:.1%}), "
        f"median final distance "
        f"{s['final_distance_median'] * 100:.2f} cm" for split, s in final.items()
    ))
    print(f"best checkpoint ({best_at:,} steps), the same episodes: " + "; ".join(
        f"{split} success {s['success_rate']:.1%} (at the end {s['final_success_rate']:.1%}), "
        f"median final distance {s['final_distance_median'] * 100:.2f} cm"
        for split, s in best.items()
    ))
    print(f"targets: {report['targets']}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
