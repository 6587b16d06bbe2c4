"""Residual networks: block structure, parameter counts, depth 1024, the no-residual ablation."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crl.train.networks import (
    LOG_STD_MAX,
    LOG_STD_MIN,
    Actor,
    Encoder,
    NetworkConfig,
    Trunk,
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
