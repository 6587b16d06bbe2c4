"""Trajectory buffer: ring writes, uniform sampling, γ^k relabeling inside episodes only."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

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
    # One row per insert: every scatter writes distinct ring rows.
    state = _fill(capacity=10, num_envs=3, episode_length=100, total=17, unroll=1)
    batch, _ = replay.sample(state, jax.random.PRNGKey(0), 30_000, 0.99)
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
    sample = jax.jit(functools.partial(replay.sample, batch_size=20_000, gamma=0.9))
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


def test_next_observation_is_the_same_episodes_next_step_where_there_is_one() -> None:
    state = _fill(capacity=64, num_envs=4, episode_length=7, total=83, unroll=5)
    batch, _ = replay.sample(state, jax.random.PRNGKey(2), 5_000, 0.9)
    time, env = np.asarray(batch.obs).astype(int).T
    next_time, next_env = np.asarray(batch.next_obs).astype(int).T
    has_next = np.asarray(batch.has_next)
    last_step = (time + env * 3) % 7 == 6  # an episode's last step: its next row opens another
    newest = time == int(state.written) - 1  # its next row is not written yet
    np.testing.assert_array_equal(has_next, ~(last_step | newest))
    np.testing.assert_array_equal(next_time[has_next], time[has_next] + 1)
    np.testing.assert_array_equal(next_env, env)
    assert has_next.any() and not has_next.all()


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
    batch, offset = replay.sample(state, jax.random.PRNGKey(2), 200_000, gamma)
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


def test_insert_refuses_an_unroll_longer_than_the_buffer() -> None:
    """17 rows into a 10-row ring would scatter to duplicate rows (order undefined on a GPU):
    refused when traced, before anything runs."""
    state = replay.init(10, 2, obs_dim=2, act_dim=1, goal_dim=2)
    unroll = replay.Transition(obs=jnp.zeros((17, 2, 2)), action=jnp.zeros((17, 2, 1)),
                               next_achieved=jnp.zeros((17, 2, 2)),
                               t=jnp.zeros((17, 2), jnp.int32))
    with pytest.raises(ValueError, match="unroll of 17 steps does not fit a buffer of 10"):
        jax.jit(replay.insert).lower(state, unroll)
    fits = jax.tree.map(lambda x: x[:10], unroll)
    assert int(jax.jit(replay.insert)(state, fits).written) == 10


# -- variable-length episodes through the real insert path ------------------------------------

NUM_ENVS = 3
# Two ring sizes (episodes of up to 12 steps are longer than the smaller): few shapes to compile.
CAPACITIES = (4, 9)
GAMMA, BATCH = 0.7, 4000
_insert = jax.jit(replay.insert)
_sample = jax.jit(functools.partial(replay.sample, batch_size=BATCH, gamma=GAMMA))
# Chi-square with 9 degrees of freedom exceeds this with probability 1e-6 (scipy.stats.chi2.isf):
# over the examples hypothesis runs, a correct buffer fails by chance with odds below 1e-4.
CHI2_9_DOF_P1E6 = 44.81


@st.composite
def episode_streams(draw: st.DrawFn) -> tuple[int, int, int, list[list[int]], list[int]]:
    """(capacity, unroll, inserts, episode lengths per env, steps of its first episode each env
    had taken before the buffer started). Lengths from 1 step up: an episode may end at any
    step; each env's list repeats until the writes are covered."""
    capacity = draw(st.sampled_from(CAPACITIES))
    unroll = draw(st.integers(1, capacity))
    inserts = draw(st.integers(1, 3 * capacity // unroll + 2))
    lengths = [draw(st.lists(st.integers(1, 12), min_size=1, max_size=6))
               for _ in range(NUM_ENVS)]
    skipped = [draw(st.integers(0, ls[0] - 1)) for ls in lengths]
    return capacity, unroll, inserts, lengths, skipped


def _columns(lengths: list[list[int]], skipped: list[int], total: int) -> tuple[np.ndarray, ...]:
    """Per [clock, env]: t, a unique episode id, and the last clock of that episode."""
    t, uid, last = (np.zeros((total, NUM_ENVS), int) for _ in range(3))
    for e, (ls, skip) in enumerate(zip(lengths, skipped, strict=True)):
        steps: list[tuple[int, int, int]] = []  # (t, id, length) per clock
        n = 0
        while len(steps) < total + skip:
            length = ls[n % len(ls)]
            steps += [(i, n, length) for i in range(length)]
            n += 1
        steps = steps[skip : skip + total]
        for clock, (ti, ni, length) in enumerate(steps):
            t[clock, e], uid[clock, e] = ti, 1000 * e + ni
            last[clock, e] = clock + (length - 1 - ti)
    return t, uid, last


@given(case=episode_streams())
@example(case=(4, 4, 4, [[1], [1], [1]], [0, 0, 0]))  # every row opens an episode, unroll = ring
@example(case=(4, 3, 6, [[9], [2, 1], [1, 7]], [8, 0, 0]))  # episodes longer than the ring
@example(case=(9, 9, 4, [[1], [1], [1]], [0, 0, 0]))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_relabeled_goals_stay_in_their_episode_with_gamma_powers(case) -> None:
    """Rows written by `replay.insert` from episodes of random lengths: every goal is the
    achieved goal k ≥ 1 steps later in the same episode, never past the write head, and k
    follows P(k) ∝ γ^k over the offsets left in the episode. The check is a chi-square on the
    randomized probability integral transform of k, which is exactly uniform when k is."""
    capacity, unroll, inserts, lengths, skipped = case
    total, gamma, n = unroll * inserts, GAMMA, BATCH
    t, uid, last = _columns(lengths, skipped, total)
    state = replay.init(capacity, NUM_ENVS, obs_dim=2, act_dim=1, goal_dim=2)
    env_ids = np.broadcast_to(np.arange(NUM_ENVS), (unroll, NUM_ENVS))
    for start in range(0, total, unroll):
        rows = slice(start, start + unroll)
        clock = np.arange(start, start + unroll)[:, None] + np.zeros((1, NUM_ENVS), int)
        state = _insert(state, replay.Transition(
            obs=jnp.asarray(np.stack([clock, env_ids], -1), jnp.float32),
            action=jnp.zeros((unroll, NUM_ENVS, 1)),
            next_achieved=jnp.asarray(np.stack([uid[rows], t[rows] + 1], -1), jnp.float32),
            t=jnp.asarray(t[rows], jnp.int32),
        ))
    key = jax.random.PRNGKey(capacity * 1000 + total)
    batch, offset = _sample(state, key)
    time, env = np.asarray(batch.obs, int).T
    goal_uid, goal_step = np.asarray(batch.goal, int).T
    k = np.asarray(offset)

    assert time.min() >= total - min(total, capacity) and time.max() < total  # held rows only
    np.testing.assert_array_equal(goal_uid, uid[time, env])  # the same episode
    np.testing.assert_array_equal(goal_step, t[time, env] + k)  # k steps later
    horizon = np.minimum(last[time, env] + 1, total) - time  # offsets left in the episode
    assert (k >= 1).all() and (k <= horizon).all()

    # Randomized PIT: u = F(k − 1) + v · P(k), v ~ U[0, 1), is U[0, 1) iff k ~ P.
    mass = 1 - gamma**horizon
    below, at = (1 - gamma ** (k - 1)) / mass, gamma ** (k - 1) * (1 - gamma) / mass
    u = below + np.random.default_rng(total).uniform(size=n) * at
    counts = np.bincount(np.minimum((u * 10).astype(int), 9), minlength=10)
    chi2 = float(((counts - n / 10) ** 2 / (n / 10)).sum())
    assert chi2 < CHI2_9_DOF_P1E6, counts

