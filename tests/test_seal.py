"""The whole policy file is sealed (issue 23): graph, weights and spec.

Every edit a file can take after export (one bit of the goal box, the action scale, the control
rate, a Tanh made a Sigmoid, a LayerNorm epsilon, one bit of a weight, the metadata) is refused
in one line naming the part that changed, by `read_policy_file` (what every ONNX backend, the
ROS node included, loads through) and by the real `crl-run bench` and `crl-run serve`; a file
exported before the seal is told to be re-exported. The seal survives a save → load → save at
every precision, and a TensorRT engine's sidecar is sealed the same way.
"""

from __future__ import annotations

import hashlib
import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from robot_fixtures import export_policy, reacher_spec

from crl.core.engine_file import ENGINE_FORMAT, SIDECAR_SEAL_KEY, sidecar_sha256
from crl.core.policy_file import (
    GRAPH_HASH_KEY,
    HASH_KEY,
    PRECISION_KEY,
    SEAL_KEY,
    SPEC_HASH_KEY,
    SPEC_KEY,
    graph_sha256,
    metadata,
    seal_sha256,
    weights_sha256,
)
from crl.core.spec import PolicySpec
from crl.core.usage import USAGE_ERROR
from crl.export.onnx_export import export_actor, quantize_int8, random_params
from crl.runtime.onnx_file import read_policy_file
from crl.runtime.policy import PolicyError, load_policy
from crl.runtime.trt_backend import read_sidecar
from crl.testbed.closed_loop import free_base_port

CRL_RUN = Path(sys.executable).with_name("crl-run")
Edit = Callable[[onnx.ModelProto], None]


def _prop(model: onnx.ModelProto, key: str) -> onnx.StringStringEntryProto:
    return next(p for p in model.metadata_props if p.key == key)


def _spec_edit(change: Callable[[dict[str, Any]], None]) -> Edit:
    """Change the embedded spec's JSON as an editor would, leaving every hash as it was."""
    def edit(model: onnx.ModelProto) -> None:
        prop = _prop(model, SPEC_KEY)
        spec = json.loads(prop.value)
        change(spec)
        prop.value = json.dumps(spec, sort_keys=True)
    return edit


def _one_bit_wider_goal_box(spec: dict[str, Any]) -> None:
    spec["goal"]["high"][0] = float(np.nextafter(spec["goal"]["high"][0], np.inf))


def _double_action_scale(spec: dict[str, Any]) -> None:
    spec["action"]["scale"][0] *= 2


def _control_at_50_hz(spec: dict[str, Any]) -> None:
    spec["control_hz"] = 50.0


def _node(model: onnx.ModelProto, op: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if n.op_type == op)


def _tanh_to_sigmoid(model: onnx.ModelProto) -> None:
    _node(model, "Tanh").op_type = "Sigmoid"


def _layer_norm_epsilon(model: onnx.ModelProto) -> None:
    attr = next(a for a in _node(model, "LayerNormalization").attribute if a.name == "epsilon")
    attr.f = 1e-3


def _flip_a_weight_bit(model: onnx.ModelProto) -> None:
    t = model.graph.initializer[0]
    data = bytearray(t.raw_data)
    data[0] ^= 1
    t.raw_data = bytes(data)


def _precision_label(model: onnx.ModelProto) -> None:
    _prop(model, PRECISION_KEY).value = "fp16"


def _spec_and_its_hash(model: onnx.ModelProto) -> None:
    """The spec edited and its part hash recomputed: the seal still refuses it."""
    _spec_edit(_one_bit_wider_goal_box)(model)
    _prop(model, SPEC_HASH_KEY).value = hashlib.sha256(
        _prop(model, SPEC_KEY).value.encode()).hexdigest()


def _before_the_seal(model: onnx.ModelProto) -> None:
    """What `crl-export onnx` wrote before whole files were sealed: spec, weights hash,
    precision."""
    kept = {k: v for k, v in metadata(model).items()
            if k not in (SEAL_KEY, SPEC_HASH_KEY, GRAPH_HASH_KEY)}
    onnx.helper.set_model_props(model, kept)


# (edit, what the one line says); the commands below take one edit of each part
EDITS: dict[str, tuple[Edit, str]] = {
    "goal box, one bit": (_spec_edit(_one_bit_wider_goal_box), "spec sha256 mismatch"),
    "action scale": (_spec_edit(_double_action_scale), "spec sha256 mismatch"),
    "control_hz": (_spec_edit(_control_at_50_hz), "spec sha256 mismatch"),
    "Tanh to Sigmoid": (_tanh_to_sigmoid, "graph sha256 mismatch"),
    "LayerNorm epsilon": (_layer_norm_epsilon, "graph sha256 mismatch"),
    "a weight, one bit": (_flip_a_weight_bit, "weights sha256 mismatch"),
    "precision label": (_precision_label, "seal sha256 mismatch.*metadata"),
    "spec and its own hash": (_spec_and_its_hash, "seal sha256 mismatch"),
    "exported before the seal": (_before_the_seal,
                                 r"exported before .* re-export it with `crl-export onnx`"),
}


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A reacher policy as `crl-export onnx` writes it (the robot config `serve` needs ships)."""
    return export_policy(tmp_path_factory.mktemp("sealed") / "policy.onnx")


def edited(src: Path, dst: Path, edit: Edit) -> Path:
    """A copy of `src` with one edit and no new seal, written as any ONNX tool writes it."""
    model = onnx.load(src)
    edit(model)
    onnx.save(model, dst)
    return dst


def test_the_seal_holds_through_save_and_load_at_every_precision(tmp_path: Path) -> None:
    """fp32, fp16 and int8, with the critic outputs: what the exporter returns is what the file
    says, a parse-and-rewrite by another tool changes nothing, and every part hash is recorded."""
    spec = reacher_spec()
    params = random_params(spec)
    exports = [export_actor(params, spec, tmp_path / "fp32.onnx", critic=True),
               export_actor(params, spec, tmp_path / "fp16.onnx", fp16=True, critic=True)]
    exports.append(quantize_int8(exports[0].path, tmp_path / "int8.onnx"))
    for e in exports:
        rewritten = tmp_path / f"rewritten_{e.path.name}"
        onnx.save(onnx.load(e.path), rewritten)
        for path in (e.path, rewritten):
            policy = read_policy_file(path)
            assert policy.seal.sha256 == e.sha256 and policy.seal.weights_sha256 == e.weights_sha256
            assert policy.seal.precision == e.precision and policy.spec == spec
            assert policy.seal.outputs == ("action", "phi", "psi", "distance")
        model = onnx.load(e.path)
        meta = metadata(model)
        assert meta[SEAL_KEY] == seal_sha256(model) == e.sha256
        assert meta[HASH_KEY] == weights_sha256(model)
        assert meta[GRAPH_HASH_KEY] == graph_sha256(model)
        assert meta[SPEC_HASH_KEY] == hashlib.sha256(meta[SPEC_KEY].encode()).hexdigest()
    assert len({e.sha256 for e in exports}) == 3
    load_policy(exports[2].path).act(np.zeros(spec.obs_dim), np.zeros(spec.goal_dim))


@pytest.mark.parametrize("name", list(EDITS))
def test_every_edit_is_refused_naming_the_part(sealed: Path, tmp_path: Path, name: str) -> None:
    edit, says = EDITS[name]
    path = edited(sealed, tmp_path / "edited.onnx", edit)
    assert path.read_bytes() != sealed.read_bytes()
    with pytest.raises(PolicyError, match=says) as e:
        read_policy_file(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)
    assert "re-export" in str(e.value)
    with pytest.raises(PolicyError, match=says):
        load_policy(path, "ort")  # what `serve`, `bench` and the ROS node load through


def test_the_one_bit_goal_box_edit_would_have_moved_the_box(sealed: Path, tmp_path: Path) -> None:
    """The edit is real: sealed again, the file loads with the wider box (what an unsealed
    runtime accepted)."""
    from crl.core.policy_file import stamp_seal

    model = onnx.load(sealed)
    _spec_edit(_one_bit_wider_goal_box)(model)
    stamp_seal(model)
    onnx.save(model, tmp_path / "resealed.onnx")
    wider = read_policy_file(tmp_path / "resealed.onnx").spec.goal.high[0]
    assert wider > read_policy_file(sealed).spec.goal.high[0] == reacher_spec().goal.high[0]


def _crl_run(*argv: str) -> subprocess.CompletedProcess[str]:
    if not CRL_RUN.exists():
        pytest.skip(f"{CRL_RUN} is not installed (not an installed venv)")
    return subprocess.run([str(CRL_RUN), *argv], capture_output=True, text=True, timeout=120)


def _command(name: str, policy: Path, out: Path) -> list[str]:
    if name == "bench":
        return ["bench", "--policy", str(policy), "--out", str(out), "--batch", "1",
                "--iterations", "10"]
    return ["serve", "--policy", str(policy), "--port", str(free_base_port()), "--seconds", "1",
            "--wait", "1", "--quiet"]


@pytest.mark.parametrize(("command", "name"), [
    *((c, n) for c in ("bench", "serve")
      for n in ("goal box, one bit", "Tanh to Sigmoid", "a weight, one bit")),
    ("bench", "exported before the seal"),
])
def test_the_commands_refuse_an_edited_file(sealed: Path, tmp_path: Path, command: str,
                                            name: str) -> None:
    edit, says = EDITS[name]
    path = edited(sealed, tmp_path / "edited.onnx", edit)
    r = _crl_run(*_command(command, path, tmp_path / "bench.json"))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == USAGE_ERROR and len(lines) == 1, r.stderr
    assert lines[0].startswith("crl-run: error: ") and str(path) in lines[0], r.stderr
    assert re.search(says, lines[0]), lines[0]
    assert not (tmp_path / "bench.json").exists()


def test_bench_runs_the_sealed_file(sealed: Path, tmp_path: Path) -> None:
    """The control: the same command on the file as exported runs."""
    r = _crl_run(*_command("bench", sealed, tmp_path / "bench.json"))
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "bench.json").read_text())["results"]


def _engine(path: Path, policy: PolicySpec, **changes: object) -> Path:
    """A stand-in engine and its sidecar as `crl-export tensorrt` seals it (TensorRT is not
    needed: the sidecar is checked before anything is deserialized)."""
    path.write_bytes(b"engine")
    sidecar: dict[str, Any] = {
        "format": ENGINE_FORMAT, "spec": policy.to_dict(), "tensorrt_version": "10.0.0",
        "gpu": "Some GPU", "compute_capability": "8.7", "precision": "fp32", "max_batch": 8,
        "engine_sha256": hashlib.sha256(b"engine").hexdigest(), "onnx_sha256": "0" * 64,
        "weight_bytes": 1,
    }
    sidecar[SIDECAR_SEAL_KEY] = sidecar_sha256(sidecar)
    sidecar.update(changes)  # after the seal: an edit
    path.with_name(path.name + ".json").write_text(json.dumps(sidecar, indent=2))
    return path


def test_an_edited_engine_sidecar_is_refused(tmp_path: Path) -> None:
    spec = reacher_spec()
    assert read_sidecar(_engine(tmp_path / "ok.engine", spec)).spec == spec
    wider = json.loads(json.dumps(spec.to_dict()))
    _one_bit_wider_goal_box(wider)
    for name, changes, says in [
        ("box", {"spec": wider}, "sidecar_sha256 mismatch.*changed after the engine was built"),
        ("batch", {"max_batch": 64}, "sidecar_sha256 mismatch"),
        ("old", {"format": "crl-engine/1"}, "format 'crl-engine/1' is not 'crl-engine/2'"),
    ]:
        engine = _engine(tmp_path / f"{name}.engine", spec, **changes)
        with pytest.raises(PolicyError, match=says) as e:
            read_sidecar(engine)
        assert "\n" not in str(e.value) and "rebuild it here with `crl-export tensorrt" in str(
            e.value)
    r = _crl_run("bench", "--backend", "trt", "--policy", str(tmp_path / "box.engine"), "--out",
                 str(tmp_path / "bench.json"))
    assert r.returncode == USAGE_ERROR and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "sidecar_sha256 mismatch" in r.stderr
