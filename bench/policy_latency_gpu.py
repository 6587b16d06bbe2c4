"""Policy latency on a GPU: the JAX jitted actor and ONNX Runtime's GPU execution providers (and
a native TensorRT engine, where TensorRT and cuda-python are installed) at batch 1, as a robot
calls the policy, and at batch 1024, as an evaluation or a fleet of simulated robots would.

The same depth-64, width-256 actor as `policy_latency.py`, the same percentiles in the same JSON
fields, plus each backend's largest action difference from ONNX Runtime's fp32 CPU result on
the batch-1024 inputs (a GPU may multiply fp32 in TF32). The backends take turns in rounds, so
the machine's drift falls on all of them alike. A backend this machine cannot run is listed
under `skipped` with the reason, not left out silently. Each call moves its inputs from the
host and its actions back, as the robot's calls do.

    python bench/policy_latency_gpu.py          # bench/results/policy_latency_gpu_<gpu>.json
    python bench/policy_latency_gpu.py --quick  # smoke test on any machine (the CPU here), /tmp

On a GPU machine without a package index that has jax, flax, onnx and onnxruntime, bring tyro
with the MuJoCo wheels: `../shared/device-wheels.sh tyro==1.0.17 docstring-parser==0.18.0
typeguard==4.6.1`, then install as that script's header says.
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
from bench_cli import BenchConfigError, require_at_least_one, result_header, run_cli
from policy_latency import (  # bench/ is the script's own path entry
    ActorShape,
    latencies,
    make_spec,
    quick_config,
    slug,
)

from crl.core.atomic import write_json
from crl.core.engine_file import cuda_runtime, tensorrt_missing
from crl.export.onnx_export import export_actor, random_params
from crl.export.tensorrt_build import build_engine
from crl.runtime.bench import (
    device_info,
    random_inputs,
    versions,
)
from crl.runtime.ort_backend import CPU, CUDA, TENSORRT, OrtPolicy
from crl.runtime.policy import Policy, PolicyError
from crl.runtime.trt_backend import CUDA_PYTHON_MISSING, TrtPolicy
from crl.sim.setup import setup_jax

RESULTS = Path(__file__).parent / "results"


@dataclass(frozen=True)
class Config(ActorShape):
    """Measure policy latency on a GPU (JAX, ONNX Runtime CUDA/TensorRT, TensorRT engines)."""

    batches: tuple[int, ...] = (1, 1024)
    iterations: int = 2000
    """timed calls per backend and batch, in `rounds` rounds each after a tenth as many warm-up"""
    rounds: int = 5
    out: Path | None = None
    """output JSON; default bench/results/policy_latency_gpu_<gpu>.json"""
    quick: bool = False
    """smoke test: depth 8, width 64, batches 1 and 64, 50 iterations, output in /tmp, each
    unless given on the command line; runs without a GPU"""


def make_policies(
    fp32: Path, fp16: Path, params: dict[str, Any], spec: Any, max_batch: int, tmp: Path
) -> tuple[dict[str, Policy], dict[str, str]]:
    """Every backend this machine can run, and why each of the others is skipped."""
    from crl.testbed.jax_backend import JaxPolicy

    policies: dict[str, Policy] = {"jax": JaxPolicy(params, spec)}
    skipped: dict[str, str] = {}
    available = onnxruntime.get_available_providers()
    for provider, name, files in ((CUDA, "ort_cuda", {"fp32": fp32}),
                                  (TENSORRT, "ort_tensorrt", {"fp32": fp32, "fp16": fp16})):
        for precision, path in files.items():
            key = f"{name}_{precision}"
            if provider not in available:
                skipped[key] = (f"this onnxruntime has no {provider} ({available}); install "
                                "onnxruntime-gpu")
                continue
            try:
                policy = OrtPolicy(path, providers=[provider, CPU])
            except PolicyError as e:
                skipped[key] = str(e)
                continue
            if policy.providers[0] != provider:  # onnxruntime falls back without raising
                skipped[key] = f"onnxruntime fell back to {policy.providers} (see its log)"
                continue
            policies[key] = policy
    missing = tensorrt_missing() or (CUDA_PYTHON_MISSING if cuda_runtime() is None else None)
    for precision, path in (("fp32", fp32), ("fp16", fp16)):
        key = f"trt_{precision}"
        if missing is not None:
            skipped[key] = missing
            continue
        try:
            engine = build_engine(path, tmp / f"{precision}.engine", max_batch=max_batch)
            policies[key] = TrtPolicy(engine.path)
        except (PolicyError, ValueError) as e:  # ExportError is a ValueError
            skipped[key] = str(e)
    return policies, skipped


def main(config: Config) -> dict[str, Any]:
    if config.quick:
        config = quick_config(config, {
            "depth": 8, "width": 64, "batches": (1, 64), "iterations": 50,
            "out": Path(tempfile.gettempdir()) / "policy_latency_gpu_quick.json"})
    require_at_least_one(config, "iterations", "rounds")
    if not config.batches or min(config.batches) < 1:
        raise BenchConfigError(f"batches: each must be at least 1, got {config.batches}")
    # XLA flags and the MJX patch before jax compiles (crl.sim.setup); after the settings are
    # checked, so a refusal needs no jax (the robot's venv has none).
    setup_jax()
    import jax

    device = device_info()
    if not config.quick and jax.default_backend() != "gpu":
        raise SystemExit(f"policy_latency_gpu: jax sees no GPU (backend "
                         f"{jax.default_backend()!r}); run it on a GPU machine with jax[cuda], or "
                         "bench/policy_latency.py for the CPU figures")
    out = config.out or RESULTS / f"policy_latency_gpu_{slug(device['gpu'])}.json"
    spec = make_spec(config, config.depth)
    params = random_params(spec, critic=False)
    batches = tuple(sorted(set(config.batches)))
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        fp32 = export_actor(params, spec, tmp / "fp32.onnx").path
        fp16 = export_actor(params, spec, tmp / "fp16.onnx", fp16=True).path
        policies, skipped = make_policies(fp32, fp16, params, spec, max(batches), tmp)
        timed = {b: latencies(policies, config.iterations, config.rounds, batch=b)
                 for b in batches}
        obs, goal = random_inputs(policies["jax"], max(batches), np.random.default_rng(1))
        reference = OrtPolicy(fp32, providers=[CPU]).act(obs, goal)
        results: dict[str, Any] = {}
        for k, policy in policies.items():
            results[k] = {
                "backend": policy.backend,
                "precision": policy.precision,
                "providers": getattr(policy, "providers", None),
                "weight_bytes": policy.weight_bytes,
                "max_abs_diff_vs_cpu_fp32": float(np.abs(policy.act(obs, goal) - reference).max()),
                **{f"batch{b}": timed[b][k] for b in batches},
            }
    payload = {
        **result_header("policy_latency_gpu", device, versions(), config, out),
        "jax_devices": [str(d) for d in jax.devices()],
        "results": results,
        "skipped": skipped,
    }
    write_json(out, payload)
    for k, r in results.items():
        print(f"{k}: " + "  ".join(
            f"batch {b}: p50 {r[f'batch{b}']['p50_ms']:.3f} ms p99 {r[f'batch{b}']['p99_ms']:.3f} "
            f"ms ({r[f'batch{b}']['throughput_per_s']:,.0f}/s)" for b in batches)
            + f"  max diff {r['max_abs_diff_vs_cpu_fp32']:.1e}")
    for k, why in skipped.items():
        print(f"{k}: skipped, {why}")
    print(f"wrote {out}")
    return payload


if __name__ == "__main__":
    run_cli(main, Config, "policy_latency_gpu")
