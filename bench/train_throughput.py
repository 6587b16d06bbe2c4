"""Training throughput across depth: env steps/s, SGD steps/s and compile seconds.

For each depth (width fixed), builds the trainer's jitted iteration on `--task` (ant by default)
with the paper's preset, compiles it (timed), runs the prefill iterations that only collect
(collect env steps/s), then timed iterations with SGD (env steps/s and SGD steps/s including the
collect). Writes JSON to bench/results/train_throughput_<device>.json with the device, versions
and date.

    python bench/train_throughput.py                  # paper sizes, depths 4..1024 (a GPU job)
    python bench/train_throughput.py --depths 64 256 --dtypes fp32 bf16   # mixed precision's gain
    python bench/train_throughput.py --quick          # small sizes, depths 4 and 16 (CPU smoke)
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import platform
import re
import sys
import time
from importlib import metadata
from pathlib import Path

import jax

from crl.core.atomic import write_json
from crl.sim import tasks
from crl.sim.setup import setup_jax
from crl.train.agent import init_state, make_iteration, make_setup
from crl.train.config import PAPER, DType, NetworkConfig, TrainConfig, validate

RESULTS = Path(__file__).resolve().parent / "results"
PACKAGES = ("jax", "jaxlib", "flax", "optax", "mujoco", "mujoco-mjx")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="ant", choices=tasks.TASKS)
    p.add_argument("--depths", type=int, nargs="+", default=[4, 16, 64, 256, 1024])
    p.add_argument("--width", type=int, default=256)
    p.add_argument("--dtypes", nargs="+", choices=("fp32", "bf16"), default=["fp32"],
                   help="compute dtypes (crl-train --dtype); each depth runs in each")
    p.add_argument("--num-envs", type=int, default=PAPER.replay.num_envs)
    p.add_argument("--batch-size", type=int, default=PAPER.algo.batch_size)
    p.add_argument("--unroll-length", type=int, default=PAPER.replay.unroll_length)
    p.add_argument("--sgd-steps", type=int, default=None,
                   help="SGD steps per iteration (default: the paper's UTD, 1:40)")
    p.add_argument("--iterations", type=int, default=3, help="timed iterations with SGD")
    p.add_argument("--quick", action="store_true",
                   help="CPU smoke test: depths 4 16, 16 envs, batch 64, 8-step unrolls, 4 SGD")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.depths, args.num_envs, args.batch_size = [4, 16], 16, 64
        args.unroll_length, args.sgd_steps, args.iterations = 8, 4, 2
    return args


def bench_config(args: argparse.Namespace, depth: int, dtype: DType = "fp32") -> TrainConfig:
    """The paper preset at this depth, with a prefill of exactly one collect-only iteration."""
    env_steps = args.num_envs * args.unroll_length
    per_update = env_steps / args.sgd_steps if args.sgd_steps else PAPER.replay.env_steps_per_update
    replay = dataclasses.replace(
        PAPER.replay,
        num_envs=args.num_envs,
        unroll_length=args.unroll_length,
        env_steps_per_update=per_update,
        buffer_steps=max(4 * args.unroll_length, math.ceil(args.batch_size / args.num_envs)),
        min_replay_steps=args.unroll_length + 1,
    )
    config = dataclasses.replace(
        PAPER,
        task=args.task,
        total_steps=(args.iterations + 1) * env_steps,
        network=NetworkConfig(depth=depth, width=args.width, dtype=dtype),
        algo=dataclasses.replace(PAPER.algo, batch_size=args.batch_size),
        replay=replay,
        eval=dataclasses.replace(PAPER.eval, held_out=False),
    )
    validate(config, tasks.TASKS)
    return config


def measure(config: TrainConfig, env: object) -> dict:
    setup = make_setup(config, env)
    state = jax.block_until_ready(init_state(setup))
    iteration = make_iteration(setup)
    t = time.perf_counter()
    compiled = iteration.compile(state)
    compile_s = time.perf_counter() - t

    t = time.perf_counter()
    state, metrics = compiled(state)  # the prefill: collect only
    jax.block_until_ready(metrics)
    collect_s = time.perf_counter() - t
    assert not bool(metrics["trained"])

    iterations = config.iterations - 1
    t = time.perf_counter()
    for _ in range(iterations):
        state, metrics = compiled(state)
    jax.block_until_ready(metrics)
    train_s = time.perf_counter() - t
    assert bool(metrics["trained"])
    env_steps = config.env_steps_per_iteration
    return {
        "depth": config.network.depth,
        "width": config.network.width,
        "dtype": config.network.dtype,
        "compile_s": round(compile_s, 2),
        "collect_env_steps_per_s": round(env_steps / collect_s, 1),
        "env_steps_per_s": round(iterations * env_steps / train_s, 1),
        "sgd_steps_per_s": round(iterations * config.sgd_steps_per_iteration / train_s, 2),
        "sgd_steps_per_iteration": config.sgd_steps_per_iteration,
        "iterations_timed": iterations,
    }


def device_name() -> str:
    device = jax.devices()[0]
    kind = device.device_kind if device.platform != "cpu" else f"cpu-{platform.machine()}"
    return re.sub(r"[^A-Za-z0-9]+", "-", kind).strip("-").lower()


def main(argv: list[str] | None = None) -> int:
    setup_jax()  # XLA flags and the MJX patch, before jax compiles (crl.sim.setup)
    args = parse_args(argv)
    env = tasks.make(args.task, dr="train")
    results = []
    for depth in args.depths:
        for dtype in args.dtypes:
            row = measure(bench_config(args, depth, dtype), env)
            print(json.dumps(row), flush=True)
            results.append(row)
    device = jax.devices()[0]
    report = {
        "benchmark": "train_throughput",
        "task": args.task,
        "device": {"platform": device.platform, "kind": device.device_kind,
                   "count": jax.device_count()},
        "versions": {"python": platform.python_version(),
                     **{p: metadata.version(p) for p in PACKAGES}},
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "quick": args.quick,
        "config": {"num_envs": args.num_envs, "batch_size": args.batch_size,
                   "unroll_length": args.unroll_length, "width": args.width},
        "results": results,
    }
    out = args.out or RESULTS / f"train_throughput_{device_name()}.json"
    write_json(out, report)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
