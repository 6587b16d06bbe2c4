"""Trained parameters → a self-describing ONNX policy file.

The graph is built node by node from the parameter tree with `onnx.helper` (documented at the top
of `crl.train.networks`): the scanned residual blocks are unrolled into plain
MatMul → Add → LayerNormalization → x·sigmoid(x) chains, which every ONNX consumer (ONNX Runtime,
TensorRT's parser) runs natively. Tracing JAX instead (jax2onnx) was 20× slower to export, needed
extra flags to emit `LayerNormalization`, and pulled in a dozen packages.

The file carries everything a runtime needs, in `metadata_props`:
    crl.policy_spec     the `PolicySpec` as JSON (with its `network`),
    crl.precision       "fp32" | "fp16" | "int8",
    crl.weights_sha256  the sha256 of the initializers as stored in this file (fp32, fp16 or int8),
    crl.spec_sha256     the sha256 of the embedded spec's JSON text,
    crl.graph_sha256    the sha256 of the nodes, the graph's inputs/outputs and the opsets,
    crl.seal_sha256     the seal: the sha256 of the whole model (graph, weights, spec, every other
                        field and the hashes above) with this value blanked.
The runtime recomputes the seal on load, so a file with any edit (one bit of the goal box, a Tanh
made a Sigmoid, a weight) is refused; the part hashes only say which part changed. The seal
detects edits, not forgery: whoever can rewrite the file can recompute it too.

This module imports numpy and onnx only (no jax): the runtime uses its metadata helpers.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from crl.sim.atomic import replace_durably, temporary_path
from crl.sim.spec import BLOCK_LAYERS, NetworkSpec, PolicySpec, SpecError

# The first opset with LayerNormalization: ONNX Runtime ≥ 1.12 reads IR 8 + opset 17 (its
# compatibility table) and TensorRT's ONNX parser ≥ 8.6 the op (onnx-tensorrt's changelog).
OPSET = 17
# Written explicitly: onnx 1.23 defaults to IR 14, which onnxruntime 1.31 and TensorRT 10 reject.
IR_VERSION = 8
SPEC_KEY = "crl.policy_spec"
HASH_KEY = "crl.weights_sha256"
SPEC_HASH_KEY = "crl.spec_sha256"
GRAPH_HASH_KEY = "crl.graph_sha256"
SEAL_KEY = "crl.seal_sha256"
PRECISION_KEY = "crl.precision"
PRECISIONS = ("fp32", "fp16", "int8")
INPUTS = ("observation", "goal")
ACTION = "action"
CRITIC_OUTPUTS = ("phi", "psi", "distance")
LAYER_NORM_EPS = 1e-6  # flax.linen.LayerNorm's default, which the trained networks use
BATCH = "batch"


class ExportError(ValueError):
    """Parameters or a spec that cannot be exported; the message names what and how to fix it."""


@dataclass(frozen=True)
class Exported:
    """What `export_actor` wrote."""

    path: Path
    spec: PolicySpec
    precision: str
    sha256: str  # the whole-model seal
    weights_sha256: str
    critic: bool


def export_actor(
    params: Mapping[str, Any],
    spec: PolicySpec,
    path: str | os.PathLike[str],
    fp16: bool = False,
    critic: bool = False,
) -> Exported:
    """Write the deterministic actor tanh(mean(obs, goal)) as ONNX, the spec embedded.

    `params` is `LoadedRun.params`: {"actor": …} and, for `critic=True`, "sa_encoder" (φ(s, a))
    and "g_encoder" (ψ(g)); arrays may be numpy or jax. `fp16` stores fp16 weights and computes
    in fp16 while the inputs and outputs stay float32. `critic` adds the outputs `phi`, `psi` and
    `distance` = ‖φ(s, π(s, g)) − ψ(g)‖₂ (the negated energy), a reachability readout.
    """
    model = build_model(params, spec, fp16=fp16, critic=critic)
    precision = "fp16" if fp16 else "fp32"
    digest = seal(model, spec, precision)
    save_atomic(model, Path(path))
    return Exported(Path(path), spec, precision, digest, metadata(model)[HASH_KEY], critic)


def quantize_int8(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> Exported:
    """Dynamic int8 quantization of an fp32 export, for ONNX Runtime on CPU: weights in int8,
    activations quantized per call (DynamicQuantizeLinear → MatMulInteger, which TensorRT does
    not build). The int8 model is sealed anew."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src, dst = Path(src), Path(dst)
    sealed = read_seal(load_model(src)[1], str(src))
    if sealed.precision != "fp32":
        raise ExportError(f"{src}: int8 quantization needs an fp32 export, this one is "
                          f"{sealed.precision}; export without --fp16 first")
    spec = sealed.spec
    with temporary_path(dst) as tmp:
        # reduce_range: 7-bit weights, so u8 × s8 products cannot saturate the int16 pairwise
        # sums x86 CPUs without VNNI use; that saturation, not rounding, dominated the action
        # error. Per-channel scales cost latency and did not reduce the error further.
        # Its advice to pre-process (shape inference, conv fusions) does not apply to an MLP.
        logging.disable(logging.WARNING)
        try:
            quantize_dynamic(src, tmp, weight_type=QuantType.QInt8, reduce_range=True)
        finally:
            logging.disable(logging.NOTSET)
        model = onnx.load(tmp)
    model.ir_version = IR_VERSION  # quantize_dynamic writes the onnx default (see IR_VERSION)
    digest = seal(model, spec, "int8")
    save_atomic(model, dst)
    return Exported(dst, spec, "int8", digest, metadata(model)[HASH_KEY],
                    CRITIC_OUTPUTS[-1] in sealed.outputs)


def build_model(
    params: Mapping[str, Any], spec: PolicySpec, fp16: bool = False, critic: bool = False
) -> onnx.ModelProto:
    """The unsealed graph (no metadata): `export_actor` without the file."""
    network = _check_params(params, spec, critic)
    g = _Graph(np.float16 if fp16 else np.float32)
    residual = network.residual
    obs = helper.make_tensor_value_info(INPUTS[0], TensorProto.FLOAT, [BATCH, spec.obs_dim])
    goal = helper.make_tensor_value_info(INPUTS[1], TensorProto.FLOAT, [BATCH, spec.goal_dim])
    obs_c, goal_c = g.to_compute(INPUTS[0]), g.to_compute(INPUTS[1])

    actor = params["actor"]
    x = g.node("Concat", [obs_c, goal_c], axis=-1)
    h = _trunk(g, x, actor["trunk"], residual, "actor")
    mean = g.dense(h, actor["mean"], "actor/mean")
    action_c = g.node("Tanh", [mean])
    g.cast_out(action_c, ACTION)
    outputs = [helper.make_tensor_value_info(ACTION, TensorProto.FLOAT, [BATCH, spec.act_dim])]

    if critic:
        sa = g.node("Concat", [obs_c, action_c], axis=-1)
        phi = _encoder(g, sa, params["sa_encoder"], residual, "phi")
        psi = _encoder(g, goal_c, params["g_encoder"], residual, "psi")
        diff = g.node("Sub", [phi, psi])
        dist = g.node("Sqrt", [g.node("ReduceSumSquare", [diff], axes=[-1], keepdims=0)])
        repr_dim = network.repr_dim
        shapes: dict[str, list[str | int]] = {
            "phi": [BATCH, repr_dim], "psi": [BATCH, repr_dim], "distance": [BATCH]
        }
        for (name, shape), value in zip(shapes.items(), (phi, psi, dist), strict=True):
            g.cast_out(value, name)
            outputs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))

    graph = helper.make_graph(g.nodes, "crl_policy", [obs, goal], outputs, g.initializers)
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="crl",
        doc_string=f"crl goal-reaching policy for task {spec.task!r}",
    )
    model.ir_version = IR_VERSION
    return model


def seal(model: onnx.ModelProto, spec: PolicySpec, precision: str) -> str:
    """Embed the spec, the precision and the part hashes, then seal the whole model; returns
    the seal."""
    if precision not in PRECISIONS:
        raise ExportError(f"precision: {precision!r} is not one of {PRECISIONS}")
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
    """Read an ONNX file; a missing file or one that is not ONNX is a one-line ExportError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ExportError(
            f"{path}: no such file; export a policy with `crl-export onnx --run DIR --out {path}`"
        ) from None
    except OSError as e:
        raise ExportError(f"{path}: cannot read ({e.strerror})") from None
    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception:  # protobuf raises DecodeError, or RuntimeWarning-derived errors in C++ mode
        model = onnx.ModelProto()
    if model.ir_version == 0 or not model.graph.node:
        raise ExportError(
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
        raise ExportError(
            f"{source}: ONNX model without a crl policy spec (metadata {SPEC_KEY!r}); "
            "export it with `crl-export onnx`"
        )
    if SEAL_KEY not in meta:
        raise ExportError(
            f"{source}: exported before crl sealed the whole policy file (no {SEAL_KEY!r}), so "
            "edits to its graph or spec would pass unseen; re-export it with `crl-export onnx`"
        )
    digest = seal_sha256(model)
    if meta[SEAL_KEY] != digest:
        raise ExportError(_what_changed(model, meta, source, digest))
    try:
        spec = PolicySpec.from_json(meta[SPEC_KEY])
    except SpecError as e:
        raise ExportError(f"{source}: {e}") from None
    precision = meta.get(PRECISION_KEY, "")
    if precision not in PRECISIONS:
        raise ExportError(f"{source}: metadata {PRECISION_KEY!r} is {precision!r}, not one of "
                          f"{PRECISIONS}; re-export the policy with `crl-export onnx`")
    _check_io(model, spec, source)
    weight_bytes = sum(
        int(np.prod(t.dims)) * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
        for t in model.graph.initializer
    )
    outputs = tuple(o.name for o in model.graph.output)
    # Under the seal, the recorded weights hash is the exporter's: no need to hash them again.
    return Sealed(spec, precision, digest, meta.get(HASH_KEY, ""), weight_bytes, outputs)


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
            raise ExportError(f"{source}: the graph has no {name!r} tensor; "
                              "re-export the policy with `crl-export onnx`")
        if found[name] != size:
            raise ExportError(f"{source}: graph tensor {name!r} has size {found[name]} but the "
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


def save_atomic(model: onnx.ModelProto, path: Path) -> None:
    """Check the model, write it next to `path` and rename it into place, so a failed export
    never leaves a half-written file behind."""
    # Weights dominate the size; ModelProto.ByteSize() would serialise the whole model once more.
    if sum(len(t.raw_data) for t in model.graph.initializer) >= 2**31 - 2**20:
        raise ExportError(
            f"{path}: the model is over ONNX's 2 GB protobuf limit; export a smaller network"
        )
    with temporary_path(path) as tmp:
        onnx.save(model, tmp)
        onnx.checker.check_model(str(tmp), full_check=True)
        replace_durably(tmp, path)


def random_params(spec: PolicySpec, seed: int = 0, critic: bool = True) -> dict[str, Any]:
    """Random parameters with the tree and shapes `crl.train.networks` gives `spec.network`.

    Made with numpy, for graph tests and latency benchmarks: flax init of a deep, wide network is
    slow and its zero biases and unit LayerNorm scales would let a graph that drops or swaps them
    pass a parity test. Kernels follow the paper's init; the action head is scaled down by the
    residual stream's √(blocks) growth so that actions stay off tanh's flat tails, where a parity
    test would see nothing.
    """
    if spec.network is None:
        raise ExportError("spec.network: missing; random_params needs the network shape")
    n, rng = spec.network, np.random.default_rng(seed)

    def noise(*shape: int) -> np.ndarray:
        return (0.1 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)

    def dense(fan_in: int, fan_out: int, *lead: int, gain: float = 1.0) -> dict[str, np.ndarray]:
        limit = gain / np.sqrt(fan_in)  # variance scaling 1/3, fan-in, uniform
        u = rng.random((*lead, fan_in, fan_out), dtype=np.float32)
        return {"kernel": (limit * (2 * u - 1)).astype(np.float32), "bias": noise(*lead, fan_out)}

    def norm(width: int, *lead: int) -> dict[str, np.ndarray]:
        return {"scale": 1 + noise(*lead, width), "bias": noise(*lead, width)}

    def trunk(in_dim: int, depth: int, width: int) -> dict[str, Any]:
        blocks = depth // BLOCK_LAYERS
        block = {f"dense_{i}": dense(width, width, blocks) for i in range(BLOCK_LAYERS)}
        block |= {f"norm_{i}": norm(width, blocks) for i in range(BLOCK_LAYERS)}
        return {"stem_dense": dense(in_dim, width), "stem_norm": norm(width), "blocks": block}

    width, gain = n.width, 1 / np.sqrt(1 + n.depth // BLOCK_LAYERS)
    params: dict[str, Any] = {"actor": {
        "trunk": trunk(spec.obs_dim + spec.goal_dim, n.depth, width),
        "mean": dense(width, spec.act_dim, gain=gain),
        "log_std": dense(width, spec.act_dim, gain=gain),
    }}
    if critic:
        depth, width = n.critic_shape
        params["sa_encoder"] = {"trunk": trunk(spec.obs_dim + spec.act_dim, depth, width),
                                "head": dense(width, n.repr_dim)}
        params["g_encoder"] = {"trunk": trunk(spec.goal_dim, depth, width),
                               "head": dense(width, n.repr_dim)}
    return params


class _Graph:
    """Accumulates nodes and initializers with unique names; `dtype` is the compute precision."""

    def __init__(self, dtype: type[np.floating]) -> None:
        self.dtype = np.dtype(dtype)
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self._count = 0

    @property
    def _onnx_type(self) -> int:
        return helper.np_dtype_to_tensor_dtype(self.dtype)

    def node(self, op: str, inputs: list[str], **attrs: Any) -> str:
        self._count += 1
        out = f"{op.lower()}_{self._count}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def weight(self, name: str, value: Any, dtype: np.dtype | None = None) -> str:
        array = np.asarray(value, dtype=np.float32).astype(dtype or self.dtype)
        self.initializers.append(numpy_helper.from_array(array, name))
        return name

    def to_compute(self, name: str) -> str:
        return name if self.dtype == np.float32 else self.node("Cast", [name], to=self._onnx_type)

    def to_float32(self, name: str) -> str:
        if self.dtype == np.float32:
            return name
        return self.node("Cast", [name], to=TensorProto.FLOAT)

    def cast_out(self, value: str, name: str) -> None:
        if self.dtype == np.float32:
            self.nodes.append(helper.make_node("Identity", [value], [name], name=name))
        else:
            self.nodes.append(
                helper.make_node("Cast", [value], [name], name=name, to=TensorProto.FLOAT)
            )

    def dense(self, x: str, p: Mapping[str, Any], name: str) -> str:
        y = self.node("MatMul", [x, self.weight(f"{name}/kernel", p["kernel"])])
        return self.node("Add", [y, self.weight(f"{name}/bias", p["bias"])])

    def layer(self, x: str, dense: Mapping[str, Any], norm: Mapping[str, Any], name: str) -> str:
        """Dense → LayerNorm → swish, the unit every trunk is made of.

        LayerNorm runs in fp32 even in an fp16 graph: its sum of squares over the width can pass
        fp16's 65504 once the residual stream has grown through many blocks, and whether a
        backend accumulates it in fp32 is its own choice (TensorRT's strongly typed networks
        keep the type the graph gives). Its parameters are 2 × width, a negligible share.
        """
        y = self.dense(x, dense, f"{name}/dense")
        f32 = np.dtype(np.float32)
        y = self.node(
            "LayerNormalization",
            [self.to_float32(y), self.weight(f"{name}/norm/scale", norm["scale"], f32),
             self.weight(f"{name}/norm/bias", norm["bias"], f32)],
            axis=-1,
            epsilon=LAYER_NORM_EPS,
        )
        y = self.to_compute(y)
        return self.node("Mul", [y, self.node("Sigmoid", [y])])


def _trunk(g: _Graph, x: str, p: Mapping[str, Any], residual: bool, name: str) -> str:
    """Stem then the residual blocks, unrolled from the scan's stacked [num_blocks, …] params."""
    x = g.layer(x, p["stem_dense"], p["stem_norm"], f"{name}/stem")
    blocks = p["blocks"]
    for n in range(np.shape(blocks["dense_0"]["kernel"])[0]):
        h = x
        for i in range(BLOCK_LAYERS):
            dense = {k: v[n] for k, v in blocks[f"dense_{i}"].items()}
            norm = {k: v[n] for k, v in blocks[f"norm_{i}"].items()}
            h = g.layer(h, dense, norm, f"{name}/block_{n}/{i}")
        x = g.node("Add", [x, h]) if residual else h
    return x


def _encoder(g: _Graph, x: str, p: Mapping[str, Any], residual: bool, name: str) -> str:
    return g.dense(_trunk(g, x, p["trunk"], residual, name), p["head"], f"{name}/head")


def _shape(params: Mapping[str, Any], *keys: str) -> tuple[int, ...]:
    node: Any = params
    try:
        for k in keys:
            node = node[k]
    except (KeyError, TypeError, IndexError):
        raise ExportError(
            f"params: no {'/'.join(keys)} (expected the parameter tree of crl.train.networks)"
        ) from None
    return tuple(int(d) for d in np.shape(node))


def _trunk_shape(params: Mapping[str, Any], root: str) -> tuple[int, int, int]:
    """(input size, width, depth) of one trunk, read from its parameters."""
    in_dim, width = _shape(params, root, "trunk", "stem_dense", "kernel")
    blocks = _shape(params, root, "trunk", "blocks", "dense_0", "kernel")
    if len(blocks) != 3 or blocks[1:] != (width, width):
        raise ExportError(f"params: {root}/trunk/blocks/dense_0/kernel has shape {blocks}, "
                          f"expected [num_blocks, {width}, {width}]")
    return in_dim, width, blocks[0] * BLOCK_LAYERS


def _check_params(params: Mapping[str, Any], spec: PolicySpec, critic: bool) -> NetworkSpec:
    """Check the parameters against the spec: sizes come from the spec and the arrays, never
    assumed, and a mismatch is a one-line error rather than a broken graph."""
    if spec.network is None:
        raise ExportError(
            "spec.network: missing; the spec of a trained run names depth, width, repr_dim and "
            "residual (pass spec.replace(network=NetworkSpec(...)))"
        )
    net = spec.network
    in_dim, width, depth = _trunk_shape(params, "actor")
    if in_dim != spec.obs_dim + spec.goal_dim:
        raise ExportError(f"params: actor input size {in_dim} != obs_dim {spec.obs_dim} + "
                          f"goal_dim {spec.goal_dim} of spec {spec.task!r}")
    mean = _shape(params, "actor", "mean", "kernel")
    if mean != (width, spec.act_dim):
        raise ExportError(f"params: actor/mean/kernel {mean} != (width {width}, "
                          f"act_dim {spec.act_dim}) of spec {spec.task!r}")
    if (depth, width) != (net.depth, net.width):
        raise ExportError(f"spec.network: depth {net.depth}, width {net.width} but the params "
                          f"have depth {depth}, width {width}")
    if critic:
        critic_depth, critic_width = net.critic_shape  # the actor's unless the spec says otherwise
        for root, expected in (
            ("sa_encoder", spec.obs_dim + spec.act_dim),
            ("g_encoder", spec.goal_dim),
        ):
            if root not in params:
                raise ExportError(f"params: no {root!r}; --critic needs the critic encoders")
            enc_in, enc_width, enc_depth = _trunk_shape(params, root)
            head = _shape(params, root, "head", "kernel")
            if (enc_in, enc_width, enc_depth, head) != (
                expected, critic_width, critic_depth, (critic_width, net.repr_dim)
            ):
                raise ExportError(
                    f"params: {root} is {enc_in} → depth {enc_depth} × width {enc_width} → "
                    f"{head[-1]}, but spec {spec.task!r} needs {expected} → depth {critic_depth} "
                    f"× width {critic_width} → repr_dim {net.repr_dim}"
                )
    return net
