"""Deep residual networks of "1000 Layer Networks for Self-Supervised RL" (Wang et al., 2025).

A trunk is a Dense → LayerNorm → swish stem followed by `depth // 4` residual blocks, each
4 × (Dense → LayerNorm → swish) with the skip added after the 4th swish. The blocks run under
`nn.scan` with stacked parameters, so compile time does not grow with depth. How the loop runs
(`BlockScan`: blocks per loop trip, what the backward pass keeps) is chosen per backend in
`BLOCK_SCAN` by measurement (bench/train_throughput.py); it changes speed and compile time,
never the function computed or the parameter tree.

Parameter tree of every trunk (the exporter reads it by these names):
    stem_dense/{kernel [in, W], bias [W]}, stem_norm/{scale [W], bias [W]},
    blocks/dense_{0..3}/{kernel [N, W, W], bias [N, W]},
    blocks/norm_{0..3}/{scale [N, W], bias [N, W]}     (N = depth // 4 blocks)
Encoders add `head/{kernel, bias}`; the actor adds `mean/…` and `log_std/…`. The actor's N and W
may differ from the encoders' (`NetworkConfig.actor_depth`, `.critic_width`, ...). With
`NetworkConfig.input_norm`, each network also has `input_norm/{shift [in], scale [in]}` before
its trunk (`InputNorm`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from crl.core.spec import BLOCK_LAYERS, NetworkSpec
from crl.train.config import DType, NetworkConfig

LOG_STD_MIN, LOG_STD_MAX = -5.0, 2.0

# Compute dtypes of `NetworkConfig.dtype`. Parameters stay float32 in every mode (Adam's moments
# and small updates need its mantissa); bf16 is what the matmuls and activations run in.
COMPUTE_DTYPES: dict[DType, Any] = {"fp32": jnp.float32, "bf16": jnp.bfloat16}

# The paper's initialisation: variance scaling 1/3, fan-in, uniform; zero biases.
kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


# What a block's backward pass keeps from its forward pass (jax.checkpoint policies). "none" is
# plain autodiff: under scan, every intermediate of the 4 layers (Dense output, LayerNorm
# statistics and output, swish terms) is written to its own [num_blocks, batch, width] stack in
# the forward loop and read back in the backward one. "dots" keeps only the Dense outputs and
# recomputes LayerNorm and swish from them in the backward loop: elementwise work that XLA fuses
# into the gradient kernels, for a fraction of the memory traffic. Both give the same gradients.
REMAT_POLICIES: dict[str, Callable[..., Any] | None] = {
    "none": None,
    "dots": jax.checkpoint_policies.checkpoint_dots,
}


@dataclass(frozen=True)
class BlockScan:
    """How a trunk loops over its residual blocks: a speed and compile-time choice only.

    `unroll` blocks run per loop trip (0: all of them, no loop: the program, and its compile
    time, then grow with depth); `remat` names a `REMAT_POLICIES` entry, applied only where
    the blocks do loop.
    """

    unroll: int = 1
    remat: str = "none"

    def __post_init__(self) -> None:
        if self.unroll < 0:
            raise ValueError(f"BlockScan.unroll: {self.unroll} is negative (0 unrolls all)")
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"BlockScan.remat: {self.remat!r} is not in {list(REMAT_POLICIES)}")

    def trip_blocks(self, num_blocks: int) -> int:
        """Blocks per loop trip for a trunk of `num_blocks` (all of them when unroll is 0)."""
        return num_blocks if self.unroll == 0 else min(self.unroll, num_blocks)


# The network as the paper's code builds it: every block inlined, no loop. The reference the
# shipped choices are measured and tested against; compile time grows with depth.
UNROLLED = BlockScan(unroll=0, remat="none")

# The shipped choice per jax backend, picked with bench/learner_speed.py (docs/benchmarks.md,
# "Learner speed"); backends not listed (TPU) take "gpu"'s. Edit an entry to change a backend's
# choice.
# cpu: measured on the 2-core EPYC: "dots" makes one SGD update as fast as the unrolled network
#   (depth 16: 0.91x, 64: 1.00x, 256: 1.00x); plain scan took 1.2x at 16-64. 2 or 4 blocks a
#   trip were 4-7% slower at depth 16, within 2% at 64 and 2-7% faster at 256, but compiled
#   1.3-2.4x longer (12 s at depth 256, over the 10 s budget).
# gpu: NOT measured yet (no GPU here). A GPU while loop pays a kernel launch and a predicate
#   read per trip, comparable to a block's few microseconds of matmuls at the paper's sizes,
#   so 4 blocks a trip; "dots" for the same memory traffic as on the CPU. Re-run the bench
#   with --candidates 1:dots 2:dots 8:dots on a GPU and set what it shows.
BLOCK_SCAN: dict[str, BlockScan] = {
    "cpu": BlockScan(unroll=1, remat="dots"),
    "gpu": BlockScan(unroll=4, remat="dots"),
}


def default_block_scan(backend: str | None = None) -> BlockScan:
    """BLOCK_SCAN's choice for `backend` (jax's default backend when None)."""
    backend = backend or jax.default_backend()
    return BLOCK_SCAN.get(backend, BLOCK_SCAN["gpu"])


class ResidualBlock(nn.Module):
    width: int
    residual: bool
    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, _: None) -> tuple[jax.Array, None]:
        h = x
        for i in range(BLOCK_LAYERS):
            h = nn.Dense(
                self.width, kernel_init=kernel_init, dtype=self.dtype, name=f"dense_{i}"
            )(h)
            # flax computes LayerNorm's mean and variance in float32 whatever `dtype` is.
            h = nn.LayerNorm(dtype=self.dtype, name=f"norm_{i}")(h)
            h = nn.swish(h)
        return (x + h if self.residual else h), None


class InputNorm(nn.Module):
    """(x − shift) · scale for each input component, both fixed: no gradient reaches them, so
    Adam leaves them as `crl.train.agent.standardize_inputs` set them, once, from the prefill's
    data. The identity until then.

    Why: Adam moves each weight by about its learning rate a step, whatever the spread of the
    input it multiplies. A weight on an input of small spread (a fingertip position in metres,
    over a workspace 0.4 m across) then moves the layer's output little per step, and a response
    that must be sharp in that input is learnt slowly or never: the reacher's actor, trained on
    raw inputs, commanded the mean of the two elbow solutions for goals behind its shoulder
    (docs/benchmarks.md). Scaled inputs are a reparameterisation, not a new function class: the
    exporter folds shift and scale into the first Dense layer.
    """

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        size = x.shape[-1]
        shift = self.param("shift", nn.initializers.zeros_init(), (size,), jnp.float32)
        scale = self.param("scale", nn.initializers.ones_init(), (size,), jnp.float32)
        return (x - jax.lax.stop_gradient(shift)) * jax.lax.stop_gradient(scale)


class Trunk(nn.Module):
    """Stem plus scanned residual blocks: [..., in] → [..., width].

    `scan` None takes `default_block_scan()` for the backend being traced for; every choice
    has the same parameter tree (and the same initial values from the same key).
    """

    config: NetworkConfig
    scan: BlockScan | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c, dtype = self.config, COMPUTE_DTYPES[self.config.dtype]
        plan = self.scan or default_block_scan()
        x = nn.Dense(c.width, kernel_init=kernel_init, dtype=dtype, name="stem_dense")(x)
        x = nn.swish(nn.LayerNorm(dtype=dtype, name="stem_norm")(x))
        trip = plan.trip_blocks(c.num_blocks)
        # Remat only where the blocks loop: without a loop (all blocks in one trip, depth 4
        # included, whose 1-trip loop XLA removes) nothing is stacked, and XLA already keeps
        # only what the backward pass needs.
        policy = REMAT_POLICIES[plan.remat] if trip < c.num_blocks else None
        block: Any = ResidualBlock
        if policy is not None:
            # prevent_cse=False: inside scan, CSE cannot undo the recomputation (jax docs).
            block = nn.remat(ResidualBlock, policy=policy, prevent_cse=False)
        blocks = nn.scan(
            block,
            variable_axes={"params": 0},
            split_rngs={"params": True},
            length=c.num_blocks,
            unroll=trip,
        )
        x, _ = blocks(c.width, c.residual, dtype, name="blocks")(x, None)
        return x


class Encoder(nn.Module):
    """φ(s, a) or ψ(g): a trunk of the critic's shape and a linear head to the representation."""

    config: NetworkConfig
    scan: BlockScan | None = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = self.config.critic
        if c.input_norm:
            x = InputNorm(name="input_norm")(x)
        h = Trunk(c, self.scan, name="trunk")(x)
        dtype = COMPUTE_DTYPES[c.dtype]
        out = nn.Dense(c.repr_dim, kernel_init=kernel_init, dtype=dtype, name="head")(h)
        return out.astype(jnp.float32)  # the losses (norms, logsumexp) run in float32


class Actor(nn.Module):
    """Tanh-squashed Gaussian policy π(a | s, g) with a trunk of the actor's shape; returns
    (mean, log_std) before the tanh."""

    config: NetworkConfig
    action_dim: int
    scan: BlockScan | None = None

    @nn.compact
    def __call__(self, obs: jax.Array, goal: jax.Array) -> tuple[jax.Array, jax.Array]:
        c = self.config.actor
        x = jnp.concatenate([obs, goal], axis=-1)
        if c.input_norm:
            x = InputNorm(name="input_norm")(x)
        h = Trunk(c, self.scan, name="trunk")(x)
        dtype = COMPUTE_DTYPES[c.dtype]
        mean = nn.Dense(self.action_dim, kernel_init=kernel_init, dtype=dtype, name="mean")(h)
        raw = nn.Dense(self.action_dim, kernel_init=kernel_init, dtype=dtype, name="log_std")(h)
        # The Gaussian, its log-probability and the losses run in float32.
        mean, raw = mean.astype(jnp.float32), raw.astype(jnp.float32)
        log_std = LOG_STD_MIN + 0.5 * (LOG_STD_MAX - LOG_STD_MIN) * (jnp.tanh(raw) + 1.0)
        return mean, log_std


def deterministic_action(
    actor: Actor, params: dict[str, Any], obs: jax.Array, goal: jax.Array
) -> jax.Array:
    """The action a deployed policy takes: tanh of the Gaussian mean."""
    mean, _ = actor.apply({"params": params}, obs, goal)
    return jnp.tanh(mean)


def trunk_param_count(in_dim: int, config: NetworkConfig) -> int:
    """Parameters of one trunk: stem (Dense + LayerNorm) and depth × (Dense + LayerNorm).

    `config` is one side's shape (`NetworkConfig.actor` or `.critic`)."""
    w = config.width
    stem = in_dim * w + w + 2 * w
    per_layer = w * w + w + 2 * w
    return stem + config.depth * per_layer


class Networks(NamedTuple):
    """The three modules of CRL: actor π(a | s, g), φ(s, a) and ψ(g)."""

    actor: Actor
    sa_encoder: Encoder
    g_encoder: Encoder


def network_config(spec: NetworkSpec, params: Mapping[str, Any]) -> NetworkConfig:
    """The config that builds the networks a trained policy's spec and parameters describe: the
    spec's actor shape and its critic's, and `input_norm` where the parameters hold one (a
    network built without it would ignore the run's fixed input scaling and compute another
    function)."""
    critic_depth, critic_width = spec.critic_shape
    return NetworkConfig(spec.depth, spec.width, spec.repr_dim, spec.residual,
                         input_norm="input_norm" in params["actor"],
                         critic_depth=critic_depth, critic_width=critic_width)


def make_networks(config: NetworkConfig, action_dim: int) -> Networks:
    return Networks(Actor(config, action_dim), Encoder(config), Encoder(config))


def init_params(nets: Networks, key: jax.Array, obs_dim: int, goal_dim: int) -> dict[str, Any]:
    """Initial parameters {actor, sa_encoder, g_encoder}, each the inner flax `params` dict."""
    k_actor, k_sa, k_g = jax.random.split(key, 3)
    act_dim = nets.actor.action_dim
    obs, goal = jnp.zeros((1, obs_dim)), jnp.zeros((1, goal_dim))
    return {
        "actor": nets.actor.init(k_actor, obs, goal)["params"],
        "sa_encoder": nets.sa_encoder.init(k_sa, jnp.zeros((1, obs_dim + act_dim)))["params"],
        "g_encoder": nets.g_encoder.init(k_g, goal)["params"],
    }


def param_counts(nets: Networks, obs_dim: int, goal_dim: int) -> dict[str, int]:
    """Parameters of each network as `init_params` builds it, and their total: counted from
    the modules' parameter trees (shapes only, nothing is computed), not from a formula."""
    shapes = jax.eval_shape(lambda: init_params(nets, jax.random.PRNGKey(0), obs_dim, goal_dim))
    counts = {name: sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(tree))
              for name, tree in shapes.items()}
    return {**counts, "total": sum(counts.values())}
