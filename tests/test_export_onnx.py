"""ONNX export: parity with the JAX networks, the embedded spec and hash, the file format."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import onnx
import pytest

from crl.core.policy_file import HASH_KEY, PRECISION_KEY, SPEC_KEY, load_model, read_seal
from crl.core.spec import Field, NetworkSpec, PolicySpec
from crl.core.usage import USAGE_ERROR
from crl.export.cli import main as export_main
from crl.export.onnx_export import (
    IR_VERSION,
    OPSET,
    ExportError,
    build_model,
    export_actor,
    quantize_int8,
    random_params,
)
from crl.runtime.ort_backend import OrtPolicy
from crl.runtime.policy import load_policy
from crl.train.config import NetworkConfig
from crl.train.networks import Actor, Encoder, deterministic_action

# Every depth at every width, as the export must hold for any of them.
PARITY_GRID = [(d, w) for d in (4, 8, 64, 256) for w in (64, 128, 256, 512)]
FP32_TOL, FP16_TOL = 1e-5, 2e-2


def inputs(spec: PolicySpec, batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    obs = rng.standard_normal((batch, spec.obs_dim)).astype(np.float32)
    goal = rng.uniform(-1, 1, (batch, spec.goal_dim)).astype(np.float32)
    return obs, goal


def jax_action(params: dict, spec: PolicySpec, obs: np.ndarray, goal: np.ndarray) -> np.ndarray:
    n = spec.network
    actor = Actor(NetworkConfig(n.depth, n.width, n.repr_dim, n.residual), spec.act_dim)
    return np.asarray(deterministic_action(actor, params["actor"], obs, goal))


@pytest.mark.parametrize(("depth", "width"), PARITY_GRID)
def test_actor_parity_fp32_and_fp16(depth: int, width: int, tmp_path: Path,
                                    toy_spec: Callable[..., PolicySpec]) -> None:
    spec = toy_spec(depth, width)
    params = random_params(spec, seed=1000 * depth + width, critic=False)  # a draw per shape
    export_actor(params, spec, tmp_path / "fp32.onnx")
    export_actor(params, spec, tmp_path / "fp16.onnx", fp16=True)
    fp32, fp16 = OrtPolicy(tmp_path / "fp32.onnx"), OrtPolicy(tmp_path / "fp16.onnx")
    # Off tanh's flat tails, or the comparison would prove nothing (judged on the batch of 32:
    # one sample of a few actions says little about the network).
    assert np.abs(jax_action(params, spec, *inputs(spec, 32, seed=32))).mean() < 0.8
    for batch in (1, 32):
        obs, goal = inputs(spec, batch, seed=batch)
        ref = jax_action(params, spec, obs, goal)
        assert np.abs(fp32.act(obs, goal) - ref).max() <= FP32_TOL
        assert np.abs(fp16.act(obs, goal) - ref).max() <= FP16_TOL


def jax_critic(params: dict, spec: PolicySpec, obs: np.ndarray, goal: np.ndarray
               ) -> dict[str, np.ndarray]:
    """The actor's action and the critic's φ(s, a), ψ(g) and distance ‖φ − ψ‖, in JAX."""
    n = spec.network
    depth, width = n.critic_shape
    encoder = Encoder(NetworkConfig(depth, width, n.repr_dim, n.residual))
    action = jax_action(params, spec, obs, goal)
    phi = np.asarray(encoder.apply({"params": params["sa_encoder"]},
                                   jnp.concatenate([obs, action], -1)))
    psi = np.asarray(encoder.apply({"params": params["g_encoder"]}, goal))
    return {"action": action, "phi": phi, "psi": psi,
            "distance": np.linalg.norm(phi - psi, axis=-1)}


def test_critic_distance_matches_jax(toy_policy: tuple[PolicySpec, dict, Path]) -> None:
    spec, params, path = toy_policy
    obs, goal = inputs(spec, 16)
    out = OrtPolicy(path).run(obs, goal)
    ref = jax_critic(params, spec, obs, goal)
    assert out["distance"].shape == (16,)
    np.testing.assert_allclose(out["phi"], ref["phi"], atol=1e-5)
    np.testing.assert_allclose(out["psi"], ref["psi"], atol=1e-5)
    np.testing.assert_allclose(out["distance"], ref["distance"], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["action"], ref["action"], atol=FP32_TOL)


def test_plain_networks_without_skips_match_jax(
    tmp_path: Path, toy_spec: Callable[..., PolicySpec]
) -> None:
    """The ablation without residual connections (`residual=False` in the spec) exports the
    network it trained: every output, actor and critic, against JAX."""
    spec = toy_spec(depth=8, width=64)
    spec = dataclasses.replace(spec, network=dataclasses.replace(spec.network, residual=False))
    params = random_params(spec, seed=3)
    path = export_actor(params, spec, tmp_path / "plain.onnx", critic=True).path
    policy = OrtPolicy(path)
    assert policy.spec.network.residual is False
    obs, goal = inputs(spec, 8)
    out, ref = policy.run(obs, goal), jax_critic(params, spec, obs, goal)
    np.testing.assert_allclose(out["action"], ref["action"], atol=FP32_TOL)
    for k in ("phi", "psi", "distance"):
        np.testing.assert_allclose(out[k], ref[k], rtol=1e-5, atol=1e-5)
    # and it differs from the residual network on the same parameters: the flag is honoured
    residual = dataclasses.replace(spec, network=dataclasses.replace(spec.network, residual=True))
    assert np.abs(jax_action(params, residual, obs, goal) - ref["action"]).max() > 1e-3


def test_an_actor_and_critic_of_different_sizes_export_what_training_builds(
    tmp_path: Path, toy_spec: Callable[..., PolicySpec]
) -> None:
    """--actor-depth 8 --critic-depth 4 --critic-width 32: the parameter tree the training
    networks init (perturbed, so zero biases and unit scales cannot hide a dropped term) exports
    the actor from the spec's (actor's) shape and the critic from its own; every output matches
    flax, and the JAX runtime backend builds the same networks from the spec."""
    from crl.testbed.jax_backend import JaxPolicy
    from crl.train.networks import init_params, make_networks

    config = NetworkConfig(width=64, repr_dim=16, actor_depth=8, critic_depth=4, critic_width=32)
    spec = toy_spec(network=NetworkSpec(8, 64, 16, critic_depth=4, critic_width=32))
    nets = make_networks(config, spec.act_dim)
    params = init_params(nets, jax.random.PRNGKey(0), spec.obs_dim, spec.goal_dim)
    leaves, tree = jax.tree.flatten(params)
    rng = np.random.default_rng(0)
    params = jax.tree.unflatten(tree, [np.asarray(x) + 0.05 * rng.standard_normal(x.shape)
                                       .astype(np.float32) for x in leaves])
    assert params["actor"]["trunk"]["blocks"]["dense_0"]["kernel"].shape == (2, 64, 64)
    assert params["sa_encoder"]["trunk"]["blocks"]["dense_0"]["kernel"].shape == (1, 32, 32)

    path = export_actor(params, spec, tmp_path / "ac.onnx", critic=True).path
    policy = OrtPolicy(path)
    assert policy.spec.network == spec.network
    obs, goal = inputs(spec, 8)
    out = policy.run(obs, goal)
    action = np.asarray(deterministic_action(nets.actor, params["actor"], obs, goal))
    phi = np.asarray(nets.sa_encoder.apply({"params": params["sa_encoder"]},
                                           np.concatenate([obs, action], -1)))
    psi = np.asarray(nets.g_encoder.apply({"params": params["g_encoder"]}, goal))
    np.testing.assert_allclose(out["action"], action, atol=FP32_TOL)
    np.testing.assert_allclose(out["phi"], phi, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["psi"], psi, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["action"], jax_critic(params, spec, obs, goal)["action"],
                               atol=FP32_TOL)
    for k, v in JaxPolicy(params, spec).run(obs, goal).items():
        np.testing.assert_allclose(out[k], v, rtol=1e-5, atol=1e-5)

    # The actor alone needs only the actor's shape; the critic readout refuses a spec that
    # does not say the critic's.
    shared = dataclasses.replace(spec, network=NetworkSpec(8, 64, 16))
    export_actor({"actor": params["actor"]}, shared, tmp_path / "actor.onnx")
    with pytest.raises(ExportError, match=r"sa_encoder is .* depth 4 × width 32 .* needs .* "
                                          r"depth 8 × width 64"):
        export_actor(params, shared, tmp_path / "bad.onnx", critic=True)
    assert not (tmp_path / "bad.onnx").exists()


def test_file_format(toy_policy: tuple[PolicySpec, dict, Path]) -> None:
    spec, _, path = toy_policy
    model = onnx.load(path)
    onnx.checker.check_model(str(path), full_check=True)
    assert model.ir_version == IR_VERSION
    assert {o.domain: o.version for o in model.opset_import}[""] >= OPSET >= 17
    ops = {n.op_type for n in model.graph.node}
    assert "LayerNormalization" in ops and "Loop" not in ops and "Scan" not in ops
    dims = {v.name: [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in [*model.graph.input, *model.graph.output]}
    assert dims == {
        "observation": ["batch", spec.obs_dim],
        "goal": ["batch", spec.goal_dim],
        "action": ["batch", spec.act_dim],
        "phi": ["batch", spec.network.repr_dim],
        "psi": ["batch", spec.network.repr_dim],
        "distance": ["batch"],
    }
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta[PRECISION_KEY] == "fp32" and len(meta[HASH_KEY]) == 64
    assert PolicySpec.from_json(meta[SPEC_KEY]) == spec


def test_spec_and_hash_read_back_for_every_precision(
    toy_policy: tuple[PolicySpec, dict, Path], tmp_path: Path
) -> None:
    spec, params, fp32_path = toy_policy
    fp16 = export_actor(params, spec, tmp_path / "fp16.onnx", fp16=True)
    int8 = quantize_int8(fp32_path, tmp_path / "int8.onnx")
    seals = {}
    for path in (fp32_path, fp16.path, int8.path):
        onnx.checker.check_model(str(path), full_check=True)
        seal = read_seal(load_model(path)[1], str(path))
        assert seal.spec == spec
        seals[seal.precision] = seal
    assert set(seals) == {"fp32", "fp16", "int8"}
    # The hash is of the weights as stored in each file.
    assert len({s.weights_sha256 for s in seals.values()}) == 3
    assert seals["fp16"].weights_sha256 == fp16.weights_sha256
    assert seals["fp16"].weight_bytes < 0.6 * seals["fp32"].weight_bytes
    assert seals["int8"].weight_bytes < 0.35 * seals["fp32"].weight_bytes
    assert seals["int8"].outputs == seals["fp32"].outputs


def test_fp16_keeps_float32_interface(
    toy_policy: tuple[PolicySpec, dict, Path], tmp_path: Path
) -> None:
    spec, params, _ = toy_policy
    path = export_actor(params, spec, tmp_path / "fp16.onnx", fp16=True, critic=True).path
    model = onnx.load(path)
    f32 = onnx.TensorProto.FLOAT
    assert all(v.type.tensor_type.elem_type == f32 for v in model.graph.input)
    assert [o.name for o in model.graph.output] == ["action", "phi", "psi", "distance"]
    assert all(v.type.tensor_type.elem_type == f32 for v in model.graph.output)
    # the critic's readout in fp16 against JAX in fp32, at the fp16 tolerance
    obs, goal = inputs(spec, 16)
    out, ref = OrtPolicy(path).run(obs, goal), jax_critic(params, spec, obs, goal)
    assert all(v.dtype == np.float32 for v in out.values())
    for k in out:
        np.testing.assert_allclose(out[k], ref[k], rtol=FP16_TOL, atol=FP16_TOL)
    types = {t.name: t.data_type for t in model.graph.initializer}
    # Dense weights in fp16; LayerNorm (2 × width a layer) computes and stores in fp32.
    assert {t for n, t in types.items() if "/norm/" not in n} == {onnx.TensorProto.FLOAT16}
    assert {t for n, t in types.items() if "/norm/" in n} == {f32}
    norm_inputs = {n.input[0] for n in model.graph.node if n.op_type == "LayerNormalization"}
    casts = {n.output[0]: n for n in model.graph.node if n.op_type == "Cast"}
    assert all(casts[i].attribute[0].i == f32 for i in norm_inputs)


def test_int8_action_error_is_bounded(
    toy_policy: tuple[PolicySpec, dict, Path], tmp_path: Path
) -> None:
    spec, params, fp32_path = toy_policy
    int8 = OrtPolicy(quantize_int8(fp32_path, tmp_path / "int8.onnx").path)
    obs, goal = inputs(spec, 64)
    assert int8.precision == "int8"
    assert np.abs(int8.act(obs, goal) - jax_action(params, spec, obs, goal)).max() < 0.1


def _with_norm(params: dict, root: str, shift: np.ndarray, scale: np.ndarray) -> dict:
    return {**params, root: {**params[root], "input_norm": {"shift": shift, "scale": scale}}}


def test_input_norm_is_folded_into_the_first_layer(
    tmp_path: Path, toy_spec: Callable[..., PolicySpec]
) -> None:
    """A run trained with `NetworkConfig.input_norm` (a fixed shift and scale of each input)
    exports as the plain network with both folded into each stem: actor, φ and ψ match JAX's
    networks with the norm, and differ from the same weights without it (the norm is there)."""
    spec = toy_spec(depth=8, width=64)
    params = random_params(spec, seed=5)
    rng = np.random.default_rng(5)
    sizes = {"actor": spec.obs_dim + spec.goal_dim, "sa_encoder": spec.obs_dim + spec.act_dim,
             "g_encoder": spec.goal_dim}
    for root, n in sizes.items():
        params = _with_norm(params, root, rng.normal(0.0, 0.5, n).astype(np.float32),
                            rng.uniform(0.2, 15.0, n).astype(np.float32))
    path = export_actor(params, spec, tmp_path / "norm.onnx", critic=True).path
    model = onnx.load(path)
    assert not any("input_norm" in t.name for t in model.graph.initializer)
    obs, goal = inputs(spec, 16, seed=6)
    obs *= 0.1  # the inputs the scales were set for: their output is off tanh's flat tails
    out = OrtPolicy(path).run(obs, goal)
    n = spec.network
    config = NetworkConfig(n.depth, n.width, n.repr_dim, n.residual, input_norm=True)
    action = np.asarray(deterministic_action(Actor(config, spec.act_dim), params["actor"], obs,
                                             goal))
    assert np.abs(action).mean() < 0.8
    encoder = Encoder(config)
    phi = encoder.apply({"params": params["sa_encoder"]}, np.concatenate([obs, action], -1))
    psi = encoder.apply({"params": params["g_encoder"]}, goal)
    np.testing.assert_allclose(out["action"], action, atol=FP32_TOL)
    np.testing.assert_allclose(out["phi"], phi, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["psi"], psi, rtol=1e-5, atol=1e-5)
    plain = {k: {n: v for n, v in tree.items() if n != "input_norm"} for k, tree in params.items()}
    assert np.abs(jax_action(plain, spec, obs, goal) - action).max() > 1e-2


def test_build_is_deterministic(toy_policy: tuple[PolicySpec, dict, Path]) -> None:
    spec, params, _ = toy_policy
    a = build_model(params, spec).SerializeToString()
    assert a == build_model(params, spec).SerializeToString()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda s, p: (s.replace(network=None), p), "spec.network"),
        (lambda s, p: (s.replace(network=NetworkSpec(12, 64, 16)), p), "depth 12"),
        (lambda s, p: (s, {"sa_encoder": p["sa_encoder"]}), "no actor"),
        (lambda s, p: (s, {"actor": p["actor"]}), "sa_encoder"),
        (lambda s, p: (s.replace(observation=(Field("joint_pos", 3),)), p), "obs_dim 3"),
        (lambda s, p: (s, _with_norm(p, "actor", np.zeros(3), np.ones(3))),
         r"actor/input_norm shift \(3,\) and scale \(3,\) must both be"),
        (lambda s, p: (s, {**p, "actor": {**p["actor"], "input_norm": np.zeros(3)}}),
         r"actor/input_norm is not a \{shift, scale\} mapping"),
        (lambda s, p: (s, _with_norm(p, "g_encoder", np.zeros(s.goal_dim),
                                     np.full(s.goal_dim, np.inf))), "non-finite"),
    ],
)
def test_bad_params_or_spec_leave_nothing_behind(
    toy_policy: tuple[PolicySpec, dict, Path], tmp_path: Path, change, match: str
) -> None:
    spec, params, _ = toy_policy
    bad_spec, bad_params = change(spec, params)
    target = tmp_path / "policy.onnx"
    target.write_bytes(b"previous export")
    with pytest.raises(ExportError, match=match) as e:
        export_actor(bad_params, bad_spec, target, critic=True)
    assert "\n" not in str(e.value)
    assert target.read_bytes() == b"previous export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["policy.onnx"]


def test_int8_needs_fp32_export(toy_policy: tuple[PolicySpec, dict, Path], tmp_path: Path) -> None:
    spec, params, _ = toy_policy
    fp16 = export_actor(params, spec, tmp_path / "fp16.onnx", fp16=True)
    with pytest.raises(ExportError, match="fp32 export"):
        quantize_int8(fp16.path, tmp_path / "int8.onnx")
    assert not (tmp_path / "int8.onnx").exists()


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as e:
        export_main(list(argv))
    return int(e.value.code or 0), capsys.readouterr().err.strip()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, toy_policy: tuple[PolicySpec, dict, Path]
            ) -> tuple[Path, PolicySpec, dict]:
    """A run directory written the way the trainer writes one."""
    from crl.train.checkpoint import CONFIG_FILE, Checkpointer

    spec, params, _ = toy_policy
    run = tmp_path_factory.mktemp("runs") / "toy"
    run.mkdir()
    (run / CONFIG_FILE).write_text(json.dumps({"task": "toy"}))
    ckpt = Checkpointer(run, keep=2)
    ckpt.save(500, {"x": np.zeros(1)}, params, {"step": 500, "spec": spec.to_dict()},
              {"final_success_rate": 0.5, "time_at_goal_fraction": 0.5})
    ckpt.close()
    return run, spec, params


def test_cli_exports_a_run(
    run_dir: tuple[Path, PolicySpec, dict], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run, spec, params = run_dir
    out = tmp_path / "policy.onnx"
    export_main(["onnx", "--run", str(run), "--out", str(out), "--critic"])
    assert "wrote" in capsys.readouterr().out
    policy = OrtPolicy(out)
    assert policy.spec == spec and "distance" in policy.outputs
    obs, goal = inputs(spec, 4)
    assert np.abs(policy.act(obs, goal) - jax_action(params, spec, obs, goal)).max() <= FP32_TOL
    from_run = load_policy(run, "jax")  # the debugging backend reads the same run
    assert from_run.spec == spec
    for k, v in from_run.run(obs, goal).items():
        np.testing.assert_allclose(policy.run(obs, goal)[k], v, rtol=1e-5, atol=1e-5)
    export_main(["onnx", "--run", str(run), "--step", "500", "--out", str(out), "--int8"])
    assert OrtPolicy(out).precision == "int8"
    code, err = _cli(capsys, "onnx", "--run", str(run), "--step", "7", "--out", str(out))
    assert code == USAGE_ERROR and "no checkpoint at step 7" in err
    folder = tmp_path / "a_folder"
    folder.mkdir()
    code, err = _cli(capsys, "onnx", "--run", str(run), "--out", str(folder))
    assert code == USAGE_ERROR and "Is a directory" in err and len(err.splitlines()) == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_folder", "policy.onnx"]
    assert list(folder.iterdir()) == []
