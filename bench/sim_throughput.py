"""Env steps per second of every task, for several numbers of vmapped envs.

What training sees: `jax.vmap` of one env's `step` and `reset_if_done` under a jitted
`lax.scan`, uniform random actions drawn on device. Compile time is measured apart (ahead-of-
time `lower().compile()`), and each figure is the median of `repeats` timed runs of the
compiled scan after one untimed warm-up run. Results go to
`bench/results/sim_throughput_<device>.json`, rewritten after each measurement so a long run
that stops keeps what it measured.

    python bench/sim_throughput.py                     # all tasks, device-sized env counts
    python bench/sim_throughput.py --tasks reacher ant --num-envs 64 256 --steps 200
    python bench/sim_throughput.py --quick             # smoke test: reacher, 2 envs, 8 steps
    python bench/sim_throughput.py --physics jax warp  # MJX's two backends, same GPU, one run

`--physics warp` needs an NVIDIA GPU and `pip install "mujoco-mjx[warp]"`; where either is
missing it stops in one line before measuring anything (`crl.sim.physics.check_physics`).
"""

from __future__ import annotations

import dataclasses
import os
import platform
import re
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import jax
import mujoco
from bench_cli import BenchConfigError, require_at_least_one, result_header, run_cli

from crl.core.atomic import write_json
from crl.sim import tasks
from crl.sim.env import jit
from crl.sim.physics import check_physics
from crl.sim.setup import setup_jax

RESULTS = Path(__file__).parent / "results"
# Every paper task is an ant or a humanoid on the floor.
CONTACT_RICH = ("ant", "ant_u_maze", "humanoid", *tasks.PAPER_TASKS)
# Contact-rich tasks step a few thousand envs/s on a small CPU: more envs only make the run long.
# (256+ ants once deadlocked XLA:CPU; crl.sim.env now sets the flag that avoids it.)
CPU_CONTACT_RICH_MAX = 256
CPU_ENVS = (1, 16, 64, 256, 1024)
GPU_ENVS = (256, 1024, 4096, 8192)
QUICK_TASKS, QUICK_ENVS, QUICK_STEPS = ("reacher",), (2,), 8


@dataclass(frozen=True)
class Config:
    """Measure simulated env steps per second."""

    tasks: tuple[str, ...] = ()
    """Tasks to measure; empty = all of them (reacher alone with --quick)."""
    num_envs: tuple[int, ...] = ()
    """Vmapped env counts; empty = per task and device (contact-rich tasks at most 256 on CPU)."""
    steps: int = 200
    """Scan length: control steps per env per timed run."""
    repeats: int = 3
    """Timed runs per measurement; the median is reported."""
    dr: Literal["off", "train", "held-out"] = "train"
    """Domain randomization of the envs (randomized models cost what training pays)."""
    seed: int = 0
    physics: tuple[Literal["jax", "warp"], ...] = ("jax",)
    """MJX implementations to measure, each on every task and env count (`jax warp` compares
    them on the same device in one run)."""
    out: Path | None = None
    """Output JSON; default bench/results/sim_throughput_<device>.json."""
    quick: bool = False
    """Smoke test: 2 envs, 8 steps, 1 repeat (overrides --num-envs, --steps, --repeats)."""


def device_info() -> dict[str, Any]:
    dev = jax.devices()[0]
    cpu_model = ""
    try:
        text = Path("/proc/cpuinfo").read_text()
        match = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
        cpu_model = match.group(1).strip() if match else ""
    except OSError:
        pass
    return {
        "platform": dev.platform,
        "kind": dev.device_kind,
        "count": jax.device_count(),
        "cpu_model": cpu_model or platform.processor(),
        "cpu_cores": os.cpu_count(),
    }


def device_slug(info: dict[str, Any]) -> str:
    """`cpu`, or the accelerator's kind in lowercase with dashes (`nvidia-h100-80gb-hbm3`)."""
    if info["platform"] == "cpu":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", info["kind"].lower()).strip("-") or info["platform"]


def versions() -> dict[str, str]:
    import jaxlib

    return {
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "mujoco": mujoco.__version__,
        "python": platform.python_version(),
    }


def env_counts(task: str, config: Config, on_cpu: bool) -> tuple[int, ...]:
    small = on_cpu and task in CONTACT_RICH
    if config.num_envs:
        if small and max(config.num_envs) > CPU_CONTACT_RICH_MAX:
            print(f"note: {task} with more than {CPU_CONTACT_RICH_MAX} envs on CPU takes minutes "
                  "per measurement", file=sys.stderr)
        return config.num_envs
    if not on_cpu:
        return GPU_ENVS
    return tuple(n for n in CPU_ENVS if n <= CPU_CONTACT_RICH_MAX) if small else CPU_ENVS


def measure(env: Any, num_envs: int, steps: int, repeats: int, seed: int) -> dict[str, Any]:
    """Compile once, run once untimed, then time `repeats` runs of `steps` vmapped steps with
    auto-reset."""
    act_dim = env.spec.act_dim
    step, reset_if_done = jax.vmap(env.step), jax.vmap(env.reset_if_done)

    def run(states: Any, key: jax.Array) -> Any:
        def body(s: Any, k: jax.Array) -> tuple[Any, None]:
            a = jax.random.uniform(k, (num_envs, act_dim), minval=-1.0, maxval=1.0)
            return reset_if_done(step(s, a)), None

        return jax.lax.scan(body, states, jax.random.split(key, steps))[0]

    reset_key, key = jax.random.split(jax.random.PRNGKey(seed))
    states = jit(jax.vmap(env.reset))(jax.random.split(reset_key, num_envs))
    t0 = time.perf_counter()
    compiled = jit(run, donate_argnums=0).lower(states, key).compile()
    compile_s = time.perf_counter() - t0
    key, k = jax.random.split(key)
    states = jax.block_until_ready(compiled(states, k))  # warm-up: first-run costs not counted
    seconds = []
    for _ in range(repeats):
        key, k = jax.random.split(key)
        t0 = time.perf_counter()
        states = jax.block_until_ready(compiled(states, k))
        seconds.append(time.perf_counter() - t0)
    median = statistics.median(seconds)
    return {
        "num_envs": num_envs,
        "steps": steps,
        "compile_s": compile_s,
        "seconds": seconds,
        "steps_per_s": num_envs * steps / median,
        "steps_per_s_best": num_envs * steps / min(seconds),
    }


def main(config: Config) -> dict[str, Any]:
    setup_jax()  # XLA flags and the MJX patch, before jax compiles (crl.sim.setup)
    if config.quick:
        config = dataclasses.replace(config, tasks=config.tasks or QUICK_TASKS,
                                     num_envs=QUICK_ENVS, steps=QUICK_STEPS, repeats=1)
    config = dataclasses.replace(config, tasks=config.tasks or tasks.TASKS)
    unknown = [t for t in config.tasks if t not in tasks.TASKS]
    if unknown:  # before anything runs, not an hour in
        raise BenchConfigError(f"tasks: unknown {unknown}; choose from {', '.join(tasks.TASKS)}")
    require_at_least_one(config, "steps", "repeats")
    if any(n < 1 for n in config.num_envs):
        raise BenchConfigError(f"num_envs: every count must be at least 1, got {config.num_envs}")
    if not config.physics:
        raise BenchConfigError("physics: name at least one of jax, warp")
    for physics in config.physics:
        check_physics(physics)  # warp's packages and GPU, before an hour of jax results
    device = device_info()
    out = config.out or RESULTS / f"sim_throughput_{device_slug(device)}.json"
    payload: dict[str, Any] = {
        **result_header("sim_throughput", device, versions(), config, out), "results": []}
    on_cpu = device["platform"] == "cpu"
    for task in config.tasks:
        counts = env_counts(task, config, on_cpu)
        for physics in config.physics:
            env = tasks.make(task, dr=config.dr, physics=physics, worlds=max(counts))
            for n in counts:
                measured = measure(env, n, config.steps, config.repeats, config.seed)
                r = {"task": task, "physics": physics, **measured}
                payload["results"].append(r)
                write_json(out, payload)
                print(f"{task:>12} {physics:>4} {n:>6} envs  {r['steps_per_s']:>12,.0f} steps/s"
                      f"  (compile {r['compile_s']:.1f} s)", flush=True)
    write_json(out, payload)
    print(f"wrote {out}")
    return payload


if __name__ == "__main__":
    run_cli(main, Config, "sim_throughput")
