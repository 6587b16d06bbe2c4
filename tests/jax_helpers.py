"""What the jax-side tests share: host copies of pytrees to compare, small training configs."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from crl.train.config import PRESETS, EvalConfig, NetworkConfig, TrainConfig


def host_numpy(tree: Any) -> Any:
    """Host copies (keys as their raw data): comparing on the host avoids one XLA compile per
    leaf shape that eager jnp comparisons would cost."""

    def host(x: jax.Array) -> np.ndarray:
        if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
            x = jax.random.key_data(x)
        return np.asarray(x)

    return jax.tree.map(host, tree)


def trees_equal(a: Any, b: Any) -> bool:
    return all(jax.tree.leaves(jax.tree.map(np.array_equal, host_numpy(a), host_numpy(b))))


def small_quick_reacher(num_envs: int, iterations: int, eval_every: int, eval_episodes: int,
                        buffer_steps: int, min_replay_steps: int) -> TrainConfig:
    """The quick preset (its unroll, recipe and update ratio) at a test's size: `num_envs`
    envs, `iterations` iterations, evaluations every `eval_every` iterations without held-out,
    depth 4, width 32, 32-sample batches."""
    quick = PRESETS["quick"]
    steps = num_envs * quick.replay.unroll_length
    return dataclasses.replace(
        quick,
        task="reacher",
        total_steps=steps * iterations,
        network=NetworkConfig(depth=4, width=32, repr_dim=16),
        algo=dataclasses.replace(quick.algo, batch_size=32),
        replay=dataclasses.replace(quick.replay, num_envs=num_envs, buffer_steps=buffer_steps,
                                   min_replay_steps=min_replay_steps),
        eval=EvalConfig(eval_every=steps * eval_every, eval_episodes=eval_episodes,
                        held_out=False),
    )
