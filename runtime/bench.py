"""Policy latency benchmark: the number a user measures on their own robot computer.

Per-call latency of `policy.act` (input checks included, as the control loop pays them) after a
warm-up, at each batch size: p50/p90/p99/max and throughput, back to back or paced at a control
rate (`rate_hz`: a robot calls the policy once a control period, and a call after an idle
period finds colder caches and a dozing CPU; at 50 Hz it measured 25% slower than back to back
on the 2-core EPYC). At batch 1 a call streams every weight from memory once, so the floor is
weight bytes ÷ memory bandwidth; the bench measures that bandwidth in the same run and reports
latency against it (1.0 = as fast as the memory allows, 2.0 = half as fast). On a virtual
machine it also reports the share of CPU time the hypervisor gave to other guests (steal) while
it measured: a latency tail that moves with steal is the host's, not the policy's.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import os
import platform
import sys
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from crl.core.atomic import write_atomic, write_json
from crl.core.latency import percentile, percentiles
from crl.runtime.policy import Policy

BANDWIDTH_BYTES = 256 * 2**20  # far larger than any CPU cache, so the sum streams from DRAM
INPUT_POOL = 16  # distinct random inputs cycled through, so no call sees the same data twice


@dataclass(frozen=True)
class BenchConfig:
    batches: tuple[int, ...] = (1, 8, 64)
    iterations: int = 1000
    warmup: int = 100
    seed: int = 0
    rate_hz: float = 0.0
    """pace the timed calls at this rate, as a control loop does; 0: back to back"""


def memory_bandwidth(nbytes: int = BANDWIDTH_BYTES, repeats: int = 5, cores: int = 1) -> float:
    """Memory read bandwidth in bytes/s: the best of `repeats` passes over an array per core.

    One core by default, like the one intra-op thread the ONNX Runtime backend uses at batch 1;
    `cores` threads read their own arrays at once (numpy releases the GIL), the bandwidth a
    policy split over that many threads could draw. The pass is `max`, which numpy runs as a
    plain SIMD stream; `sum`'s pairwise summation does more work per byte and read about 20%
    slower here (24 against 30 GB/s on the 2-core EPYC), which made the "floor" slower than the
    policy it bounds.
    """
    arrays = [np.ones(nbytes // 4, np.float32) for _ in range(cores)]
    pool = ThreadPoolExecutor(cores) if cores > 1 else None
    best = float("inf")
    try:
        for _ in range(repeats):
            start = time.perf_counter()
            if pool is None:
                arrays[0].max()
            else:
                list(pool.map(np.max, arrays))
            best = min(best, time.perf_counter() - start)
    finally:
        if pool is not None:
            pool.shutdown()
    return sum(a.nbytes for a in arrays) / best


def cpu_times(stat: str | Path = "/proc/stat") -> tuple[int, int] | None:
    """(steal, total) CPU ticks of the whole machine from /proc/stat; None where it has none.

    Steal is time a virtual CPU was ready to run but the hypervisor ran another guest on it.
    """
    try:
        with open(stat) as f:
            fields = f.readline().split()
    except OSError:
        return None
    if len(fields) < 9 or fields[0] != "cpu":  # steal is the 8th counter (Linux ≥ 2.6.11)
        return None
    try:
        ticks = [int(v) for v in fields[1:9]]  # guest time is already counted in user
    except ValueError:
        return None
    return ticks[7], sum(ticks)


def steal_percent(before: tuple[int, int] | None, after: tuple[int, int] | None) -> float | None:
    """Steal between two `cpu_times` readings, in % of all CPU time; None if unknown."""
    if before is None or after is None or after[1] <= before[1]:
        return None
    return 100 * (after[0] - before[0]) / (after[1] - before[1])


def random_inputs(
    policy: Policy, batch: int, rng: np.random.Generator
) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    """Observations ~ N(0, 1) and goals uniform in the spec's goal box, [batch, dim] each."""
    spec = policy.spec
    obs = rng.standard_normal((batch, spec.obs_dim), dtype=np.float32)
    low, high = np.asarray(spec.goal.low), np.asarray(spec.goal.high)
    goal = rng.uniform(low, high, (batch, spec.goal_dim)).astype(np.float32)
    return obs, goal


def time_calls(
    policy: Policy, batch: int, config: BenchConfig
) -> tuple[NDArray[np.float64], float]:
    """Seconds per `policy.act` call, after `config.warmup` untimed calls back to back, and the
    process's CPU use over the timed calls in % of one core (what the policy leaves the robot).

    Paced calls keep an absolute schedule; a call that overruns its period restarts it, as a
    control loop that drops the missed tick would.
    """
    rng = np.random.default_rng(config.seed)
    pool = [random_inputs(policy, batch, rng) for _ in range(INPUT_POOL)]
    for i in range(config.warmup):
        policy.act(*pool[i % INPUT_POOL])
    out = np.empty(config.iterations)
    period = 1.0 / config.rate_hz if config.rate_hz > 0 else 0.0
    cpu_start, wall_start = time.process_time(), time.perf_counter()
    tick = wall_start
    for i in range(config.iterations):
        obs, goal = pool[i % INPUT_POOL]
        start = time.perf_counter_ns()
        policy.act(obs, goal)
        out[i] = time.perf_counter_ns() - start
        if period:
            tick += period
            idle = tick - time.perf_counter()
            if idle > 0:
                time.sleep(idle)
            else:
                tick = time.perf_counter()
    cpu_percent = 100 * (time.process_time() - cpu_start) / (time.perf_counter() - wall_start)
    return out * 1e-9, cpu_percent


def summarize(
    seconds: NDArray[np.float64], batch: int, cpu_percent: float, rate_hz: float = 0.0
) -> dict[str, float]:
    """Latency percentiles and throughput; paced, also the calls that overran their period."""
    ms = seconds * 1e3
    p = percentiles(ms, (50, 90, 99))
    r = {
        "batch": batch,
        "iterations": len(ms),
        "p50_ms": p["p50"],
        "p90_ms": p["p90"],
        "p99_ms": p["p99"],
        "max_ms": float(ms.max()),
        "mean_ms": float(ms.mean()),
        "throughput_per_s": float(batch / seconds.mean()),
        "cpu_percent": cpu_percent,
        "rate_hz": rate_hz,
    }
    if rate_hz > 0:
        r["calls_over_period"] = int(np.sum(seconds > 1 / rate_hz))
    return r


def bench_policy(
    policy: Policy, config: BenchConfig, bandwidth: float | None = None
) -> tuple[dict[str, Any], dict[int, NDArray[np.float64]]]:
    """Latency at every batch size; returns the JSON-ready summary and the raw samples."""
    bandwidth = memory_bandwidth() if bandwidth is None else bandwidth
    bound_ms = policy.weight_bytes / bandwidth * 1e3
    before = cpu_times()
    timed = {b: time_calls(policy, b, config) for b in config.batches}
    steal = steal_percent(before, cpu_times())
    samples = {b: s for b, (s, _) in timed.items()}
    results = []
    for b, (s, cpu) in timed.items():
        r = summarize(s, b, cpu, config.rate_hz)
        r["p50_over_bandwidth_bound"] = r["p50_ms"] / bound_ms if bound_ms else float("nan")
        results.append(r)
    spec = policy.spec
    summary = {
        "backend": policy.backend,
        "precision": policy.precision,
        "task": spec.task,
        "sizes": {"obs_dim": spec.obs_dim, "goal_dim": spec.goal_dim, "act_dim": spec.act_dim},
        "network": None if spec.network is None else vars(spec.network),
        "weight_bytes": policy.weight_bytes,
        "memory_bandwidth_gb_s": bandwidth / 1e9,
        "bandwidth_bound_ms": bound_ms,
        "cpu_steal_percent": steal,
        "results": results,
    }
    return summary, samples


def device_info() -> dict[str, Any]:
    """What the numbers were measured on: CPU model and cores, the board (Jetson), the GPU."""
    from crl.core.engine_file import gpu_info

    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware") and value.strip():
                cpu = value.strip()
                break
    except OSError:
        pass
    board = ""
    with contextlib.suppress(OSError):  # Jetsons (and other device-tree boards) name themselves
        board = Path("/proc/device-tree/model").read_bytes().rstrip(b"\0").decode()
    return {
        "cpu": cpu or platform.processor() or platform.machine(),
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "cores_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "board": board,
        **gpu_info(),
    }


def versions() -> dict[str, str]:
    """Package versions; jax only if the run already imported it (the runtime never does)."""
    from importlib import metadata

    out = {"python": platform.python_version()}
    for pkg in ("crl", "numpy", "onnx", "onnxruntime", "onnxruntime-gpu", "tensorrt",
                "cuda-python", "jax"):
        if pkg == "jax" and "jax" not in sys.modules:
            continue
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[pkg] = metadata.version(pkg)
    return out


def plot_latency(samples: dict[int, NDArray[np.float64]], title: str, path: Path,
                 control_hz: float | None = None) -> None:
    """Draw `latency_figure` to `path` (.png, .svg or .pdf)."""
    fig = latency_figure(samples, title, control_hz)
    write_atomic(path, lambda tmp: fig.savefig(tmp, format=path.suffix.lstrip(".") or "png",
                                               dpi=130))


def latency_figure(samples: dict[int, NDArray[np.float64]], title: str,
                   control_hz: float | None = None) -> Any:
    """Latency histogram per batch size on a log time axis (a call's usual microseconds and its
    rare milliseconds both show), p50 and p99 marked, and the control period (`control_hz`, the
    spec's rate: a call must end well within it) as the reference on the right."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter

    period_ms = 1e3 / control_hz if control_hz else None
    every = np.concatenate([s * 1e3 for s in samples.values()])
    low = max(float(every.min()), 1e-4)
    high = max(float(every.max()), period_ms or 0.0, low * 10) * 1.2
    bins = np.geomspace(low, high, 90)
    fig = Figure(figsize=(9, 1.3 + 2.4 * len(samples)), layout="constrained")
    axes = fig.subplots(len(samples), 1, squeeze=False, sharex=True)[:, 0]
    for ax, (batch, s) in zip(axes, samples.items(), strict=True):
        ms = np.clip(s * 1e3, low, None)
        ax.hist(ms, bins=bins, color="tab:blue", alpha=0.8)
        ax.set_xscale("log")
        ax.set_yscale("log")
        for q, style in ((50, "-"), (99, "--")):
            v = percentile(ms, q)
            ax.axvline(v, color="k", linestyle=style, label=f"p{q} {v:.3f} ms")
        if period_ms is not None:
            ax.axvline(period_ms, color="tab:red", linestyle="-.", lw=1.5,
                       label=f"control period {period_ms:g} ms ({control_hz:g} Hz)")
        ax.set_ylabel(f"batch {batch}: calls")
        ax.grid(alpha=0.3, which="major")
        ax.legend(loc="best", fontsize=9)
    axes[-1].xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axes[-1].set_xlabel("latency per call (ms, log scale)")
    fig.suptitle(title, fontsize=11)
    return fig


def run_bench(
    policy_path: Path,
    backend: str,
    batches: Sequence[int],
    iterations: int,
    out: Path,
    plot: Path | None = None,
    threads: int = 1,
    providers: Sequence[str] | None = None,
    rate_hz: float = 0.0,
    spin: bool = False,
) -> dict[str, Any]:
    """`crl-run bench`: load, measure, write the JSON (and the histogram)."""
    from crl.runtime.policy import PolicyError, load_policy

    if iterations < 1 or not batches or min(batches) < 1:
        raise PolicyError(f"--iterations {iterations}, --batch {list(batches)}: need positive "
                          "values")
    if not (rate_hz >= 0 and np.isfinite(rate_hz)):
        raise PolicyError(f"--rate {rate_hz}: need a rate in Hz ≥ 0 (0: back to back)")
    if plot is not None and importlib.util.find_spec("matplotlib") is None:
        # said before the measurement, not after it: the robot's plain install has no matplotlib
        raise PolicyError(f"--plot {plot}: needs matplotlib (pip install matplotlib; the train "
                          "extra has it), or leave --plot out")
    policy = load_policy(policy_path, backend, threads=threads, providers=providers, spin=spin)
    config = BenchConfig(tuple(batches), iterations, warmup=max(10, iterations // 10),
                         rate_hz=rate_hz)
    summary, samples = bench_policy(policy, config)
    result = {
        "policy": str(policy_path),
        **summary,
        "rate_hz": rate_hz,
        "threads": threads if backend == "ort" else None,
        "spin": spin if backend == "ort" else None,
        "providers": getattr(policy, "providers", None),
        "device": device_info(),
        "versions": versions(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(out, result)
    if plot is not None:
        pace = f", {rate_hz:g} Hz" if rate_hz else ", back to back"
        plot_latency(samples, f"{policy_path.name}: {backend}, {summary['precision']}{pace}", plot,
                     policy.spec.control_hz)
    return result

