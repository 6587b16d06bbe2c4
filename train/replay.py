"""On-device trajectory buffer with future-state goal relabeling.

The buffer is a ring over time with one column per environment: `data[time, env]`. Each collect
writes `unroll_length` consecutive rows for all envs at once, so a column holds each env's
trajectory in order and an episode occupies consecutive rows.

Relabeling: a sampled transition (s_t, a_t) gets as its goal the achieved goal of s_{t+k},
k ≥ 1, drawn with probability ∝ γ^k over the window of offsets that stay inside the same episode
and inside the data written so far. Every row stores the achieved goal *after* its action, so
offset 1 always exists (even on an episode's last step) and goal k is `next_achieved[t + k − 1]`.
Episodes have a fixed length (the env contract: done ⇔ t == episode_length), so the window is
`episode_length − t` rows long, capped by the newest row; no goal ever crosses an episode boundary
and the offset is drawn in O(1) by inverting the truncated geometric CDF.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import struct

from crl.train.losses import Batch


@struct.dataclass
class Transition:
    """One env step as stored: arrays carry leading [time, env] axes inside the buffer."""

    obs: jax.Array  # f32[obs_dim]: what the actor saw
    action: jax.Array  # f32[act_dim]: what it did, in [-1, 1]
    next_achieved: jax.Array  # f32[goal_dim]: achieved goal after the action
    t: jax.Array  # i32[]: steps taken in the episode before this one (0 after a reset)


@struct.dataclass
class ReplayState:
    data: Transition  # leaves [capacity, num_envs, ...]
    written: jax.Array  # i32[]: rows written since the start (the ring's logical clock)


def init(capacity: int, num_envs: int, obs_dim: int, act_dim: int, goal_dim: int) -> ReplayState:
    """An empty buffer of `capacity` time steps × `num_envs` columns."""
    shape = (capacity, num_envs)
    data = Transition(
        obs=jnp.zeros((*shape, obs_dim), jnp.float32),
        action=jnp.zeros((*shape, act_dim), jnp.float32),
        next_achieved=jnp.zeros((*shape, goal_dim), jnp.float32),
        t=jnp.zeros(shape, jnp.int32),
    )
    return ReplayState(data=data, written=jnp.zeros((), jnp.int32))


def capacity(state: ReplayState) -> int:
    return state.data.t.shape[0]


def size(state: ReplayState) -> jax.Array:
    """Time steps currently held (per env)."""
    return jnp.minimum(state.written, capacity(state))


def insert(state: ReplayState, unroll: Transition) -> ReplayState:
    """Append an unroll with leaves [unroll_length, num_envs, ...], overwriting the oldest rows."""
    length = unroll.t.shape[0]
    rows = (state.written + jnp.arange(length)) % capacity(state)
    data = jax.tree.map(lambda buf, new: buf.at[rows].set(new), state.data, unroll)
    return ReplayState(data=data, written=state.written + length)


def truncated_geometric(key: jax.Array, gamma: float, horizon: jax.Array) -> jax.Array:
    """Offsets k ∈ {1, …, horizon} with P(k) ∝ gamma^k, by inverting the CDF.

    P(k ≤ m) = (1 − γ^m) / (1 − γ^K), so k = ⌈log(1 − u(1 − γ^K)) / log γ⌉ for u ~ U[0, 1).
    """
    log_gamma = jnp.log(jnp.float32(gamma))
    u = jax.random.uniform(key, horizon.shape)
    mass = -jnp.expm1(horizon.astype(jnp.float32) * log_gamma)  # 1 − γ^K
    k = jnp.ceil(jnp.log1p(-u * mass) / log_gamma).astype(jnp.int32)
    return jnp.clip(k, 1, horizon)


def sample(
    state: ReplayState, key: jax.Array, batch_size: int, gamma: float, episode_length: int
) -> tuple[Batch, jax.Array]:
    """A relabeled batch, uniform over held transitions; also returns the offsets k (for tests).

    Requires at least one written row (the trainer samples only after its prefill).
    """
    k_time, k_env, k_offset = jax.random.split(key, 3)
    cap, num_envs = state.data.t.shape
    held = size(state)
    oldest = state.written - held
    time = oldest + jax.random.randint(k_time, (batch_size,), 0, held)  # logical clock
    env = jax.random.randint(k_env, (batch_size,), 0, num_envs)
    row = time % cap
    t = state.data.t[row, env]
    # Future rows of the same episode that are already written: offsets 1 … horizon.
    horizon = jnp.minimum(episode_length - t, state.written - time)
    offset = truncated_geometric(k_offset, gamma, horizon)
    goal_row = (time + offset - 1) % cap
    batch = Batch(
        obs=state.data.obs[row, env],
        action=state.data.action[row, env],
        goal=state.data.next_achieved[goal_row, env],
    )
    return batch, offset
