"""Overhead of data parallelism: the forced 4-device CPU mesh against 1 device, in one run.

XLA's `--xla_force_host_platform_device_count=4` splits one CPU into 4 devices that share its
cores, so 4 devices cannot be faster; what the ratio shows is the cost of the SPMD program (the
sharded buffer gather, the ψ all-gather, the gradient all-reduce) over the 1-device program
computing the same thing. A check of overhead, not a speed claim. Both meshes run the same
config, seed and iterations in the same process, taking turns (`--rounds`), so machine drift
falls on both. Writes bench/results/scale_overhead_cpu.json.

    python bench/scale_overhead.py                   # reacher, quick-preset sizes shrunk
    python bench/scale_overhead.py --task ant --num-envs 64 --batch-size 256
"""

from __future__ import annotations

import os

DEVICES = 4
# Before jax starts: the forced device count only takes effect then.
os.environ["XLA_FLAGS"] = (
    f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={DEVICES}"
).strip()

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from importlib import metadata  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

import jax  # noqa: E402

from crl.core.atomic import write_json  # noqa: E402
from crl.sim import tasks  # noqa: E402
from crl.sim.setup import setup_jax  # noqa: E402
from crl.train.agent import init_state, make_iteration, make_mesh, make_setup  # noqa: E402
from crl.train.config import (  # noqa: E402
    PRESETS,
    NetworkConfig,
    TrainConfig,
    validate,
    validate_devices,
)

RESULTS = Path(__file__).resolve().parent / "results"
PACKAGES = ("jax", "jaxlib", "flax", "optax", "mujoco", "mujoco-mjx")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--task", default="reacher", choices=tasks.TASKS)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--num-envs", type=int, default=32)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--unroll-length", type=int, default=16)
    p.add_argument("--sgd-steps", type=int, default=4, help="SGD steps per iteration")
    p.add_argument("--iterations", type=int, default=3, help="timed iterations per round")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path, default=RESULTS / "scale_overhead_cpu.json")
    return p.parse_args(argv)


def bench_config(args: argparse.Namespace) -> TrainConfig:
    """The quick preset at these sizes; SGD from the first iteration on (prefill of one)."""
    quick = PRESETS["quick"]
    env_steps = args.num_envs * args.unroll_length
    config = dataclasses.replace(
        quick,
        task=args.task,
        total_steps=env_steps * (args.iterations + 1),
        network=NetworkConfig(depth=args.depth, width=args.width),
        algo=dataclasses.replace(quick.algo, batch_size=args.batch_size),
        replay=dataclasses.replace(
            quick.replay, num_envs=args.num_envs, unroll_length=args.unroll_length,
            env_steps_per_update=env_steps / args.sgd_steps,
            buffer_steps=4 * args.unroll_length, min_replay_steps=args.unroll_length,
        ),
    )
    validate(config, tasks.TASKS)
    validate_devices(config, DEVICES)
    return config


class Runner:
    """One mesh's compiled iteration and its state, timed an iteration at a time."""

    def __init__(self, config: TrainConfig, env: Any, devices: int) -> None:
        mesh = make_mesh(devices)
        setup = make_setup(config, env)
        self.state = init_state(setup, mesh)
        t = time.perf_counter()
        self.step = make_iteration(setup, mesh).compile(self.state)
        self.compile_s = time.perf_counter() - t
        self.state, metrics = self.step(self.state)  # the prefill, then SGD every iteration
        jax.block_until_ready(metrics)
        self.times: list[float] = []

    def run(self, iterations: int) -> None:
        for _ in range(iterations):
            t = time.perf_counter()
            self.state, metrics = self.step(self.state)
            jax.block_until_ready(metrics)
            assert bool(metrics["trained"])
            self.times.append(time.perf_counter() - t)


def main(argv: list[str] | None = None) -> int:
    setup_jax()  # XLA flags and the MJX patch, before jax starts (crl.sim.setup)
    args = parse_args(argv)
    if jax.device_count() < DEVICES:
        raise SystemExit(f"{jax.device_count()} devices: XLA_FLAGS was set too late")
    config = bench_config(args)
    env = tasks.make(args.task, dr=config.dr)
    runners = {n: Runner(config, env, n) for n in (1, DEVICES)}
    for _ in range(args.rounds):
        for runner in runners.values():
            runner.run(args.iterations)
    per_iteration = {n: statistics.median(r.times) for n, r in runners.items()}
    report = {
        "benchmark": "scale_overhead",
        "task": args.task,
        "config": {"depth": args.depth, "width": args.width, "num_envs": args.num_envs,
                   "batch_size": args.batch_size, "unroll_length": args.unroll_length,
                   "sgd_steps_per_iteration": config.sgd_steps_per_iteration},
        "forced_cpu_devices": DEVICES,
        "cpu_cores": os.cpu_count(),
        "load_average_1_5_15": [round(x, 2) for x in os.getloadavg()],  # other tenants' share
        "iterations_timed": args.iterations * args.rounds,
        "compile_s": {str(n): round(r.compile_s, 2) for n, r in runners.items()},
        "median_iteration_s": {str(n): round(t, 4) for n, t in per_iteration.items()},
        "ratio_4_over_1": round(per_iteration[DEVICES] / per_iteration[1], 3),
        "note": "4 forced devices share the same CPU cores: the ratio is the SPMD program's "
                "overhead, not a speed-up",
        "versions": {"python": platform.python_version(),
                     **{p: metadata.version(p) for p in PACKAGES}},
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }
    write_json(args.out, report)
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
