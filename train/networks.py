"""Deep residual networks of "1000 Layer Networks for Self-Supervised RL" (Wang et al., 2025).

A trunk is a Dense → LayerNorm → swish stem followed by `depth // 4` residual blocks, each
4 × (Dense → LayerNorm → swish) with the skip added after the 4th swish. The blocks run under
`nn.scan` with stacked parameters, so compile time does not grow with depth.

Parameter tree of every trunk (the exporter reads it by these names):
    stem_dense/{kernel [in, W], bias [W]}, stem_norm/{scale [W], bias [W]},
    blocks/dense_{0..3}/{kernel [N, W, W], bias [N, W]},
    blocks/norm_{0..3}/{scale [N, W], bias [N, W]}     (N = depth // 4 blocks)
Encoders add `head/{kernel, bias}`; the actor adds `mean/…` and `log_std/…`.
"""

from __future__ import annotations

from dataclasses import dataclass

import flax.linen as nn
import jax
import jax.numpy as jnp

BLOCK_LAYERS = 4
LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0

# The paper's initialisation: variance scaling 1/3, fan-in, uniform; zero biases.
kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


@dataclass(frozen=True)
class NetworkConfig:
    """Shape shared by the actor and both critic encoders."""

    depth: int = 4
    width: int = 256
    repr_dim: int = 64
    residual: bool = True

    @property
    def num_blocks(self) -> int:
        if self.depth <= 0 or self.depth % BLOCK_LAYERS:
            # crl.train.config.validate says this first for a training run; this guards every
            # other builder of a network (evaluation, export, tests) against silent truncation.
            raise ValueError(
                f"depth: {self.depth} is not a positive multiple of {BLOCK_LAYERS} (Dense layers "
                f"inside residual blocks of {BLOCK_LAYERS})"
            )
        return self.depth // BLOCK_LAYERS


class ResidualBlock(nn.Module):
    width: int
    residual: bool

    @nn.compact
    def __call__(self, x: jax.Array, _: None) -> tuple[jax.Array, None]:
        h = x
        for i in range(BLOCK_LAYERS):
            h = nn.Dense(self.width, kernel_init=kernel_init, name=f"dense_{i}")(h)
            h = nn.LayerNorm(name=f"norm_{i}")(h)
            h = nn.swish(h)
        return (x + h if self.residual else h), None


class Trunk(nn.Module):
    """Stem plus scanned residual blocks: [..., in] → [..., width]."""

    config: NetworkConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config
        x = nn.Dense(c.width, kernel_init=kernel_init, name="stem_dense")(x)
        x = nn.swish(nn.LayerNorm(name="stem_norm")(x))
        blocks = nn.scan(
            ResidualBlock,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            length=c.num_blocks,
        )
        x, _ = blocks(c.width, c.residual, name="blocks")(x, None)
        return x


class Encoder(nn.Module):
    """φ(s, a) or ψ(g): a trunk and a linear head to the representation."""

    config: NetworkConfig

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        h = Trunk(self.config, name="trunk")(x)
        return nn.Dense(self.config.repr_dim, kernel_init=kernel_init, name="head")(h)


class Actor(nn.Module):
    """Tanh-squashed Gaussian policy π(a | s, g); returns (mean, log_std) before the tanh."""

    config: NetworkConfig
    action_dim: int

    @nn.compact
    def __call__(self, obs: jax.Array, goal: jax.Array) -> tuple[jax.Array, jax.Array]:
        h = Trunk(self.config, name="trunk")(jnp.concatenate([obs, goal], axis=-1))
        mean = nn.Dense(self.action_dim, kernel_init=kernel_init, name="mean")(h)
        raw = nn.Dense(self.action_dim, kernel_init=kernel_init, name="log_std")(h)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (jnp.tanh(raw) + 1.0)
        return mean, log_std


def deterministic_action(actor: Actor, params: dict, obs: jax.Array, goal: jax.Array) -> jax.Array:
    """The action a deployed policy takes: tanh of the Gaussian mean."""
    mean, _ = actor.apply({"params": params}, obs, goal)
    return jnp.tanh(mean)


def trunk_param_count(in_dim: int, config: NetworkConfig) -> int:
    """Parameters of one trunk: stem (Dense + LayerNorm) and depth × (Dense + LayerNorm)."""
    w = config.width
    stem = in_dim * w + w + 2 * w
    per_layer = w * w + w + 2 * w
    return stem + config.depth * per_layer
