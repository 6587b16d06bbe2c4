"""The policy file format: an ONNX model that carries its spec and is sealed whole.

Written by the exporter (`crl-export onnx`), read by every backend the runtime has; what
both sides must agree on lives here. The file carries, in `metadata_props`:
    crl.policy_spec     the `PolicySpec` as JSON (with its `network`),
    crl.precision       "fp32" | "fp16" | "int8",
    crl.weights_sha256  the sha256 of the initializers as stored in this file (fp32, fp16 or int8),
    crl.spec_sha256     the sha256 of the embedded spec's JSON text,
    crl.graph_sha256    the sha256 of the nodes, the graph's inputs/outputs and the opsets,
    crl.seal_sha256     the seal: the sha256 of the whole model (graph, weights, spec, every other
                        field and the hashes above) with this value blanked.
The runtime recomputes the seal on load, so a file with any edit (one bit of the goal box, a Tanh
made a Sigmoid, a weight) is refused; the part hashes only say which part changed. The seal
detects edits, not forgery: whoever can rewrite the file can recompute it too. Every tensor's
data is inside the file: a file that points to external data, which the seal cannot cover, is
refused.

numpy and onnx only (no onnxruntime, no jax).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from crl.core.reading import RefusedFileError, read_limited
from crl.core.spec import PolicySpec, SpecError

SPEC_KEY = "crl.policy_spec"
HASH_KEY = "crl.weights_sha256"
SPEC_HASH_KEY = "crl.spec_sha256"
GRAPH_HASH_KEY = "crl.graph_sha256"
SEAL_KEY = "crl.seal_sha256"
PRECISION_KEY = "crl.precision"
PRECISIONS = ("fp32", "fp16", "int8")
# protobuf's limit for one message: an ONNX file larger than this cannot hold its weights inline.
MAX_FILE_BYTES = 2**31 - 1
# Every operator the exporter writes (fp32 and fp16, with or without the critic's outputs, and
# ONNX Runtime's dynamic int8 quantization of them), all in ONNX's default domain: dense layers
# whose time per call is set by their weights. A file with any other is refused: control flow
# (Loop, If, Scan) can run as long as an input chooses, shape-making operators can allocate any
# memory, and other domains are custom code. The exporter's tests load every variant.
EXPORTED_OPERATORS = frozenset({
    "Add", "Cast", "Concat", "DynamicQuantizeLinear", "Identity", "LayerNormalization", "MatMul",
    "MatMulInteger", "Mul", "ReduceSumSquare", "Sigmoid", "Sqrt", "Sub", "Tanh",
})
INPUTS = ("observation", "goal")
ACTION = "action"
CRITIC_OUTPUTS = ("phi", "psi", "distance")


class PolicyFileError(ValueError):
    """A policy file that cannot be read or trusted; the message names the file, what no longer
    matches and what to do."""


def seal(model: onnx.ModelProto, spec: PolicySpec, precision: str) -> str:
    """Embed the spec, the precision and the part hashes, then seal the whole model; returns
    the seal."""
    if precision not in PRECISIONS:
        raise PolicyFileError(f"precision: {precision!r} is not one of {PRECISIONS}")
    spec_text = spec.to_json(indent=None)
    props = {
        SPEC_KEY: spec_text,
        PRECISION_KEY: precision,
        HASH_KEY: weights_sha256(model),
        SPEC_HASH_KEY: _sha256(spec_text),
        GRAPH_HASH_KEY: graph_sha256(model),
    }
    helper.set_model_props(model, {**metadata(model), **props})
    return stamp_seal(model)


def stamp_seal(model: onnx.ModelProto) -> str:
    """Record the seal of the model as it is now: the last step of `seal`, after every other
    field is final. Returns the seal."""
    helper.set_model_props(model, {**metadata(model), SEAL_KEY: ""})  # one entry, blank
    digest = seal_sha256(model)
    for prop in model.metadata_props:
        if prop.key == SEAL_KEY:
            prop.value = digest
    return digest


def seal_sha256(model: onnx.ModelProto) -> str:
    """sha256 of the whole model with the seal's value blanked.

    Hashed in protobuf's deterministic serialization, a canonical form of the parsed message: a
    file and its parse-and-rewrite hash alike, and ONNX Runtime, which parses the same bytes by
    the same protobuf rules, runs exactly what was hashed.
    """
    entries = [prop for prop in model.metadata_props if prop.key == SEAL_KEY]
    values = [prop.value for prop in entries]
    try:
        for prop in entries:
            prop.value = ""
        return _sha256(model.SerializeToString(deterministic=True))
    finally:
        for prop, value in zip(entries, values, strict=True):
            prop.value = value


def graph_sha256(model: onnx.ModelProto) -> str:
    """sha256 of what turns inputs into outputs besides the weights: the nodes (operators,
    attributes, wiring), the graph's inputs, outputs and value infos, and the opsets."""
    h = hashlib.sha256()
    graph = model.graph
    for section in (model.opset_import, graph.node, graph.input, graph.output, graph.value_info):
        h.update(f"{len(section)}\0".encode())
        for part in section:
            data = part.SerializeToString(deterministic=True)
            h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def _sha256(data: str | bytes) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


def metadata(model: onnx.ModelProto) -> dict[str, str]:
    return {p.key: p.value for p in model.metadata_props}


@dataclass(frozen=True)
class Sealed:
    """What a policy file says about itself, verified against its seal, graph and weights."""

    spec: PolicySpec
    precision: str
    sha256: str  # the seal
    weights_sha256: str
    weight_bytes: int
    outputs: tuple[str, ...]


def load_model(path: str | os.PathLike[str]) -> tuple[bytes, onnx.ModelProto]:
    """Read an ONNX file; a missing file, one that is not a regular file of at most
    MAX_FILE_BYTES, or not ONNX is a one-line PolicyFileError."""
    path = Path(path)
    try:
        data = read_limited(path, MAX_FILE_BYTES)
    except FileNotFoundError:
        raise PolicyFileError(
            f"{path}: no such file; export a policy with `crl-export onnx --run DIR --out {path}`"
        ) from None
    except OSError as e:
        raise PolicyFileError(f"{path}: cannot read ({e.strerror})") from None
    except RefusedFileError as e:
        raise PolicyFileError(f"{path}: cannot read ({e}); pass the .onnx file written by "
                              "`crl-export onnx`") from None
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception:  # protobuf raises DecodeError, or RuntimeWarning-derived errors in C++ mode
        model = onnx.ModelProto()
    if model.ir_version == 0 or not model.graph.node:
        raise PolicyFileError(
            f"{path}: not an ONNX model; pass the .onnx file written by `crl-export onnx`"
        )
    return data, model


def read_seal(model: onnx.ModelProto, source: str) -> Sealed:
    """Verify the seal, then check the embedded spec and the graph's inputs/outputs against it.

    Nothing in the file is trusted before the seal holds. Errors are one line naming the file,
    what no longer matches and what to do.
    """
    meta = metadata(model)
    if SPEC_KEY not in meta:
        raise PolicyFileError(
            f"{source}: ONNX model without a crl policy spec (metadata {SPEC_KEY!r}); "
            "export it with `crl-export onnx`"
        )
    if SEAL_KEY not in meta:
        raise PolicyFileError(
            f"{source}: exported before crl sealed the whole policy file (no {SEAL_KEY!r}), so "
            "edits to its graph or spec would pass unseen; re-export it with `crl-export onnx`"
        )
    digest = seal_sha256(model)
    if meta[SEAL_KEY] != digest:
        raise PolicyFileError(_what_changed(model, meta, source, digest))
    try:
        spec = PolicySpec.from_json(meta[SPEC_KEY])
    except SpecError as e:
        raise PolicyFileError(f"{source}: {e}") from None
    precision = meta.get(PRECISION_KEY, "")
    if precision not in PRECISIONS:
        raise PolicyFileError(f"{source}: metadata {PRECISION_KEY!r} is {precision!r}, not one of "
                          f"{PRECISIONS}; re-export the policy with `crl-export onnx`")
    _check_io(model, spec, source)
    _check_graph(model, source)
    weight_bytes = sum(
        int(np.prod(t.dims)) * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        for t in model.graph.initializer
    )
    outputs = tuple(o.name for o in model.graph.output)
    # Under the seal, the recorded weights hash is the exporter's: no need to hash them again.
    return Sealed(spec, precision, digest, meta.get(HASH_KEY, ""), weight_bytes, outputs)


def _check_graph(model: onnx.ModelProto, source: str) -> None:
    """The graph is one the exporter writes: EXPORTED_OPERATORS only, no subgraphs or local
    functions, every tensor's data inside the file."""
    found = {(n.domain, n.op_type) for n in model.graph.node}
    other = sorted(f"{d}.{op}" if d else op for d, op in found
                   if d not in ("", "ai.onnx") or op not in EXPORTED_OPERATORS)
    if other or model.functions:
        shown = ", ".join(_short(name) for name in other[:4]) or "model-local functions"
        raise PolicyFileError(
            f"{source}: operators crl's exporter does not write ({shown}{', …' * (len(other) > 4)}"
            "): a policy is a fixed graph of dense layers, never control flow or custom "
            "operators; export it with `crl-export onnx`"
        )
    graphs = {onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS}
    tensors = [*model.graph.initializer, *(s.values for s in model.graph.sparse_initializer),
               *(s.indices for s in model.graph.sparse_initializer)]
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type in graphs or attr.HasField("g") or attr.graphs:
                raise PolicyFileError(f"{source}: node {_short(node.name)} carries a subgraph; "
                                      "export the policy with `crl-export onnx`")
            tensors += [attr.t, *attr.tensors, attr.sparse_tensor.values,
                        *(s.values for s in attr.sparse_tensors)]
    for tensor in tensors:
        if tensor.data_location == onnx.TensorProto.EXTERNAL or tensor.external_data:
            raise PolicyFileError(
                f"{source}: tensor {_short(tensor.name)} keeps its data in another file (ONNX "
                "external data), which neither the seal nor the weights' hash covers; a crl "
                "policy carries its weights inline: re-export it with `crl-export onnx`"
            )


def _short(name: str, limit: int = 40) -> str:
    """A name from the file, quoted and cut short: it may be any length."""
    return repr(name if len(name) <= limit else name[:limit] + "…")


def _what_changed(model: onnx.ModelProto, meta: dict[str, str], source: str, digest: str
                  ) -> str:
    """The refusal of a file whose seal does not match, naming the first part whose own hash
    no longer matches either (the weights, the spec, the graph), else the rest."""
    parts: tuple[tuple[str, str, str, Callable[[], str]], ...] = (
        ("weights", HASH_KEY, "the weights hash", lambda: weights_sha256(model)),
        ("spec", SPEC_HASH_KEY, "the embedded policy spec hashes", lambda: _sha256(meta[SPEC_KEY])),
        ("graph", GRAPH_HASH_KEY, "the graph hashes", lambda: graph_sha256(model)),
    )
    for part, key, hashes, compute in parts:
        recorded, found = meta.get(key, ""), compute()
        if recorded != found:
            return (f"{source}: {part} sha256 mismatch (recorded {recorded[:12] or 'none'}…, "
                    f"{hashes} to {found[:12]}…): the {part} changed after export; "
                    "re-export the policy")
    return (f"{source}: seal sha256 mismatch (recorded {meta[SEAL_KEY][:12] or 'none'}…, the "
            f"file hashes to {digest[:12]}…) while its weights, spec and graph match their "
            "hashes: its metadata or another field changed after export; re-export the policy")


def _check_io(model: onnx.ModelProto, spec: PolicySpec, source: str) -> None:
    expected = {INPUTS[0]: spec.obs_dim, INPUTS[1]: spec.goal_dim, ACTION: spec.act_dim}
    found = {}
    for v in [*model.graph.input, *model.graph.output]:
        dims = v.type.tensor_type.shape.dim
        found[v.name] = dims[-1].dim_value if dims else None
    for name, size in expected.items():
        if name not in found:
            raise PolicyFileError(f"{source}: the graph has no {name!r} tensor; "
                              "re-export the policy with `crl-export onnx`")
        if found[name] != size:
            raise PolicyFileError(f"{source}: graph tensor {name!r} has size {found[name]} but the "
                              f"embedded spec says {size}; re-export the policy")


def weights_sha256(model: onnx.ModelProto) -> str:
    """sha256 over every initializer (name, type, shape, bytes), in name order.

    Bytes come from `numpy_helper.to_array`, so the hash does not depend on whether a tensor was
    stored as raw bytes or as typed fields.
    """
    h = hashlib.sha256()
    for t in sorted(model.graph.initializer, key=lambda t: t.name):
        h.update(f"{t.name}\0{t.data_type}\0{tuple(t.dims)}\0".encode())
        h.update(np.ascontiguousarray(numpy_helper.to_array(t)).tobytes())
    return h.hexdigest()
