"""Native TensorRT backend: a prebuilt engine, buffers through cuda-python, `execute_async_v3`.

Before deserializing, the engine's sidecar (`policy.engine.json`, written by
`crl-export tensorrt`) is checked: its own seal (an edited spec is refused as an edited ONNX is),
its spec, the engine's sha256, and the TensorRT version and GPU it was built for, so a stale,
edited or foreign engine fails with a message that says to rebuild it rather than with
TensorRT's internal error. `tensorrt` and cuda-python are imported when an
engine is loaded, never at module import.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from crl.core.engine_file import (
    ENGINE_FORMAT,
    SIDECAR_SEAL_KEY,
    capturing_logger,
    cuda_runtime,
    gpu_info,
    logged_reason,
    sidecar_path,
    sidecar_sha256,
    tensorrt_missing,
)
from crl.core.policy_file import ACTION, INPUTS, MAX_FILE_BYTES
from crl.core.reading import RefusedFileError, read_limited
from crl.core.spec import PolicySpec, SpecError
from crl.runtime.backend import PolicyError, check_inputs

MAX_SIDECAR_BYTES = 1 << 20  # a sidecar is a spec and a few hashes: kilobytes
# An engine holds its ONNX's weights (at most MAX_FILE_BYTES) and its kernels' code.
MAX_ENGINE_BYTES = 2 * MAX_FILE_BYTES
CUDA_PYTHON_MISSING = (
    "cuda-python is not installed: `pip install cuda-python` (the TensorRT backend moves its "
    "buffers with it); or use backend 'ort' with the ONNX file"
)


@dataclass(frozen=True)
class Sidecar:
    """The verified contents of `policy.engine.json`."""

    spec: PolicySpec
    tensorrt_version: str
    gpu: str
    compute_capability: str
    precision: str
    max_batch: int
    engine_sha256: str
    onnx_sha256: str  # the seal of the ONNX the engine was built from
    weight_bytes: int


def read_sidecar(engine: Path) -> Sidecar:
    """Parse and check the sidecar of `engine`; every failure is a one-line PolicyError."""
    path = sidecar_path(engine)
    rebuild = _rebuild(engine)
    if not engine.is_file():
        raise PolicyError(f"{engine}: no such engine file; build one with `crl-export tensorrt`")
    try:
        data = json.loads(read_limited(path, MAX_SIDECAR_BYTES))
    except FileNotFoundError:
        raise PolicyError(f"{path}: missing, the engine cannot be checked; {rebuild}") from None
    except (OSError, ValueError, RefusedFileError) as e:
        raise PolicyError(f"{path}: unreadable sidecar ({e}); {rebuild}") from None
    if not isinstance(data, dict) or data.get("format") != ENGINE_FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise PolicyError(f"{path}: format {found!r} is not {ENGINE_FORMAT!r}; {rebuild}")
    try:
        digest = sidecar_sha256(data)
    except ValueError as e:  # NaN or infinity: never written by crl-export
        raise PolicyError(f"{path}: malformed sidecar ({e}); {rebuild}") from None
    recorded = str(data.get(SIDECAR_SEAL_KEY, ""))
    if recorded != digest:
        raise PolicyError(f"{path}: {SIDECAR_SEAL_KEY} mismatch (recorded "
                          f"{recorded[:12] or 'none'}…, the sidecar hashes to {digest[:12]}…): "
                          f"it changed after the engine was built; {rebuild}")
    try:
        spec = PolicySpec.from_dict(data["spec"])
        return Sidecar(
            spec=spec,
            tensorrt_version=str(data["tensorrt_version"]),
            gpu=str(data.get("gpu", "")),
            compute_capability=str(data.get("compute_capability", "")),
            precision=str(data["precision"]),
            max_batch=int(data["max_batch"]),
            engine_sha256=str(data["engine_sha256"]),
            onnx_sha256=str(data["onnx_sha256"]),
            weight_bytes=int(data.get("weight_bytes", 0)),
        )
    except SpecError as e:
        raise PolicyError(f"{path}: {e}") from None
    except KeyError as e:
        raise PolicyError(f"{path}: missing field {e.args[0]!r}; {rebuild}") from None
    except (TypeError, ValueError) as e:
        raise PolicyError(f"{path}: malformed sidecar ({e}); {rebuild}") from None


def _rebuild(engine: Path) -> str:
    return f"rebuild it here with `crl-export tensorrt --onnx policy.onnx --out {engine}`"


def check_built_here(
    engine: Path, side: Sidecar, tensorrt_version: str, here: dict[str, str]
) -> None:
    """Refuse an engine built with another TensorRT version or for another GPU (where both the
    sidecar and this machine name it): TensorRT would only fail deep inside deserialization."""
    if side.tensorrt_version != tensorrt_version:
        raise PolicyError(f"{engine}: built with TensorRT {side.tensorrt_version}, this machine "
                          f"has {tensorrt_version}; {_rebuild(engine)}")
    for key, built_for in (("gpu", side.gpu), ("compute_capability", side.compute_capability)):
        if built_for and here.get(key) and built_for != here[key]:
            raise PolicyError(f"{engine}: built for {key} {built_for!r}, this is {here[key]!r}; "
                              f"{_rebuild(engine)}")


class TrtPolicy:
    """A TensorRT engine with device buffers sized for its max batch, bound once."""

    backend = "trt"

    def __init__(self, path: str | Path, device: int = 0) -> None:
        path = Path(path)
        self._sidecar = side = read_sidecar(path)
        missing = tensorrt_missing()
        if missing is not None:
            raise PolicyError(missing)
        rt = cuda_runtime()
        if rt is None:
            raise PolicyError(CUDA_PYTHON_MISSING)
        import tensorrt as trt

        rebuild = _rebuild(path)
        check_built_here(path, side, trt.__version__, gpu_info(device))
        try:
            blob = read_limited(path, MAX_ENGINE_BYTES)
        except (OSError, RefusedFileError) as e:
            raise PolicyError(f"{path}: cannot read the engine ({e}); {rebuild}") from None
        if hashlib.sha256(blob).hexdigest() != side.engine_sha256:
            raise PolicyError(f"{path}: sha256 does not match its sidecar (the engine changed "
                              f"after it was built); {rebuild}")

        self._rt = rt
        self._check(rt.cudaSetDevice(device))
        self._logger, self._logged = capturing_logger()
        self._runtime = trt.Runtime(self._logger)
        try:
            engine = self._runtime.deserialize_cuda_engine(blob)
        except Exception:  # TensorRT raises or returns None depending on version and failure
            engine = None
        if engine is None:
            raise PolicyError(f"{path}: TensorRT {trt.__version__} cannot deserialize this engine "
                              "(built for another GPU or TensorRT version, or corrupt)"
                              f"{logged_reason(self._logged)}; {rebuild}")
        self._engine = engine
        self._context = engine.create_execution_context()

        spec = side.spec
        sizes = {INPUTS[0]: int(spec.obs_dim), INPUTS[1]: int(spec.goal_dim)}
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        self._inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self._outputs = tuple(n for n in names if n not in self._inputs)
        if sorted(self._inputs) != sorted(sizes) or ACTION not in self._outputs:
            raise PolicyError(f"{path}: engine tensors {names} are not a crl policy's; {rebuild}")
        self._host: dict[str, NDArray[np.float32]] = {}
        self._device: dict[str, int] = {}
        for name in names:
            dims = engine.get_tensor_shape(name)
            row = tuple(int(dims[i]) for i in range(1, len(dims)))
            if name in sizes and row != (sizes[name],):
                raise PolicyError(f"{path}: engine input {name!r} has shape {row}, the sidecar "
                                  f"spec says ({sizes[name]},); {rebuild}")
            if engine.get_tensor_dtype(name) != trt.DataType.FLOAT:
                raise PolicyError(f"{path}: engine tensor {name!r} is not float32; {rebuild}")
            host = np.zeros((side.max_batch, *row), np.float32)
            ptr = int(self._check(rt.cudaMalloc(host.nbytes)))
            self._host[name], self._device[name] = host, ptr
            if not self._context.set_tensor_address(name, ptr):
                raise PolicyError(f"{path}: TensorRT refused the buffer of {name!r}")
        self._stream: Any = self._check(rt.cudaStreamCreate())

    def _check(self, result: Any) -> Any:
        """cuda-python returns (error, value...) tuples: raise on error, return the value."""
        err, *values = result if isinstance(result, tuple) else (result,)
        if err != self._rt.cudaError_t.cudaSuccess:
            raise PolicyError(f"CUDA error: {err}; check that the GPU is visible "
                              "(`nvidia-smi`) and that no other process holds its memory")
        return values[0] if len(values) == 1 else None

    @property
    def spec(self) -> PolicySpec:
        spec: PolicySpec = self._sidecar.spec
        return spec

    @property
    def outputs(self) -> tuple[str, ...]:
        return self._outputs

    @property
    def weight_bytes(self) -> int:
        return self._sidecar.weight_bytes

    @property
    def precision(self) -> str:
        return self._sidecar.precision

    def act(self, observation: ArrayLike, goal: ArrayLike) -> NDArray[np.float32]:
        return self.run(observation, goal)[ACTION]

    def run(self, observation: ArrayLike, goal: ArrayLike) -> dict[str, NDArray[np.float32]]:
        obs, g, single = check_inputs(self.spec, observation, goal, self._sidecar.max_batch)
        batch = obs.shape[0]
        rt, stream = self._rt, self._stream
        to_device = rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        to_host = rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        for name, x in ((INPUTS[0], obs), (INPUTS[1], g)):
            if not self._context.set_input_shape(name, (batch, x.shape[1])):
                raise PolicyError(f"TensorRT refused input {name!r} of shape {x.shape}"
                                  f"{logged_reason(self._logged)}")
            self._check(rt.cudaMemcpyAsync(
                self._device[name], x.ctypes.data, x.nbytes, to_device, stream
            ))
        if not self._context.execute_async_v3(int(stream)):
            raise PolicyError(f"TensorRT execution failed{logged_reason(self._logged)}")
        for name in self._outputs:
            host = self._host[name][:batch]
            self._check(rt.cudaMemcpyAsync(
                host.ctypes.data, self._device[name], host.nbytes, to_host, stream
            ))
        self._check(rt.cudaStreamSynchronize(stream))
        return {n: (self._host[n][0] if single else self._host[n][:batch]).copy()
                for n in self._outputs}

    def __del__(self) -> None:
        rt = getattr(self, "_rt", None)
        if rt is None:
            return
        for ptr in getattr(self, "_device", {}).values():
            rt.cudaFree(ptr)
        if getattr(self, "_stream", None) is not None:
            rt.cudaStreamDestroy(self._stream)
