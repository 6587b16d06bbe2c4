"""Residual networks: block structure, parameter counts, depth 1024, the no-residual ablation,
and how the blocks are looped over (`BlockScan`): every choice computes the unrolled network,
keeps the parameter tree (old checkpoints load) and exports to the same ONNX graph."""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crl.train.config import NetworkConfig
from crl.train.networks import (
    BLOCK_SCAN,
    LOG_STD_MAX,
    LOG_STD_MIN,
    UNROLLED,
    Actor,
    BlockScan,
    Encoder,
    Trunk,
    default_block_scan,
    kernel_init,
    trunk_param_count,
)

IN_DIM = 9


def test_depth_must_be_a_multiple_of_four_wherever_a_network_is_built() -> None:
    with pytest.raises(ValueError, match="depth: 6 is not a positive multiple of 4"):
        NetworkConfig(depth=6).num_blocks  # noqa: B018


def _count(tree) -> int:
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _init(module, *inputs):
    return module.init(jax.random.PRNGKey(0), *inputs)["params"]


@pytest.mark.parametrize("depth", [4, 8, 16, 64])
def test_trunk_structure_and_param_count(depth: int) -> None:
    width = 32
    config = NetworkConfig(depth=depth, width=width)
    params = _init(Trunk(config), jnp.zeros((1, IN_DIM)))
    blocks = depth // 4
    assert set(params) == {"stem_dense", "stem_norm", "blocks"}
    assert params["stem_dense"]["kernel"].shape == (IN_DIM, width)
    assert set(params["blocks"]) == {f"dense_{i}" for i in range(4)} | {
        f"norm_{i}" for i in range(4)
    }
    for i in range(4):
        assert params["blocks"][f"dense_{i}"]["kernel"].shape == (blocks, width, width)
        assert params["blocks"][f"dense_{i}"]["bias"].shape == (blocks, width)
        assert params["blocks"][f"norm_{i}"]["scale"].shape == (blocks, width)
    assert _count(params) == trunk_param_count(IN_DIM, config)
    # Closed form: stem (Dense + LayerNorm) + depth × (Dense + LayerNorm), width W.
    assert _count(params) == IN_DIM * width + 3 * width + depth * (width * width + 3 * width)


def test_encoder_and_actor_heads() -> None:
    config = NetworkConfig(depth=8, width=32, repr_dim=16)
    enc = _init(Encoder(config), jnp.zeros((1, IN_DIM)))
    assert enc["head"]["kernel"].shape == (32, 16)
    assert _count(enc) == trunk_param_count(IN_DIM, config) + 32 * 16 + 16
    actor = _init(Actor(config, 3), jnp.zeros((1, 5)), jnp.zeros((1, 4)))
    assert set(actor) == {"trunk", "mean", "log_std"}
    assert actor["mean"]["kernel"].shape == (32, 3)


def test_input_norm_standardizes_the_input_and_adam_never_moves_it() -> None:
    """`input_norm`: each network computes its plain self on (x − shift) · scale, starts as the
    identity (the plain network, the same initial weights), and takes no gradient, so Adam's
    step leaves shift and scale exactly as set while it moves the rest."""
    import optax

    plain, normed = NetworkConfig(depth=4, width=32), NetworkConfig(depth=4, width=32,
                                                                    input_norm=True)
    x = jax.random.normal(jax.random.PRNGKey(1), (8, IN_DIM))
    params = _init(Encoder(normed), x)
    assert set(params) == {"input_norm", "trunk", "head"}
    np.testing.assert_array_equal(params["input_norm"]["shift"], np.zeros(IN_DIM))
    np.testing.assert_array_equal(params["input_norm"]["scale"], np.ones(IN_DIM))
    rest = {k: v for k, v in params.items() if k != "input_norm"}
    _assert_trees_close(rest, _init(Encoder(plain), x))
    rng = np.random.default_rng(2)
    shift = jnp.asarray(rng.normal(size=IN_DIM), jnp.float32)
    scale = jnp.asarray(rng.uniform(0.1, 10.0, IN_DIM), jnp.float32)
    params = {**params, "input_norm": {"shift": shift, "scale": scale}}
    np.testing.assert_allclose(Encoder(normed).apply({"params": params}, x),
                               Encoder(plain).apply({"params": rest}, (x - shift) * scale),
                               rtol=1e-6, atol=1e-6)

    def loss(p):
        return jnp.sum(jnp.square(Encoder(normed).apply({"params": p}, x)))

    grads = jax.grad(loss)(params)
    assert not np.any(grads["input_norm"]["shift"]) and not np.any(grads["input_norm"]["scale"])
    tx = optax.adam(1e-2)
    updates, _ = tx.update(grads, tx.init(params))
    stepped = optax.apply_updates(params, updates)
    np.testing.assert_array_equal(stepped["input_norm"]["shift"], shift)
    np.testing.assert_array_equal(stepped["input_norm"]["scale"], scale)
    assert np.abs(stepped["head"]["kernel"] - params["head"]["kernel"]).max() > 0
    actor = _init(Actor(normed, 3), jnp.zeros((1, 5)), jnp.zeros((1, 4)))
    assert actor["input_norm"]["shift"].shape == (9,)  # observation and goal


def test_init_is_variance_scaling_with_zero_biases() -> None:
    width = 256
    params = _init(Trunk(NetworkConfig(depth=4, width=width)), jnp.zeros((1, IN_DIM)))
    kernel = np.asarray(params["blocks"]["dense_0"]["kernel"])
    bound = np.sqrt(3 * (1 / 3) / width)  # uniform with variance (1/3) / fan_in
    assert np.abs(kernel).max() <= bound
    assert np.abs(kernel).max() > 0.95 * bound
    assert np.var(kernel) == pytest.approx(bound**2 / 3, rel=0.05)
    for leaf in jax.tree.leaves({k: v for k, v in params["blocks"].items() if "dense" in k}):
        if leaf.ndim == 2:  # biases [blocks, width]
            assert not np.any(np.asarray(leaf))


def _swish(x):
    return x / (1 + np.exp(-x))


def _layer_norm(x, scale, bias, eps=1e-6):
    mu = x.mean(-1, keepdims=True)
    var = x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * scale + bias


def _numpy_trunk(params, x, residual: bool):
    p = jax.tree.map(np.asarray, params)
    h = _swish(_layer_norm(x @ p["stem_dense"]["kernel"] + p["stem_dense"]["bias"],
                           p["stem_norm"]["scale"], p["stem_norm"]["bias"]))
    for b in range(p["blocks"]["dense_0"]["kernel"].shape[0]):
        y = h
        for i in range(4):
            d, n = p["blocks"][f"dense_{i}"], p["blocks"][f"norm_{i}"]
            y = _swish(_layer_norm(y @ d["kernel"][b] + d["bias"][b], n["scale"][b], n["bias"][b]))
        h = h + y if residual else y
    return h


@pytest.mark.parametrize("residual", [True, False])
def test_forward_matches_the_paper_block(residual: bool) -> None:
    """4 × (Dense → LayerNorm → swish), skip added after the 4th swish (none in the ablation)."""
    config = NetworkConfig(depth=8, width=16, residual=residual)
    trunk = Trunk(config)
    x = np.random.default_rng(0).normal(size=(5, IN_DIM)).astype(np.float32)
    params = trunk.init(jax.random.PRNGKey(1), x)["params"]
    # Non-trivial norms and biases so every term of the block is exercised.
    params = jax.tree.map(lambda p: p + 0.1 * jax.random.normal(jax.random.PRNGKey(2), p.shape),
                          params)
    got = np.asarray(trunk.apply({"params": params}, x))
    np.testing.assert_allclose(got, _numpy_trunk(params, x, residual), rtol=2e-4, atol=2e-5)


def test_no_residual_changes_the_function_not_the_parameters() -> None:
    x = jnp.ones((2, IN_DIM))
    with_skip = Trunk(NetworkConfig(depth=8, width=16, residual=True))
    without = Trunk(NetworkConfig(depth=8, width=16, residual=False))
    params = with_skip.init(jax.random.PRNGKey(0), x)["params"]
    assert jax.tree.structure(params) == jax.tree.structure(
        without.init(jax.random.PRNGKey(0), x)["params"]
    )
    a = with_skip.apply({"params": params}, x)
    b = without.apply({"params": params}, x)
    assert not np.allclose(a, b)


def test_depth_1024_forward_runs() -> None:
    config = NetworkConfig(depth=1024, width=64, repr_dim=64)
    enc = Encoder(config)
    x = jnp.ones((4, IN_DIM))
    params = jax.jit(enc.init)(jax.random.PRNGKey(0), x)["params"]
    assert params["trunk"]["blocks"]["dense_0"]["kernel"].shape == (256, 64, 64)
    out = jax.jit(enc.apply)({"params": params}, x)
    assert out.shape == (4, 64)
    assert bool(jnp.all(jnp.isfinite(out)))


def test_program_size_does_not_grow_with_depth() -> None:
    """Blocks run under scan: the compiled program of depth 256 is the size of depth 8's."""

    def hlo_size(depth: int) -> int:
        enc = Encoder(NetworkConfig(depth=depth, width=8, repr_dim=4))
        x = jnp.ones((2, IN_DIM))
        params = jax.eval_shape(enc.init, jax.random.PRNGKey(0), x)
        return len(jax.jit(enc.apply).lower(params, x).as_text())

    assert hlo_size(256) < 1.1 * hlo_size(8)


def test_actor_log_std_range() -> None:
    actor = Actor(NetworkConfig(depth=4, width=16), 2)
    obs, goal = 100 * jax.random.normal(jax.random.PRNGKey(0), (64, 3)), jnp.zeros((64, 2))
    params = actor.init(jax.random.PRNGKey(1), obs, goal)["params"]
    params["log_std"]["kernel"] = params["log_std"]["kernel"] * 100  # drive the tanh to saturation
    _, log_std = actor.apply({"params": params}, obs, goal)
    assert float(log_std.min()) >= LOG_STD_MIN
    assert float(log_std.max()) <= LOG_STD_MAX
    assert float(log_std.max()) - float(log_std.min()) > 5.0  # the whole range is reachable


# ------------------------------------------------------------------------------ block loops
# Every choice the code ships (BLOCK_SCAN, per backend) and the ones the bench compares, among
# them unroll factors that do not divide the 5 blocks of depth 20 (a remainder after the loop).
SCANS = sorted(
    {*BLOCK_SCAN.values(), BlockScan(1, "none"), BlockScan(2, "dots"), BlockScan(3, "none"),
     BlockScan(4, "dots"), BlockScan(0, "dots")},
    key=lambda s: (s.unroll, s.remat),
)


def _scan_id(scan: BlockScan) -> str:
    return f"{scan.unroll}:{scan.remat}"


SCAN_IDS = [_scan_id(s) for s in SCANS]


def _perturbed(params, seed: int = 2):
    """Non-zero biases and non-unit norms, so that every parameter shows in every comparison."""
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree.unflatten(treedef, [x + 0.1 * jax.random.normal(k, x.shape)
                                        for x, k in zip(leaves, keys, strict=True)])


def _assert_trees_close(got, want) -> None:
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        w = np.asarray(w)
        np.testing.assert_allclose(np.asarray(g), w, rtol=1e-5, atol=1e-5 * np.abs(w).max())


def test_block_scan_choices_are_checked() -> None:
    with pytest.raises(ValueError, match="remat: 'all' is not in"):
        BlockScan(1, "all")
    with pytest.raises(ValueError, match="unroll: -1 is negative"):
        BlockScan(-1)
    assert UNROLLED.trip_blocks(7) == 7 and BlockScan(3).trip_blocks(2) == 2
    assert default_block_scan("cpu") == BLOCK_SCAN["cpu"]
    assert default_block_scan("gpu") == BLOCK_SCAN["gpu"]
    assert default_block_scan("tpu") == BLOCK_SCAN["gpu"]  # accelerators without their own entry
    assert default_block_scan() == BLOCK_SCAN[jax.default_backend()]


SHIPPED = sorted(set(BLOCK_SCAN.values()), key=str)
EQUIV_CONFIG = NetworkConfig(depth=20, width=16, repr_dim=8)


def _encoder_loss(module):
    return lambda p, x: jnp.sum(jnp.sin(module.apply({"params": p}, x)))


def _actor_loss(module):
    def loss(p, obs, goal):
        mean, log_std = module.apply({"params": p}, obs, goal)
        return jnp.sum(jnp.sin(mean)) + jnp.sum(log_std)

    return loss


def _value_and_grads(loss, params, *args):
    """The loss and its gradients with respect to the parameters and every input."""
    return jax.jit(jax.value_and_grad(loss, tuple(range(1 + len(args)))))(params, *args)


@pytest.fixture(scope="module")
def unrolled_reference():
    """Inputs, parameters and the unrolled network's values and gradients, per residual flag,
    compiled once for every choice they are compared with."""
    x = jax.random.normal(jax.random.PRNGKey(3), (6, IN_DIM))
    obs, goal = x[:, :5], x[:, 5:]
    out = {}
    for residual in (True, False):
        config = dataclasses.replace(EQUIV_CONFIG, residual=residual)
        enc = _perturbed(_init(Encoder(config, UNROLLED), x))
        actor = _perturbed(_init(Actor(config, 3, UNROLLED), obs, goal))
        out[residual] = {
            "encoder": (enc, (x,), _value_and_grads(
                _encoder_loss(Encoder(config, UNROLLED)), enc, x)),
            "actor": (actor, (obs, goal), _value_and_grads(
                _actor_loss(Actor(config, 3, UNROLLED)), actor, obs, goal)),
        }
    return out


@pytest.mark.parametrize("scan", SCANS, ids=SCAN_IDS)
def test_every_block_scan_computes_the_unrolled_network(scan: BlockScan,
                                                        unrolled_reference) -> None:
    """Encoder outputs and gradients (parameters and input), to float tolerance, against the
    same network with every block inlined; the actor's too for the shipped choices (the actor
    and both encoders build the same trunk)."""
    params, args, want = unrolled_reference[True]["encoder"]
    got = _value_and_grads(_encoder_loss(Encoder(EQUIV_CONFIG, scan)), params, *args)
    _assert_trees_close(got, want)
    if scan in SHIPPED:
        params, args, want = unrolled_reference[True]["actor"]
        got = _value_and_grads(_actor_loss(Actor(EQUIV_CONFIG, 3, scan)), params, *args)
        _assert_trees_close(got, want)


@pytest.mark.parametrize("scan", SHIPPED, ids=_scan_id)
def test_shipped_block_scans_compute_the_ablation_without_skips(scan: BlockScan,
                                                                unrolled_reference) -> None:
    config = dataclasses.replace(EQUIV_CONFIG, residual=False)
    for name, loss in (("encoder", _encoder_loss(Encoder(config, scan))),
                       ("actor", _actor_loss(Actor(config, 3, scan)))):
        params, args, want = unrolled_reference[False][name]
        _assert_trees_close(_value_and_grads(loss, params, *args), want)


@pytest.mark.parametrize("scan", SCANS, ids=SCAN_IDS)
def test_block_scan_keeps_the_parameter_tree_and_its_initial_values(scan: BlockScan) -> None:
    """A speed choice, not a format: the same tree, shapes and draws from the same key, so a
    checkpoint written under one choice loads under any other."""
    config = NetworkConfig(depth=20, width=16, repr_dim=8)
    x = jnp.ones((2, IN_DIM))
    want = _init(Encoder(config, UNROLLED), x)
    got = _init(Encoder(config, scan), x)
    assert jax.tree.structure(got) == jax.tree.structure(want)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
        np.testing.assert_array_equal(g, w)


@pytest.mark.parametrize("scan", SHIPPED, ids=_scan_id)
def test_program_size_does_not_grow_with_depth_for_any_shipped_choice(scan: BlockScan) -> None:
    """The compiled program of depth 1024 is the size of the smallest depth that holds one full
    loop trip and one more, for every backend's choice: compile time stays flat."""

    def hlo_size(depth: int) -> int:
        enc = Encoder(NetworkConfig(depth=depth, width=8, repr_dim=4), scan)
        x = jnp.ones((2, IN_DIM))
        params = jax.eval_shape(enc.init, jax.random.PRNGKey(0), x)
        grad = jax.grad(lambda p, x: jnp.sum(enc.apply(p, x)))
        return len(jax.jit(grad).lower(params, x).as_text())

    small = 4 * 2 * max(scan.unroll, 1)
    assert hlo_size(1024) < 1.1 * hlo_size(small)


class _LegacyBlock(nn.Module):
    """The block and trunk exactly as checkpoints before `BlockScan` were written (commit
    59ce4c0): the reference of the format old runs hold."""

    width: int
    residual: bool

    @nn.compact
    def __call__(self, x, _):
        h = x
        for i in range(4):
            h = nn.Dense(self.width, kernel_init=kernel_init, name=f"dense_{i}")(h)
            h = nn.LayerNorm(name=f"norm_{i}")(h)
            h = nn.swish(h)
        return (x + h if self.residual else h), None


class _LegacyTrunk(nn.Module):
    config: NetworkConfig

    @nn.compact
    def __call__(self, x):
        c = self.config
        x = nn.Dense(c.width, kernel_init=kernel_init, name="stem_dense")(x)
        x = nn.swish(nn.LayerNorm(name="stem_norm")(x))
        blocks = nn.scan(_LegacyBlock, variable_axes={"params": 0}, split_rngs={"params": True},
                         length=c.num_blocks)
        x, _ = blocks(c.width, c.residual, name="blocks")(x, None)
        return x


class _LegacyEncoder(nn.Module):
    config: NetworkConfig

    @nn.compact
    def __call__(self, x):
        h = _LegacyTrunk(self.config, name="trunk")(x)
        return nn.Dense(self.config.repr_dim, kernel_init=kernel_init, name="head")(h)


class _LegacyActor(nn.Module):
    config: NetworkConfig
    action_dim: int

    @nn.compact
    def __call__(self, obs, goal):
        h = _LegacyTrunk(self.config, name="trunk")(jnp.concatenate([obs, goal], axis=-1))
        mean = nn.Dense(self.action_dim, kernel_init=kernel_init, name="mean")(h)
        raw = nn.Dense(self.action_dim, kernel_init=kernel_init, name="log_std")(h)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (jnp.tanh(raw) + 1.0)
        return mean, log_std


def test_a_checkpoint_from_before_block_scan_loads_and_computes_the_same(tmp_path, toy_spec
                                                                         ) -> None:
    """Parameters made and checkpointed by the old trunk restore through `load_run` (and as a
    training state through `Checkpointer.restore_state`), and every choice computes from them
    what the old trunk did."""
    from crl.train.checkpoint import CONFIG_FILE, Checkpointer, load_run

    config = NetworkConfig(depth=12, width=16, repr_dim=8)
    spec = toy_spec(depth=12, width=16, repr_dim=8)
    obs = jax.random.normal(jax.random.PRNGKey(1), (4, spec.obs_dim))
    goal = jax.random.normal(jax.random.PRNGKey(2), (4, spec.goal_dim))
    action = jnp.tanh(jax.random.normal(jax.random.PRNGKey(3), (4, spec.act_dim)))
    sa = jnp.concatenate([obs, action], -1)
    legacy = {
        "actor": _perturbed(_init(_LegacyActor(config, spec.act_dim), obs, goal), 4),
        "sa_encoder": _perturbed(_init(_LegacyEncoder(config), sa), 5),
        "g_encoder": _perturbed(_init(_LegacyEncoder(config), goal), 6),
    }
    want = (_LegacyActor(config, spec.act_dim).apply({"params": legacy["actor"]}, obs, goal),
            _LegacyEncoder(config).apply({"params": legacy["sa_encoder"]}, sa),
            _LegacyEncoder(config).apply({"params": legacy["g_encoder"]}, goal))

    (tmp_path / CONFIG_FILE).write_text("{}")
    checkpointer = Checkpointer(tmp_path, keep=1)
    try:
        checkpointer.save(100, {"params": legacy}, legacy, {"spec": spec.to_dict()},
                          {"final_success_rate": 0.0, "time_at_goal_fraction": 0.0})
        fresh = {"params": {
            "actor": _init(Actor(config, spec.act_dim), obs, goal),
            "sa_encoder": _init(Encoder(config), sa),
            "g_encoder": _init(Encoder(config), goal),
        }}
        state = checkpointer.restore_state(100, fresh)
    finally:
        checkpointer.close()
    run = load_run(tmp_path)
    for params in (run.params, state["params"]):
        assert jax.tree.structure(params) == jax.tree.structure(legacy)
        for got, saved in zip(jax.tree.leaves(params), jax.tree.leaves(legacy), strict=True):
            np.testing.assert_array_equal(got, saved)
    params = run.params
    for scan in (*SHIPPED, UNROLLED):

        @jax.jit
        def apply(params, scan=scan):
            return (
                Actor(config, spec.act_dim, scan).apply({"params": params["actor"]}, obs, goal),
                Encoder(config, scan).apply({"params": params["sa_encoder"]}, sa),
                Encoder(config, scan).apply({"params": params["g_encoder"]}, goal),
            )

        _assert_trees_close(apply(params), want)


@pytest.mark.parametrize("scan", [*SHIPPED, UNROLLED], ids=_scan_id)
def test_onnx_export_matches_every_shipped_choice(scan: BlockScan, tmp_path, toy_spec) -> None:
    """The exporter reads the stacked parameters and inlines the blocks; its graph computes what
    the trained network computes under each backend's choice (actor, φ, ψ)."""
    from crl.export.onnx_export import export_actor, random_params
    from crl.runtime.ort_backend import OrtPolicy

    spec = toy_spec(depth=20, width=32, repr_dim=8)
    config = NetworkConfig(depth=20, width=32, repr_dim=8)
    params = random_params(spec, seed=7)
    path = export_actor(params, spec, tmp_path / "p.onnx", critic=True).path
    rng = np.random.default_rng(0)
    obs = rng.standard_normal((8, spec.obs_dim)).astype(np.float32)
    goal = rng.uniform(-1, 1, (8, spec.goal_dim)).astype(np.float32)
    out = OrtPolicy(path).run(obs, goal)
    mean, _ = Actor(config, spec.act_dim, scan).apply({"params": params["actor"]}, obs, goal)
    action = np.tanh(np.asarray(mean))
    assert np.abs(action).mean() < 0.8  # off tanh's flat tails: the comparison says something
    phi = Encoder(config, scan).apply({"params": params["sa_encoder"]},
                                      np.concatenate([obs, action], -1))
    psi = Encoder(config, scan).apply({"params": params["g_encoder"]}, goal)
    np.testing.assert_allclose(out["action"], action, atol=1e-5)
    np.testing.assert_allclose(out["phi"], phi, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out["psi"], psi, rtol=1e-5, atol=1e-5)
