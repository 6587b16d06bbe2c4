"""The CPU quickstart target: `reacher` with the quick preset, trained and evaluated from scratch.

Target (on the 2-core CPU machine): ≥ 90% evaluation success (fingertip within the 2 cm success
radius at some step, on fresh goals) and a median final distance ≤ 1 cm within 5 minutes of
wall-clock, compile included, with the untrained policy's figures beside it. This is what
`make demo` trains; the script runs the same `train` call in a temporary run directory, then a
separate 128-episode evaluation of the final checkpoint, and writes
bench/results/quickstart_<jax platform>.json (device, versions, date, the learning curve, targets).

    python bench/quickstart.py
    python bench/quickstart.py --seed 1 --out /tmp/quickstart.json
"""

from __future__ import annotations

import argparse
import datetime
import platform
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path

import jax

from crl.runtime.bench import device_info, write_json
from crl.train.config import preset
from crl.train.evaluate import evaluate_run
from crl.train.trainer import train

RESULTS = Path(__file__).resolve().parent / "results"
TASK = "reacher"
SUCCESS_TARGET, DISTANCE_TARGET_M, WALL_TARGET_S = 0.9, 0.01, 300.0
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "mujoco", "mujoco-mjx")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--episodes", type=int, default=128, help="episodes of the final evaluation")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    config = preset("quick", TASK, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        started = time.monotonic()
        result = train(config, Path(tmp) / TASK, progress=False)
        train_s = time.monotonic() - started
        final = evaluate_run(Path(tmp) / TASK, episodes=args.episodes, seed=args.seed)
    curve = [{"env_steps": e["env_steps"], "wall_s": e["wall_s"], **e["train"]}
             for e in result.evaluations]
    untrained, last = curve[0], curve[-1]
    within = [e for e in curve if e["wall_s"] <= WALL_TARGET_S]
    met = [e for e in within if e["success_rate"] >= SUCCESS_TARGET
           and e["final_distance_median"] <= DISTANCE_TARGET_M]
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
        "learning_curve": curve,
        "targets": {
            "success_rate_ge_0.9_and_median_final_distance_le_1cm_within_300s": bool(met),
            "first_met_at_wall_s": met[0]["wall_s"] if met else None,
        },
    }
    out = args.out or RESULTS / f"quickstart_{jax.devices()[0].platform}.json"
    write_json(out, report)
    print(f"untrained: success {untrained['success_rate']:.1%}, median final distance "
          f"{untrained['final_distance_median'] * 100:.1f} cm")
    print(f"trained in {last['wall_s']:.0f} s: success {last['success_rate']:.1%}, median final "
          f"distance {last['final_distance_median'] * 100:.2f} cm; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
