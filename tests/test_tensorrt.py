"""TensorRT: type-checked against tensorrt-stubs everywhere, built and run where TensorRT is.

TensorRT's builder cannot be installed on the CPU machines, so there the tests check the typing,
the engine sidecar and the clear "TensorRT is missing" errors; the build/run tests skip.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from crl.core.engine_file import (
    ENGINE_FORMAT,
    SIDECAR_SEAL_KEY,
    TENSORRT_MISSING,
    capturing_logger,
    cuda_runtime,
    logged_reason,
    sidecar_path,
    sidecar_sha256,
    tensorrt_missing,
)
from crl.core.policy_file import load_model, read_seal
from crl.core.spec import PolicySpec
from crl.core.usage import USAGE_ERROR
from crl.export.cli import main as export_main
from crl.export.onnx_export import ExportError, export_actor
from crl.export.tensorrt_build import build_engine, engine_precision, write_files_atomically
from crl.runtime.policy import PolicyError, load_policy
from crl.runtime.trt_backend import check_built_here, read_sidecar

REPO = Path(__file__).resolve().parents[1]
HAS_TENSORRT = tensorrt_missing() is None
needs_tensorrt = pytest.mark.skipif(not HAS_TENSORRT, reason="tensorrt not installed")
# Running an engine also needs cuda-python's runtime API (a `cuda` namespace alone, such as
# cuda-pathfinder's, is not it).
needs_engine_runtime = pytest.mark.skipif(
    not HAS_TENSORRT or cuda_runtime() is None, reason="tensorrt or cuda-python not installed"
)


@pytest.fixture(scope="module")
def onnx_files(tmp_path_factory: pytest.TempPathFactory,
               toy_policy: tuple[PolicySpec, dict, Path]) -> dict[str, Path]:
    spec, params, fp32 = toy_policy
    d = tmp_path_factory.mktemp("trt")
    fp16 = export_actor(params, spec, d / "policy_fp16.onnx", fp16=True)
    return {"fp32": fp32, "fp16": fp16.path}


def write_engine(path: Path, policy: PolicySpec, blob: bytes = b"engine",
                 **changes: object) -> Path:
    """A stand-in engine (bytes TensorRT cannot run) with a sidecar as `crl-export tensorrt`
    writes it: what the runtime checks before it deserializes anything."""
    import hashlib

    path.write_bytes(blob)
    sidecar = {
        "format": ENGINE_FORMAT, "spec": policy.to_dict(), "tensorrt_version": "10.0.0",
        "gpu": "Some GPU", "compute_capability": "8.7", "precision": "fp16", "max_batch": 8,
        "engine_sha256": hashlib.sha256(blob).hexdigest(), "onnx_sha256": "0" * 64,
        "weight_bytes": 1,
    }
    sidecar.update(changes)
    sidecar[SIDECAR_SEAL_KEY] = sidecar_sha256(sidecar)
    sidecar_path(path).write_text(json.dumps(sidecar))
    return path


def _mypy(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """mypy --strict as `make typecheck` runs it: repaired stubs and a crl link tree on MYPYPATH."""
    import sysconfig

    stubs = tmp_path / "typestubs"
    if not stubs.is_dir():
        subprocess.run(
            [sys.executable, "tests/tensorrt_stubs.py", sysconfig.get_paths()["purelib"],
             str(stubs)], cwd=REPO, check=True, capture_output=True, timeout=60,
        )
        subprocess.run(
            [sys.executable, "tests/crl_link_tree.py", str(stubs)],
            cwd=REPO, check=True, capture_output=True, timeout=60,
        )
    return subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"), *args],
        cwd=REPO, capture_output=True, text=True, timeout=300,
        env={**os.environ, "MYPYPATH": str(stubs)},
    )


def test_mypy_strict_against_tensorrt_stubs(tmp_path: Path) -> None:
    if importlib.util.find_spec("mypy") is None:
        pytest.skip("mypy not installed")
    if importlib.util.find_spec("tensorrt_stubs") is None:
        pytest.skip("tensorrt-stubs not installed")
    r = _mypy(tmp_path, "-m", "crl.export.tensorrt_build", "-m", "crl.runtime.trt_backend")
    assert r.returncode == 0, r.stdout + r.stderr
    # The stubs and crl's own types are really read (not silently Any): misuse of either fails.
    bad = _mypy(tmp_path, "-c", "import tensorrt as trt\n"
                "from crl.runtime.policy import check_inputs\n"
                "trt.Builder(trt.Logger(trt.Logger.WARNING)).no_such_method()\n"
                "check_inputs(1, 2, 3)\n")
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert '"Builder" has no attribute "no_such_method"' in bad.stdout
    assert 'incompatible type "int"; expected "PolicySpec"' in bad.stdout


def test_capturing_logger_keeps_what_tensorrt_says(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """TensorRT's reasons (errors, warnings) end up in crl's one-line errors, not on stderr;
    a build also echoes its warnings. A stand-in module plays TensorRT's logger base class."""
    import types

    class ILogger:
        INTERNAL_ERROR, ERROR, WARNING, INFO, VERBOSE = range(5)

        def __init__(self) -> None:
            pass

    monkeypatch.setitem(sys.modules, "tensorrt", types.SimpleNamespace(ILogger=ILogger))
    logger, lines = capturing_logger(echo_warnings=True)
    logger.log(ILogger.INFO, "building")
    logger.log(ILogger.WARNING, "slow tactic ")
    logger.log(ILogger.ERROR, "deserialize failed: version mismatch")
    assert lines == ["slow tactic", "deserialize failed: version mismatch"]
    assert logged_reason(lines) == " (TensorRT: deserialize failed: version mismatch)"
    assert logged_reason([]) == ""
    assert capsys.readouterr().err == "TensorRT warning: slow tactic\n"
    quiet, _ = capturing_logger()
    quiet.log(ILogger.WARNING, "not echoed")
    assert capsys.readouterr().err == ""


def test_missing_tensorrt_clear_errors(
    onnx_files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, toy_spec: Callable[..., PolicySpec],
) -> None:
    """Without TensorRT (absent here, or made unimportable where it is installed) building and
    loading an engine each say in one line what to install, and nothing is written."""
    if HAS_TENSORRT:
        monkeypatch.setitem(sys.modules, "tensorrt", None)  # `import tensorrt` raises
    # (where absent, tensorrt-stubs leaves an importable, empty namespace package: "missing")
    assert tensorrt_missing() == TENSORRT_MISSING
    with pytest.raises(ExportError, match="TensorRT is not installed"):
        build_engine(onnx_files["fp32"], tmp_path / "policy.engine")
    with pytest.raises(SystemExit) as e:
        export_main(["tensorrt", "--onnx", str(onnx_files["fp32"]), "--out",
                     str(tmp_path / "policy.engine")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == USAGE_ERROR and len(err.splitlines()) == 1
    assert "pip install tensorrt" in err and "built on the machine" in err
    assert list(tmp_path.iterdir()) == []
    engine = write_engine(tmp_path / "policy.engine", toy_spec())
    with pytest.raises(PolicyError, match="TensorRT is not installed"):
        load_policy(engine, "trt")


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        (lambda p, s: p, "no such engine file"),
        (lambda p, s: (p.write_bytes(b"x"), p)[1], "missing, the engine cannot be checked"),
        (lambda p, s: write_engine(p, s, format="crl-engine/0"), "format 'crl-engine/0' is not"),
        (lambda p, s: write_engine(p, s, spec={**s.to_dict(), "format": "crl-policy/9"}),
         "spec.format: 'crl-policy/9'"),
        (lambda p, s: write_engine(p, s, max_batch="many"), "malformed sidecar"),
        # a sidecar that is a FIFO: its open would wait for a writer
        (lambda p, s: (p.write_bytes(b"x"), os.mkfifo(sidecar_path(p)), p)[2],
         r"unreadable sidecar \(a FIFO, not a regular file\)"),
    ],
)
def test_bad_engine_sidecars(tmp_path: Path, setup, match: str,
                             toy_spec: Callable[..., PolicySpec]) -> None:
    engine = setup(tmp_path / "policy.engine", toy_spec())
    with pytest.raises(PolicyError, match=match) as e:
        load_policy(engine, "trt")
    assert "\n" not in str(e.value)


def test_sidecar_read_back(tmp_path: Path, toy_spec: Callable[..., PolicySpec]) -> None:
    side = read_sidecar(write_engine(tmp_path / "p.engine", toy_spec()))
    assert side.spec == toy_spec() and side.max_batch == 8 and side.precision == "fp16"


def test_engines_built_elsewhere_are_refused(tmp_path: Path,
                                             toy_spec: Callable[..., PolicySpec]) -> None:
    engine = write_engine(tmp_path / "p.engine", toy_spec())
    side = read_sidecar(engine)
    here = {"gpu": "Some GPU", "compute_capability": "8.7"}
    check_built_here(engine, side, "10.0.0", here)  # same version and GPU: accepted
    check_built_here(engine, side, "10.0.0", {"gpu": "", "compute_capability": ""})  # unknown
    for version, gpu, match in [
        ("10.3.0", here, "built with TensorRT 10.0.0, this machine has 10.3.0"),
        ("10.0.0", {**here, "gpu": "Orin"}, "built for gpu 'Some GPU', this is 'Orin'"),
        ("10.0.0", {**here, "compute_capability": "9.0"}, "compute_capability '8.7'"),
    ]:
        with pytest.raises(PolicyError, match=match) as e:
            check_built_here(engine, side, version, gpu)
        assert "rebuild it here with `crl-export tensorrt" in str(e.value)


def test_engine_and_sidecar_are_replaced_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails part-way (a full disk) leaves the previous engine and sidecar as they
    were and no temporary files; one that succeeds replaces all of them."""
    engine, side = tmp_path / "policy.engine", tmp_path / "policy.engine.json"
    engine.write_bytes(b"old engine")
    side.write_text("old sidecar")
    real_write = Path.write_bytes

    def full_disk(self: Path, data: bytes) -> int:
        if self.name.startswith(".policy.engine.json."):
            raise OSError(28, "No space left on device")
        return real_write(self, data)

    with monkeypatch.context() as m:
        m.setattr(Path, "write_bytes", full_disk)
        with pytest.raises(OSError, match="No space left"):
            write_files_atomically({engine: b"new engine", side: b"new sidecar"})
    assert engine.read_bytes() == b"old engine" and side.read_text() == "old sidecar"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.engine", "policy.engine.json"]
    write_files_atomically({engine: b"new engine", side: b"new sidecar"})
    assert engine.read_bytes() == b"new engine" and side.read_text() == "new sidecar"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.engine", "policy.engine.json"]


def test_precision_rules() -> None:
    assert engine_precision(None, "fp16", 11) == "fp16"
    assert engine_precision("fp16", "fp32", 10) == "fp16"  # builder FP16 flag
    with pytest.raises(ExportError, match="TensorRT 11 builds strongly typed"):
        engine_precision("fp16", "fp32", 11)
    with pytest.raises(ExportError, match="export without --fp16"):
        engine_precision("fp32", "fp16", 10)
    with pytest.raises(ExportError, match="TensorRT does not build"):
        engine_precision(None, "int8", 10)


@needs_engine_runtime
def test_engine_build_and_parity(onnx_files: dict[str, Path], tmp_path: Path) -> None:
    ort_policy = load_policy(onnx_files["fp32"], "ort")
    spec = ort_policy.spec
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((16, spec.obs_dim)).astype(np.float32)
    goal = rng.uniform(-1, 1, (16, spec.goal_dim)).astype(np.float32)
    ref = ort_policy.run(obs, goal)
    for precision, tol in (("fp32", 1e-4), ("fp16", 2e-2)):
        engine = tmp_path / f"{precision}.engine"
        info = build_engine(onnx_files[precision], engine, max_batch=16)
        side = json.loads(sidecar_path(engine).read_text())
        assert side["precision"] == info.precision == precision and side["max_batch"] == 16
        assert side["tensorrt_version"] and PolicySpec.from_dict(side["spec"]) == spec
        sealed = read_seal(load_model(onnx_files[precision])[1], "onnx")
        assert side["onnx_sha256"] == sealed.sha256  # the engine names the sealed ONNX
        policy = load_policy(engine, "trt")
        assert policy.spec == spec
        np.testing.assert_allclose(policy.act(obs, goal), ref["action"], atol=tol)
        assert policy.act(obs[0], goal[0]).shape == (spec.act_dim,)
        with pytest.raises(PolicyError, match="max batch 16"):
            policy.act(np.zeros((17, spec.obs_dim)), np.zeros((17, spec.goal_dim)))
        with pytest.raises(PolicyError, match="observation: got 5 values"):
            policy.act(np.zeros(5), np.zeros(spec.goal_dim))
    out = load_policy(tmp_path / "fp32.engine", "trt").run(obs, goal)
    np.testing.assert_allclose(out["distance"], ref["distance"], rtol=1e-3, atol=1e-3)
    assert (tmp_path / "tensorrt_timing.cache").stat().st_size > 0


@needs_engine_runtime
def test_foreign_or_corrupt_engines_are_refused(
    onnx_files: dict[str, Path], tmp_path: Path
) -> None:
    engine = tmp_path / "policy.engine"
    build_engine(onnx_files["fp32"], engine, max_batch=4)
    side = json.loads(sidecar_path(engine).read_text())
    good = engine.read_bytes()

    def refused(match: str, **changes: object) -> None:
        resealed = {**side, **changes}
        resealed[SIDECAR_SEAL_KEY] = sidecar_sha256(resealed)  # a sidecar as built elsewhere
        sidecar_path(engine).write_text(json.dumps(resealed))
        with pytest.raises(PolicyError, match=match) as e:
            load_policy(engine, "trt")
        assert "\n" not in str(e.value) and "rebuild" in str(e.value)

    refused("built with TensorRT 9.0.0", tensorrt_version="9.0.0")
    refused("built for gpu 'Another GPU'", gpu="Another GPU")
    engine.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    refused("sha256 does not match")
    import hashlib

    garbage = b"\0" * len(good)
    engine.write_bytes(garbage)
    refused("cannot deserialize this engine", engine_sha256=hashlib.sha256(garbage).hexdigest())
