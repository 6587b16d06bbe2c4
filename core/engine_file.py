"""The TensorRT engine file format and what ties an engine to a machine, shared by the engine
builder (`crl-export tensorrt`) and the TensorRT backend that loads it.

Next to `policy.engine` goes `policy.engine.json`: the policy spec, the TensorRT version, the GPU,
the precision, the batch range, the engine's sha256 and the seal of the ONNX it was built from,
itself sealed (`sidecar_sha256` over the rest). `tensorrt` and cuda-python are imported inside
the functions that need them: without them this module still imports, and says what to install.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import tensorrt as trt

ENGINE_FORMAT = "crl-engine/2"  # /2: the sidecar is sealed and names the ONNX's seal
SIDECAR_SEAL_KEY = "sidecar_sha256"
TENSORRT_MISSING = (
    "TensorRT is not installed: `pip install tensorrt cuda-python` on an x86_64 machine with an "
    "NVIDIA GPU, or JetPack's python3-libnvinfer on a Jetson; engines are built on the machine "
    "that runs them (crl-export tensorrt there); the ONNX file runs anywhere with backend 'ort'"
)


def tensorrt_missing() -> str | None:
    """Why TensorRT cannot be used here, or None.

    A successful `import tensorrt` proves nothing on its own: tensorrt-stubs installs a bare
    `tensorrt` folder that imports as an empty namespace package.
    """
    try:
        import tensorrt
    except ImportError:
        return TENSORRT_MISSING
    return None if hasattr(tensorrt, "Builder") else TENSORRT_MISSING


def capturing_logger(echo_warnings: bool = False) -> tuple[trt.ILogger, list[str]]:
    """A TensorRT logger that keeps its errors (and warnings) in a list instead of printing them.

    TensorRT reports why a parse, build or deserialization failed only through its logger; kept
    here, that reason goes into crl's one-line error instead of a separate stderr line.
    `echo_warnings` also prints warnings (a build's are worth reading; a robot's start is not).
    """
    import tensorrt as trt

    lines: list[str] = []

    class Capture(trt.ILogger):
        def __init__(self) -> None:
            trt.ILogger.__init__(self)

        def log(self, severity: trt.ILogger.Severity, msg: str) -> None:
            level = int(severity)  # INTERNAL_ERROR 0, ERROR 1, WARNING 2, INFO 3, VERBOSE 4
            if level <= int(trt.ILogger.WARNING):
                lines.append(msg.strip())
            if echo_warnings and level == int(trt.ILogger.WARNING):
                print(f"TensorRT warning: {msg.strip()}", file=sys.stderr)

    return Capture(), lines


def logged_reason(lines: list[str]) -> str:
    """The last thing TensorRT logged, for an error message ("" when it said nothing)."""
    return f" (TensorRT: {lines[-1]})" if lines else ""


def sidecar_path(engine: Path) -> Path:
    return engine.with_name(engine.name + ".json")


def sidecar_sha256(sidecar: dict[str, Any]) -> str:
    """The seal of a sidecar: sha256 of its canonical JSON (sorted keys, no spaces) without the
    seal itself. JSON's floats read back to the same shortest repr, so a parsed sidecar hashes
    as the one written."""
    rest = {k: v for k, v in sidecar.items() if k != SIDECAR_SEAL_KEY}
    text = json.dumps(rest, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


def cuda_runtime() -> Any:
    """cuda-python's runtime API (`cuda.bindings.runtime`, or `cuda.cudart` before 12.6), or
    None when cuda-python is absent."""
    try:
        from cuda.bindings import runtime

        return runtime
    except ImportError:
        pass
    try:
        from cuda import cudart

        return cudart
    except ImportError:
        return None


def gpu_info(device: int = 0) -> dict[str, str]:
    """Name and compute capability of a GPU: what an engine is tied to ("" where unknown)."""
    rt = cuda_runtime()
    if rt is not None:
        err, prop = rt.cudaGetDeviceProperties(device)
        if err == rt.cudaError_t.cudaSuccess:
            raw = prop.name
            name = raw.split(b"\0")[0].decode() if isinstance(raw, bytes) else str(raw)
            return {"gpu": name.strip(), "compute_capability": f"{prop.major}.{prop.minor}"}
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        query = ["--query-gpu=name,compute_cap", "--format=csv,noheader", f"--id={device}"]
        try:
            line = subprocess.run(
                [smi, *query], capture_output=True, text=True, timeout=10, check=True
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            line = ""
        if "," in line:
            name, cc = (part.strip() for part in line.split(",", 1))
            return {"gpu": name, "compute_capability": cc}
    return {"gpu": "", "compute_capability": ""}
