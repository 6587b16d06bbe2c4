"""ONNX Runtime backend: CPU everywhere; CUDA and TensorRT execution providers when the machine
has onnxruntime-gpu (the TensorRT EP caches its engines, so only the first start builds one)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
from numpy.typing import ArrayLike, NDArray

from crl.core.policy_file import ACTION, INPUTS
from crl.core.spec import PolicySpec
from crl.runtime.backend import PolicyError, check_inputs
from crl.runtime.onnx_file import read_policy_file

TENSORRT, CUDA, CPU = "TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"
PREFERENCE = (TENSORRT, CUDA, CPU)


def session_options(threads: int = 1, spin: bool = False) -> ort.SessionOptions:
    """Options for low batch-1 latency on a small CPU (a 2-core robot computer, a Jetson).

    At batch 1 every layer is a [1, W] × [W, W] product that streams its weights from memory.
    One intra-op thread is the default: it leaves the other cores to the control loop and the
    rest of the robot. A second thread adds a second core's memory bandwidth but hands each
    layer to a sleeping worker; on the 2-core EPYC it ran from 13% faster to 30% slower than
    one thread, run to run. `spin` keeps pool workers busy-waiting for the next layer instead,
    and for about 70 ms after each call (measured there): at a 50 Hz control rate the cores it
    spins on never rest, so it is for a machine with cores to spare. ORT_ENABLE_ALL fuses
    MatMul + Add into Gemm and x·sigmoid(x) into QuickGelu, three kernels per layer, not five.
    """
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    so.log_severity_level = 3  # errors only: the TensorRT EP is chatty about fallbacks
    return so


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "crl" / "ort_tensorrt"


def providers_for(precision: str, wanted: Sequence[str] | None = None) -> list[Any]:
    """The execution providers to ask for, best first, with their options."""
    available = ort.get_available_providers()
    names = [p for p in (wanted or PREFERENCE) if p in available]
    missing = [p for p in (wanted or ()) if p not in available]
    if missing:
        raise PolicyError(
            f"providers: {missing} not in this onnxruntime ({available}); install "
            "onnxruntime-gpu for CUDA/TensorRT"
        )
    out: list[Any] = []
    for name in names:
        if name == TENSORRT:
            cache = _cache_dir()
            cache.mkdir(parents=True, exist_ok=True)
            out.append((name, {
                "trt_engine_cache_enable": True,
                "trt_engine_cache_path": str(cache),
                "trt_timing_cache_enable": True,
                "trt_timing_cache_path": str(cache),
                "trt_fp16_enable": precision == "fp16",
            }))
        else:
            out.append(name)
    return out


class OrtPolicy:
    """A policy ONNX file run by ONNX Runtime."""

    backend = "ort"

    def __init__(
        self,
        path: str | Path,
        threads: int = 1,
        providers: Sequence[str] | None = None,
        spin: bool = False,
    ) -> None:
        if threads < 1:
            raise PolicyError(f"threads: must be ≥ 1, got {threads}")
        self._file = read_policy_file(path)
        # outside the try: a provider this onnxruntime lacks is not a fault of the file
        wanted = providers_for(self._file.seal.precision, providers)
        try:
            self._session = ort.InferenceSession(
                self._file.model_bytes, session_options(threads, spin), providers=wanted
            )
        except Exception as e:  # onnxruntime raises its own unrelated exception types
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise PolicyError(
                f"{path}: onnxruntime cannot load it ({first}); re-export with `crl-export onnx`"
            ) from None
        self._outputs = tuple(o.name for o in self._session.get_outputs())

    @property
    def spec(self) -> PolicySpec:
        return self._file.spec

    @property
    def outputs(self) -> tuple[str, ...]:
        return self._outputs

    @property
    def weight_bytes(self) -> int:
        return self._file.seal.weight_bytes

    @property
    def precision(self) -> str:
        return self._file.seal.precision

    @property
    def providers(self) -> list[str]:
        return list(self._session.get_providers())

    def act(self, observation: ArrayLike, goal: ArrayLike) -> NDArray[np.float32]:
        obs, g, single = check_inputs(self.spec, observation, goal)
        action: NDArray[np.float32] = self._session.run([ACTION], {INPUTS[0]: obs, INPUTS[1]: g})[0]
        return action[0] if single else action

    def run(self, observation: ArrayLike, goal: ArrayLike) -> dict[str, NDArray[np.float32]]:
        obs, g, single = check_inputs(self.spec, observation, goal)
        values = self._session.run(None, {INPUTS[0]: obs, INPUTS[1]: g})
        return {k: (v[0] if single else v) for k, v in zip(self._outputs, values, strict=True)}
