"""One interface over every inference backend: `load_policy(path, backend)` → `Policy`.

A robot calls `policy.act(observation, goal)` and never needs to know whether ONNX Runtime, a
TensorRT engine or the JAX checkpoint computes the action; every backend checks its inputs with
`crl.runtime.backend.check_inputs`. This module is the factory: it imports the backends, which
import `crl.runtime.backend`, never this module.

No jax at import time: ONNX Runtime and TensorRT are the runtime's own backends; others (the JAX
backend, the testbed's, for debugging) come from the `crl.backends.run` entry points, imported
only when asked for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from crl.core.plugins import RUN_BACKENDS, load
from crl.core.usage import ORT_MISSING
from crl.runtime.backend import Policy, PolicyError, check_inputs

BACKENDS = ("ort", "trt", "jax")  # "jax": the testbed's, through RUN_BACKENDS

__all__ = ["BACKENDS", "Policy", "PolicyError", "check_inputs", "load_policy"]


def load_policy(
    path: str | Path,
    backend: str = "ort",
    *,
    threads: int = 1,
    step: int | None = None,
    providers: Sequence[str] | None = None,
    spin: bool = False,
) -> Policy:
    """Load a policy file with the named backend.

    ort: an ONNX file from `crl-export onnx` (CPU; CUDA / TensorRT execution providers when
        onnxruntime-gpu is installed); `threads` is ONNX Runtime's intra-op thread count and
        `providers` the execution providers to use, best first (default: the best available);
        `spin` keeps its worker threads busy-waiting (see `ort_backend.session_options`).
    trt: a TensorRT engine from `crl-export tensorrt`, with its `.json` sidecar.
    jax: a run directory (runs/<name>) at checkpoint `step` (latest if None), for debugging and
        parity checks against the exported files.
    """
    path = Path(path)
    if providers and backend != "ort":
        raise PolicyError(f"providers: ONNX Runtime execution providers apply to backend 'ort', "
                          f"not {backend!r}")
    if spin and backend != "ort":
        raise PolicyError(f"spin: ONNX Runtime thread spinning applies to backend 'ort', not "
                          f"{backend!r}")
    if backend == "ort" and path.suffix == ".engine":
        raise PolicyError(f"{path}: a TensorRT engine; load it with backend 'trt'")
    if backend == "trt" and path.suffix == ".onnx":
        raise PolicyError(f"{path}: an ONNX file; build an engine from it on this machine with "
                          f"`crl-export tensorrt --onnx {path} --out policy.engine`, or use "
                          "backend 'ort'")
    if backend == "ort":
        try:
            from crl.runtime.ort_backend import OrtPolicy
        except ModuleNotFoundError as e:  # the plain install leaves ONNX Runtime to an extra
            if e.name != "onnxruntime":
                raise
            raise PolicyError(f"backend 'ort': {ORT_MISSING}") from None
        return OrtPolicy(path, threads=threads, providers=providers, spin=spin)
    if backend == "trt":
        from crl.runtime.trt_backend import TrtPolicy

        return TrtPolicy(path)
    if backend not in BACKENDS:
        raise PolicyError(f"backend: {backend!r} is not one of {BACKENDS}")
    try:
        loader: Callable[..., Policy] = load(RUN_BACKENDS, backend)
    except KeyError:
        raise PolicyError(f"backend {backend!r}: not installed here (no {RUN_BACKENDS!r} entry "
                          "point names it; reinstall crl)") from None
    return loader(path, step=step)
