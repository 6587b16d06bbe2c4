"""Batch-1 policy latency against the memory-bandwidth floor, and what reduced precision costs.

The target: a depth-64, width-256 actor at batch 1 under ONNX Runtime on a small CPU, p99 ≤ 1 ms.
At batch 1 each call reads every weight from memory once, so the floor is
weight bytes ÷ memory bandwidth; the bandwidth is measured in the same run (a numpy sum over an
array far larger than the caches) and each latency is reported as a multiple of that floor
(aim: within 2×). The weights of this actor (17 MB in fp32) may fit in a large L3 cache, where a
call can beat the DRAM floor, so the bandwidth of summing an array of the weights' size over and
over (cache-resident where it fits) is reported too, as a second floor. In the same run:
- fp32, fp16 and int8 (ONNX Runtime dynamic quantization) exports: p50/p90/p99/max latency at
  batch 1, their weight bytes and their action error against fp32;
- ONNX Runtime with 2 intra-op threads (why the runtime uses 1);
- the JAX jitted actor, the same network, for the ONNX Runtime ÷ JAX ratio;
- the export time of a depth-1024 actor (target ≤ 60 s).
Parameters are random (`random_params`, the paper's init): latency does not depend on values.

    python bench/policy_latency.py            # writes bench/results/policy_latency_<device>.json
    python bench/policy_latency.py --quick    # smoke test, small network, written to /tmp
"""

from __future__ import annotations

import dataclasses
import datetime
import re
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tyro

from crl.export.onnx_export import export_actor, quantize_int8, random_params
from crl.runtime.bench import (
    BenchConfig,
    device_info,
    memory_bandwidth,
    random_inputs,
    summarize,
    time_calls,
    versions,
    write_json,
)
from crl.runtime.ort_backend import OrtPolicy
from crl.runtime.policy import Policy
from crl.sim.spec import ActionSpec, Field, GoalSpec, NetworkSpec, PolicySpec, Provenance

RESULTS = Path(__file__).parent / "results"
P99_TARGET_MS, BANDWIDTH_TARGET, EXPORT_TARGET_S = 1.0, 2.0, 60.0


@dataclass(frozen=True)
class Config:
    """Measure batch-1 policy latency (ONNX Runtime fp32/fp16/int8, JAX) and export time."""

    depth: int = 64
    width: int = 256
    obs_dim: int = 29
    """observation size (the ant task's)"""
    goal_dim: int = 2
    act_dim: int = 8
    iterations: int = 5000
    """timed calls per measurement, after a warm-up of a tenth as many"""
    error_batch: int = 256
    """random inputs on which the fp16/int8 action error is measured"""
    export_depth: int = 1024
    """depth of the actor whose export is timed"""
    out: Path | None = None
    """output JSON; default bench/results/policy_latency_<device>.json"""
    quick: bool = False
    """smoke test: depth 8, width 64, 100 iterations, export depth 16, output in /tmp"""


def make_spec(config: Config, depth: int) -> PolicySpec:
    a = config.act_dim
    return PolicySpec(
        task="bench",
        observation=(Field("observation", config.obs_dim),),
        goal=GoalSpec((Field("goal", config.goal_dim),), "world", (-1.0,) * config.goal_dim,
                      (1.0,) * config.goal_dim),
        action=ActionSpec(a, tuple(f"joint_{i}" for i in range(a)), "position", (1.0,) * a,
                          (0.0,) * a, (-1.0,) * a, (1.0,) * a),
        control_hz=50.0,
        success_radius=0.1,
        provenance=Provenance("bench", "0" * 64),
        network=NetworkSpec(depth, config.width, 64),
    )


def device_slug(device: dict[str, Any]) -> str:
    """`cpu`, or the board's name on a Jetson (`nvidia-jetson-orin-nano-...`)."""
    name = device["board"] or "cpu"
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "cpu"


def latency(policy: Policy, config: Config, bandwidth: float) -> dict[str, Any]:
    bench = BenchConfig((1,), config.iterations, warmup=max(10, config.iterations // 10))
    r = summarize(time_calls(policy, 1, bench), 1)
    bound_ms = policy.weight_bytes / bandwidth * 1e3
    return {**r, "weight_bytes": policy.weight_bytes, "bandwidth_bound_ms": bound_ms,
            "p50_over_bound": r["p50_ms"] / bound_ms, "p99_over_bound": r["p99_ms"] / bound_ms}


def action_error(a: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    d = np.abs(a - ref)
    return {"max_abs": float(d.max()), "mean_abs": float(d.mean())}


def main(config: Config) -> dict[str, Any]:
    if config.quick:
        config = dataclasses.replace(config, depth=8, width=64, iterations=100, export_depth=16,
                                     out=config.out or Path(tempfile.gettempdir())
                                     / "policy_latency_quick.json")
    device = device_info()
    out = config.out or RESULTS / f"policy_latency_{device_slug(device)}.json"
    spec = make_spec(config, config.depth)
    params = random_params(spec, critic=False)
    payload: dict[str, Any] = {
        "benchmark": "policy_latency",
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "device": device,
        "config": {**dataclasses.asdict(config), "out": str(out)},
    }
    with tempfile.TemporaryDirectory() as tmp:
        files = {"fp32": export_actor(params, spec, Path(tmp) / "fp32.onnx").path}
        files["fp16"] = export_actor(params, spec, Path(tmp) / "fp16.onnx", fp16=True).path
        files["int8"] = quantize_int8(files["fp32"], Path(tmp) / "int8.onnx").path
        policies = {k: OrtPolicy(p) for k, p in files.items()}
        two_threads = OrtPolicy(files["fp32"], threads=2)

        bandwidth_before = memory_bandwidth()
        ort = {k: latency(p, config, bandwidth_before) for k, p in policies.items()}
        ort_2 = latency(two_threads, config, bandwidth_before)
        bandwidth = max(bandwidth_before, memory_bandwidth())
        for r in (*ort.values(), ort_2):  # against the better of the two bandwidth readings
            r["bandwidth_bound_ms"] = r["weight_bytes"] / bandwidth * 1e3
            r["p50_over_bound"] = r["p50_ms"] / r["bandwidth_bound_ms"]
            r["p99_over_bound"] = r["p99_ms"] / r["bandwidth_bound_ms"]
            hot = memory_bandwidth(r["weight_bytes"], repeats=20)
            r["working_set_bandwidth_gb_s"] = hot / 1e9
            r["p50_over_working_set_bound"] = r["p50_ms"] / (r["weight_bytes"] / hot * 1e3)

        from crl.runtime.jax_backend import JaxPolicy

        jax_policy = JaxPolicy(params, spec)
        jax_r = latency(jax_policy, config, bandwidth)

        obs, goal = random_inputs(policies["fp32"], config.error_batch, np.random.default_rng(1))
        ref = policies["fp32"].act(obs, goal)
        errors = {k: action_error(policies[k].act(obs, goal), ref) for k in ("fp16", "int8")}
        jax_error = action_error(ref, jax_policy.act(obs, goal))
        saturation = float(np.mean(np.abs(ref) > 0.99))

    export_spec = make_spec(config, config.export_depth)
    export_params = random_params(export_spec, critic=False)
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        exported = export_actor(export_params, export_spec, Path(tmp) / "deep.onnx")
        export_s = time.perf_counter() - start
        export_bytes = exported.path.stat().st_size

    payload |= {
        "versions": versions(),
        "memory_bandwidth_gb_s": {"before": bandwidth_before / 1e9, "used": bandwidth / 1e9},
        "ort_batch1": ort,
        "ort_fp32_2_threads_batch1": ort_2,
        "jax_batch1": jax_r,
        "ort_fp32_over_jax_p50": ort["fp32"]["p50_ms"] / jax_r["p50_ms"],
        "action_error_vs_fp32": errors,
        "fp32_vs_jax_max_abs": jax_error["max_abs"],
        "fraction_saturated_actions": saturation,
        "export": {"depth": config.export_depth, "width": config.width, "seconds": export_s,
                   "bytes": export_bytes},
        "targets": {
            "p99_le_1ms": ort["fp32"]["p99_ms"] <= P99_TARGET_MS,
            "p50_within_2x_bandwidth_bound": ort["fp32"]["p50_over_bound"] <= BANDWIDTH_TARGET,
            "export_le_60s": export_s <= EXPORT_TARGET_S,
        },
    }
    write_json(out, payload)
    for k, r in ort.items():
        print(f"ort {k}: p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms  "
              f"{r['p50_over_bound']:.2f}× the bound ({r['weight_bytes'] / 1e6:.1f} MB at "
              f"{bandwidth / 1e9:.1f} GB/s)" + (f"  max error {errors[k]['max_abs']:.2e}"
                                                 if k in errors else ""))
    print(f"ort fp32, 2 threads: p50 {ort_2['p50_ms']:.3f} ms  p99 {ort_2['p99_ms']:.3f} ms")
    print(f"jax: p50 {jax_r['p50_ms']:.3f} ms  p99 {jax_r['p99_ms']:.3f} ms  "
          f"(ort fp32 / jax = {payload['ort_fp32_over_jax_p50']:.2f})")
    print(f"export depth {config.export_depth}: {export_s:.1f} s; wrote {out}")
    return payload


if __name__ == "__main__":
    try:
        main(tyro.cli(Config))
    except ValueError as e:
        if not type(e).__module__.startswith("crl."):
            raise
        print(f"policy_latency: {e}", file=sys.stderr)
        sys.exit(2)
