"""Trained parameters → a self-describing ONNX policy file.

The graph is built node by node from the parameter tree with `onnx.helper` (documented at the top
of `crl.train.networks`): the scanned residual blocks are unrolled into plain
MatMul → Add → LayerNormalization → x·sigmoid(x) chains, which every ONNX consumer (ONNX Runtime,
TensorRT's parser) runs natively. Tracing JAX instead (jax2onnx) was 20× slower to export, needed
extra flags to emit `LayerNormalization`, and pulled in a dozen packages.

The file format it writes (the embedded spec, the part hashes and the seal over the whole
model) is `crl.core.policy_file`'s, which the runtime reads.

This module imports numpy and onnx only (no jax).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from crl.core.atomic import replace_durably, temporary_path
from crl.core.policy_file import (
    ACTION,
    CRITIC_OUTPUTS,
    HASH_KEY,
    INPUTS,
    load_model,
    metadata,
    read_seal,
    seal,
)
from crl.core.spec import BLOCK_LAYERS, NetworkSpec, PolicySpec

# The first opset with LayerNormalization: ONNX Runtime ≥ 1.12 reads IR 8 + opset 17 (its
# compatibility table) and TensorRT's ONNX parser ≥ 8.6 the op (onnx-tensorrt's changelog).
OPSET = 17
# Written explicitly: onnx 1.23 defaults to IR 14, which onnxruntime 1.31 and TensorRT 10 reject.
IR_VERSION = 8
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
    params = {root: _fold_input_norm(tree, root) for root, tree in params.items()}
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


def _fold_input_norm(net: Mapping[str, Any], root: str) -> Mapping[str, Any]:
    """A network's parameters with its `input_norm` (`crl.train.networks.InputNorm`: fixed shift
    and scale of each input) folded into the stem's Dense layer, computed in float64:
    ((x − shift) · scale) W + b = x (scale ⊙ W) + (b − (shift · scale) W). The graph is then the
    plain network's; a network without `input_norm` is returned as it is."""
    if "input_norm" not in net:
        return net
    in_dim, _ = _shape({root: net}, root, "trunk", "stem_dense", "kernel")
    norm = net["input_norm"]
    if not isinstance(norm, Mapping):
        raise ExportError(f"params: {root}/input_norm is not a {{shift, scale}} mapping")
    shift, scale = (np.asarray(norm.get(k, ()), np.float64) for k in ("shift", "scale"))
    if shift.shape != (in_dim,) or scale.shape != (in_dim,):
        raise ExportError(f"params: {root}/input_norm shift {shift.shape} and scale "
                          f"{scale.shape} must both be ({in_dim},), the stem's input size")
    if not (np.all(np.isfinite(shift)) and np.all(np.isfinite(scale))):
        raise ExportError(f"params: {root}/input_norm holds a non-finite value")
    stem = net["trunk"]["stem_dense"]
    kernel = np.asarray(stem["kernel"], np.float64)
    bias = np.asarray(stem["bias"], np.float64) - (shift * scale) @ kernel
    folded = {"kernel": (scale[:, None] * kernel).astype(np.float32),
              "bias": bias.astype(np.float32)}
    rest = {k: v for k, v in net.items() if k != "input_norm"}
    return {**rest, "trunk": {**net["trunk"], "stem_dense": folded}}


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
