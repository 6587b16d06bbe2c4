"""On-device trajectory buffer with future-state goal relabeling.

The buffer is a ring over time with one column per environment: `data[time, env]`. Each collect
writes `unroll_length` consecutive rows for all envs at once, so a column holds each env's
trajectory in order and an episode occupies consecutive rows.

Relabeling: a sampled transition (s_t, a_t) gets as its goal the achieved goal of s_{t+k},
k ≥ 1, drawn with probability ∝ γ^k over the window of offsets that stay inside the same episode
and inside the data written so far. Every row stores the achieved goal *after* its action, so
offset 1 always exists (even on an episode's last step) and goal k is `next_achieved[t + k − 1]`.

Episodes have any length (an env may terminate one early), so the buffer keeps an episode index
beside the rows: a row with `t == 0` opens a new episode in its column, each row records its
episode's number, and a small table records, per episode, the logical time its next episode
opened (its end), at slot `number % capacity`. At most `capacity` episodes of a column can still
have rows held, so their slots never collide; an episode still running has no end yet and the
write head bounds it. The window is then `min(end, written) − time` rows long: no goal ever
crosses an episode boundary, and the offset is drawn in O(1) by inverting the truncated geometric
CDF. The index costs two int32 per row.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

from crl.train.losses import Batch


@struct.dataclass
class Transition:
    """One env step as stored: arrays carry leading [time, env] axes inside the buffer."""

    obs: jax.Array  # f32[obs_dim]: what the actor saw
    action: jax.Array  # f32[act_dim]: what it did, in [-1, 1]
    next_achieved: jax.Array  # f32[goal_dim]: achieved goal after the action
    t: jax.Array  # i32[]: steps taken in the episode before this one; 0 opens an episode


# The end of an episode that is still running (later than any logical time).
NOT_ENDED = np.iinfo(np.int32).max


@struct.dataclass
class ReplayState:
    data: Transition  # leaves [capacity, num_envs, ...]
    episode: jax.Array  # i32[capacity, num_envs]: each row's episode number in its column
    episode_end: jax.Array  # i32[capacity, num_envs]: at [n % capacity, env], episode n's end
    last_episode: jax.Array  # i32[num_envs]: the episode number of each column's newest row
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
    return _with_empty_index(data, jnp.zeros((), jnp.int32))


def _with_empty_index(data: Transition, written: jax.Array) -> ReplayState:
    # Episode numbers start at 0 with the first `t == 0` row; rows before it (a column that
    # starts mid-episode) belong to episode -1.
    shape = data.t.shape
    return ReplayState(
        data=data,
        episode=jnp.zeros(shape, jnp.int32),
        episode_end=jnp.full(shape, NOT_ENDED, jnp.int32),
        last_episode=jnp.full(shape[1:], -1, jnp.int32),
        written=written,
    )


def capacity(state: ReplayState) -> int:
    return state.data.t.shape[0]


def size(state: ReplayState) -> jax.Array:
    """Time steps currently held (per env)."""
    return jnp.minimum(state.written, capacity(state))


def insert(state: ReplayState, unroll: Transition) -> ReplayState:
    """Append an unroll with leaves [unroll_length, num_envs, ...], overwriting the oldest rows.

    An unroll longer than the buffer is refused (when traced): its rows would land on the same
    ring rows in one scatter, whose order XLA leaves undefined (it differs on a GPU).
    """
    length, cap = unroll.t.shape[0], capacity(state)
    if length > cap:
        raise ValueError(
            f"replay.insert: an unroll of {length} steps does not fit a buffer of {cap} steps; "
            "make buffer_steps at least unroll_length"
        )
    num_envs = unroll.t.shape[1]
    clock = state.written + jnp.arange(length, dtype=jnp.int32)
    rows = clock % cap
    data = jax.tree.map(lambda buf, new: buf.at[rows].set(new), state.data, unroll)

    # Episode numbers: each `t == 0` row opens the next episode of its column.
    opens = unroll.t == 0
    episode = state.last_episode + jnp.cumsum(opens, axis=0, dtype=jnp.int32)
    # An episode opened here ends where the next one opens in this unroll, else it runs on; the
    # episode that was running before the unroll ends at the unroll's first opening (if any).
    open_clock = jnp.where(opens, clock[:, None], NOT_ENDED)
    later = jnp.concatenate([open_clock[1:], jnp.full((1, num_envs), NOT_ENDED)])
    next_open = jax.lax.cummin(later, axis=0, reverse=True)
    env = jnp.broadcast_to(jnp.arange(num_envs), opens.shape)
    end = state.episode_end.at[state.last_episode % cap, env[0]].set(open_clock.min(axis=0))
    # Second, so that it wins where both hit one slot: with `capacity` openings in one unroll
    # the episode running before it has no rows left. Slots are distinct (at most `capacity`
    # consecutive numbers); rows that open nothing point past the table and are dropped.
    slot = jnp.where(opens, episode % cap, cap)
    end = end.at[slot, env].set(next_open, mode="drop")
    return ReplayState(
        data=data,
        episode=state.episode.at[rows].set(episode),
        episode_end=end,
        last_episode=episode[-1],
        written=state.written + length,
    )


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
    state: ReplayState, key: jax.Array, batch_size: int, gamma: float
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
    end = state.episode_end[state.episode[row, env] % cap, env]
    # Future rows of the same episode that are already written: offsets 1 … horizon.
    horizon = jnp.minimum(end, state.written) - time
    offset = truncated_geometric(k_offset, gamma, horizon)
    goal_row = (time + offset - 1) % cap
    batch = Batch(
        obs=state.data.obs[row, env],
        action=state.data.action[row, env],
        goal=state.data.next_achieved[goal_row, env],
        # Row t + 1 is the same episode's next step where the window holds two offsets.
        next_obs=state.data.obs[(time + 1) % cap, env],
        has_next=horizon >= 2,
    )
    return batch, offset
