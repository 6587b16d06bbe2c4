"""CRL losses against hand-computed values, α tuning, and InfoNCE learning on a fixed batch."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from crl.train import losses
from crl.train.config import NetworkConfig
from crl.train.networks import Networks, init_params, make_networks


def test_pairwise_energy_is_negative_l2() -> None:
    sa = jnp.array([[0.0, 0.0], [3.0, 4.0]])
    g = jnp.array([[0.0, 0.0], [0.0, 1.0], [6.0, 8.0]])
    np.testing.assert_allclose(
        losses.pairwise_energy(sa, g), [[0.0, -1.0, -10.0], [-5.0, -np.sqrt(18.0), -5.0]],
        rtol=1e-6,
    )
    np.testing.assert_allclose(losses.energy(sa, g[:2]), [0.0, -np.sqrt(18.0)], rtol=1e-6)


def test_pairwise_energy_matches_the_difference_form() -> None:
    sa = 3 * jax.random.normal(jax.random.PRNGKey(0), (32, 64))
    g = 3 * jax.random.normal(jax.random.PRNGKey(1), (32, 64))
    direct = -np.linalg.norm(np.asarray(sa)[:, None] - np.asarray(g)[None], axis=-1)
    np.testing.assert_allclose(losses.pairwise_energy(sa, g), direct, rtol=1e-5)
    np.testing.assert_allclose(np.diag(losses.pairwise_energy(sa, g)), losses.energy(sa, g),
                               rtol=1e-5)


def test_contrastive_logits_keep_close_positives_exact() -> None:
    """φ ≈ ψ on the diagonal (a trained critic's positives), far from the origin: the expanded
    form ‖φ‖² + ‖ψ‖² − 2φ·ψ loses those distances to fp32 rounding, the logits must not."""
    sa = 3 * jax.random.normal(jax.random.PRNGKey(0), (32, 64))
    g = sa + 1e-3 * jax.random.normal(jax.random.PRNGKey(1), (32, 64))
    direct = -np.linalg.norm(np.asarray(sa, np.float64)[:, None] - np.asarray(g)[None], axis=-1)
    logits = np.asarray(losses.contrastive_logits(sa, g))
    np.testing.assert_allclose(np.diag(logits), np.diag(direct), rtol=1e-4)
    np.testing.assert_allclose(logits, direct, rtol=1e-4, atol=1e-3)
    expanded = np.diag(np.asarray(losses.pairwise_energy(sa, g)))
    assert np.abs(expanded / np.diag(direct) - 1).max() > 1e-3  # what the diagonal fixes


def test_energy_gradient_is_finite_at_zero_distance() -> None:
    grad = jax.grad(lambda x: losses.energy(x, jnp.zeros((1, 2))).sum())(jnp.zeros((1, 2)))
    assert bool(jnp.all(jnp.isfinite(grad)))


def test_infonce_on_a_2x2_batch_by_hand() -> None:
    logits = jnp.array([[0.0, -1.0], [-2.0, -0.5]])
    loss, metrics = losses.infonce_loss(logits, logsumexp_penalty=0.1)
    lse0 = np.log(np.exp(0.0) + np.exp(-1.0))  # 0.31326
    lse1 = np.log(np.exp(-2.0) + np.exp(-0.5))  # -0.29861
    expected = -((0.0 - lse0) + (-0.5 - lse1)) / 2 + 0.1 * (lse0**2 + lse1**2) / 2
    assert float(loss) == pytest.approx(expected, rel=1e-6)
    assert float(loss) == pytest.approx(0.2667, abs=1e-4)  # the number itself, worked by hand
    assert float(metrics["accuracy"]) == 1.0
    assert float(metrics["logits_pos"]) == pytest.approx(-0.25)
    assert float(metrics["logits_neg"]) == pytest.approx(-1.5)


class _Identity(nn.Module):
    """φ(s, a) = [s, a] and ψ(g) = g: the energy becomes hand-computable."""

    @nn.compact
    def __call__(self, x):
        return x


class _FixedActor(nn.Module):
    """mean = obs, log_std = log 0.5 (no parameters)."""

    action_dim: int = 1

    @nn.compact
    def __call__(self, obs, goal):
        return obs, jnp.full_like(obs, np.log(0.5))


def test_actor_loss_by_hand() -> None:
    nets = Networks(_FixedActor(), _Identity(), _Identity())
    obs = jnp.array([[0.3], [-1.0]])
    goal = jnp.array([[0.5, 0.2], [-0.4, -0.9]])
    batch = losses.Batch(obs=obs, action=jnp.zeros((2, 1)), goal=goal)
    key = jax.random.PRNGKey(3)
    log_alpha = jnp.log(0.2)
    loss, (log_prob, _) = losses.actor_loss({}, {"sa_encoder": {}, "g_encoder": {}}, log_alpha,
                                            nets, batch, key)

    eps = np.asarray(jax.random.normal(key, (2, 1)))  # the reparameterisation noise it drew
    mean, std = np.asarray(obs), 0.5
    x = mean + std * eps
    a = np.tanh(x)
    gauss = -0.5 * ((x - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)
    lp = (gauss - np.log(1 - a**2 + 1e-6)).sum(-1)
    f = -np.linalg.norm(np.concatenate([np.asarray(obs), a], -1) - np.asarray(goal), axis=-1)
    np.testing.assert_allclose(log_prob, lp, rtol=1e-5)
    assert float(loss) == pytest.approx(float(np.mean(0.2 * lp - f)), rel=1e-5)


def test_action_rate_penalty_adds_the_distance_to_the_last_action() -> None:
    """The fixed actor's mean is the observation; its last entry is the last action here."""
    nets = Networks(_FixedActor(), _Identity(), _Identity())
    obs = jnp.array([[0.3], [-1.0]])
    batch = losses.Batch(obs=obs, action=jnp.zeros((2, 1)), goal=jnp.zeros((2, 2)))
    args = ({}, {"sa_encoder": {}, "g_encoder": {}}, jnp.log(0.2), nets, batch,
            jax.random.PRNGKey(3))
    plain, _ = losses.actor_loss(*args)
    penalized, (_, metrics) = losses.actor_loss(*args, 0.5, slice(0, 1))
    rate = np.mean((np.tanh(np.asarray(obs)) - np.asarray(obs)) ** 2)
    assert float(metrics["action_rate"]) == pytest.approx(rate, rel=1e-5)
    assert float(penalized - plain) == pytest.approx(0.5 * rate, rel=1e-4)
    with pytest.raises(ValueError, match="last_action"):
        losses.actor_loss(*args, 0.5, None)


def test_temporal_penalty_adds_the_change_to_the_next_steps_action() -> None:
    """The fixed actor's mean is the observation: the change is tanh(s) − tanh(s'), counted
    only on rows that have a next step."""
    nets = Networks(_FixedActor(), _Identity(), _Identity())
    obs = jnp.array([[0.3], [-1.0], [0.5]])
    next_obs = jnp.array([[0.1], [-0.2], [3.0]])
    has_next = jnp.array([True, True, False])
    batch = losses.Batch(obs, jnp.zeros((3, 1)), jnp.zeros((3, 2)), next_obs, has_next)
    args = ({}, {"sa_encoder": {}, "g_encoder": {}}, jnp.log(0.2), nets, batch,
            jax.random.PRNGKey(3))
    plain, _ = losses.actor_loss(*args)
    penalized, (_, metrics) = losses.actor_loss(*args, temporal_penalty=0.7)
    change = np.mean((np.tanh([0.3, -1.0]) - np.tanh([0.1, -0.2])) ** 2)
    assert float(metrics["temporal_change"]) == pytest.approx(change, rel=1e-5)
    assert float(penalized - plain) == pytest.approx(0.7 * change, rel=1e-4)
    still = losses.Batch(obs, jnp.zeros((3, 1)), jnp.zeros((3, 2)), obs, has_next)
    same, (_, metrics) = losses.actor_loss(*args[:4], still, args[5], temporal_penalty=0.7)
    assert float(metrics["temporal_change"]) == 0.0 and float(same) == pytest.approx(float(plain))
    with pytest.raises(ValueError, match="next observations"):
        losses.actor_loss(*args[:4], losses.Batch(obs, jnp.zeros((3, 1)), jnp.zeros((3, 2))),
                          args[5], temporal_penalty=0.7)


def test_spatial_penalty_adds_the_change_at_nearby_observations() -> None:
    """δ is spatial_sigma times each component's spread over the batch, Gaussian from the
    actor's key; with sigma 0 the policy meets itself and the term is 0."""
    nets = Networks(_FixedActor(), _Identity(), _Identity())
    obs = jnp.array([[0.3, 2.0], [-1.0, 4.0], [0.5, 0.0]])
    batch = losses.Batch(obs, jnp.zeros((3, 2)), jnp.zeros((3, 4)))
    key = jax.random.PRNGKey(3)
    args = ({}, {"sa_encoder": {}, "g_encoder": {}}, jnp.log(0.2), nets, batch, key)
    plain, _ = losses.actor_loss(*args)
    penalized, (_, metrics) = losses.actor_loss(*args, spatial_penalty=0.5, spatial_sigma=0.1)
    delta = 0.1 * np.std(np.asarray(obs), axis=0) * np.asarray(
        jax.random.normal(jax.random.fold_in(key, 1), obs.shape))
    change = np.mean(np.sum((np.tanh(obs) - np.tanh(obs + delta)) ** 2, axis=-1))
    assert float(metrics["spatial_change"]) == pytest.approx(change, rel=1e-4)
    assert float(penalized - plain) == pytest.approx(0.5 * change, rel=1e-3)
    same, (_, metrics) = losses.actor_loss(*args, spatial_penalty=0.5, spatial_sigma=0.0)
    assert float(metrics["spatial_change"]) == 0.0 and float(same) == pytest.approx(float(plain))


def test_alpha_is_a_constant_in_the_actor_loss() -> None:
    config = NetworkConfig(depth=4, width=16, repr_dim=8)
    nets = make_networks(config, 2)
    params = init_params(nets, jax.random.PRNGKey(0), obs_dim=3, goal_dim=2)
    critic = {"sa_encoder": params["sa_encoder"], "g_encoder": params["g_encoder"]}
    batch = losses.Batch(jnp.ones((4, 3)), jnp.zeros((4, 2)), jnp.ones((4, 2)))

    def loss(log_alpha):
        return losses.actor_loss(params["actor"], critic, log_alpha, nets, batch,
                                 jax.random.PRNGKey(1))[0]

    assert float(jax.jit(jax.grad(loss))(jnp.float32(0.3))) == 0.0


def test_tanh_log_prob_matches_change_of_variables() -> None:
    """log π(a) = log N(x) − Σ log(1 − tanh(x)²) (+1e-6 inside the log, as the paper)."""
    mean, log_std = jnp.array([[0.2, -0.3]]), jnp.array([[-1.0, 0.5]])
    action, log_prob = losses.tanh_gaussian_sample(mean, log_std, jax.random.PRNGKey(0))
    x = np.arctanh(np.asarray(action, np.float64))
    std = np.exp(np.asarray(log_std, np.float64))
    gauss = -0.5 * ((x - np.asarray(mean)) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)
    expected = (gauss - np.log(1 - np.tanh(x) ** 2 + 1e-6)).sum()
    assert float(log_prob[0]) == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize(("entropy", "direction"), [(-3.0, +1), (2.0, -1)])
def test_alpha_moves_toward_the_target_entropy(entropy: float, direction: int) -> None:
    """Entropy below target → α grows (more exploration); above → α shrinks."""
    target = losses.target_entropy(action_dim=4, entropy_scale=0.5)
    assert target == -2.0
    log_prob = jnp.full((16,), -entropy)
    tx = optax.adam(3e-4)
    log_alpha = jnp.float32(0.0)
    opt = tx.init(log_alpha)
    for _ in range(50):
        grad = jax.grad(losses.alpha_loss)(log_alpha, log_prob, target)
        updates, opt = tx.update(grad, opt)
        log_alpha = optax.apply_updates(log_alpha, updates)
    assert direction * float(log_alpha) > 0.01


class _ActionPart(nn.Module):
    """φ(s, a) = a: with ψ(g) = g the energy −‖a − g‖ pulls the policy onto a = g."""

    action_dim: int

    @nn.compact
    def __call__(self, x):
        return x[..., -self.action_dim:]


def test_alpha_tuning_settles_the_entropy_at_target() -> None:
    """The critic pulls the policy towards a point (lower entropy), α pushes back: together they
    settle the policy's entropy at the target −|A|/2."""
    act_dim = 2
    actor = make_networks(NetworkConfig(depth=4, width=32, repr_dim=8), act_dim).actor
    nets = Networks(actor, _ActionPart(act_dim), _Identity())
    params = actor.init(jax.random.PRNGKey(0), jnp.zeros((1, 3)), jnp.zeros((1, 2)))["params"]
    batch = losses.Batch(jax.random.normal(jax.random.PRNGKey(1), (128, 3)),
                         jnp.zeros((128, act_dim)),
                         jax.random.uniform(jax.random.PRNGKey(2), (128, 2), minval=-0.5,
                                            maxval=0.5))
    target = losses.target_entropy(act_dim, 0.5)
    actor_tx, alpha_tx = optax.adam(1e-3), optax.adam(1e-2)
    no_critic = {"sa_encoder": {}, "g_encoder": {}}

    def step(carry, key):
        actor_params, log_alpha, actor_opt, alpha_opt = carry
        (_, (log_prob, m)), grad = jax.value_and_grad(losses.actor_loss, has_aux=True)(
            actor_params, no_critic, log_alpha, nets, batch, key)
        alpha_grad = jax.grad(losses.alpha_loss)(log_alpha, log_prob, target)
        u, actor_opt = actor_tx.update(grad, actor_opt)
        v, alpha_opt = alpha_tx.update(alpha_grad, alpha_opt)
        carry = (optax.apply_updates(actor_params, u), optax.apply_updates(log_alpha, v),
                 actor_opt, alpha_opt)
        return carry, m["entropy"]

    log_alpha = jnp.float32(0.0)
    carry = (params, log_alpha, actor_tx.init(params), alpha_tx.init(log_alpha))
    keys = jax.random.split(jax.random.PRNGKey(3), 1500)
    _, entropy = jax.jit(lambda c: jax.lax.scan(step, c, keys))(carry)
    assert abs(float(entropy[:10].mean()) - target) > 1.0  # starts far from the target
    assert abs(float(entropy[-100:].mean()) - target) < 0.3


def test_infonce_accuracy_rises_on_a_fixed_batch() -> None:
    """A few hundred critic steps on one batch of unrelated (s, a, g) triples memorise it."""
    batch_size, obs_dim, act_dim, goal_dim = 64, 5, 2, 3
    nets = make_networks(NetworkConfig(depth=4, width=64, repr_dim=16), act_dim)
    params = init_params(nets, jax.random.PRNGKey(0), obs_dim, goal_dim)
    critic = {"sa_encoder": params["sa_encoder"], "g_encoder": params["g_encoder"]}
    k1, k2, k3 = jax.random.split(jax.random.PRNGKey(1), 3)
    batch = losses.Batch(jax.random.normal(k1, (batch_size, obs_dim)),
                         jax.random.uniform(k2, (batch_size, act_dim), minval=-1, maxval=1),
                         jax.random.normal(k3, (batch_size, goal_dim)))
    tx = optax.adam(3e-4)

    def step(carry, _):
        critic, opt = carry
        (_, m), grad = jax.value_and_grad(losses.critic_loss, has_aux=True)(critic, nets, batch,
                                                                            0.1)
        u, opt = tx.update(grad, opt)
        return (optax.apply_updates(critic, u), opt), m["accuracy"]

    _, accuracy = jax.jit(lambda c: jax.lax.scan(step, c, None, length=300))((critic,
                                                                               tx.init(critic)))
    assert float(accuracy[0]) < 0.2
    assert float(accuracy[-10:].mean()) > 0.9
