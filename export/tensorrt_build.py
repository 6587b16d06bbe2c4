"""Policy ONNX → TensorRT engine, built on the machine that will run it.

An engine is tied to the GPU model and the TensorRT version it was built with, so it is built on
the target (a Jetson, a workstation GPU) and never shipped. Next to `policy.engine` goes
`policy.engine.json`: the policy spec, the TensorRT version, the GPU, the precision, the batch
range, the engine's sha256 and the seal of the ONNX it was built from, itself sealed
(`sidecar_sha256` over the rest), all of which the runtime checks before it deserializes anything:
the spec an engine runs under cannot be edited any more than the ONNX's.

TensorRT 10 takes fp16 as a builder flag over an fp32 graph (or builds an fp16 export as a
strongly typed network). TensorRT 11 only builds strongly typed networks: each tensor keeps the
type the ONNX gives it, so an fp16 engine comes from `crl-export onnx --fp16`.

`tensorrt` is imported inside the functions that need it: without it this module still imports,
and says what to install.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from crl.core.atomic import replace_durably, temporary_path
from crl.core.engine_file import (
    ENGINE_FORMAT,
    SIDECAR_SEAL_KEY,
    capturing_logger,
    gpu_info,
    logged_reason,
    sidecar_path,
    sidecar_sha256,
    tensorrt_missing,
)
from crl.core.policy_file import INPUTS, load_model, read_seal
from crl.export.onnx_export import ExportError

if TYPE_CHECKING:
    pass

ENGINE_PRECISIONS = ("fp32", "fp16")


@dataclass(frozen=True)
class EngineInfo:
    """What `build_engine` wrote."""

    path: Path
    sidecar: Path
    tensorrt_version: str
    gpu: str
    precision: str
    max_batch: int


def engine_precision(requested: str | None, onnx_precision: str, trt_major: int) -> str:
    """The engine precision, refusing combinations the TensorRT version cannot build."""
    if onnx_precision not in ENGINE_PRECISIONS:
        raise ExportError(
            f"--onnx: a {onnx_precision} export uses dynamic quantization (MatMulInteger), "
            "which TensorRT does not build; build the engine from the fp32 or fp16 export"
        )
    if requested is None or requested == onnx_precision:
        return onnx_precision
    if requested not in ENGINE_PRECISIONS:
        raise ExportError(f"--precision: {requested!r} is not one of {ENGINE_PRECISIONS}")
    if requested == "fp32":
        raise ExportError(
            "--precision fp32: the ONNX has fp16 weights; export without --fp16 for an fp32 engine"
        )
    if trt_major >= 11:
        raise ExportError(
            "--precision fp16: TensorRT 11 builds strongly typed networks, where fp16 comes "
            "from the ONNX; export with `crl-export onnx --fp16` and build from that file"
        )
    return requested


def build_engine(
    onnx_path: str | os.PathLike[str],
    out: str | os.PathLike[str],
    precision: str | None = None,
    max_batch: int = 64,
    timing_cache: str | os.PathLike[str] | None = None,
) -> EngineInfo:
    """Build `out` and its sidecar from a policy ONNX file on this machine's GPU.

    `precision` defaults to the ONNX's; `max_batch` bounds the optimization profile (batch
    1..max_batch, tuned for batch 1, what a robot runs); `timing_cache` (default
    `tensorrt_timing.cache` next to `out`) keeps kernel timings so later builds are faster.
    """
    onnx_path, out = Path(onnx_path), Path(out)
    if max_batch < 1:
        raise ExportError(f"--max-batch: must be ≥ 1, got {max_batch}")
    data, model = load_model(onnx_path)
    seal = read_seal(model, str(onnx_path))
    missing = tensorrt_missing()
    if missing is not None:
        raise ExportError(missing)

    import tensorrt as trt

    major = int(trt.__version__.split(".")[0])
    engine_prec = engine_precision(precision, seal.precision, major)
    logger, logged = capturing_logger(echo_warnings=True)
    try:
        builder = trt.Builder(logger)
    except TypeError:  # the bindings turn a null builder (no GPU, no driver) into a TypeError
        builder = None
    if builder is None:
        raise ExportError(
            "TensorRT cannot create a builder: no usable NVIDIA GPU or driver on this machine"
            f"{logged_reason(logged)}; build the engine on the GPU that will run it"
        )
    # TensorRT 11 networks are always strongly typed; on 10, an fp16 export is built strongly
    # typed too, so its fp16 weights and compute are kept exactly as exported.
    flags = 0
    if major < 11 and seal.precision == "fp16":
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(data):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise ExportError(f"{onnx_path}: TensorRT's ONNX parser failed: {errors}")

    config = builder.create_builder_config()
    if engine_prec == "fp16" and seal.precision == "fp32":
        config.set_flag(trt.BuilderFlag.FP16)  # TensorRT 10, weakly typed (engine_precision)
    if engine_prec == "fp32" and hasattr(trt.BuilderFlag, "TF32"):
        # TF32 matmuls are on by default on Ampere and later; an fp32 engine matches the export.
        config.clear_flag(trt.BuilderFlag.TF32)
    sizes = {INPUTS[0]: int(seal.spec.obs_dim), INPUTS[1]: int(seal.spec.goal_dim)}
    profile = builder.create_optimization_profile()
    for name, size in sizes.items():
        profile.set_shape(name, trt.Dims2(1, size), trt.Dims2(1, size), trt.Dims2(max_batch, size))
    config.add_optimization_profile(profile)

    cache_path = Path(timing_cache) if timing_cache else out.parent / "tensorrt_timing.cache"
    cache = config.create_timing_cache(cache_path.read_bytes() if cache_path.exists() else b"")
    if not config.set_timing_cache(cache, ignore_mismatch=False):
        # A cache from another GPU or TensorRT version: start a fresh one (it is rewritten below).
        print(f"crl-export: {cache_path} was made for another GPU or TensorRT version; "
              "starting a new timing cache", file=sys.stderr)
        if not config.set_timing_cache(config.create_timing_cache(b""), ignore_mismatch=False):
            raise ExportError(f"TensorRT refused a new timing cache{logged_reason(logged)}")

    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise ExportError(
            f"{onnx_path}: TensorRT could not build an engine{logged_reason(logged)}"
        )
    engine = bytes(memoryview(serialized))
    gpu = gpu_info()
    sidecar: dict[str, Any] = {
        "format": ENGINE_FORMAT,
        "spec": seal.spec.to_dict(),
        "tensorrt_version": trt.__version__,
        **gpu,
        "precision": engine_prec,
        "min_batch": 1,
        "max_batch": max_batch,
        "outputs": [network.get_output(i).name for i in range(network.num_outputs)],
        "weight_bytes": int(seal.weight_bytes),
        "onnx_sha256": str(seal.sha256),
        "onnx_weights_sha256": str(seal.weights_sha256),
        "engine_sha256": hashlib.sha256(engine).hexdigest(),
        "built": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }
    sidecar[SIDECAR_SEAL_KEY] = sidecar_sha256(sidecar)
    write_files_atomically({
        out: engine,
        sidecar_path(out): json.dumps(sidecar, indent=2, sort_keys=True).encode(),
        cache_path: bytes(memoryview(config.get_timing_cache().serialize())),
    })
    return EngineInfo(out, sidecar_path(out), trt.__version__, gpu["gpu"], engine_prec, max_batch)


def write_files_atomically(files: dict[Path, bytes]) -> None:
    """Write every file in full beside its target, then rename them all into place: a failed
    write (a full disk, say) leaves the previous engine and sidecar, never a new engine beside
    an old sidecar."""
    with contextlib.ExitStack() as stack:
        tmps = {path: stack.enter_context(temporary_path(path)) for path in files}
        for path, data in files.items():
            tmps[path].write_bytes(data)
        for path, tmp in tmps.items():
            replace_durably(tmp, path)
