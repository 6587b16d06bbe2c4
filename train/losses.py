"""Contrastive RL losses: forward InfoNCE critic, max-energy actor, α auto-tuning.

The critic is the energy f(s, a, g) = −‖φ(s, a) − ψ(g)‖₂. Over a batch of B (s, a, g) triples
where g is a future state of the same episode, the positives sit on the diagonal of the B × B
energy matrix and the other goals of the batch are the negatives. The actor maximises the energy
of its own (tanh-squashed, reparameterised) action towards the relabeled goal, with SAC's entropy
bonus whose weight α is tuned towards a target entropy.
"""

from __future__ import annotations

from typing import Any, NamedTuple, cast

import jax
import jax.numpy as jnp

from crl.train.networks import Networks

# Added inside the log of the tanh Jacobian, as the paper's code does, so saturated actions keep
# a finite log-probability.
TANH_LOG_DET_EPS = 1e-6


class Batch(NamedTuple):
    """One SGD batch: observations, the actions taken, and the relabeled goals; with the
    observation one step later where the episode goes on (`replay.sample`), for the actor's
    temporal smoothness term."""

    obs: jax.Array  # [B, obs_dim]
    action: jax.Array  # [B, act_dim]
    goal: jax.Array  # [B, goal_dim]
    next_obs: jax.Array | None = None  # [B, obs_dim]: s_{t+1} of the same episode
    has_next: jax.Array | None = None  # bool[B]: next_obs exists (the episode had a step t+1)


def _norm(diff: jax.Array) -> jax.Array:
    """‖diff‖₂ over the last axis, with a zero (not NaN) gradient where diff is exactly zero."""
    return _safe_sqrt(jnp.sum(jnp.square(diff), axis=-1))


def _safe_sqrt(sq: jax.Array) -> jax.Array:
    positive = sq > 0.0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def energy(sa_repr: jax.Array, g_repr: jax.Array) -> jax.Array:
    """f = −‖φ − ψ‖₂ for matching rows: [B, D] × [B, D] → [B]."""
    return -_norm(sa_repr - g_repr)


def pairwise_energy(sa_repr: jax.Array, g_repr: jax.Array) -> jax.Array:
    """All pairs: logits[i, j] = −‖φ_i − ψ_j‖₂, [B, D] × [B, D] → [B, B].

    ‖φ_i − ψ_j‖² is expanded as ‖φ_i‖² + ‖ψ_j‖² − 2 φ_i·ψ_j, one matmul instead of a
    [B, B, D] difference tensor (6× faster on CPU, B²·D less memory); rounding can make it
    slightly negative, hence the clamp at zero. The matmul runs at full fp32 precision (no
    TF32 on GPUs), as the cancellation needs it.
    """
    sq = (
        jnp.sum(jnp.square(sa_repr), axis=-1)[:, None]
        + jnp.sum(jnp.square(g_repr), axis=-1)[None, :]
        - 2.0 * jnp.matmul(sa_repr, g_repr.T, precision=jax.lax.Precision.HIGHEST)
    )
    return -_safe_sqrt(jnp.maximum(sq, 0.0))


def contrastive_logits(sa_repr: jax.Array, g_repr: jax.Array) -> jax.Array:
    """The B × B InfoNCE logits, with the positives (the diagonal) from the direct difference.

    The expanded form loses fp32 digits where ‖φ − ψ‖ is small next to ‖φ‖ and ‖ψ‖, which is
    exactly where a trained critic puts its positives (and the gradient of the norm is 1/d);
    the B diagonal entries cost one [B, D] difference.
    """
    batch = jnp.arange(sa_repr.shape[0])
    return pairwise_energy(sa_repr, g_repr).at[batch, batch].set(energy(sa_repr, g_repr))


def infonce_loss(logits: jax.Array, logsumexp_penalty: float) -> tuple[jax.Array, dict[str, Any]]:
    """Forward InfoNCE over the rows of the logits, plus penalty · mean(logsumexp²).

    The penalty pins the row normaliser near zero, which fixes the energy's free additive
    constant and keeps the logits from drifting.
    """
    lse = jax.nn.logsumexp(logits, axis=1)
    diag = jnp.diag(logits)
    loss = -jnp.mean(diag - lse) + logsumexp_penalty * jnp.mean(jnp.square(lse))
    batch = logits.shape[0]
    off_diag = (jnp.sum(logits) - jnp.sum(diag)) / (batch * (batch - 1))
    metrics = {
        "accuracy": jnp.mean(jnp.argmax(logits, axis=1) == jnp.arange(batch)),
        "logsumexp": jnp.mean(lse),
        "logits_pos": jnp.mean(diag),
        "logits_neg": off_diag,
    }
    return loss, metrics


def critic_loss(
    critic_params: dict[str, Any], nets: Networks, batch: Batch, logsumexp_penalty: float
) -> tuple[jax.Array, dict[str, Any]]:
    """InfoNCE of φ(s, a) against ψ(g) over the batch; critic_params = {sa_encoder, g_encoder}."""
    # flax types `apply` as "the output, or (output, mutated variables)", the latter for a
    # `mutable` call; these calls mutate nothing, so each gives the module's output alone.
    sa = cast(jax.Array, nets.sa_encoder.apply(
        {"params": critic_params["sa_encoder"]},
        jnp.concatenate([batch.obs, batch.action], axis=-1),
    ))
    g = cast(jax.Array, nets.g_encoder.apply({"params": critic_params["g_encoder"]}, batch.goal))
    loss, metrics = infonce_loss(contrastive_logits(sa, g), logsumexp_penalty)
    return loss, {"critic_loss": loss, **metrics}


def tanh_gaussian_sample(
    mean: jax.Array, log_std: jax.Array, key: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Reparameterised a = tanh(mean + std·ε) and log π(a) with the tanh log-det correction."""
    std = jnp.exp(log_std)
    x = mean + std * jax.random.normal(key, mean.shape, mean.dtype)
    action = jnp.tanh(x)
    log_prob = jax.scipy.stats.norm.logpdf(x, loc=mean, scale=std)
    log_prob = log_prob - jnp.log(1.0 - jnp.square(action) + TANH_LOG_DET_EPS)
    return action, jnp.sum(log_prob, axis=-1)


def actor_loss(
    actor_params: dict[str, Any],
    critic_params: dict[str, Any],
    log_alpha: jax.Array,
    nets: Networks,
    batch: Batch,
    key: jax.Array,
    action_rate_penalty: float = 0.0,
    last_action: slice | None = None,
    temporal_penalty: float = 0.0,
    spatial_penalty: float = 0.0,
    spatial_sigma: float = 0.0,
) -> tuple[jax.Array, tuple[jax.Array, dict[str, Any]]]:
    """mean(α · log π(ã | s, g) − f(s, ã, g)), ã ~ π; returns (loss, (log π, metrics)).

    α enters as a constant; the trainer differentiates this w.r.t. the actor's parameters only.
    With `action_rate_penalty` > 0, plus that weight times mean ‖tanh(μ(s, g)) − a_prev‖²,
    a_prev being the observation's `last_action` field (`last_action` its slice): a smoothness
    prior for a robot, whose servos follow a target that jumps from step to step only lagging.
    With `temporal_penalty` > 0, plus that weight times mean ‖tanh(μ(s_t, g)) − tanh(μ(s_{t+1},
    g))‖² over the rows that have a next step (CAPS' temporal term, Mysore et al., 2021): the
    deterministic policy's own change along the dynamics, which is what a limit cycle through
    the plant (a delayed, stiffer servo) is made of; the action-rate term sees it only through
    the exploring actor's noisy last command.
    With `spatial_penalty` > 0, plus that weight times mean ‖tanh(μ(s, g)) − tanh(μ(s + δ, g))‖²,
    δ ~ N(0, (spatial_sigma · std of each observation component over the batch)²) (CAPS'
    spatial term, scaled per component so one number fits joint angles, velocities and
    positions): it bounds the policy's gain from what it observes to what it commands, the
    loop gain a stiffer, delayed servo turns into a limit cycle.
    """
    # The modules' outputs alone, as in critic_loss (nothing is mutable).
    mean, log_std = cast(
        tuple[jax.Array, jax.Array],
        nets.actor.apply({"params": actor_params}, batch.obs, batch.goal),
    )
    action, log_prob = tanh_gaussian_sample(mean, log_std, key)
    sa = cast(jax.Array, nets.sa_encoder.apply(
        {"params": critic_params["sa_encoder"]}, jnp.concatenate([batch.obs, action], axis=-1)
    ))
    g = cast(jax.Array, nets.g_encoder.apply({"params": critic_params["g_encoder"]}, batch.goal))
    f = energy(sa, g)
    alpha = jax.lax.stop_gradient(jnp.exp(log_alpha))
    loss = jnp.mean(alpha * log_prob - f)
    metrics = {"actor_loss": loss, "entropy": -jnp.mean(log_prob), "energy_pi": jnp.mean(f)}
    if action_rate_penalty > 0:
        if last_action is None:
            raise ValueError("actor_loss: action_rate_penalty needs the last_action slice")
        change = jnp.tanh(mean) - batch.obs[:, last_action]
        rate = jnp.mean(jnp.sum(jnp.square(change), axis=-1))
        loss = loss + action_rate_penalty * rate
        metrics["action_rate"] = rate
    if temporal_penalty > 0:
        if batch.next_obs is None or batch.has_next is None:
            raise ValueError("actor_loss: temporal_penalty needs the batch's next observations")
        next_mean, _ = cast(
            tuple[jax.Array, jax.Array],
            nets.actor.apply({"params": actor_params}, batch.next_obs, batch.goal),
        )
        change = jnp.sum(jnp.square(jnp.tanh(mean) - jnp.tanh(next_mean)), axis=-1)
        weight = batch.has_next.astype(change.dtype)
        temporal = jnp.sum(weight * change) / jnp.maximum(jnp.sum(weight), 1.0)
        loss = loss + temporal_penalty * temporal
        metrics["temporal_change"] = temporal
    if spatial_penalty > 0:
        spread = jax.lax.stop_gradient(jnp.std(batch.obs, axis=0))
        k_spatial = jax.random.fold_in(key, 1)
        nearby = batch.obs + spatial_sigma * spread * jax.random.normal(
            k_spatial, batch.obs.shape, batch.obs.dtype)
        near_mean, _ = cast(
            tuple[jax.Array, jax.Array],
            nets.actor.apply({"params": actor_params}, nearby, batch.goal),
        )
        spatial = jnp.mean(jnp.sum(jnp.square(jnp.tanh(mean) - jnp.tanh(near_mean)), axis=-1))
        loss = loss + spatial_penalty * spatial
        metrics["spatial_change"] = spatial
    return loss, (log_prob, metrics)


def alpha_loss(log_alpha: jax.Array, log_prob: jax.Array, target_entropy: float) -> jax.Array:
    """α · mean(−log π − target): α grows when the entropy is below target, shrinks above."""
    alpha = jnp.exp(log_alpha)
    return alpha * jnp.mean(jax.lax.stop_gradient(-log_prob - target_entropy))


def target_entropy(action_dim: int, entropy_scale: float) -> float:
    """The paper's target entropy, −entropy_scale · |A| (−|A|/2 by default)."""
    return -entropy_scale * action_dim
