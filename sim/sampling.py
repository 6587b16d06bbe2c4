"""Draws from the goal and start samplers that `crl.sim.config` describes.

The samplers are plain descriptions in the config (their bounds go into the policy spec, which a
robot reads without jax); drawing from them is jax code that runs inside the env's reset, so it
lives here, on the env side.
"""

from __future__ import annotations

from typing import assert_never

import jax
import jax.numpy as jnp

from crl.sim.config import AnnulusSampler, BoxSampler, ChoiceSampler, Sampler


def sample(sampler: Sampler, rng: jax.Array) -> jax.Array:
    """One point of `sampler`: f32[sampler.size]."""
    match sampler:
        case BoxSampler():
            return _sample_box(sampler, rng)
        case AnnulusSampler():
            return _sample_annulus(sampler, rng)
        case ChoiceSampler():
            return _sample_choice(sampler, rng)
        case _:
            assert_never(sampler)


def _sample_box(box: BoxSampler, rng: jax.Array) -> jax.Array:
    return jax.random.uniform(
        rng, (box.size,), minval=jnp.asarray(box.low), maxval=jnp.asarray(box.high)
    )


def _sample_annulus(annulus: AnnulusSampler, rng: jax.Array) -> jax.Array:
    k_r, k_a = jax.random.split(rng)
    u = jax.random.uniform(k_r)
    if annulus.uniform_area:
        r = jnp.sqrt(annulus.r_min**2 + u * (annulus.r_max**2 - annulus.r_min**2))
    else:
        r = annulus.r_min + u * (annulus.r_max - annulus.r_min)
    angle = jax.random.uniform(k_a, minval=0.0, maxval=2 * jnp.pi)
    xy = jnp.asarray(annulus.center) + r * jnp.stack([jnp.cos(angle), jnp.sin(angle)])
    return xy if annulus.z is None else jnp.append(xy, annulus.z)


def _sample_choice(choice: ChoiceSampler, rng: jax.Array) -> jax.Array:
    k_i, k_n = jax.random.split(rng)
    point = jnp.asarray(choice.points)[jax.random.randint(k_i, (), 0, len(choice.points))]
    if choice.noise == 0:
        return point
    return point + jax.random.uniform(
        k_n, (choice.size,), minval=-choice.noise, maxval=choice.noise
    )
