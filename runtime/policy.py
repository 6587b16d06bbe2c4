"""One interface over every inference backend: `load_policy(path, backend)` → `Policy`.

A robot calls `policy.act(observation, goal)` and never needs to know whether ONNX Runtime, a
TensorRT engine or the JAX checkpoint computes the action. Inputs are checked here, once for all
backends, because a NaN from a sensor or a goal of the wrong size must be refused before it
reaches a network that would silently return a plausible-looking action.

No jax at import time: the JAX backend is imported only when asked for.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from numpy.typing import ArrayLike, NDArray

from crl.sim.spec import PolicySpec

BACKENDS = ("ort", "trt", "jax")


class PolicyError(ValueError):
    """A policy that cannot be loaded or an input it cannot take; the message is one line naming
    the problem and what to do."""


class Policy(Protocol):
    """What every backend returns.

    `act` takes one observation [obs_dim] and goal [goal_dim] (→ action [act_dim]) or a batch
    [B, obs_dim], [B, goal_dim] (→ [B, act_dim]); actions are in [-1, 1], to be mapped with
    `spec.action.to_physical`. `run` returns every output the policy has: "action" and, for a
    critic export, "phi", "psi" and "distance" (‖φ(s, π(s, g)) − ψ(g)‖, small = reachable).
    """

    @property
    def spec(self) -> PolicySpec: ...

    @property
    def backend(self) -> str: ...

    @property
    def outputs(self) -> tuple[str, ...]: ...

    @property
    def precision(self) -> str:
        """"fp32", "fp16" or "int8": how the weights are stored and computed."""
        ...

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights one call reads (what bounds batch-1 latency)."""
        ...

    def act(self, observation: ArrayLike, goal: ArrayLike) -> NDArray[np.float32]: ...

    def run(self, observation: ArrayLike, goal: ArrayLike) -> dict[str, NDArray[np.float32]]: ...


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
            from crl.runtime.extras import ORT_MISSING

            raise PolicyError(f"backend 'ort': {ORT_MISSING}") from None
        return OrtPolicy(path, threads=threads, providers=providers, spin=spin)
    if backend == "trt":
        from crl.runtime.trt_backend import TrtPolicy

        return TrtPolicy(path)
    if backend == "jax":
        from crl.runtime.jax_backend import load_jax_policy

        return load_jax_policy(path, step=step)
    raise PolicyError(f"backend: {backend!r} is not one of {BACKENDS}")


def check_inputs(
    spec: PolicySpec, observation: ArrayLike, goal: ArrayLike, max_batch: int | None = None
) -> tuple[NDArray[np.float32], NDArray[np.float32], bool]:
    """Validate shape, dtype and finiteness against the spec.

    Returns float32 [B, obs_dim], [B, goal_dim] arrays and whether the call was unbatched. It
    runs on every control tick, so the common case (float32 arrays, all finite) does no more than
    look at them; the per-field detail is worked out only for an error message.
    """
    obs = _as_float32(observation, "observation")
    g = _as_float32(goal, "goal")
    if obs.ndim != g.ndim or obs.ndim not in (1, 2):
        raise PolicyError(
            f"observation {obs.shape} and goal {g.shape}: pass one [obs_dim], [goal_dim] pair or "
            f"a batch [B, obs_dim], [B, goal_dim] (obs_dim {spec.obs_dim}, goal_dim "
            f"{spec.goal_dim})"
        )
    single = obs.ndim == 1
    if single:
        obs, g = obs[None], g[None]
    for name, x, size in (("observation", obs, spec.obs_dim), ("goal", g, spec.goal_dim)):
        if x.shape[1] != size:
            raise PolicyError(
                f"{name}: got {x.shape[1]} values, the policy's spec ({spec.task!r}) expects "
                f"{size}; assemble it from the spec's {name} fields"
            )
    if obs.shape[0] != g.shape[0]:
        raise PolicyError(f"observation batch {obs.shape[0]} != goal batch {g.shape[0]}")
    if max_batch is not None and obs.shape[0] > max_batch:
        raise PolicyError(
            f"batch {obs.shape[0]} exceeds this engine's max batch {max_batch}; rebuild it with "
            "`crl-export tensorrt --max-batch N` or split the batch"
        )
    if not (np.isfinite(obs).all() and np.isfinite(g).all()):
        for name, x, slices in (("observation", obs, spec.observation_slices()),
                                ("goal", g, spec.goal_slices())):
            bad = [f for f, s in slices.items() if not np.isfinite(x[:, s]).all()]
            if bad:
                raise PolicyError(
                    f"{name}: non-finite values (NaN, inf or beyond float32) in field(s) "
                    f"{', '.join(bad)}; check the sensor or the goal source"
                )
    return obs, g, single


def _as_float32(x: ArrayLike, name: str) -> NDArray[np.float32]:
    if isinstance(x, np.ndarray) and x.dtype == np.float32 and x.flags.c_contiguous:
        return x
    a = np.asarray(x)
    if a.dtype.kind not in "fiu":
        raise PolicyError(f"{name}: dtype {a.dtype} is not a real number type; pass float32")
    with np.errstate(over="ignore"):  # values beyond float32 become inf, refused just after
        return np.ascontiguousarray(a, dtype=np.float32)
