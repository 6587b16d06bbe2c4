"""Trajectory buffer: ring writes, uniform sampling, γ^k relabeling inside episodes only."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crl.train import replay


def _fill(capacity: int, num_envs: int, episode_length: int, total: int, unroll: int,
          stagger: bool = True) -> replay.ReplayState:
    """A buffer written `unroll` steps at a time for `total` steps. Each env runs fixed-length
    episodes (env e starts mid-episode when staggered); the stored values encode where they came
    from: obs = [written-time, env], next_achieved = [episode id, step index after the action]."""
    state = replay.init(capacity, num_envs, obs_dim=2, act_dim=1, goal_dim=2)
    insert = jax.jit(replay.insert)
    for start in range(0, total, unroll):
        time = np.arange(start, start + unroll)[:, None] + np.zeros((1, num_envs), int)
        clock = time + (np.arange(num_envs)[None] * 3 if stagger else 0)
        t = clock % episode_length
        episode = clock // episode_length + 1000 * np.arange(num_envs)[None]
        unroll_data = replay.Transition(
            obs=jnp.asarray(np.stack([time, np.broadcast_to(np.arange(num_envs), time.shape)],
                                     -1), jnp.float32),
            action=jnp.zeros((unroll, num_envs, 1)),
            next_achieved=jnp.asarray(np.stack([episode, t + 1], -1), jnp.float32),
            t=jnp.asarray(t, jnp.int32),
        )
        state = insert(state, unroll_data)
    return state


def test_ring_keeps_the_newest_rows() -> None:
    state = _fill(capacity=10, num_envs=2, episode_length=4, total=24, unroll=3)
    assert int(state.written) == 24
    assert int(replay.size(state)) == 10
    times = np.sort(np.asarray(state.data.obs[:, 0, 0]))
    np.testing.assert_array_equal(times, np.arange(14, 24))


def test_sampling_is_uniform_over_held_rows() -> None:
    state = _fill(capacity=10, num_envs=3, episode_length=100, total=17, unroll=17 // 1)
    batch, _ = replay.sample(state, jax.random.PRNGKey(0), 30_000, 0.99, 100)
    times = np.asarray(batch.obs[:, 0]).astype(int)
    envs = np.asarray(batch.obs[:, 1]).astype(int)
    assert times.min() == 7 and times.max() == 16  # only the 10 rows still held
    counts = np.bincount(times - 7, minlength=10)
    assert counts.min() > 0.9 * 3000 and counts.max() < 1.1 * 3000
    assert set(np.unique(envs)) == {0, 1, 2}


@pytest.mark.parametrize(("episode_length", "unroll", "total"), [(7, 5, 83), (50, 62, 400)])
def test_goals_never_cross_episodes_or_the_write_head(episode_length, unroll, total) -> None:
    state = _fill(capacity=64, num_envs=4, episode_length=episode_length, total=total,
                  unroll=unroll)
    sample = jax.jit(functools.partial(replay.sample, batch_size=20_000, gamma=0.9,
                                       episode_length=episode_length))
    batch, offset = sample(state, jax.random.PRNGKey(1))
    time = np.asarray(batch.obs[:, 0]).astype(int)
    env = np.asarray(batch.obs[:, 1]).astype(int)
    goal_episode, goal_step = np.asarray(batch.goal).astype(int).T
    offset = np.asarray(offset)
    clock = time + env * 3
    np.testing.assert_array_equal(goal_episode, clock // episode_length + 1000 * env)
    t = clock % episode_length
    assert np.all(offset >= 1)
    np.testing.assert_array_equal(goal_step, t + offset)  # the state k steps later
    assert np.all(goal_step <= episode_length)
    assert np.all(time + offset - 1 < int(state.written))  # never a row not yet written
    assert np.any(goal_step == episode_length)  # the last step of an episode is reachable


def test_truncated_geometric_follows_gamma_powers() -> None:
    """Chi-square goodness of fit of k ∈ {1..K}, P(k) ∝ γ^k, for several horizons."""
    gamma, n = 0.9, 200_000
    for horizon in (1, 3, 40):
        k = np.asarray(replay.truncated_geometric(jax.random.PRNGKey(horizon), gamma,
                                                  jnp.full((n,), horizon)))
        assert k.min() >= 1 and k.max() <= horizon
        p = gamma ** np.arange(1, horizon + 1)
        p /= p.sum()
        observed = np.bincount(k, minlength=horizon + 1)[1:]
        expected = n * p
        keep = expected > 5
        chi2 = float((((observed - expected) ** 2) / expected)[keep].sum())
        dof = max(int(keep.sum()) - 1, 1)
        assert chi2 < dof + 5 * np.sqrt(2 * dof)  # ~5 sigma


def test_relabel_offsets_in_buffer_follow_gamma_powers() -> None:
    """Through `sample`: offsets of transitions with a long window follow γ^k (γ = 0.99)."""
    episode_length, gamma = 1000, 0.99
    state = _fill(capacity=1000, num_envs=8, episode_length=episode_length, total=1000,
                  unroll=100, stagger=False)
    batch, offset = replay.sample(state, jax.random.PRNGKey(2), 200_000, gamma, episode_length)
    t = np.asarray(batch.obs[:, 0]).astype(int)
    offset = np.asarray(offset)
    early = t < 200  # windows of ≥ 800 steps: truncation is negligible below k = 300
    k = offset[early]
    hist = np.bincount(k, minlength=301)[1:301]
    p = gamma ** np.arange(1, 1001)
    p = p / p.sum()
    expected = k.size * p[:300]
    # Mean offset and the histogram's slope both match γ^k.
    slope = np.polyfit(np.arange(1, 301), np.log(np.maximum(hist, 1)), 1)[0]
    assert slope == pytest.approx(np.log(gamma), abs=0.002)
    chi2 = float((((hist - expected) ** 2) / expected).sum())
    assert chi2 < 300 + 5 * np.sqrt(600)
